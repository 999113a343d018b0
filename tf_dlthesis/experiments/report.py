"""Runs registered experiments and writes the Markdown report."""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import datetime
import functools
import math
import os
import pickle
import shutil
import signal
import sys
import tempfile
import threading
import time
import traceback
from concurrent.futures.process import BrokenProcessPool

from tf_dlthesis._checks import check_int
from tf_dlthesis.experiments.registry import DEFAULT_DATASETS, VERDICTS, Output, fmt, select


def _cell(text) -> str:
    """Table-cell text: a literal `|` would end the cell, a line break (`\\n`, `\\r\\n` or `\\r`) the row."""
    return str(text).replace("|", "\\|").replace("\r\n", " ").replace("\r", " ").replace("\n", " ")


def _table_md(table) -> list:
    thesis = table.thesis or {}
    # a "(thesis)" column only where the thesis reports that metric
    with_thesis = {col for col in table.columns if any(col in row for row in thesis.values())}
    header = ["row"]
    for col in table.columns:
        header += ([f"{col} (thesis)"] if col in with_thesis else []) + [f"{col} (ours)" if col in with_thesis else col]
    lines = [
        f"**Table {table.id}: {table.title}**",
        "",
        f"- ours: {table.setting}",
    ]
    if thesis or table.thesis_setting:  # a table without thesis rows may still state the thesis's numbers in words
        lines.append(f"- thesis: {table.thesis_setting}")
    lines += ["", "| " + " | ".join(_cell(h) for h in header) + " |", "|" + "---|" * len(header)]
    keys = list(table.rows) + [k for k in thesis if k not in table.rows]
    for key in keys:
        ours = table.rows.get(key, {})
        theirs = thesis.get(key, {})
        cells = [str(key)]
        for col in table.columns:
            if col in with_thesis:
                cells.append(fmt(theirs.get(col)))
            cells.append(fmt(ours.get(col)))
        lines.append("| " + " | ".join(_cell(c) for c in cells) + " |")
    return lines + [""]


def save_figures(output: Output, out_dir) -> list:
    """Saves an output's figures as `out_dir/figures/<name>.png` and closes them."""
    import matplotlib.pyplot as plt

    fig_dir = os.path.join(out_dir, "figures")
    os.makedirs(fig_dir, exist_ok=True)
    paths = []
    for name, figure in output.figures:
        path = os.path.join(fig_dir, f"{name}.png")
        figure.savefig(path, dpi=110, bbox_inches="tight")
        plt.close(figure)
        paths.append(path)
    return paths


def _shared_figure_error(name: str, first: str, second: str) -> ValueError:
    return ValueError(f"Items {first!r} and {second!r} both return a figure named {name!r} (saved as "
                      f"figures/{name}.png and linked from both sections). Give each figure its own name.")


def _check_figure_names(sections) -> None:
    """A ValueError when two sections' outputs (failed ones aside) hold a figure of one name: the later
    one's PNG would overwrite the earlier's (or, present already, be taken for it)."""
    owners: dict = {}
    for exp, output, _, error in sections:
        for name, _ in (output.figures if output is not None and not error else ()):
            if owners.setdefault(name, exp.id) != exp.id:
                raise _shared_figure_error(name, owners[name], exp.id)


def _claim_figures(output: Output, item: str, claims) -> None:
    """Claims `output`'s figure names for `item` in folder `claims`: a file per name holding the id of the
    item that claimed it, linked into place whole (the items of one `reproduce` may run in several
    processes at once, so the first to link a name owns it).

    Raises:
        ValueError: another item claimed one of the names (naming both items and the figure); then this
            call claims none of them, so nothing of the earlier item's is overwritten.
    """
    mine = os.path.join(claims, f".{os.getpid()}-{threading.get_ident()}.tmp")
    with open(mine, "w") as fh:
        fh.write(item)
    made = []
    try:
        for name, _ in output.figures:
            path = os.path.join(claims, name)
            try:
                os.link(mine, path)  # atomic, and fails where the name is claimed
            except FileExistsError:
                with open(path) as fh:
                    owner = fh.read()
                if owner != item:
                    raise _shared_figure_error(name, owner, item) from None
                continue
            made.append(path)
    except BaseException:
        for path in made:
            os.remove(path)
        raise
    finally:
        os.remove(mine)


