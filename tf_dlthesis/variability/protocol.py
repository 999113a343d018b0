"""The R-run nondeterminism protocol (Thesis Sec. 5.3.1) with resumable executors.

For every source (or combination of sources) the protocol trains R models, each
from `SeedPlan.vary(source, r)`, i.e. varying only that source's seed while all
other seeds stay at the base plan's values, collects each model's test logits and
computes the variability metrics of the thesis's tables.

* One process per run: op determinism is process-global, and the "ops" source
  needs runs with it switched off next to runs with it on. Executors:
  ``"local"`` (a process pool; a fresh process for every run), ``"ray"`` (a Ray
  cluster, `ray.init(address=...)`; a Ray worker process per run), and
  ``"serial"`` (in the calling process; for notebooks and debugging).
* Resumable: each finished run is written to the results store at once, keyed by
  (experiment, config + source, run). A rerun after a crash (even `kill -9`)
  trains only the runs that are not in the store - nothing lost, nothing twice.
* Controlled: `train_fn` may report the hash of its initial weights (before any
  bit change) and of its data order (`weights_hash`, `order_hash`); the protocol
  checks that sources not being varied stayed fixed across runs and stores both.
* Bit changes that take effect: a pure ``"bit_change"`` source also trains the
  unperturbed control (the base plan) once; a bit-change run whose test logits
  (or, when `train_fn` reports its final `weights_hash`, whose trained weights)
  are bit-identical to the control's is no perturbation: it is recorded,
  reported and replaced by another bit position (a new derived seed), up to a
  bound; it is never counted in the row (`ProtocolResult.bit_changes`).

Reference: Thesis Ch. 5, Sec. 5.3.1 and App. B.6; arXiv:2103.04514.
"""

from __future__ import annotations

import ast
import dataclasses
import functools
import importlib
import multiprocessing
import multiprocessing.connection
import os
import shutil
import sys
import tempfile
import threading
import time
from typing import Callable, Mapping, Sequence

import numpy as np

from tf_dlthesis._checks import check_int
from tf_dlthesis.variability.metrics import variability_metrics
from tf_dlthesis.variability.seed_plan import SeedPlan, parse_source

EXECUTORS = ("local", "ray", "serial")
_VARIANT_PREFIX = "variant:"
#: Opens a results store from a path (`store="runs.sqlite"`). Set by the package root
#: (`tf_dlthesis._register_all`) to `experiments.ResultsStore`: the store lives in a layer
#: above `variability`, which must not import it.
_STORE_OPENER = None
_GUARD_HELP = (
    "run_protocol / run_lm_protocol (executor='local') start a process per run, and every new process imports the "
    "script that called it again (multiprocessing's forkserver and spawn start methods): without a "
    "guard the script would run again in each of them. Put the call under "
    "`if __name__ == \"__main__\":` as in README's Chapter 5 examples, or pass executor='serial'."
)


@dataclasses.dataclass
class ProtocolResult:
    """What `run_protocol` returns.

    Attributes:
        rows: Row name -> metrics dict (`variability_metrics`). One row per
            source, plus ``"source/variant"`` rows for every extra evaluation
            `train_fn` returned under ``"variants"`` (e.g. TTA, snapshots).
        logits: Row name -> (R, N, C) float array.
        hashes: Source -> list of (init_hash, order_hash) per run.
        labels: The (N,) labels.
        info: Source -> list of the per-run `"info"` dicts `train_fn` returned.
        bit_changes: Pure ``"bit_change"`` source -> what the effectiveness check
            found: `runs` (R asked for), `effective` (runs counted: each differs
            from the unperturbed control), `replaced` (draws that left the run
            bit-identical to the control and were replaced by another bit
            position), `exhausted` (runs whose every draw, up to the bound, was
            ineffective: left out of the row), `attempts` (draws per run) and
            `details` (one record per ineffective draw: run, draw, seed, reason,
            the changed weight).
        control_logits: The unperturbed control's (N, C) test logits (the base
            plan), when a bit-change source was run; else None.
        machines: Source -> the id of the machine that trained each run
            (`runtime.machine`; None for runs stored before machines were recorded).
            Runs are bit-reproducible on one machine only.
        control_logits_by_machine: Machine id -> the control's test logits trained
            there (the first control under its own machine, or None).
    """

    rows: dict
    logits: dict
    hashes: dict
    labels: np.ndarray
    info: dict = dataclasses.field(default_factory=dict)
    bit_changes: dict = dataclasses.field(default_factory=dict)
    control_logits: np.ndarray | None = None
    machines: dict = dataclasses.field(default_factory=dict)
    control_logits_by_machine: dict = dataclasses.field(default_factory=dict)

    def table(self, columns: Sequence[str] | None = None) -> dict:
        """Rows restricted to `columns` (all metrics by default)."""
        if columns is None:
            return {k: dict(v) for k, v in self.rows.items()}
        return {k: {c: v[c] for c in columns} for k, v in self.rows.items()}


class _MemoryStore:
    """In-memory stand-in used when `store=None` (no resume).

    Args:
        default: `json.dumps`'s fallback for config values JSON cannot encode (None:
            such a config raises `TypeError`, as a `ResultsStore` would).
    """

    def __init__(self, default: Callable | None = None):
        self._data = {}
        self._default = default

    def _key(self, experiment, config, run):
        import json

        return experiment, json.dumps(config, sort_keys=True, default=self._default), int(run)

    def has(self, experiment, config, run):
        return self._key(experiment, config, run) in self._data

    def get(self, experiment, config, run):
        return self._data.get(self._key(experiment, config, run))

    def record(self, experiment, config, run, result):
        self._data[self._key(experiment, config, run)] = result


def _normalize_output(out, plan: SeedPlan) -> dict:
    if isinstance(out, Mapping):
        if "logits" not in out:
            raise ValueError(f"train_fn returned a dict without 'logits' (keys: {sorted(out)}) for {plan.source!r} run {plan.run}.")
        result = {
            "logits": np.asarray(out["logits"], dtype=np.float32),
            "init_hash": out.get("init_hash"),
            "order_hash": out.get("order_hash"),
            "weights_hash": out.get("weights_hash"),
        }
        for field in ("variants", "info"):
            if not isinstance(out.get(field) or {}, Mapping):
                raise TypeError(f"train_fn's {field!r} must be a dict (name -> value) or None; source "
                                f"{plan.source!r} run {plan.run} returned {type(out[field]).__name__}.")
        for name, arr in (out.get("variants") or {}).items():
            result[_VARIANT_PREFIX + str(name)] = np.asarray(arr, dtype=np.float32)
        for key, val in (out.get("info") or {}).items():
            result["info:" + str(key)] = val
    else:
        result = {"logits": np.asarray(out, dtype=np.float32), "init_hash": None, "order_hash": None,
                  "weights_hash": None}
    result["plan"] = plan.to_config()
    return result


