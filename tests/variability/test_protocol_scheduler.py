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