#: The store's experiment name for the compute time of a `reproduce` item (one run per
#: process that trained or evaluated part of it), so resumed runs keep their times.
ITEM_SECONDS = "reproduce.item_seconds"


def _item_key(scale, dataset, exp) -> dict:
    return {"scale": scale, "dataset": dataset or DEFAULT_DATASETS[scale], "item": exp.id}


def _recorded(store, key) -> tuple:
    """`(total seconds, number of rows)` recorded under `ITEM_SECONDS` for `key`."""
    total, run = 0.0, 0
    while (row := store.get(ITEM_SECONDS, key, run)) is not None:
        total, run = total + float(row["seconds"]), run + 1
    return total, run


def item_seconds(store, scale: str, dataset, exp) -> float:
    """The compute seconds recorded in `store` for item `exp` (0 if none)."""
    return _recorded(store, _item_key(scale, dataset, exp))[0]


def record_item_seconds(store, scale: str, dataset, exp, seconds: float) -> float:
    """Adds one process's compute `seconds` for item `exp` to `store`; returns the item's total.

    Each process's share is its own row (a recorded row never changes, so an
    exported archive only grows), and the total is their sum.
    """
    if isinstance(seconds, bool) or not isinstance(seconds, (int, float)) or not 0 <= seconds < math.inf:
        raise ValueError(f"`seconds` must be a finite number >= 0. Received: seconds={seconds!r}")
    key = _item_key(scale, dataset, exp)
    total, run = _recorded(store, key)
    store.record(ITEM_SECONDS, key, run, {"seconds": float(seconds)})
    return total + float(seconds)


def _machine_line() -> str:
    """The report's line naming the machine that wrote it (`runtime.machine`)."""
    from tf_dlthesis import runtime

    m = runtime.machine()
    gpus = f", GPUs: {', '.join(m['gpus'])}" if m["gpus"] else ""
    cache = f", cache size {m['cache']}" if m["cache"] else ""
    return (f"Written on: {m['cpu']}, {m['cores']} cores{cache}{gpus}, TensorFlow {m['tensorflow']}, vector "
            f"extensions {m['isa'] or 'unknown'} (machine id {m['id']}). TensorFlow's CPU kernels follow the "
            f"instruction set, the core count and the cache sizes, so rerunning an item (`--only`) gives its "
            f"numbers bit for bit on a machine like the one that trained its runs, not necessarily on another. "
            f"This line names the machine that wrote the report: the runs of a resumed run, or of one read back "
            f"from a store or archive, may have been trained elsewhere. Each section names the machines that "
            f"computed its stored results (trained runs record their machine since 2026-12-04, every stored "
            f"result since 2026-12-05).")


def _only_machine(machines: dict):
    """The one recorded machine behind a section's stored results, or None (several, unrecorded or none)."""
    return next(iter(machines)) if len(machines) == 1 and None not in machines else None


def _provenance_summary(outputs) -> str:
    """The header's count of sections by where their stored results come from (`Output.machines`)."""
    kinds = collections.Counter()
    for machines in (o.machines for o in outputs):
        if not machines:
            kinds["stored nothing"] += 1
        elif None in machines:
            kinds["used results from unrecorded machines"] += 1
        elif _only_machine(machines) is None:
            kinds["used results from several recorded machines"] += 1
        else:
            kinds[f"used results all computed on machine {_only_machine(machines)} (an `--only` rerun on a "
                  f"machine with that id reproduces them bit for bit)"] += 1
    return (f"Provenance of the {len(outputs)} sections (each has its own line): "
            + ", ".join(f"{n} {kind}" for kind, n in sorted(kinds.items(), key=lambda kn: (-kn[1], kn[0])))
            + ".")


def _provenance_line(item: str, machines: dict) -> str:
    """A section's line naming the machines that computed its stored results (`Output.machines`).

    It names machines, not counts: how many stored results an item touches depends on
    whether it computed them (a fresh run records an evaluation's per-batch rows too)
    or read them back, and a rebuilt report must read as the fresh one did.
    """
    if not machines:
        return "Provenance: no stored results; everything here was computed by the run that wrote this report."
    known = sorted(m for m in machines if m is not None)
    where = [f"machine {m}" for m in known] + (["unrecorded machines (stored before machines were recorded)"]
                                               if None in machines else [])
    line = ("Provenance: its stored results (trained runs and evaluations) were "
            + ("all computed on " + where[0] if len(where) == 1 else
               "computed on " + ", ".join(where[:-1]) + " and " + where[-1]))
    if _only_machine(machines) is not None:
        return line + f". `--only {item}` reproduces this section bit for bit on a machine with id {known[0]}."
    return line + (f". `--only {item}` in a fresh folder recomputes them all on one machine, so it can match this "
                   f"section bit for bit only where every one of them was computed on a machine like it.")