def _start_run(plan: SeedPlan, threads: int | None, global_seed: int | None) -> None:
    """Prepares this process for one run: TF's thread pools, the global seeds and op determinism per the plan."""
    import tensorflow as tf

    if threads:
        try:
            tf.config.threading.set_intra_op_parallelism_threads(int(threads))
            tf.config.threading.set_inter_op_parallelism_threads(int(threads))
        except RuntimeError:  # context already initialised (serial executor)
            pass
    from tf_dlthesis import runtime

    runtime.configure(seed=global_seed, deterministic=plan.deterministic_ops)


def _run_one(train_fn: Callable, plan: SeedPlan, threads: int | None, global_seed: int | None = 0) -> dict:
    """Runs one plan: op determinism per the plan, then `train_fn(plan)`.

    In a fresh process the global seeds are fixed too (`global_seed`), so anything
    `train_fn` forgot to seed explicitly is at least constant across runs.
    """
    _start_run(plan, threads, global_seed)
    try:
        out = train_fn(plan)
    except Exception as exc:
        _add_note(exc, f"run_protocol: train_fn failed in run {plan.run} of source {plan.source!r} "
                       f"(plan {plan.to_config()}).")
        raise
    return _stamp_machine(_normalize_output(out, plan))


def _add_note(exc: BaseException, note: str) -> None:
    """Adds `note` to `exc`'s traceback (`BaseException.add_note`, Python >= 3.11; a no-op before)."""
    if hasattr(exc, "add_note"):
        exc.add_note(note)


def _stamp_machine(result: dict) -> dict:
    """Adds `"machine"`: the id of the machine that trained the run (`runtime.machine`)."""
    from tf_dlthesis import runtime

    result["machine"] = runtime.machine()["id"]
    return result


def _validate_run(result: dict, labels: np.ndarray, num_classes: int | None, source: str, run: int) -> None:
    for key, arr in result.items():
        if key != "logits" and not key.startswith(_VARIANT_PREFIX):
            continue
        if arr.ndim != 2 or arr.shape[0] != labels.shape[0]:
            raise ValueError(
                f"train_fn must return logits of shape (N, C) with N = len(labels) = {labels.shape[0]}; "
                f"{key!r} of source {source!r} run {run} has shape {arr.shape}"
            )
        if not np.all(np.isfinite(arr)):
            raise ValueError(f"train_fn returned NaN or infinite {key!r} for source {source!r} run {run} (diverged?).")
        if num_classes is not None and arr.shape[1] != num_classes:
            raise ValueError(f"{key!r} of source {source!r} run {run} has {arr.shape[1]} classes, expected {num_classes}.")
        if labels.max() >= arr.shape[1]:
            raise ValueError(f"`labels` must lie in [0, {arr.shape[1]}) for the {arr.shape[1]}-class {key!r} of source "
                             f"{source!r} run {run}. Received: labels with max={labels.max()}")


def _layout(result: dict) -> dict:
    """The evaluations a run's record holds (`"logits"` and each variant) and their shapes."""
    return {k: tuple(np.shape(v)) for k, v in result.items() if k == "logits" or k.startswith(_VARIANT_PREFIX)}


def _check_same_layout(layouts: dict, result: dict, source: str, run: int) -> None:
    """Every run of `source` must return the same variants, of the same shapes, as its first run seen.

    A variant missing from some runs (or present in only some) cannot be stacked into
    a row: without this check it would be a `KeyError` after training, or silently
    dropped. `layouts` (source -> (run, layout)) remembers the first run of each source.
    """
    layout = _layout(result)
    first_run, first = layouts.setdefault(source, (run, layout))
    if layout == first:
        return

    def names(lay):
        return sorted("logits" if k == "logits" else k[len(_VARIANT_PREFIX):] for k in lay)
    if set(layout) != set(first):
        raise ValueError(f"train_fn must return the same 'variants' in every run of a source: source {source!r} "
                         f"run {run} returned {names(layout)}, run {first_run} returned {names(first)}.")
    shapes = {k: (first[k], layout[k]) for k in layout if layout[k] != first[k]}
    raise ValueError(f"train_fn must return logits of one shape (N, C) in every run of a source: source {source!r}: "
                     + "; ".join(f"{k!r} has shape {b} in run {run} but {a} in run {first_run}"
                                 for k, (a, b) in shapes.items()))


def _check_controls(hashes: dict, onset_epoch: int, control: tuple | None = None) -> None:
    """Unvaried sources (and the unperturbed control run) must share hashes; varied ones must differ."""
    groups = {"init": ("init_hash", ("init",)), "shuffle": ("order_hash", ("shuffle",))}
    for label, (idx_name, names) in groups.items():
        idx = 0 if idx_name == "init_hash" else 1
        fixed_values = {}
        for source, pairs in hashes.items():
            varied = parse_source(source)
            values = [p[idx] for p in pairs if p[idx] is not None]
            if not values:
                continue
            if any(n in varied for n in names):
                if not (label == "shuffle" and onset_epoch) and len(set(values)) != len(values):
                    raise RuntimeError(
                        f"Source {source!r} varies {label} but runs share a {idx_name}: train_fn ignores the plan's {label} seed."
                    )
            else:
                fixed_values[source] = set(values)
        if control is not None and control[idx] is not None:
            fixed_values["the unperturbed control"] = {control[idx]}
        union = set().union(*fixed_values.values()) if fixed_values else set()
        if len(union) > 1:
            raise RuntimeError(
                f"{idx_name} differs between runs that do not vary {label} ({sorted(fixed_values)}): "
                f"an uncontrolled source of nondeterminism leaks into train_fn."
            )


