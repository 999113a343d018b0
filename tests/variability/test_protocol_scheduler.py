"""The scheduler `run_protocol` and `run_lm_protocol` share: a resumed bit-change draw is judged, not retrained."""

import copy
import json

import numpy as np
import pytest

from tf_dlthesis.variability import run_protocol
from tf_dlthesis.variability import _lm_corpus as corpus_mod
from tf_dlthesis.variability import language_model as lm

N, C = 30, 4
LABELS = np.arange(N) % C


class DictStore:
    """A results store in a dict that a test can edit (has/get/record, plus `items` and `delete`)."""

    def __init__(self):
        self.data = {}

    @staticmethod
    def _key(experiment, config, run):
        return experiment, json.dumps(config, sort_keys=True, default=str), int(run)

    def has(self, experiment, config, run):
        return self._key(experiment, config, run) in self.data

    def get(self, experiment, config, run):
        return copy.deepcopy(self.data.get(self._key(experiment, config, run)))

    def record(self, experiment, config, run, result):
        self.data[self._key(experiment, config, run)] = copy.deepcopy(result)


def rewind_to_pending(store, source="bit_change"):
    """Turns every counted run of `source` back into its pending draw: as if killed before it was judged."""
    rewound = 0
    for (experiment, config, run), record in list(store.data.items()):
        config = json.loads(config)
        if config["source"] != source or "bit_change_attempt" in config:
            continue
        pending = {k: v for k, v in record.items() if k not in ("bit_change_attempt", "bit_change_replaced")}
        attempt_key = {**config, "bit_change_attempt": record["bit_change_attempt"]}
        store.record(experiment, attempt_key, run, {**pending, "pending": True})
        del store.data[(experiment, json.dumps(config, sort_keys=True, default=str), run)]
        rewound += 1
    return rewound


def forget_control(store):
    for key in [k for k in store.data if json.loads(k[1])["source"] == "control"]:
        del store.data[key]


def bit_train(plan):
    """Logits move with the bit change unless `seed % 3 == 0` (a change without effect: redrawn)."""
    logits = np.eye(C)[LABELS] + np.random.default_rng([plan.init, plan.shuffle]).normal(size=(N, C))
    alive = plan.bit_change is not None and plan.bit_change % 3 != 0
    if alive:
        logits = logits + 1e-6 * np.random.default_rng(plan.bit_change).normal(size=(N, C))
    return {"logits": logits, "init_hash": str(plan.init), "order_hash": str(plan.shuffle),
            "weights_hash": "w" + str(plan.bit_change if alive else None), "info": {"bit_change": plan.bit_change}}


@pytest.mark.parametrize("with_control", [True, False], ids=["control stored", "control lost"])
def test_run_protocol_judges_a_pending_draw_on_resume(with_control):
    store = DictStore()
    kwargs = dict(sources=["init", "bit_change"], runs=4, labels=LABELS, store=store, executor="serial",
                  progress=False)
    first = run_protocol(bit_train, **kwargs)
    assert first.bit_changes["bit_change"]["replaced"] > 0  # the resumed judgement must rebuild the replaced list
    assert rewind_to_pending(store) == 4
    if not with_control:
        forget_control(store)
    trained = []

    def only_the_control(plan):
        trained.append(plan.source)
        assert plan.source == "control", f"retrained {plan.source} run {plan.run}"
        return bit_train(plan)

    again = run_protocol(only_the_control, **kwargs)
    assert trained == ([] if with_control else ["control"])
    assert again.bit_changes == first.bit_changes and again.rows == first.rows
    for source, stack in first.logits.items():
        np.testing.assert_array_equal(again.logits[source], stack)


@pytest.mark.skipif(not corpus_mod.corpus_available("fortunes"),
                    reason="the English fortune-mod corpus is not installed (`apt-get install fortunes`)")
def test_run_lm_protocol_judges_a_pending_draw_on_resume(monkeypatch):
    spec = lm.LanguageModelSpec(vocab_size=200, train_tokens=4_000, embedding_dim=8, hidden=16, epochs=1,
                                batch_size=10, bptt=20, eval_batch=512)
    store = DictStore()
    kwargs = dict(sources=["bit_change"], runs=2, store=store, executor="serial", progress=False,
                  bootstrap_samples=20)
    first = lm.run_lm_protocol(spec, **kwargs)
    assert rewind_to_pending(store) == 2

    def no_training(*args, **kwargs):
        pytest.fail("retrained a bit-change draw that only needed judging")

    monkeypatch.setattr(lm, "train_language_model", no_training)
    again = lm.run_lm_protocol(spec, **kwargs)
    assert again.bit_changes == first.bit_changes and again.rows == first.rows
    np.testing.assert_array_equal(again.target_log_probs["bit_change"], first.target_log_probs["bit_change"])