def write_report(sections, out_dir, *, scale: str, dataset: str, total_seconds: float, absent=()) -> str:
    """Writes `report.md` (and figure PNGs under `figures/`) into `out_dir`.

    Args:
        sections: list of `(experiment, Output or None, seconds, error text or None)`;
            `seconds` is the item's compute time (`reproduce`: summed over the
            processes that computed part of it, so a resumed item keeps its time).
        total_seconds: this process's wall time.
        absent: ids of registered items this report does not cover (named in its header,
            so a partial report never reads as a complete one).

    Returns:
        The report path.

    Raises:
        ValueError: two sections hold a figure of one name (raised before anything is written).
    """
    _check_figure_names(sections)
    fig_dir = os.path.join(out_dir, "figures")
    os.makedirs(fig_dir, exist_ok=True)
    verdicts = {}
    n_checks, failed = 0, []
    for exp, output, _, _ in sections:
        for finding in (output.findings if output else []):
            verdicts[finding.verdict] = verdicts.get(finding.verdict, 0) + 1
        for check in (output.checks if output else []):
            n_checks += 1
            if not check.passed:
                failed.append(f"{exp.id}: {check.name}")
    n_failed = len(failed)
    compute = sum(seconds for _, _, seconds, _ in sections)
    lines = [
        "# tf_dlthesis reproduction report",
        "",
        f"Scale `{scale}`, dataset `{dataset or DEFAULT_DATASETS[scale]}`; generated {datetime.datetime.now().isoformat(timespec='seconds')} "
        f"in {total_seconds / 60:.1f} min"
        + (f" (the items' compute time, summed over the processes that ran them side by side or in earlier "
           f"runs that this one resumed: {compute / 60:.1f} min)" if compute > total_seconds + 60 else "")
        + ". Thesis numbers come from `thesis_tables.json`; "
        "verdicts are computed from the numbers below.",
        "",
        _machine_line(),
        "",
        "Verdicts: " + (", ".join(f"{v}: {verdicts[v]}" for v in VERDICTS if v in verdicts) or "none"),
        "",
        "Each finding names its statistic and shows the effect with its 95% interval. A finding is "
        "*reproduced* only when the whole interval lies in the region the thesis claims, *not reproduced* "
        "when the whole interval lies outside it, and *inconclusive* otherwise; *not comparable* findings "
        "say why this scale cannot test them.",
        "",
        f"Regime and health checks: {n_checks - n_failed} of {n_checks} passed"
        + (f" (failed: {', '.join(failed)})" if failed else "") + ".",
        "",
        _provenance_summary([output for _, output, _, error in sections if not error]),
        "",
    ]
    if absent:
        lines += [f"**Partial report: {len(sections)} of {len(sections) + len(absent)} registered items.** Not in "
                  f"this report: {', '.join(absent)}.", ""]
    lines += [
        "| id | title | time (s) | status |",
        "|---|---|---|---|",
    ]
    for exp, output, seconds, error in sections:
        status = "failed" if error else "ok"
        lines.append(f"| {_cell(exp.id)} | {_cell(exp.title)} | {seconds:.0f} | {status} |")
    lines.append("")
    for exp, output, seconds, error in sections:
        lines += [f"## {exp.id}: {exp.title}", ""]
        if error:
            lines += ["Failed:", "", "```", error.strip(), "```", ""]
            continue
        lines += [_provenance_line(exp.id, output.machines), ""]
        def ensure_figure(name, output=output):
            if not os.path.exists(os.path.join(fig_dir, f"{name}.png")):
                save_figures(output, out_dir)

        lines += _output_lines(output, ensure_figure)
    path = os.path.join(out_dir, "report.md")
    tmp = path + ".tmp"
    with open(tmp, "w") as fh:
        fh.write("\n".join(lines) + "\n")
    os.replace(tmp, path)
    return path