def _process_pool(tasks, job: Callable, workers, start_method, on_done, progress, preload=(),
                  join_on_stop: bool = False, slots: Callable | None = None,
                  on_message: Callable | None = None) -> None:
    """Runs `job(plan)` for every `(label, plan)` of `tasks` in a fresh process each.

    Tasks start in the order given, at most `workers` at once; with `slots`, a task
    counts as `slots(label)` of the `workers` (one that starts training workers of its
    own) and waits until that many are free, while a later task that fits starts
    (`_take_fitting`). Each finished task's result goes to `on_done(label, result)`; an
    exception in a task is raised here (with the task's traceback as its cause), and a
    task process that dies without a result (killed, out of memory) raises
    `BrokenProcessPool`. With `on_message`, the job is called as `job(plan, send)`, and
    each `send(obj)` reaches `on_message(label, obj)` here while the task still runs (a
    chapter's finished items, say).

    `start_method` None means forkserver (spawn on Windows). With the forkserver start
    method the server imports `tf_dlthesis` (quietly, registering its Keras objects), TF
    and the modules in `preload` once; each task is a fresh fork of it (a new process,
    so op determinism stays per run) without paying the TF import again. Task processes
    end with this process (`_die_with`).

    Each task process has a pipe of its own for its result, and no process sits idle:
    ending one at a stop can never leave a lock held that another needs. (A
    `ProcessPoolExecutor` with `max_tasks_per_child=1` could: a task that turned SIGTERM
    into a result made it start a replacement worker, which then waited forever on the
    call-queue lock of an idle worker the stop had killed, and held this process at exit.)

    At a stop (Ctrl-C, SIGTERM) or a failure the running tasks get SIGTERM at once.
    `join_on_stop`: wait up to a minute for them to end, for jobs that turn SIGTERM into
    a clean stop which records what they finished (`reproduce`'s chapters); otherwise
    up to 5 s. Any still running then are killed.

    Each task process gets a temporary folder of its own (`tempfile.gettempdir()` and
    `TMPDIR` inside it), removed here when the task ends. A task process leaves through
    `os._exit`, which skips `atexit` handlers, so whatever they would have deleted (the
    source files AutoGraph writes for each converted function, say) would otherwise stay
    in the system's temporary folder.
    """
    if start_method is None:
        start_method = "forkserver" if sys.platform != "win32" else "spawn"
    ctx = multiprocessing.get_context(start_method)
    if start_method == "forkserver":
        ctx.set_forkserver_preload(["tf_dlthesis", "tensorflow", "keras", __name__, *preload])
    slots = slots or (lambda label: 1)
    queue, running, free = list(tasks), {}, workers  # running: result pipe -> (label, slots taken, process)
    temp_dirs = {}  # result pipe -> the task's temporary folder
    try:
        while queue or running:
            for label, plan, taken in _take_fitting(queue, free, workers, slots):
                reader, writer = ctx.Pipe(duplex=False)
                temp_dir = tempfile.mkdtemp(prefix="tf_dlthesis-task-")
                proc = ctx.Process(target=_pool_task, args=(job, plan, writer, os.getpid(), on_message is not None,
                                                            temp_dir), name=f"tf_dlthesis-task-{label}")
                temp_dirs[reader] = temp_dir
                _start(proc, start_method)
                writer.close()  # the task's copy is its own: end-of-file here once it is gone
                running[reader] = label, taken, proc
                free -= taken
            ready = _wait_tasks(running)
            for reader in [r for r, (_, _, proc) in running.items() if r in ready or proc.sentinel in ready]:
                label, taken, proc = running[reader]
                try:
                    final, result = _task_message(reader, proc)
                finally:
                    if reader.closed:  # the task has ended (with a result, an exception or none)
                        shutil.rmtree(temp_dirs.pop(reader), ignore_errors=True)
                if not final:
                    on_message(label, result)
                    continue
                del running[reader]
                free += taken
                on_done(label, result)
                if progress is not None:
                    progress.update(1)
    except BaseException:
        _end_tasks(running, 60.0 if join_on_stop else 5.0)
        raise
    finally:
        for temp_dir in temp_dirs.values():  # tasks ended by a stop or a failure
            shutil.rmtree(temp_dir, ignore_errors=True)


def _start(proc, start_method: str) -> None:
    """`proc.start()`, with a clear error where the forkserver cannot open its socket.

    The forkserver listens on a Unix socket under the temporary folder, and a socket path
    may hold at most ~107 bytes: a long `TMPDIR` makes Python's multiprocessing fail deep
    inside `forkserver.ensure_running` with "AF_UNIX path too long"."""
    try:
        proc.start()
    except OSError as err:
        if start_method != "forkserver" or "too long" not in str(err):
            raise
        temp = tempfile.gettempdir()
        raise OSError(
            f"The forkserver start method could not open its Unix socket under the temporary folder {temp!r} "
            f"({len(temp)} characters; a socket path may hold at most ~107, and the socket's own name adds ~30). "
            f"Set TMPDIR to a shorter folder (e.g. /tmp), or pass start_method='spawn'. Received: TMPDIR={temp!r}"
        ) from err


def _take_fitting(queue: list, free: int, capacity: int, slots: Callable) -> list:
    """Removes from `queue` the `(label, plan)` tasks that fit in `free` slots, in order (the
    first that fits, then the next, so a small task fills a gap an earlier big one cannot):
    `[(label, plan, slots taken)]`. A task takes `min(slots(label), capacity)` slots."""
    started, waiting = [], []
    for label, plan in queue:
        taken = min(slots(label), capacity)
        if taken <= free:
            started.append((label, plan, taken))
            free -= taken
        else:
            waiting.append((label, plan))
    queue[:] = waiting
    return started


class _RemoteTraceback(Exception):
    """The traceback of an exception raised in a task process (set as its `__cause__`)."""

    def __init__(self, text: str):
        super().__init__(text)
        self.text = text

    def __str__(self) -> str:
        return f"\n\"\"\"\n{self.text}\"\"\""


def _pool_task(job: Callable, plan, writer, parent: int, messages: bool, temp_dir: str) -> None:
    """A task process of `_process_pool`: `job(plan)` (`job(plan, send)` with `messages`), and
    its result (or its exception and traceback) sent back through `writer`. Its temporary
    files go to `temp_dir`, which the pool removes when the task ends."""
    import traceback

    _die_with(parent, temp_dir)
    tempfile.tempdir = temp_dir
    os.environ["TMPDIR"] = temp_dir  # processes the task starts (a chapter's protocol workers) nest theirs in it
    try:
        message = ("result", job(plan, functools.partial(_send, writer, "message")) if messages else job(plan))
    except BaseException as exc:  # KeyboardInterrupt too: a task stopped by SIGTERM says so
        message = ("error", (exc, traceback.format_exc()))
    try:
        writer.send(message)
    except Exception as exc:  # the result or the exception does not pickle
        text = message[1][1] if message[0] == "error" else ""
        writer.send(("error", (RuntimeError(f"The task's {message[0]} could not be sent back from its process: "
                                            f"{exc!r}"), text)))
    writer.close()


def _send(writer, kind: str, obj) -> None:
    writer.send((kind, obj))


def _task_message(reader, proc) -> tuple:
    """The next message of a task process: `(False, obj)` for a `send(obj)`, `(True, result)`
    for its result (then the process is joined). Re-raises the task's exception, or raises
    `BrokenProcessPool` if it ended without a result."""
    from concurrent.futures.process import BrokenProcessPool

    try:
        kind, payload = reader.recv() if reader.poll() else (None, None)
    except (EOFError, OSError):
        kind = None
    if kind == "message":
        return False, payload
    reader.close()
    proc.join()
    if kind is None:
        raise BrokenProcessPool(f"A task process ({proc.name}) ended without a result (exit code {proc.exitcode}): "
                                f"killed, or out of memory.")
    if kind == "result":
        return True, payload
    exc, text = payload
    exc.__cause__ = _RemoteTraceback(text)
    raise exc