@pytest.fixture
def two_machines(monkeypatch):
    """`(here, train)`: `runtime.machine()` answers `here["id"]` (starts "A"); `train` is `bit_train` whose
    results on machine "B" carry that machine's rounding (its logits and weights differ from A's)."""
    from tf_dlthesis import runtime

    here = {"id": "A"}
    monkeypatch.setattr(runtime, "machine", lambda: dict(here))

    def train(plan):
        out = bit_train(plan)
        out["logits"] = out["logits"] + (1e-3 if here["id"] == "B" else 0.0)  # another CPU's rounding
        out["weights_hash"] += here["id"]
        return out

    return here, train


def test_bit_changes_are_judged_against_a_control_from_their_own_machine(two_machines):
    """Results are bit-exact on one machine only: a draw from machine B that its bit change left unchanged
    differs from machine A's control anyway, and must still be found ineffective (against B's control)."""
    here, train = two_machines

    kwargs = dict(sources=["bit_change"], labels=LABELS, executor="serial", progress=False)
    store = DictStore()
    run_protocol(train, runs=3, store=store, **kwargs)
    here["id"] = "B"
    trained = []

    def counting(plan):
        trained.append(plan.source)
        return train(plan)

    mixed = run_protocol(counting, runs=6, store=store, **kwargs)
    assert trained.count("control") == 1  # B's control, trained once, beside A's
    assert mixed.machines["bit_change"] == ["A"] * 3 + ["B"] * 3
    assert set(mixed.control_logits_by_machine) == {"A", "B"}
    assert run_protocol(counting, runs=6, store=store, **kwargs).bit_changes == mixed.bit_changes
    assert trained.count("control") == 1  # resuming again trains nothing

    here["id"] = "A"
    alone = run_protocol(train, runs=6, store=DictStore(), **kwargs)  # every run on one machine
    assert mixed.bit_changes["bit_change"]["replaced"] == alone.bit_changes["bit_change"]["replaced"] > 0
    assert mixed.bit_changes["bit_change"]["details"] == alone.bit_changes["bit_change"]["details"]
    assert all("control_machine" not in d for d in store.data.values())


def test_instability_check_compares_each_run_with_its_own_machines_control():
    """Table 5.x's "instability appeared" check: a run identical to its own machine's control shows no growth,
    even though it differs from the first control (another machine's rounding)."""
    from types import SimpleNamespace

    from tf_dlthesis.experiments import chapter5

    control_a = np.eye(C)[LABELS]
    control_b = np.eye(C)[(LABELS + 1) % C]  # machine B's control predicts differently
    grown = np.eye(C)[(LABELS + 2) % C]
    summary = {"runs": 2, "effective": 2, "replaced": 0, "exhausted": [], "attempts": [1, 1], "details": []}
    res = SimpleNamespace(bit_changes={"bit_change": summary}, logits={"bit_change": np.stack([grown, control_b])},
                          control_logits=control_a, machines={"bit_change": ["A", "B"]},
                          control_logits_by_machine={"A": control_a, "B": control_b})
    growth = chapter5._bit_change_checks(res, "bit_change", "m")[1]
    assert not growth.passed and "min 0" in growth.detail and "2 machines (1 on A, 1 on B)" in growth.detail
    res.machines = {"bit_change": [None, None]}  # runs stored before machines were recorded: the first control
    res.control_logits_by_machine = {None: control_a}
    growth = chapter5._bit_change_checks(res, "bit_change", "m")[1]
    assert growth.passed and "machines" not in growth.detail


def test_a_draw_left_pending_by_another_machine_is_retrained_once_beside_this_machines_control(two_machines):
    """Killed on machine A after its draws but before its control: resuming on B cannot judge A's draws
    against a control from A, so it trains B's control and retrains each pending draw on B, once."""
    here, train = two_machines

    kwargs = dict(sources=["bit_change"], runs=4, labels=LABELS, executor="serial", progress=False)
    store = DictStore()
    run_protocol(train, store=store, **kwargs)
    assert rewind_to_pending(store) == 4
    forget_control(store)
    here["id"] = "B"
    trained = []

    def counting(plan):
        trained.append(plan.source)
        return train(plan)

    resumed = run_protocol(counting, store=store, **kwargs)
    assert trained.count("control") == 1 and trained.count("bit_change") >= 4
    alone = run_protocol(train, store=DictStore(), **kwargs)  # every run on B
    assert resumed.bit_changes == alone.bit_changes and resumed.machines == alone.machines == {"bit_change": ["B"] * 4}
    for source, stack in alone.logits.items():
        np.testing.assert_array_equal(resumed.logits[source], stack)