@contextlib.contextmanager
def _sigterm_as_interrupt():
    """Within: SIGTERM (`kill PID`, a batch system's stop) raises KeyboardInterrupt, as Ctrl-C does.

    Only in the main thread (the only one Python delivers signals to); the previous
    handler comes back on exit.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def stop(signum, frame):
        raise KeyboardInterrupt(f"stopped by signal {signum}")

    previous = signal.signal(signal.SIGTERM, stop)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous if previous is not None else signal.SIG_DFL)


class _TrimmedStack(traceback.StackSummary):
    """A stack of a failed item's traceback with its middle frames left out (`_error_text`)."""

    def __init__(self, frames, head: int, tail: int):
        super().__init__(frames)
        self._head, self._tail = head, tail

    def format(self, **kwargs):  # (Python 3.13's traceback passes `colorize=`)
        frames = list(self)
        omitted = len(frames) - self._head - self._tail
        return (traceback.StackSummary.from_list(frames[:self._head]).format(**kwargs)
                + [f"  ... {omitted} frame(s) omitted ...\n"]
                + traceback.StackSummary.from_list(frames[-self._tail:]).format(**kwargs))


def _error_text(head: int = 4, tail: int = 8) -> str:
    """The exception being handled, as the report shows a failed item: of each traceback in its chain
    the outermost `head` frames (the item's own code) and the innermost `tail` (where it was raised).

    `traceback.format_exc(limit=8)`, used before, kept only the outermost 8 frames, so an error
    raised deeper (in training code, say) lost the very line that raised it.
    """
    exc = sys.exc_info()[1]
    te = traceback.TracebackException.from_exception(exc)
    seen, todo = set(), [te]
    while todo:
        t = todo.pop()
        if t is None or id(t) in seen:
            continue
        seen.add(id(t))
        if len(t.stack) > head + tail + 1:
            t.stack = _TrimmedStack(t.stack, head, tail)
        todo += [t.__cause__, t.__context__] + list(getattr(t, "exceptions", None) or [])
    return "".join(te.format())


def _output_lines(output, ensure_figure=None) -> list:
    """The Markdown of an item's output: tables, figure links, checks, findings, notes.

    Args:
        output: The item's `Output`.
        ensure_figure: Called with each figure's name before its link (`write_report`
            saves a figure whose PNG is missing); None: nothing is written.
    """
    lines = []
    for table in output.tables:
        lines += _table_md(table)
    for name, figure in output.figures:
        if ensure_figure is not None:
            ensure_figure(name)
        lines += [f"![{name}](figures/{name}.png)", ""]
    if output.checks:
        lines += ["| regime / health check | status | measured |", "|---|---|---|"]
        for c in output.checks:
            lines.append(f"| {_cell(c.name)} | {'ok' if c.passed else '**FAILED**'} | {_cell(c.detail)} |")
        lines.append("")
    if output.findings:
        lines += ["| finding | statistic | effect [95% CI] | claimed | verdict | evidence |",
                  "|---|---|---|---|---|---|"]
        for f in output.findings:
            effect = f.effect.text() if f.effect is not None else "—"
            statistic = f.effect.statistic if f.effect is not None else "—"
            lines.append(f"| {_cell(f.claim)} | {_cell(statistic)} | {effect} | {f.region or '—'} | "
                         f"**{f.verdict}** | {_cell(f.evidence)} |")
        lines.append("")
    for note in output.notes:
        lines += [note, ""]
    return lines