def _wait_tasks(running: dict, timeout: float | None = None) -> list:
    """Waits until a running task's result pipe has something to read (or is at its end)
    or its process has ended: the ready pipes and process sentinels."""
    return multiprocessing.connection.wait([*(reader for reader in running if not reader.closed),
                                            *(proc.sentinel for _, _, proc in running.values())], timeout=timeout)


def _end_tasks(running: dict, grace: float) -> None:
    """Sends SIGTERM to every running task process and waits up to `grace` seconds for them
    to end, reading (and dropping) what they send meanwhile, so that one stopping cleanly
    is never blocked writing its result; kills the rest."""
    for _, _, proc in running.values():
        proc.terminate()
    deadline = time.time() + grace
    while running and time.time() < deadline:
        ready = _wait_tasks(running, timeout=max(0.0, deadline - time.time()))
        for reader in list(running):
            proc = running[reader][2]
            if reader in ready and not reader.closed:
                try:
                    reader.recv()
                except Exception:  # end of file, or a message cut short
                    reader.close()
            if proc.sentinel in ready:
                proc.join()
                if not reader.closed:
                    reader.close()
                del running[reader]
    for reader, (_, _, proc) in running.items():
        proc.kill()
        proc.join()
        reader.close()


def _executor_local(tasks, train_fn, threads, workers, start_method, on_done, progress):
    target = getattr(train_fn, "func", train_fn)  # unwrap functools.partial
    module = getattr(target, "__module__", None)
    preload = [module] if module and module not in ("__main__", "functools") else []
    _process_pool(tasks, functools.partial(_run_one, train_fn, threads=threads), workers, start_method, on_done,
                  progress, preload)


def _executor_ray(tasks, train_fn, threads, ray_address, on_done, progress):
    try:
        ray = importlib.import_module("ray")
    except ImportError as exc:
        raise ImportError(
            "executor='ray' needs Ray, which is not installed. Install the extra: pip install 'tf-dlthesis[ray]'"
        ) from exc
    if not ray.is_initialized():
        kwargs = {"address": ray_address, "ignore_reinit_error": True, "log_to_driver": False}
        if ray_address is None:
            kwargs["include_dashboard"] = False
        ray.init(**kwargs)
    remote = ray.remote(num_cpus=threads or 1, max_calls=1)(_run_one)  # max_calls=1: a fresh worker per run
    refs = {remote.remote(train_fn, plan, threads): label for label, plan in tasks}
    while refs:
        done, _ = ray.wait(list(refs), num_returns=1)
        for ref in done:
            label = refs.pop(ref)
            on_done(label, ray.get(ref))
            progress.update(1)


def _is_pure_bit_change(source: str) -> bool:
    return parse_source(source) == ("bit_change",)


def _ineffective(result: dict, control: dict, values: str = "logits", noun: str = "test logit") -> str | None:
    """Why a bit-change run is no perturbation (bit-identical to the control), or None when it is one.

    Args:
        result: The bit-change run's record.
        control: The unperturbed control's record.
        values: The key of the evaluation compared when the final weights' hashes
            (``"weights_hash"``, None when not reported) do not already match.
        noun: What one entry of `values` is, for the reason.
    """
    if result.get("weights_hash") is not None and result.get("weights_hash") == control.get("weights_hash"):
        return "every weight after training bit-identical to the unperturbed control"
    if np.array_equal(np.asarray(result[values]), np.asarray(control[values])):
        return f"every {noun} bit-identical to the unperturbed control"
    return None


def _as_store(store):
    """`None` -> in memory; a path -> a `ResultsStore` on it; else anything with `has`/`get`/`record`."""
    if store is None:
        return _MemoryStore()
    if isinstance(store, (str, bytes, os.PathLike)):
        if not os.fspath(store):
            raise ValueError(f"`store` must be a non-empty path. Received: store={store!r}")
        if _STORE_OPENER is None:  # only when tf_dlthesis's root was bypassed
            raise TypeError(f"`store` as a path needs `import tf_dlthesis` first; or pass "
                            f"tf_dlthesis.experiments.ResultsStore(path). Received: store={store!r}")
        try:
            return _STORE_OPENER(os.fsdecode(store))
        except ValueError as err:  # e.g. ":memory:" (refused by the store): name this argument, not the store's
            raise ValueError(f"`store` {store!r} cannot be opened as a results store: {err} `store=None` keeps "
                             f"the results in this process's memory.") from None
    missing = [m for m in ("has", "get", "record") if not callable(getattr(store, m, None))]
    if missing:
        raise TypeError(f"`store` must be a ResultsStore, a path to one (str or os.PathLike), anything with "
                        f"has/get/record methods, or None; {type(store).__name__} has no {'/'.join(missing)}. "
                        f"Received: store={store!r}")
    return store


def _is_main_test(test) -> bool:
    """Whether an `if` test is `__name__ == "__main__"` (either side)."""
    if not (isinstance(test, ast.Compare) and len(test.ops) == 1 and isinstance(test.ops[0], ast.Eq)):
        return False
    sides = [test.left, test.comparators[0]]
    names = [s.id for s in sides if isinstance(s, ast.Name)]
    consts = [s.value for s in sides if isinstance(s, ast.Constant)]
    return names == ["__name__"] and consts == ["__main__"]


def _check_main_guard() -> None:
    """Refuses a call from a script's unguarded top level (it would rerun in every worker).

    Two cases: (1) in the script itself, the call is reached from module-level code
    of `__main__` that is not inside `if __name__ == "__main__":` (checked on the
    script's source); (2) in a worker that is importing the script while starting
    up (what multiprocessing's own `_check_not_importing_main` looks at).

    Raises:
        RuntimeError: in either case, pointing at the guard.
    """
    if getattr(multiprocessing.current_process(), "_inheriting", False):
        raise RuntimeError(f"The protocol was started while a worker process was importing the main script. "
                           f"{_GUARD_HELP}")
    main = sys.modules.get("__main__")
    path = getattr(main, "__file__", None)
    if not path or not str(path).endswith(".py") or not os.path.isfile(path):
        return  # interactive session, notebook, -c: workers do not rerun any script
    frame = sys._getframe(1)
    while frame is not None and not (frame.f_code.co_name == "<module>" and frame.f_globals is vars(main)):
        frame = frame.f_back
    if frame is None:
        return  # not reached from the script's module-level code (e.g. from a guarded function call)
    line = frame.f_lineno
    try:
        with open(path, encoding="utf-8") as fh:
            tree = ast.parse(fh.read(), filename=path)
    except (OSError, SyntaxError, UnicodeDecodeError, ValueError):
        return
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and _is_main_test(node.test) and node.body:
            if node.body[0].lineno <= line <= (node.body[-1].end_lineno or node.body[-1].lineno):
                return
    where = f" (called from {path}, line {line}, outside any `if __name__ == \"__main__\":` block)"
    raise RuntimeError(f"{_GUARD_HELP}{where}")


