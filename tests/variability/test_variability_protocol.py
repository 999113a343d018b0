"""The R-run protocol: store/resume, controls, executors, kill -9 + resume (Thesis Sec. 5.3.1)."""

import functools
import importlib.util
import multiprocessing
import os
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest

from tf_dlthesis.experiments import ResultsStore, TrainSpec
from tf_dlthesis.experiments.chapter5 import protocol_run
from tf_dlthesis.variability import SeedPlan, run_protocol, variability_metrics

N, C = 30, 4
LABELS = np.arange(N) % C
CALLS = []


def toy_train(plan, nan=False, leak=False, width=C):
    """NumPy stand-in for training: logits depend on the init and shuffle seeds only."""
    CALLS.append((plan.source, plan.run))
    base = np.eye(C)[LABELS] * 2.0
    noise = np.random.default_rng([plan.init, plan.shuffle]).normal(size=(N, C))
    logits = (base + noise)[:, :width]
    if nan:
        logits[0, 0] = np.nan
    return {
        "logits": logits,
        "variants": {"smooth": base + 0.5 * noise},
        "init_hash": str(plan.init if not leak else plan.run),
        "order_hash": str(plan.shuffle),
    }


def test_serial_protocol_metrics_store_and_resume(tmp_path):
    store = ResultsStore(tmp_path / "r.sqlite")
    CALLS.clear()
    res = run_protocol(toy_train, sources=["init", "shuffle", "augment"], runs=3, labels=LABELS, store=store, executor="serial", progress=False)
    assert len(CALLS) == 9
    assert set(res.rows) == {"init", "shuffle", "augment", "init/smooth", "shuffle/smooth", "augment/smooth"}
    assert res.logits["init"].shape == (3, N, C)
    expected = variability_metrics(res.logits["init"], LABELS)
    assert res.rows["init"] == expected
    # augment does not reach the toy's logits: zero variability, identical runs
    assert res.rows["augment"]["accuracy_sd"] == 0 and res.rows["augment"]["disagreement"] == 0
    assert len(store.rows("variability")) == 9
    CALLS.clear()
    again = run_protocol(toy_train, sources=["init", "shuffle", "augment"], runs=3, labels=LABELS, store=store, executor="serial", progress=False)
    assert CALLS == [] and again.rows == res.rows  # resumed from the store, nothing retrained
    more = run_protocol(toy_train, sources=["init"], runs=4, labels=LABELS, store=store, executor="serial", progress=False)
    assert CALLS == [("init", 3)] and more.rows["init"]["runs"] == 4


def test_thread_count_is_part_of_the_store_key(tmp_path):
    """Another thread count rounds differently (`runtime.machine`): its runs never share a key with one-thread runs."""
    from tf_dlthesis.variability.protocol import _threads_key

    assert _threads_key("local", 1) == {} == _threads_key("ray", 1)  # the default keeps the keys stored before
    assert _threads_key("local", 2) == {"threads_per_run": 2}
    assert _threads_key("local", None) == {"threads_per_run": None}
    assert _threads_key("serial", 1) == {"threads_per_run": None}  # runs in this process, with its thread pools
    store = ResultsStore(tmp_path / "r.sqlite")
    run_protocol(toy_train, sources=["init"], runs=2, labels=LABELS, store=store, executor="serial",
                 config={"model": "toy"}, progress=False)
    assert [row["config"] for row in store.rows("variability")] == \
        [{"model": "toy", "threads_per_run": None, "source": "init", "onset_epoch": 0}] * 2


def test_controls_are_verified():
    with pytest.raises(RuntimeError, match="init_hash differs"):
        run_protocol(functools.partial(toy_train, leak=True), sources=["shuffle"], runs=2, labels=LABELS, executor="serial", progress=False)


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        ({"sources": ["cudnn"]}, ValueError, "Unknown nondeterminism source"),
        ({"runs": 1}, ValueError, "runs"),
        ({"executor": "threads"}, ValueError, "executor"),
        ({"labels": LABELS[:-1]}, ValueError, r"shape \(N, C\) with N = len\(labels\) = 29"),
        ({"train_fn": functools.partial(toy_train, nan=True)}, ValueError, "NaN"),
        ({"train_fn": functools.partial(toy_train, width=3), "num_classes": 4}, ValueError, "expected 4"),
        ({"sources": "init"}, TypeError, "list of source names"),
        ({"threads_per_run": 0}, ValueError, r"threads_per_run=0"),
        ({"threads_per_run": "2"}, TypeError, r"threads_per_run='2'"),
    ],
)
def test_bad_input(kwargs, error, match):
    args = {"train_fn": toy_train, "sources": ["init"], "runs": 2, "labels": LABELS, "executor": "serial", "progress": False}
    args.update(kwargs)
    with pytest.raises(error, match=match):
        run_protocol(**args)


