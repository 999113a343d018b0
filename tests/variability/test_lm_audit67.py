"""Audit of the language-model protocol (Tables 5.2, 5.4, B.3): input checks and unseeded dropout."""

import json

import numpy as np
import pytest

from tf_dlthesis.variability import language_model as lm
from tf_dlthesis.variability.seed_plan import derive_seed


def test_spec_accepts_numpy_floats_and_rejects_infinite_rates():
    # before: np.float32(0.01) was rejected as "`learning_rate` must be > 0", np.float32(0.25) as "`dropout` must
    # be a float in [0, 1)", and learning_rate=inf accepted (training then diverged after the first step)
    spec = lm.LanguageModelSpec(learning_rate=np.float32(0.01), clipnorm=np.float64(0.5),
                                dropout=np.float32(0.25), embedding_dropout=np.float64(0.125))
    config = json.loads(json.dumps(spec.to_config()))  # the store's key: one JSON document
    assert config["learning_rate"] == pytest.approx(0.01) and config["clipnorm"] == 0.5
    assert config["dropout"] == 0.25 and config["embedding_dropout"] == 0.125
    assert all(type(config[k]) is float for k in ("learning_rate", "clipnorm", "dropout", "embedding_dropout"))
    # Python numbers are kept as given (the store keys of existing runs do not change)
    plain = lm.LanguageModelSpec(learning_rate=0.01, clipnorm=1)
    assert plain.to_config()["clipnorm"] == 1 and type(plain.to_config()["clipnorm"]) is int
    for name, value in (("learning_rate", float("inf")), ("clipnorm", float("nan")), ("learning_rate", True)):
        with pytest.raises(ValueError, match=f"`{name}` must be a finite number > 0. Received: {name}="):
            lm.LanguageModelSpec(**{name: value})
    with pytest.raises(ValueError, match="`dropout` must be a float in"):
        lm.LanguageModelSpec(dropout=np.float32(1.0))


def test_unseeded_model_draws_unseeded_dropout_masks():
    # before: seed=None ("unseeded") still fixed every dropout seed (derived from 0), so two unseeded models
    # dropped exactly the same units
    # Keras seeds an unseeded layer with `random.randint(1, 10**9)`: two models share their dropout seed with
    # probability ~1e-9 (too likely for a CI run), three with ~1e-18; their 8 x 32 locked masks at rate 0.1 then
    # coincide with probability ~0.82**256 ~ 1e-22
    x = np.ones((8, 3, 32), "float32")
    masks = set()
    for _ in range(3):
        model = lm.build_language_model(30, embedding_dim=32, hidden=8)
        masks.add((np.asarray(model.get_layer("embedding_dropout")(x, training=True)) == 0).tobytes())
    assert len(masks) > 1
    # seeded models keep their seeds (the experiments' runs are unchanged): dropout seeds from derive_seed(seed, 999)
    c = lm.build_language_model(30, embedding_dim=32, hidden=8, seed=1)
    drop = derive_seed(1, 999)
    assert c.get_layer("embedding_dropout").seed == derive_seed(drop, 0)
    assert c.get_layer("dropout0").seed == derive_seed(drop, 1)
    d = lm.build_language_model(30, embedding_dim=32, hidden=8, stochastic_seed=4)
    assert d.get_layer("embedding_dropout").seed == derive_seed(derive_seed(4), 0)


def test_streams_with_bad_token_ids_are_named_errors():
    model = lm.build_language_model(50, embedding_dim=4, hidden=6, seed=0)
    # before: a TF graph error from the embedding's gather (CPU; on GPU the gather silently reads zeros)
    with pytest.raises(ValueError, match=r"outside \[0, 50\) \(the model's vocabulary\). Received: ids from 0 to 59"):
        lm.evaluate_stream(model, np.arange(100) % 60, window=10)
    with pytest.raises(ValueError, match="ids from -3 to"):
        lm.evaluate_stream(model, np.arange(100) % 50 - 3, window=10)
    last_only = np.append(np.zeros(20, int), 50)  # the last token is only ever a label
    with pytest.raises(ValueError, match="outside"):
        lm.evaluate_stream(model, last_only, window=10)
    # before: float ids were truncated silently, and a (10, 10) array was read as a stream of 10 tokens
    with pytest.raises(TypeError, match="integer token ids. Received: dtype=float64"):
        lm.evaluate_stream(model, np.linspace(0, 49, 100), window=10)
    with pytest.raises(ValueError, match=r"1-D sequence of token ids. Received: shape=\(10, 10\)"):
        lm.evaluate_stream(model, np.zeros((10, 10), int), window=3)
    with pytest.raises(ValueError, match=r"1-D .* Received: shape=\(4, 10\)"):
        lm.batchify(np.zeros((4, 10), int), 2)
    with pytest.raises(TypeError, match="integer token ids"):
        lm.batchify(np.linspace(0, 5, 12), 2)
    with pytest.raises(ValueError, match="too short"):
        lm.evaluation_labels([], window=3)
    # valid streams are unchanged
    np.testing.assert_array_equal(lm.batchify(np.arange(7), 2), [[0, 1, 2], [3, 4, 5]])
    target, preds = lm.evaluate_stream(model, np.arange(21) % 50, window=10)
    assert target.shape == preds.shape == (20,)


def test_train_rejects_a_corpus_that_is_not_one():
    # before: AttributeError "'dict' object has no attribute 'vocab_size'"
    with pytest.raises(TypeError, match="`corpus` must be a Corpus from `load_corpus`, or None. Received: dict"):
        lm.train_language_model(lm.LanguageModelSpec(vocab_size=200), 0, corpus={"train": [1, 2, 3]})