def _die_with(pid: int, temp_dir: str | None = None) -> None:
    """Called first in a task process of `_process_pool`: it ends itself as soon as process `pid` is gone.

    A `kill -9` of the `run_protocol` process gives its pool no chance to stop the
    workers, and a running worker keeps the forkserver (and through it the
    multiprocessing resource tracker) alive: without this, all three outlive the
    killed process until the worker's training ends. A daemon thread waits on a
    Linux pidfd of `pid` (readable when it exits; immune to pid reuse), else polls
    `os.kill(pid, 0)` every 0.2 s, and then calls `os._exit`. Once the workers are
    gone the forkserver sees end-of-file on its liveness pipe and exits, and the
    resource tracker follows. `temp_dir` (the task's temporary folder, which the pool
    would have removed) is removed first: nobody else is left to do it.
    """
    def watch():
        pidfd = None
        try:
            pidfd = os.pidfd_open(pid)
        except (AttributeError, OSError):  # not Linux >= 5.3, or `pid` already gone
            pass
        if pidfd is not None:
            import select

            select.select([pidfd], [], [])
        else:
            while True:
                try:
                    os.kill(pid, 0)
                except ProcessLookupError:
                    break
                except PermissionError:  # alive, owned by someone else (cannot happen for our parent)
                    pass
                if os.getppid() == 1 and pid != 1:  # reparented to init: our parent chain is gone
                    break
                time.sleep(0.2)
        try:
            os.write(2, f"tf_dlthesis run_protocol worker {os.getpid()}: the protocol's process {pid} is gone; "
                        f"stopping\n".encode())
        finally:
            if temp_dir is not None:
                shutil.rmtree(temp_dir, ignore_errors=True)
            os._exit(70)

    threading.Thread(target=watch, name="tf_dlthesis-protocol-watchdog", daemon=True).start()


def _source_list(sources, check: Callable = parse_source) -> list:
    """`sources` as a list, each name checked by `check` (which raises for a bad one).

    Raises:
        TypeError: for a single string instead of a list.
        ValueError: for an empty list (or from `check`).
    """
    if isinstance(sources, str):
        raise TypeError(f"`sources` must be a list of source names, not a string. Received: sources={sources!r}")
    sources = list(sources)
    if not sources:
        raise ValueError("`sources` must name at least one source.")
    for source in sources:
        check(source)
    repeated = sorted({s for s in sources if sources.count(s) > 1})
    if repeated:
        raise ValueError(f"`sources` names {', '.join(repr(s) for s in repeated)} more than once (each name's "
                         f"runs would be trained once per mention). Received: sources={sources!r}")
    return sources


_TWO_RUNS = "a standard deviation needs two runs"


def _runs_per_source(runs, sources) -> dict:
    if isinstance(runs, Mapping):
        missing = [s for s in sources if s not in runs]
        if missing:
            raise ValueError(f"`runs` gives no run count for source(s) {missing}. Received: runs={dict(runs)!r}")
        return {s: check_int(f"runs[{s!r}]", runs[s], 2, why=_TWO_RUNS) for s in sources}
    count = check_int("runs", runs, 2, why=_TWO_RUNS)
    return {s: count for s in sources}


_DRAW_FIELDS = ("attempt", "bit_change_seed", "reason", "bit_change")