def _compute_item(exp, store, *, scale, dataset, out_dir, tensorboard, data_dir, figure_claims=None,
                  warn=print) -> tuple:
    """Runs one item in this process: `(Output or None, compute seconds, error text or None)`.

    Every item starts from the same global state (`runtime.configure(seed=0,
    deterministic=True)`), so its numbers do not depend on what ran before it or
    where. Its figures are saved under `out_dir/figures`. Its compute time is
    recorded in `store` when it trained or evaluated something: this process's share
    is one `ITEM_SECONDS` row, rewritten after every run the item records (the time
    up to that run) and once more when the item finishes. So an item stopped
    part-way, by Ctrl-C, SIGTERM, a hard kill or an error, keeps its time up to its
    last finished run: the runs cut short are trained again by the resuming process,
    so their time is not the item's cost; the finished ones are read back, so theirs is. An item
    read back entirely shows its recorded time. An item that raises is returned with
    its error (the others must still run); KeyboardInterrupt propagates. With `figure_claims` (the
    folder of a `reproduce` run's figure names, `_claim_figures`), an item returning a figure of a name
    that another item of the run returned fails before its figures are saved.
    """
    from tf_dlthesis import runtime
    from tf_dlthesis.experiments.training import data_dir as data_dir_context

    runtime.configure(seed=0, deterministic=True)
    key = _item_key(scale, dataset, exp)
    share = _recorded(store, key)[1]  # this process's row of the item's time
    t0, held = time.time(), store.recorded

    def keep_time(row_key) -> None:  # after each finished run of the item
        if row_key[0] != ITEM_SECONDS:
            store.record(ITEM_SECONDS, key, share, {"seconds": store.last_recorded - t0})

    with store.after_record(keep_time):
        try:
            with data_dir_context(data_dir):
                output, error = exp(scale, dataset, store, out=out_dir, tensorboard=tensorboard), None
            _output_lines(output)  # an output the report cannot show fails its item here, not the report
            if figure_claims is not None:  # a name another item's PNG holds fails this item, not the report
                _claim_figures(output, exp.id, figure_claims)
            save_figures(output, out_dir)
        except Exception:  # keep going: one failure must not lose the others' results
            output, error = None, _error_text()
            warn(f"[{exp.id}] failed: {error.strip().splitlines()[-1]}")
    seconds = time.time() - t0
    if error is None and store.recorded > held:
        store.record(ITEM_SECONDS, key, share, {"seconds": seconds})
    if error is None:  # trained, or read back: its recorded time
        seconds = item_seconds(store, scale, dataset, exp) or seconds
    return output, seconds, error


def _group_in_worker(item_ids, send, *, modules, store_path, **kwargs) -> None:
    """`_compute_item` for each item of a group, in report order, in one pool task (a fresh
    process per group). Each item's `(id, Output or None, seconds, error or None)` goes to
    `send` as it finishes, so the parent reports it at once.

    The figures are already saved; the parent gets their names (a closed matplotlib
    figure need not cross the process boundary). SIGTERM (the parent ending the pool
    at a stop) acts as Ctrl-C does, so the running item keeps its finished runs' time.
    """
    import importlib

    from tf_dlthesis.experiments import registry
    from tf_dlthesis.experiments.results_store import ResultsStore

    for module in modules:  # where items outside the package were registered
        importlib.import_module(module)
    store = ResultsStore(store_path)
    with _sigterm_as_interrupt():
        for item_id in item_ids:
            output, seconds, error = _compute_item(registry.get(item_id), store, warn=_stderr_line, **kwargs)
            if output is not None:
                output = dataclasses.replace(output, figures=[(name, None) for name, _ in output.figures])
                try:
                    pickle.dumps(output)
                except Exception:  # its runs are stored; report the item as failed rather than lose the others
                    output, error = None, traceback.format_exc(limit=4)
                    _stderr_line(f"[{item_id}] failed: its output cannot be sent back from its process: "
                                 f"{error.strip().splitlines()[-1]}")
            send((item_id, output, seconds, error))