def test_ray_executor_without_ray_raises(monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)
    with pytest.raises(ImportError, match=r"pip install 'tf-dlthesis\[ray\]'"):
        run_protocol(toy_train, sources=["init"], runs=2, labels=LABELS, executor="ray", progress=False)


SPEC = TrainSpec(dataset="digits", model="linear", norm="none", epochs=1, batch_size=256)
TINY = functools.partial(protocol_run, spec=SPEC)
SOURCES = ["init", "bit_change"]

_SCRIPT = """
import functools, sys
from tf_dlthesis.experiments import ResultsStore, TrainSpec
from tf_dlthesis.experiments.chapter5 import protocol_run
from tf_dlthesis import data
from tf_dlthesis.variability import run_protocol

if __name__ == "__main__":
    fn = functools.partial(protocol_run, spec=TrainSpec(dataset="digits", model="linear", norm="none", epochs=1, batch_size=256))
    run_protocol(fn, sources={sources!r}, runs=2, labels=data.load_arrays("digits", "test")[1],
                 store=ResultsStore(sys.argv[1]), executor="local", workers=1, progress=False)
"""


def _final_runs(store):
    """The counted runs (not the control, not the record of a bit-change draw)."""
    return {(r["config"]["source"], r["run"]): r["result"] for r in store.rows("variability")
            if r["config"]["source"] in SOURCES and "bit_change_attempt" not in r["config"]}


@pytest.fixture(scope="module")
def test_labels():
    from tf_dlthesis import data

    return data.load_arrays("digits", "test")[1]


@pytest.fixture(scope="module")
def reference(tmp_path_factory, test_labels):
    """An uninterrupted local run of the tiny protocol."""
    store = ResultsStore(tmp_path_factory.mktemp("ref") / "r.sqlite")
    return run_protocol(TINY, sources=SOURCES, runs=2, labels=test_labels, store=store, executor="local", workers=2, progress=False)


def test_kill_9_mid_protocol_then_resume_gives_the_same_table(tmp_path, reference, test_labels, short_tmp):
    path = tmp_path / "r.sqlite"
    script = tmp_path / "protocol_script.py"
    script.write_text(textwrap.dedent(_SCRIPT.format(sources=SOURCES)))
    # its own temporary folder, removed at teardown: SIGKILL to the whole group leaves no process to clean up
    proc = subprocess.Popen([sys.executable, str(script), str(path)], start_new_session=True, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, env=dict(os.environ, TMPDIR=str(short_tmp)))
    store = None
    try:
        deadline = time.time() + 240
        while time.time() < deadline:
            if path.exists():
                store = store or ResultsStore(path)
                if len(_final_runs(store)) >= 1:
                    break
            assert proc.poll() is None, "protocol subprocess exited before the kill"
            time.sleep(0.1)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)  # the subprocess, its forkserver and its workers
        proc.wait()
    before = _final_runs(store)
    assert 1 <= len(before) < 4, "kill must land mid-protocol"
    resumed = run_protocol(TINY, sources=SOURCES, runs=2, labels=test_labels, store=ResultsStore(path), executor="local", progress=False)
    after = _final_runs(ResultsStore(path))
    assert len(after) == 4  # nothing lost, nothing duplicated
    for key, result in before.items():  # finished runs were kept, not retrained
        assert after[key]["info:seconds"] == result["info:seconds"]
    assert resumed.bit_changes == reference.bit_changes
    assert resumed.rows == reference.rows
    for row in reference.logits:
        np.testing.assert_array_equal(resumed.logits[row], reference.logits[row])


def test_linear_bit_change_is_stable_and_hashes_control(reference):
    # Sec. 5.4.2 on a tiny scale: a linear model's bit change leaves predictions unchanged.
    assert reference.rows["bit_change"]["disagreement"] == 0
    assert reference.rows["init"]["disagreement"] > 0
    init_hashes = {h[0] for h in reference.hashes["init"]}
    assert len(init_hashes) == 2 and len({h[0] for h in reference.hashes["bit_change"]}) == 1
    assert len({h[1] for hs in reference.hashes.values() for h in hs}) == 1  # one data order throughout
    # every counted bit change took effect: its logits differ from the unperturbed control's
    bc = reference.bit_changes["bit_change"]
    assert bc["effective"] == 2 and bc["exhausted"] == [] and sum(bc["attempts"]) == 2 + bc["replaced"]
    for logits in reference.logits["bit_change"]:
        assert not np.array_equal(logits, reference.control_logits)
    for detail in bc["details"]:
        assert detail["reason"].endswith("bit-identical to the unperturbed control")