@dataclasses.dataclass
class _Scheduler:
    """Trains a protocol's missing runs into a results store and redraws bit changes that did not take effect.

    The part `run_protocol` and `language_model.run_lm_protocol` share; they differ
    in what one run is and what its record holds, which the fields say. What it
    keeps in the store, per `experiment`:

    * `key(source)`, run r: run r of `source`, as counted in its row;
    * `control_key`, run 0: the unperturbed control of the bit-change sources;
      `control_key` + `{"machine": id}`, run 0: the control retrained on another
      machine. Bit-exact reproducibility holds on one machine only
      (`runtime.machine`), so a draw is judged only against a control trained on
      its own machine (runs stored before machines were recorded count as one
      unknown machine);
    * `attempt_key(source, a)`, run r: draw a of bit-change run r, first its
      result marked ``"pending": True``, then, once judged against the control,
      `{"attempt", "effective", "reason", "bit_change_seed", "bit_change"}`. The
      first effective draw becomes run r (with ``"bit_change_attempt"``).

    A task is `(label, plan)`, the label `(kind, source, run, attempt)` with kind
    ``"run"``, ``"control"`` or ``"bit"`` (`attempt`: the draw, None unless ``"bit"``).

    Attributes:
        store: Anything with `has`/`get`/`record` (`get`: None for a run not recorded).
        experiment: Experiment key in the store.
        sources: The source names, in order.
        counts: Source -> its number of runs R.
        key: Source -> its config in the store.
        control_key: The control's config in the store.
        plans: (source, run) -> the run's plan (a bit change's first draw).
        control_plan: The bit-change runs' plan without the bit change.
        redraws: How often an ineffective bit change is redrawn (>= 0).
        ineffective: `(result, control) -> reason`, why a draw is no perturbation, or None.
        bit_change_of: A result -> the bit change it applied (for its draw's record).
        keep_replaced: Whether a counted draw's record lists the draws it replaced
            (``"bit_change_replaced"``).
        validate: `(result, source, run)`, raises for a malformed result (None: no check).
    """

    store: object
    experiment: str
    sources: list
    counts: dict
    key: Callable
    control_key: dict
    plans: Mapping
    control_plan: SeedPlan
    redraws: int
    ineffective: Callable
    bit_change_of: Callable
    keep_replaced: bool = False
    validate: Callable | None = None

    def __post_init__(self):
        self.bit_sources = [s for s in self.sources if _is_pure_bit_change(s)]
        self._retrained = set()  # (source, run, attempt): pending draws from another machine, retrained here
        self._unmatched = set()  # machines whose draws are judged against the first control (see `control_for`)

    def attempt_key(self, source: str, attempt: int) -> dict:
        """The store config of one draw of a bit-change run."""
        return {**self.key(source), "bit_change_attempt": int(attempt)}

    def _has(self, source: str, run: int) -> bool:
        return self.store.has(self.experiment, self.key(source), run)

    def draws(self, source: str, run: int) -> list:
        """The stored draws of one bit-change run, in order (pending results or judged records)."""
        out = []
        while (draw := self.store.get(self.experiment, self.attempt_key(source, len(out)), run)) is not None:
            out.append(draw)
        return out

    def stored_control(self) -> dict | None:
        """The control's result when a bit-change source was run, else None."""
        return self.store.get(self.experiment, self.control_key, 0) if self.bit_sources else None

    def controls(self, machines) -> dict:
        """Machine id -> the control trained there, for the first control's machine and each of `machines`."""
        first = self.stored_control()
        if first is None:
            return {}
        out = {first.get("machine"): first}
        for m in set(machines) - {None, first.get("machine")}:
            own = self.store.get(self.experiment, self._machine_control_key(m), 0)
            if own is not None:
                out[m] = own
        return out

    def control_for(self, machine: str | None) -> dict | None:
        """The stored control trained on `machine`, or None.

        A draw whose machine was not recorded (`machine` None) is judged against the
        first control, as before machines were recorded. So is a draw retrained once
        and still from a machine without a control (a cluster whose nodes differ):
        its record then names the control's machine (``"control_machine"``).
        """
        first = self.stored_control()
        if first is None or machine is None or first.get("machine") == machine:
            return first
        own = self.store.get(self.experiment, self._machine_control_key(machine), 0)
        return first if own is None and machine in self._unmatched else own

    def _machine_control_key(self, machine: str) -> dict:
        """The store config of the control retrained on `machine` (not the first control's machine)."""
        return {**self.control_key, "machine": machine}

    def finished(self, source: str) -> tuple[list, list]:
        """The run indices of `source` in the store and their results."""
        stored = [(r, self.store.get(self.experiment, self.key(source), r)) for r in range(self.counts[source])]
        stored = [(r, result) for r, result in stored if result is not None]
        return [r for r, _ in stored], [result for _, result in stored]

    def judge(self, source: str, run: int) -> list:
        """Judges the pending draws of one bit-change run against the control trained on their machine.

        Counts the first effective draw; a draw whose machine has no control yet stays pending.

        Returns:
            The run's draws as now stored (`draws`).
        """
        history = self.draws(source, run)
        for a, record in enumerate(history):
            if not record.get("pending"):
                continue
            control = self.control_for(record.get("machine"))
            if control is None:
                break  # judged once a control from its machine exists
            reason = self.ineffective(record, control)
            meta = {"attempt": a, "effective": reason is None, "reason": reason,
                    "bit_change_seed": record["plan"]["bit_change"], "bit_change": self.bit_change_of(record)}
            if control.get("machine") != record.get("machine"):
                meta["control_machine"] = control.get("machine")  # no control from its machine could be trained
            self.store.record(self.experiment, self.attempt_key(source, a), run, meta)
            history[a] = meta
            if reason is None:
                self._accept(source, run, record, history[: a + 1])
                break
        return history

    def _accept(self, source: str, run: int, result: dict, history: list) -> None:
        """Stores an effective draw (the last of `history`) as the run."""
        record = {k: v for k, v in result.items() if k != "pending"}
        record["bit_change_attempt"] = len(history) - 1
        if self.keep_replaced:
            record["bit_change_replaced"] = [{k: h[k] for k in _DRAW_FIELDS} for h in history if not h["effective"]]
        self.store.record(self.experiment, self.key(source), run, record)

    def on_done(self, label: tuple, result: dict) -> None:
        """Stores a finished task's result; a bit-change draw is judged at once when the control exists."""
        kind, source, run, attempt = label
        if self.validate is not None:
            self.validate(result, source, run)
        if kind == "control":
            machine = result.get("machine")
            if self.stored_control() is None:
                self.store.record(self.experiment, self.control_key, 0, result)
            elif self.control_for(machine) is None:
                self.store.record(self.experiment, self._machine_control_key(machine), 0, result)
            for s in self.bit_sources:  # draws that waited for this machine's control
                for r in range(self.counts[s]):
                    if not self._has(s, r):
                        self.judge(s, r)
        elif kind == "bit":
            self.store.record(self.experiment, self.attempt_key(source, attempt), run, {**result, "pending": True})
            self.judge(source, run)
        elif not self._has(source, run):
            self.store.record(self.experiment, self.key(source), run, result)

    def tasks(self) -> list:
        """The tasks still to train: missing runs, the control, the next draw of each open bit-change run."""
        tasks = []
        for s in self.sources:
            if s not in self.bit_sources:
                tasks += [(("run", s, r, None), self.plans[(s, r)]) for r in range(self.counts[s])
                          if not self._has(s, r)]
        if not self.bit_sources:
            return tasks
        from tf_dlthesis import runtime

        here = runtime.machine()["id"]
        draws, waiting = [], False
        for s in self.bit_sources:
            for r in range(self.counts[s]):
                attempt, history = self._next_draw(s, r)
                if attempt is None and history and history[-1].get("pending"):
                    # waits for a control from its machine: this machine trains one; a draw another
                    # machine left pending (a resumed run) is retrained here, once
                    machine, a = history[-1].get("machine"), len(history) - 1
                    if machine == here or self.stored_control() is None:
                        waiting = True
                    elif (s, r, a) not in self._retrained:
                        self._retrained.add((s, r, a))
                        attempt = a
                    else:
                        self._unmatched.add(machine)
                        attempt, history = self._next_draw(s, r)
                if attempt is not None:
                    draws.append((("bit", s, r, attempt), self.plans[(s, r)].redraw_bit_change(attempt)))
        # one control per machine that trains draws (this one: the local and serial executors)
        if (draws or waiting) and self.control_for(here) is None:
            tasks.append((("control", "control", 0, None), self.control_plan))
        return tasks + draws

    def _next_draw(self, source: str, run: int) -> tuple[int | None, list]:
        """The draw to train next for a bit-change run (None when there is none to train now), and its draws."""
        if self._has(source, run):
            return None, []
        history = self.judge(source, run)
        if self._has(source, run):
            return None, history
        if history and history[-1].get("pending"):
            return None, history  # judged once a control from its machine has been trained
        if len(history) > self.redraws:
            return None, history  # exhausted: every draw left the run bit-identical to the control
        return len(history), history

    def run(self, run_serially: Callable, run_parallel: Callable | None = None, progress: bool = True) -> None:
        """Trains wave after wave of tasks until none is left (each wave's results decide the next).

        Args:
            run_serially: `plan -> result`, one run in this process (the serial executor).
            run_parallel: `(tasks, on_done, progress_bar)`, runs the tasks elsewhere and
                hands each result to `on_done(label, result)`; None: run them serially.
            progress: Show a progress bar over each wave's runs (on a terminal).
        """
        from tqdm.auto import tqdm

        while True:
            tasks = self.tasks()
            if not tasks:
                return
            before = getattr(self.store, "before_compute", None)  # a ResultsStore's `reading_only` guard
            if callable(before):
                before(f"{len(tasks)} run(s) of {self.experiment!r}")
            # a transient bar: on a terminal only (in a log its redraws and cursor moves are noise)
            with tqdm(total=len(tasks), desc=f"{self.experiment} runs", leave=False,
                      disable=not progress or not sys.stderr.isatty()) as bar:
                if run_parallel is None:
                    self._run_serially(tasks, run_serially, bar)
                else:
                    run_parallel(tasks, self.on_done, bar)

    def _run_serially(self, tasks: list, run_one: Callable, bar) -> None:
        """Runs tasks in this process and restores its op-determinism setting afterwards."""
        from tf_dlthesis import runtime

        previous = runtime.is_deterministic()
        try:
            for label, plan in tasks:
                self.on_done(label, run_one(plan))
                bar.update(1)
        finally:
            runtime.configure(deterministic=previous)

    def bit_change_summary(self, source: str, run_ids: list) -> dict:
        """What the effectiveness check found for a bit-change source (`ProtocolResult.bit_changes`).

        Args:
            source: A pure bit-change source.
            run_ids: Its counted runs (`finished(source)[0]`).
        """
        runs = range(self.counts[source])
        draws = {r: self.draws(source, r) for r in runs}
        details = [{"run": r, **{k: h[k] for k in _DRAW_FIELDS}} for r, hs in draws.items() for h in hs
                   if not h.get("effective", True)]
        return {"runs": self.counts[source], "effective": len(run_ids), "replaced": len(details),
                "exhausted": [r for r in runs if r not in run_ids], "attempts": [len(draws[r]) for r in runs],
                "details": details}