def _stderr_line(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def _chapters(experiments) -> dict:
    """The items grouped by the module that registered them (a chapter), in report order.

    A chapter's items share trained models (2.2 and 2.3 read 2.1's runs, 3.2 attacks
    3.1's, 5.3 reads 5.1's), so `reproduce(jobs=N)` runs each chapter in one process,
    in report order, and nothing is trained twice.
    """
    chapters: dict = {}
    for exp in experiments:
        chapters.setdefault(exp.fn.__module__, []).append(exp)
    return chapters


def auto_jobs(scale: str) -> int:
    """`reproduce(jobs="auto")`: how many chapters run side by side, by scale and core count.

    At the quick scale, one more than the cores. Its models are small, so a chapter
    running in one process keeps only ~1.2 of 2 cores busy, and an extra chapter
    uses the idle time. On 2 cores that is 3: Chapter 5's two one-thread workers
    beside one more chapter. Measured on a 2-core AMD EPYC without AVX-512: 20.4
    min against 25.4 min serially, with byte-identical sections and figures
    (README, "Quick scale"). At the standard and full scales, 1: their models keep
    the cores busy, and chapters side by side were not measured there.
    """
    if scale != "quick":
        return 1
    from tf_dlthesis import runtime

    return runtime.usable_cores() + 1  # the cores this process may use (a container's share)


def _jobs(jobs, scale: str) -> int:
    if jobs == "auto":
        return auto_jobs(scale)
    return check_int("jobs", jobs, 1, why="processes running chapters side by side, or 'auto'")


def _check_out_dir(out_dir, name: str = "out_dir") -> None:
    """`out_dir` must be a non-empty path that is not an existing file (raised before anything is created)."""
    if not isinstance(out_dir, (str, os.PathLike)) or not os.fspath(out_dir):
        raise ValueError(f"`{name}` must be a non-empty folder path. Received: {name}={out_dir!r}")
    if os.path.exists(out_dir) and not os.path.isdir(out_dir):
        raise ValueError(f"`{name}` must be a folder, but {os.fspath(out_dir)!r} is a file. Received: "
                         f"{name}={out_dir!r}")


@contextlib.contextmanager
def _run_lock(out_dir):
    """Holds `out_dir/.tf-dlthesis.lock` for the run: a second `reproduce` on the folder is refused.

    Two processes on one folder would both count their time as the item's first share,
    one replacing the other's. (POSIX `flock`; no lock where it is missing.)
    """
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows
        yield
        return
    fd = os.open(os.path.join(out_dir, ".tf-dlthesis.lock"), os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            raise ValueError(f"Another `reproduce` is writing into {os.fspath(out_dir)!r}: wait for it, or use "
                             "another output folder (`--out`).") from None
        yield
    finally:
        os.close(fd)


def _selected(scale: str, only) -> list:
    """The items `only` names (None: all) at a known `scale`; a ValueError otherwise."""
    if scale not in DEFAULT_DATASETS:
        raise ValueError(f"`scale` must be one of {tuple(DEFAULT_DATASETS)}. Received: scale={scale!r}")
    experiments = select(only)
    if not experiments:
        raise ValueError(f"`only` must name at least one table or figure id (e.g. ['2.1', 'fig4.1']), or be None "
                         f"for all. Received: only={only!r}")
    return experiments


def reproduce(*, scale: str = "quick", dataset: str | None = None, out_dir="tf-dlthesis-out", only=None,
              tensorboard=None, progress: bool = True, data_dir=None, archive=None, jobs: int = 1):
    """Runs every registered table/figure and writes the report.

    Finished training runs are recorded in `out_dir/results.sqlite`, so a rerun
    (after an interruption, say) skips them. An experiment that raises is reported
    as failed and the others still run; so is one returning a figure of a name that
    another item of the run returned (`figures/<name>.png` is the first one's).

    With `archive` (a folder), the runs it holds are read into the store first and
    every finished run is written to it after each item (`ResultsStore.export_rows`:
    one small file per run), so a long run can be committed to git part-way and
    resumed on a fresh machine.

    With `jobs` > 1, the chapters run side by side, up to `jobs` processes at once:
    each chapter's items (which share trained models; Appendix A's go with Chapter 4,
    Appendix B's with Chapter 5: one module each) run in report order in a fresh
    process of their own, the longest chapter first, and a Chapter 5 item, which
    trains in 2 worker processes of its own, counts as 2 (`Experiment.workers`). The
    numbers are the same as with `jobs=1`: every item starts from the same state and
    no item depends on which ran before it. The report and the archive are updated
    as each item finishes, whichever process ran it. `jobs="auto"` (the command
    line's default) is `auto_jobs(scale)`: at the quick scale one more than the
    cores, so on 2 cores Chapter 5's two workers run beside one more chapter
    (20.4 min against 25.4 serially on a 2-core AVX2-only machine); `jobs=2` does
    not pay on 2 cores (Chapter 5 takes both slots and runs alone).

    Each item's time in the report is its compute time: the seconds of every
    process that trained or evaluated part of it, recorded in the store (and so in
    the archive) under `ITEM_SECONDS`. An item read back entirely from the store
    shows its recorded time. With `jobs` > 1 the items share the cores, so each
    one's time is longer than it would be alone.

    Stopping a run (Ctrl-C, or SIGTERM from `kill` or a batch system) keeps its work:
    the running items' finished runs stay in the store, their compute time up to
    their last finished run is recorded, the archive (if any) is written, running
    training workers are ended, and KeyboardInterrupt propagates. The report on disk
    is the one written after the last finished item. Rerunning the same call resumes.

    Returns:
        `(report_path, number_of_failed_experiments)`.

    `only`: ids in a list, or one string of comma-separated ids (as `--only`); None: every item.

    Raises:
        ValueError: `jobs` is not an int >= 1 or "auto", an unknown `scale`, an unknown id in
            `only` or an `only` that names none, an `out_dir` or `archive` that is a file or
            not a path (all raised before anything is created), or another `reproduce`
            writing into `out_dir` (refused once the folder exists).
    """
    jobs = _jobs(jobs, scale)
    experiments = _selected(scale, only)
    _check_out_dir(out_dir)
    if archive is not None:
        _check_out_dir(archive, "archive")
    chosen = {exp.id for exp in experiments}
    absent = [exp.id for exp in select() if exp.id not in chosen]
    os.makedirs(out_dir, exist_ok=True)
    with _run_lock(out_dir):
        return _reproduce(experiments, absent, scale, dataset, out_dir, archive, jobs, tensorboard, data_dir,
                          progress)


def _reproduce(experiments, absent, scale, dataset, out_dir, archive, jobs, tensorboard, data_dir, progress):
    """`reproduce` once its arguments are checked and its output folder is locked."""
    from tf_dlthesis.experiments.results_store import ResultsStore

    store = ResultsStore(os.path.join(out_dir, "results.sqlite"))
    if archive is not None and os.path.isdir(archive):
        store.import_rows(archive)
    start = time.time()
    from tqdm.auto import tqdm

    # Off a terminal (logs, CI, pipes) no bar: each finished item gets a line of its own instead,
    # so a log shows how far a run got.
    interactive = sys.stderr.isatty()
    bar = tqdm(total=len(experiments), desc="reproduce", unit="item", disable=not (progress and interactive),
               mininterval=0.1)
    done: dict = {}  # id -> (Output, seconds, error)

    def finished(exp_id, result) -> None:
        done[exp_id] = result
        bar.update(1)
        if progress and not interactive:
            _, seconds, error = result
            _stderr_line(f"[{len(done)}/{len(experiments)}] {exp_id} {'failed' if error else 'done'} "
                         f"({seconds:.0f} s)")  # not bar.write, which would print the bar around it
        if archive is not None:
            store.export_rows(archive)
        sections = [(exp, *done[exp.id]) for exp in experiments if exp.id in done]
        write_report(sections, out_dir, scale=scale, dataset=dataset, total_seconds=time.time() - start,
                     absent=absent + [exp.id for exp in experiments if exp.id not in done])

    claims = tempfile.mkdtemp(prefix="tf-dlthesis-figures-")  # this run's figure names, by item
    run = dict(scale=scale, dataset=dataset, out_dir=out_dir, tensorboard=tensorboard, data_dir=data_dir,
               figure_claims=claims)
    chapters = _chapters(experiments)
    try:
        with _sigterm_as_interrupt():
            if jobs == 1 or len(chapters) == 1:
                for exp in experiments:
                    bar.set_postfix_str(f"{exp.id}: {exp.title[:40]}", refresh=interactive)
                    finished(exp.id, _compute_item(exp, store, warn=bar.write, **run))
            else:
                from tf_dlthesis.variability.protocol import _process_pool

                def item_done(_, message):
                    item_id, *result = message
                    finished(item_id, tuple(result))

                def cost(group):  # its recorded time at this scale, else its declared quick-scale minutes
                    return sum(item_seconds(store, scale, dataset, exp) or 60.0 * exp.quick_minutes for exp in group)

                groups = dict(enumerate(sorted(chapters.values(), key=cost, reverse=True)))  # the longest first
                modules = sorted(set(chapters) - {"__main__", "__mp_main__"})
                job = functools.partial(_group_in_worker, modules=modules, store_path=store.path, **run)
                try:
                    _process_pool([(i, [exp.id for exp in group]) for i, group in groups.items()], job,
                                  jobs, None, lambda *_: None, None, preload=modules, join_on_stop=True,
                                  slots=lambda i: max(exp.workers for exp in groups[i]), on_message=item_done)
                except BrokenProcessPool:
                    running = [exp.id for exp in experiments if exp.id not in done]
                    raise RuntimeError(
                        f"A reproduce worker process died (killed, or out of memory) while running one of "
                        f"{', '.join(running)}. Finished runs are kept in {store.path}; run the same call again "
                        f"to resume (with fewer `jobs` if memory is short).") from None
    except KeyboardInterrupt:  # Ctrl-C or SIGTERM: the stopped items kept their runs and times; archive them
        if archive is not None:
            store.export_rows(archive)
        raise
    finally:
        bar.close()
        shutil.rmtree(claims, ignore_errors=True)
    sections = [(exp, *done[exp.id]) for exp in experiments]
    path = write_report(sections, out_dir, scale=scale, dataset=dataset, total_seconds=time.time() - start,
                        absent=absent)
    return path, sum(1 for s in sections if s[3])


def archive_reads(archive, *, scale: str = "standard", dataset: str | None = None, only=None, data_dir=None) -> dict:
    """Which files of an `export_rows` archive a rebuild of the report reads, and which none does.

    Rebuilds the items (every one, or `only`) in this process from a temporary copy of the
    archive, as `reproduce(archive=...)` would, but computing nothing the archive lacks
    (`ResultsStore.reading_only`), and tracks the rows each item reads
    (`ResultsStore.provenance`). The archive is not changed. Rows that no item reads are
    left from earlier settings (a run no item asks for any more, or a retrain's replaced
    draws): after a pass over every item, removing them changes no section or figure of the
    report. With `only`, "unread" also lists the other items' rows. Item times
    (`ITEM_SECONDS`) count as read.

    Example (prune an archive; a pass over every item rebuilds the whole report: minutes):

    >>> found = archive_reads("docs/standard-report/store", scale="standard")  # doctest: +SKIP
    >>> for name in found["unread"]:  # doctest: +SKIP
    ...     os.remove(os.path.join("docs/standard-report/store", name))

    Returns:
        `{"read": [...], "unread": [...]}`: sorted file names relative to `archive`.

    Raises:
        ValueError: `archive` is not a folder or holds a file `export_rows` did not write, an
            unknown `scale` or id in `only`, or an item needs a run the archive lacks or fails
            (the item is named).
    """
    from tf_dlthesis import runtime
    from tf_dlthesis.experiments.results_store import NotStoredError, ResultsStore
    from tf_dlthesis.experiments.training import data_dir as data_dir_context

    if not isinstance(archive, (str, os.PathLike)) or not os.path.isdir(archive):
        raise ValueError(f"`archive` must be a folder written by `export_rows`. Received: archive={archive!r}")
    experiments = _selected(scale, only)
    read = set()
    with tempfile.TemporaryDirectory() as tmp:
        store = ResultsStore(os.path.join(tmp, "results.sqlite"))
        store.import_rows(archive)
        with store.reading_only(), data_dir_context(data_dir):
            for exp in experiments:
                runtime.configure(seed=0, deterministic=True)  # as `_compute_item`
                with store.provenance() as seen:
                    try:
                        exp(scale, dataset, store, out=tmp)
                    except NotStoredError as err:
                        raise ValueError(f"Item {exp.id} reads a run that the archive {os.fspath(archive)!r} lacks "
                                         f"({err}) Run `reproduce(archive=...)` to complete it first.") from None
                    except Exception as err:
                        raise ValueError(f"Item {exp.id} failed while rebuilding from {os.fspath(archive)!r}: "
                                         f"{type(err).__name__}: {err}") from err
                read.update(ResultsStore._archive_name(*key) for key in seen)
    times = os.path.dirname(ResultsStore._archive_name(ITEM_SECONDS, "", 0))
    names = sorted(os.path.relpath(os.path.join(root, name), archive) for root, _, files in os.walk(archive)
                   for name in files if name.endswith(".json.gz"))
    return {"read": [n for n in names if n in read or os.path.dirname(n) == times],
            "unread": [n for n in names if n not in read and os.path.dirname(n) != times]}


__all__ = ["ITEM_SECONDS", "Output", "archive_reads", "auto_jobs", "item_seconds", "record_item_seconds", "reproduce",
           "save_figures", "write_report"]