@pytest.mark.skipif(importlib.util.find_spec("ray") is None, reason="ray is not installed (optional [ray] extra)")
def test_ray_executor_matches_local(tmp_path, short_tmp, reference, test_labels):
    import ray

    try:
        # _temp_dir: Ray's session folder (sockets, logs) goes where the fixture removes it, not TMPDIR/ray
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, _temp_dir=str(short_tmp),
                 runtime_env={"env_vars": {"TF_CPP_MIN_LOG_LEVEL": "3"}})
        res = run_protocol(TINY, sources=["init"], runs=2, labels=test_labels, store=ResultsStore(tmp_path / "r.sqlite"), executor="ray", progress=False)
    finally:
        ray.shutdown()
    np.testing.assert_array_equal(res.logits["init"], reference.logits["init"])
    assert res.rows["init"] == reference.rows["init"]


# ------------------------------------------------------------------ bit changes that take effect
def fake_bit_train(plan, dead=(0,), same_weights=False):
    """Logits depend on the bit-change seed only when `seed % 3` is not in `dead` (a change that had no effect)."""
    base = np.eye(C)[LABELS] + np.random.default_rng([plan.init, plan.shuffle]).normal(size=(N, C))
    alive = plan.bit_change is not None and plan.bit_change % 3 not in dead
    if alive and not same_weights:
        base = base + 1e-6 * np.random.default_rng(plan.bit_change).normal(size=(N, C))
    return {"logits": base, "init_hash": str(plan.init), "order_hash": str(plan.shuffle),
            "weights_hash": "w" + str(plan.bit_change if alive else None), "info": {"seed": plan.bit_change}}


def test_ineffective_bit_changes_are_replaced_recorded_and_not_counted(tmp_path):
    store = ResultsStore(tmp_path / "r.sqlite")
    res = run_protocol(fake_bit_train, sources=["init", "bit_change"], runs={"init": 2, "bit_change": 8},
                       labels=LABELS, store=store, executor="serial", progress=False)
    bc = res.bit_changes["bit_change"]
    dead = [d for d in bc["details"]]
    assert bc["effective"] == 8 and bc["exhausted"] == [] and bc["replaced"] == len(dead) > 0
    assert sum(bc["attempts"]) == 8 + bc["replaced"]
    assert all(d["bit_change_seed"] % 3 == 0 for d in dead)  # exactly the draws that had no effect
    assert all(info["seed"] % 3 != 0 for info in res.info["bit_change"])  # only effective draws are counted
    assert "init" not in res.bit_changes and res.rows["bit_change"]["runs"] == 8
    np.testing.assert_array_equal(res.control_logits, fake_bit_train(SeedPlan())["logits"].astype(np.float32))
    # the replacement seeds are derived, recorded, and reproducible
    replaced_run = dead[0]["run"]
    plan = SeedPlan().vary("bit_change", replaced_run)
    assert plan.bit_change == dead[0]["bit_change_seed"] and plan.redraw_bit_change(0) == plan
    assert plan.redraw_bit_change(1).bit_change != plan.bit_change
    # resuming trains nothing and gives the same report
    CALLS.clear()
    again = run_protocol(fake_bit_train, sources=["init", "bit_change"], runs={"init": 2, "bit_change": 8},
                         labels=LABELS, store=store, executor="serial", progress=False)
    assert again.bit_changes == res.bit_changes and again.rows == res.rows


def test_identical_final_weights_count_as_no_effect_even_when_logits_differ():
    def train_fn(plan):
        out = fake_bit_train(plan, dead=(), same_weights=False)
        out["weights_hash"] = "same" if plan.bit_change is None or plan.bit_change % 2 == 0 else str(plan.bit_change)
        return out

    res = run_protocol(train_fn, sources=["bit_change"], runs=4, labels=LABELS, executor="serial", progress=False)
    bc = res.bit_changes["bit_change"]
    assert bc["replaced"] > 0 and all("weight" in d["reason"] and d["bit_change_seed"] % 2 == 0 for d in bc["details"])