def _threads_key(executor: str, threads_per_run) -> dict:
    """The thread count's part of a protocol's store config: `{}` for the default of one thread per run.

    The thread count changes a run's rounding as much as the machine does
    (`runtime.machine`), so runs trained with other counts never share a store key:
    not in one row, and a bit change is never judged against a control trained
    with another count. The ``"serial"`` executor runs in this process with its
    thread pools as they are (TF's default unless the caller set them): `None`.
    """
    threads = check_int("threads_per_run", threads_per_run, 1, allow_none=True)  # None: TF's default
    threads = None if executor == "serial" else threads
    return {} if threads == 1 else {"threads_per_run": threads}


def _kept_note(store) -> str:
    """What a failed protocol kept: the finished runs are in `store` (None: in memory, lost)."""
    if isinstance(store, _MemoryStore):
        return ("run_protocol: with store=None the runs that finished are lost with this error; pass "
                "store='runs.sqlite' to keep them and resume.")
    return ("run_protocol: every run that finished is kept in the store; calling run_protocol again with the "
            "same arguments resumes, training only the missing runs.")


def _check_start_method(start_method) -> None:
    """`start_method` must be None or one of this platform's multiprocessing start methods."""
    known = multiprocessing.get_all_start_methods()
    if start_method is not None and start_method not in known:
        raise ValueError(f"`start_method` must be None or one of {tuple(known)}. Received: "
                         f"start_method={start_method!r}")


def _default_workers() -> int:
    """The local pool's default size (`run_protocol`, `run_lm_protocol`): the usable cores
    (`runtime.usable_cores()`), at most 2."""
    from tf_dlthesis import runtime

    return min(2, runtime.usable_cores())


def _parallel_executor(executor, train_fn, threads, workers, start_method, ray_address) -> Callable | None:
    """`executor`'s `(tasks, on_done, progress)` runner; None for ``"serial"`` (runs in this process)."""
    if executor == "local":
        return lambda tasks, on_done, bar: _executor_local(tasks, train_fn, threads, workers, start_method,
                                                           on_done, bar)
    if executor == "ray":
        return lambda tasks, on_done, bar: _executor_ray(tasks, train_fn, threads, ray_address, on_done, bar)
    return None


