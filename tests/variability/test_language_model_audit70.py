"""Audit 70 of the Chapter 5 language model: input validation found missing (none of it changes a number)."""

import numpy as np
import pytest

from tf_dlthesis.variability import language_model as lm
from tf_dlthesis.variability._lm_corpus import Corpus
from tf_dlthesis.variability.seed_plan import SeedPlan

V = 10


def _corpus(train, valid, test):
    return Corpus(name="fortunes", train=np.asarray(train, np.int32), valid=np.asarray(valid, np.int32),
                  test=np.asarray(test, np.int32), vocab=tuple(f"w{i}" for i in range(V)), source="memory",
                  files=(), documents={}, fingerprint="0")


def _ok(n=60):
    return np.random.default_rng(0).integers(0, V, n)


def _no_training(monkeypatch):
    def fail(*args, **kwargs):
        raise AssertionError("a model was built: the bad corpus was found only after training")

    monkeypatch.setattr(lm, "_model_for", fail)


_SPEC = lm.LanguageModelSpec(vocab_size=V, embedding_dim=4, hidden=4, epochs=1, batch_size=2, bptt=5)


def test_build_language_model_accepts_numpy_int_sizes():
    # old: the checked sizes were thrown away, and Keras refused `output_dim=4 (of type int64)`
    model = lm.build_language_model(np.int64(12), embedding_dim=np.int64(4), hidden=np.int32(6), layers=np.int64(2),
                                    seed=3)
    reference = lm.build_language_model(12, embedding_dim=4, hidden=6, layers=2, seed=3)
    assert tuple(model(np.zeros((2, 5), "int32")).shape) == (2, 5, 12)
    assert all(np.array_equal(a, b) for a, b in zip(model.get_weights(), reference.get_weights()))


def test_evaluate_stream_rejects_models_with_different_vocabularies():
    # old: a TensorFlow graph error from stacking (.., 12) and (.., 15) log-probabilities
    a = lm.build_language_model(12, embedding_dim=4, hidden=4, seed=0)
    b = lm.build_language_model(15, embedding_dim=4, hidden=4, seed=0)
    with pytest.raises(ValueError, match=r"one vocabulary.*\[12, 15\]"):
        lm.evaluate_stream([a, b], _ok(23), window=5)


@pytest.mark.parametrize("models", [None, iter([]), ["not a model"]])
def test_evaluate_stream_rejects_what_is_not_a_model(models):
    # old: "'NoneType' object is not callable" from inside the traced evaluation step
    with pytest.raises(TypeError, match=r"`models` must be a model from `build_language_model`"):
        lm.evaluate_stream(models, _ok(23), window=5)


@pytest.mark.parametrize("where", [10, 30])  # an input id, and the last id of row 0 (a target only)
def test_train_rejects_out_of_vocabulary_training_ids(monkeypatch, where):
    # old: InvalidArgumentError at the embedding's GatherV2 (CPU; a GPU gathers zeros)
    _no_training(monkeypatch)
    train = np.insert(_ok(), where, V + 2)
    with pytest.raises(ValueError, match=r"outside \[0, 10\).*from 0 to 12"):
        lm.train_language_model(_SPEC, SeedPlan(), corpus=_corpus(train, _ok(), _ok()))


@pytest.mark.parametrize("split, stream, error, match", [
    ("test", _ok(4), ValueError, r"corpus\.test: A stream of 4 tokens is too short for one window of 5"),
    ("valid", np.r_[_ok(), V], ValueError, r"corpus\.valid: .*outside \[0, 10\)"),
])
def test_train_checks_the_evaluation_streams_before_training(monkeypatch, split, stream, error, match):
    # old: the error came after the whole training, from the evaluation
    _no_training(monkeypatch)
    streams = {"train": _ok(), "valid": _ok(), "test": _ok(), split: stream}
    with pytest.raises(error, match=match):
        lm.train_language_model(_SPEC, SeedPlan(), corpus=_corpus(**streams))


def test_a_valid_corpus_still_trains_and_scores_every_window():
    run = lm.train_language_model(_SPEC, SeedPlan(init=1, stochastic=2), corpus=_corpus(_ok(), _ok(31), _ok(26)))
    assert run["target_log_probs"].shape == (25,)  # (26 - 1) // 5 windows of 5
    assert np.isfinite(run["info"]["test_perplexity"]) and np.isfinite(run["info"]["valid_perplexity"])