def test_a_run_whose_every_draw_had_no_effect_is_left_out():
    res = run_protocol(functools.partial(fake_bit_train, dead=(0, 1, 2)), sources=["bit_change"], runs=3,
                       labels=LABELS, executor="serial", progress=False, bit_change_redraws=2)
    bc = res.bit_changes["bit_change"]
    assert bc["effective"] == 0 and bc["exhausted"] == [0, 1, 2] and bc["replaced"] == 9 and bc["attempts"] == [3, 3, 3]
    assert "bit_change" not in res.rows and res.logits == {}
    with pytest.raises(ValueError, match="bit_change_redraws"):
        run_protocol(fake_bit_train, sources=["bit_change"], runs=2, labels=LABELS, executor="serial",
                     progress=False, bit_change_redraws=-1)
    with pytest.raises(ValueError, match="no run count"):
        run_protocol(fake_bit_train, sources=["init", "bit_change"], runs={"init": 2}, labels=LABELS,
                     executor="serial", progress=False)
    with pytest.raises(ValueError, match="redraw"):
        SeedPlan().redraw_bit_change(1)


def test_pool_takes_tasks_in_order_within_their_slots_and_a_small_one_fills_a_gap():
    """`_take_fitting` (the scheduler of `run_protocol`'s and `reproduce --jobs`' process
    pool): in order, never more slots than are free, a later task that fits starts before
    an earlier one that does not, and a task never asks for more than there are."""
    from tf_dlthesis.variability.protocol import _take_fitting

    sizes = {"a": 1, "big": 2, "b": 1, "big2": 2, "huge": 5}
    queue = [(k, k) for k in sizes]
    assert _take_fitting(queue, 2, 2, sizes.get) == [("a", "a", 1), ("b", "b", 1)]
    assert queue == [("big", "big"), ("big2", "big2"), ("huge", "huge")]
    assert _take_fitting(queue, 0, 2, sizes.get) == [] and len(queue) == 3
    assert _take_fitting(queue, 1, 2, sizes.get) == []
    assert _take_fitting(queue, 2, 2, sizes.get) == [("big", "big", 2)]
    assert _take_fitting(queue, 2, 2, sizes.get) == [("big2", "big2", 2)]
    assert _take_fitting(queue, 2, 2, sizes.get) == [("huge", "huge", 2)] and queue == []


def _pool(tasks, job, workers=2, **kwargs):
    """`_process_pool` with the fork start method (closures need no pickling) and no bar."""
    from tf_dlthesis.variability.protocol import _process_pool

    done = {}
    _process_pool(tasks, job, workers, "fork", lambda label, result: done.__setitem__(label, result), None,
                  **kwargs)
    return done


def test_pool_runs_each_task_in_a_fresh_process_within_its_slots():
    sizes = {"a": 1, "big": 2, "b": 1}

    def job(plan):
        start = time.time()
        time.sleep(0.4)
        return os.getpid(), start, time.time(), plan * 10

    done = _pool([(k, len(k)) for k in sizes], job, slots=sizes.get)
    assert {k: v[3] for k, v in done.items()} == {"a": 10, "big": 30, "b": 10}
    assert len({v[0] for v in done.values()} | {os.getpid()}) == 4  # a process of its own each
    for t in [v[1] + 0.2 for v in done.values()]:  # the slots busy in the middle of each task
        assert sum(sizes[k] for k, v in done.items() if v[1] <= t <= v[2]) <= 2
    assert done["big"][1] >= max(done["a"][2], done["b"][2]) - 0.05  # big waited for both slots


def test_pool_hands_over_a_task_message_while_the_task_still_runs(tmp_path):
    """`on_message`: each `send(obj)` of a running task reaches the parent at once (the task
    here waits until the parent has seen its first message), then its result."""
    seen = tmp_path / "seen"

    def job(plan, send):
        send(("first", plan))
        deadline = time.time() + 30
        while not seen.exists() and time.time() < deadline:
            time.sleep(0.05)
        send(("second", seen.exists()))
        return "result"

    messages = []

    def on_message(label, obj):
        messages.append((label, obj))
        seen.write_text("")

    done = _pool([("t", 5)], job, on_message=on_message)
    assert messages == [("t", ("first", 5)), ("t", ("second", True))]
    assert done == {"t": "result"}


def test_pool_raises_a_task_error_with_its_traceback_and_a_dead_task_clearly():
    from concurrent.futures.process import BrokenProcessPool

    def failing(plan):
        raise ValueError(f"bad plan {plan}")

    with pytest.raises(ValueError, match="bad plan 3") as info:
        _pool([("x", 3)], failing)
    assert "failing" in str(info.value.__cause__)  # the task's own traceback
    with pytest.raises(BrokenProcessPool, match="exit code 7"):
        _pool([("x", 7)], os._exit)
    assert not [p for p in multiprocessing.active_children() if p.name.startswith("tf_dlthesis-task")]
