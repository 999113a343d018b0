"""Input validation of `run_protocol` and its errors for a failed run."""

import pickle

import numpy as np
import pytest

from tf_dlthesis.experiments import ResultsStore
from tf_dlthesis.variability import SeedPlan, run_protocol
from tf_dlthesis.variability import protocol

N, C = 12, 3
LABELS = np.arange(N) % C
CALLS = []


def toy_train(plan, fail=None):
    """NumPy stand-in for training; raises for the (source, run) in `fail`."""
    CALLS.append((plan.source, plan.run))
    if fail == (plan.source, plan.run):
        raise RuntimeError("the toy training diverged")
    return np.random.default_rng([plan.init, plan.shuffle]).normal(size=(N, C))


def _serial(**kwargs):
    args = dict(sources=["init"], runs=2, labels=LABELS, executor="serial", progress=False, bootstrap_samples=20)
    return run_protocol(toy_train, **{**args, **kwargs})


@pytest.mark.parametrize("workers, error", [(0, ValueError), (-1, ValueError), ("2", TypeError), (True, TypeError),
                                           (1.5, TypeError)])
def test_workers_must_be_a_positive_int(workers, error):
    # before: accepted; the local pool then started every run at once (0 or -1 free slots "fit" any task)
    CALLS.clear()
    with pytest.raises(error, match=r"`workers` must be an int >= 1. Received: workers="):
        _serial(workers=workers)
    assert CALLS == []


@pytest.mark.parametrize("num_classes, error", [(0, ValueError), ("3", TypeError), (2.0, TypeError)])
def test_num_classes_is_checked_up_front(num_classes, error):
    # before: "... has 3 classes, expected 3." after the first run had trained
    CALLS.clear()
    with pytest.raises(error, match=r"`num_classes` must be an int >= 1 or None. Received: num_classes="):
        _serial(num_classes=num_classes)
    assert CALLS == []


def test_empty_labels_config_and_start_method_are_refused_before_training():
    CALLS.clear()
    with pytest.raises(ValueError, match=r"`labels` must hold at least one test example"):
        _serial(labels=np.array([], dtype=np.int64))
    with pytest.raises(TypeError, match=r"`config` must be a dict \(JSON-able\) or None. Received: config=\[1, 2\]"):
        _serial(config=[1, 2])
    with pytest.raises(ValueError, match=r"`start_method` must be None or one of .* Received: start_method='bogus'"):
        _serial(start_method="bogus")
    assert CALLS == []
    assert _serial(num_classes=C, config={"model": "toy"}, workers=1).rows["init"]["runs"] == 2


def test_a_source_named_twice_is_refused_instead_of_trained_twice():
    # before: sources=["bit_change", "bit_change"] trained every bit-change draw twice
    CALLS.clear()
    with pytest.raises(ValueError, match=r"`sources` names 'bit_change' more than once"):
        _serial(sources=["bit_change", "init", "bit_change"])
    assert CALLS == []


def test_a_failed_run_names_itself_and_the_finished_runs_are_kept(tmp_path):
    store = ResultsStore(tmp_path / "r.sqlite")
    CALLS.clear()
    with pytest.raises(RuntimeError, match="the toy training diverged") as info:
        run_protocol(lambda plan: toy_train(plan, fail=("shuffle", 1)), sources=["init", "shuffle"], runs=3,
                     labels=LABELS, store=store, executor="serial", progress=False)
    notes = "\n".join(getattr(info.value, "__notes__", []))
    assert "train_fn failed in run 1 of source 'shuffle'" in notes
    assert "every run that finished is kept in the store" in notes
    assert len(store.rows("variability")) == 4  # init 0-2 and shuffle 0
    CALLS.clear()
    res = _serial(sources=["init", "shuffle"], runs=3, store=store)
    assert CALLS == [("shuffle", 1), ("shuffle", 2)] and res.rows["shuffle"]["runs"] == 3
    with pytest.raises(RuntimeError) as info:
        run_protocol(lambda plan: toy_train(plan, fail=("init", 0)), sources=["init"], runs=2, labels=LABELS,
                     executor="serial", progress=False)
    assert "with store=None the runs that finished are lost" in "\n".join(info.value.__notes__)


def test_the_failed_runs_note_crosses_the_process_boundary():
    # the local and Ray executors run `_run_one` in a worker and pickle its exception back
    plan = SeedPlan().vary("init", 1)
    with pytest.raises(RuntimeError) as info:
        protocol._run_one(lambda p: toy_train(p, fail=("init", 1)), plan, None, global_seed=None)
    back = pickle.loads(pickle.dumps(info.value))
    assert any("run 1 of source 'init'" in n for n in back.__notes__)