def run_protocol(
    train_fn: Callable,
    *,
    sources: Sequence[str],
    runs,
    labels,
    store=None,
    executor: str = "local",
    experiment: str = "variability",
    config: Mapping | None = None,
    base_plan: SeedPlan | None = None,
    onset_epoch: int = 0,
    workers: int | None = None,
    threads_per_run: int | None = 1,
    start_method: str | None = None,
    ray_address: str | None = None,
    num_classes: int | None = None,
    bootstrap_samples: int = 1000,
    bit_change_redraws: int = 10,
    progress: bool = True,
) -> ProtocolResult:
    """Trains R models per nondeterminism source and returns the variability table.

    A bit change must take effect to count as a perturbation: a one-ULP change to
    a weight that only ever meets zero inputs, or one that rounding absorbs, can
    leave the run bit-identical to the unperturbed one. So for a pure
    ``"bit_change"`` source the protocol also trains the unperturbed control (the
    base plan) once per `config`, compares every bit-change run with it, and
    replaces a run whose test logits (or final weights, when `train_fn` reports
    `"weights_hash"`) are bit-identical to the control's by another bit position
    (`SeedPlan.redraw_bit_change`), up to `bit_change_redraws` times. Every
    ineffective draw is recorded and reported (`ProtocolResult.bit_changes`); a
    run whose every draw was ineffective is left out of the row, never counted.

    Example:

    >>> # def train(plan): ...build with seed=plan.init, shuffle with plan.epoch_seed("shuffle", e)...
    >>> # if __name__ == "__main__":   # required: each local worker imports the script again
    >>> #     result = run_protocol(train, sources=["init", "shuffle", "bit_change", "all"],
    >>> #                           runs=100, labels=y_test, store="ch5.sqlite")
    >>> # result.rows["init"]["accuracy_sd"], result.bit_changes["bit_change"]["replaced"]

    Args:
        train_fn: Picklable (module-level) function `train_fn(plan) -> logits`
            (N, C), or a dict with `"logits"` and optionally `"init_hash"`,
            `"order_hash"`, `"weights_hash"` (of the trained weights),
            `"variants"` ({name: (N, C) logits} of extra evaluations of the same
            model, e.g. TTA) and `"info"` (JSON-able).
        sources: Source names (`SOURCES`, `"all"`, `"a+b"` combinations).
        runs: R >= 2 runs per source, or a mapping source -> R.
        labels: (N,) integer test labels.
        store: A `tf_dlthesis.experiments.ResultsStore`, a path (str or
            `os.PathLike`) to open one on, anything with `has`/`get`/`record`
            (`get` returns None for a run not recorded, as `ResultsStore.get`), or
            `None` (results kept in memory: no resume).
        executor: `"local"` (process pool), `"ray"` or `"serial"`.
        experiment: Experiment key in the store.
        config: Extra JSON-able config identifying this protocol in the store
            (model, epochs, ...); the source and onset are added to it.
        base_plan: The plan all runs start from (`SeedPlan()` by default); also
            the unperturbed control of the bit-change check.
        onset_epoch: Fig. 5.2's onset of nondeterminism (per-epoch sources only).
        workers: Local pool size (default: the usable cores, `runtime.usable_cores()`, at most 2).
        threads_per_run: TF intra/inter-op threads per run (`None`: TF default).
            Part of the store key unless 1 (the default): the thread count
            changes the rounding, so runs with other counts are never mixed.
        start_method: Local executor start method: `"forkserver"` (default on
            POSIX: TF is imported once by the server) or `"spawn"`.
        ray_address: Passed to `ray.init(address=...)` (`None`: local Ray).
        num_classes: If given, checked against the logits' width.
        bootstrap_samples: Resamples for the "±" error bars.
        bit_change_redraws: How many times an ineffective bit change is redrawn
            at another position before the run is given up (>= 0).
        progress: Show a progress bar over runs (when stderr is a terminal).

    Returns:
        A `ProtocolResult`.

    Raises:
        ValueError: for an unknown or repeated source, an unknown executor or
            start method, runs < 2, workers or num_classes < 1, labels that are
            not (N,) integers (N >= 1) or lie outside [0, C) (negative labels, or
            labels >= `num_classes`, before any run trains), logits of the wrong
            shape or with NaNs, or runs of one source that return different
            `"variants"` or logits of different shapes.
        TypeError: for a `store` that is neither a results store, a path nor
            None, a `config` that is not a dict, or `workers`, `num_classes`
            or `threads_per_run` that is not an int.
        Exception: whatever `train_fn` raised, with a note naming the failed run
            (source, run index, seeds) and saying that the finished runs are
            kept in the store (Python >= 3.11).
        ImportError: for `executor="ray"` without Ray installed.
        RuntimeError: if a source that should stay fixed changed between runs, or
            with `executor="local"` when called from a script's top level outside
            `if __name__ == "__main__":` (each worker process would rerun the script).
    """
    sources = _source_list(sources)
    counts = _runs_per_source(runs, sources)
    if executor not in EXECUTORS:
        raise ValueError(f"`executor` must be one of {EXECUTORS}. Received: executor={executor!r}")
    if executor == "ray":
        try:
            importlib.import_module("ray")
        except ImportError as exc:
            raise ImportError(
                "executor='ray' needs Ray, which is not installed. Install the extra: pip install 'tf-dlthesis[ray]'"
            ) from exc
    check_int("bit_change_redraws", bit_change_redraws, 0)
    lab = np.asarray(labels)
    if lab.ndim != 1 or not np.issubdtype(lab.dtype, np.integer):
        raise ValueError(f"`labels` must be a 1-D integer array. Received: shape={lab.shape}, dtype={lab.dtype}")
    if lab.size == 0:
        raise ValueError(f"`labels` must hold at least one test example (the metrics compare runs on them). "
                         f"Received: labels of shape {lab.shape}")
    check_int("num_classes", num_classes, 1, allow_none=True)
    # checked before any run trains (the class count of the logits is checked again on each run)
    if lab.min() < 0 or (num_classes is not None and lab.max() >= num_classes):
        expected = ">= 0" if num_classes is None else f"in [0, {num_classes})"
        raise ValueError(f"`labels` must be class indices {expected}. Received: min={lab.min()}, max={lab.max()}")
    if config is not None and not isinstance(config, Mapping):
        raise TypeError(f"`config` must be a dict (JSON-able) or None. Received: config={config!r}")
    base_plan = SeedPlan() if base_plan is None else base_plan
    if not isinstance(base_plan, SeedPlan):
        raise TypeError(f"`base_plan` must be a SeedPlan. Received: {type(base_plan).__name__}")
    workers = _default_workers() if workers is None else check_int("workers", workers, 1)
    _check_start_method(start_method)
    store = _as_store(store)
    if executor == "local":
        _check_main_guard()
    config = {**dict(config or {}), **_threads_key(executor, threads_per_run)}
    layouts = {}  # source -> (run, layout) of its first run seen (`_check_same_layout`)

    def validate(result, source, run):
        _validate_run(result, lab, num_classes, source, run)
        _check_same_layout(layouts, result, source, run)

    scheduler = _Scheduler(
        store, experiment, sources, counts,
        key=lambda source: {**config, "source": source, "onset_epoch": int(onset_epoch)},
        control_key={**config, "source": "control", "onset_epoch": 0},
        plans={(s, r): base_plan.vary(s, r, onset_epoch=onset_epoch) for s in sources for r in range(counts[s])},
        # the bit-change runs' plan without the bit change (same op-determinism setting)
        control_plan=dataclasses.replace(base_plan, bit_change=None, onset_epoch=0, base=None, source="control",
                                         run=0),
        redraws=bit_change_redraws, ineffective=_ineffective,
        bit_change_of=lambda result: result.get("info:bit_change"), keep_replaced=True,
        validate=validate)
    try:
        scheduler.run(lambda plan: _run_one(train_fn, plan, None, global_seed=None),
                      _parallel_executor(executor, train_fn, threads_per_run, workers, start_method, ray_address),
                      progress)
    except Exception as exc:
        _add_note(exc, _kept_note(store))
        raise

    rows, logits, hashes, infos, bit_changes, machines = {}, {}, {}, {}, {}, {}
    control = scheduler.stored_control()
    for source in sources:
        run_ids, results = scheduler.finished(source)
        if source in scheduler.bit_sources:
            bit_changes[source] = scheduler.bit_change_summary(source, run_ids)
        stored_layouts = {}  # the runs as stored (some may come from an earlier call: a resume)
        for r, res in zip(run_ids, results):
            _validate_run(res, lab, num_classes, source, r)
            _check_same_layout(stored_layouts, res, source, r)
        hashes[source] = [(res.get("init_hash"), res.get("order_hash")) for res in results]
        machines[source] = [res.get("machine") for res in results]
        infos[source] = [{k[len("info:"):]: v for k, v in res.items() if k.startswith("info:")} for res in results]
        if len(results) < 2:  # only possible for a bit-change source whose draws never took effect
            continue
        names = ["logits"] + sorted(k for k in results[0] if k.startswith(_VARIANT_PREFIX))
        for name in names:
            row = source if name == "logits" else f"{source}/{name[len(_VARIANT_PREFIX):]}"
            stack = np.stack([np.asarray(res[name]) for res in results])
            logits[row] = stack
            rows[row] = variability_metrics(stack, lab, bootstrap_samples=bootstrap_samples)
    control_hashes = None if control is None else (control.get("init_hash"), control.get("order_hash"))
    _check_controls(hashes, int(onset_epoch), control_hashes)
    return ProtocolResult(rows=rows, logits=logits, hashes=hashes, labels=lab, info=infos, bit_changes=bit_changes,
                          control_logits=None if control is None else np.asarray(control["logits"]),
                          machines=machines,
                          control_logits_by_machine={m: np.asarray(c["logits"]) for m, c in scheduler.controls(
                              [m for ms in machines.values() for m in ms]).items()})
