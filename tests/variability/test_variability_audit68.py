"""Audit 68 of Chapter 5 (nondeterminism and instability): each test fails on the code before its fix."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from tf_dlthesis.variability import SnapshotEnsemble


def _fit_snapshots(model, x, y, cycles=2):
    model.compile(keras.optimizers.SGD(0.5), keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    snap = SnapshotEnsemble(cycles=cycles)
    model.fit(x, y, batch_size=4, epochs=cycles, verbose=0, shuffle=False, callbacks=[snap])
    return snap


def _by_hand(model, snap, x):
    """Mean over snapshots of keras.Model.predict, computed independently."""
    current = model.get_weights()
    outs = []
    for weights in snap.snapshots:
        model.set_weights(weights)
        outs.append(np.asarray(model.predict(x, verbose=0), np.float64))
    model.set_weights(current)
    return np.mean(outs, axis=0)


def test_snapshot_ensemble_predicts_feature_inputs_and_datasets():
    keras.utils.set_random_seed(0)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(8, 5)).astype("float32")
    y = np.arange(8) % 3
    model = keras.Sequential([keras.Input((5,)), keras.layers.Dense(4, activation="relu"), keras.layers.Dense(3)])
    snap = _fit_snapshots(model, x, y)
    expected = _by_hand(model, snap, x)
    members = snap.predict_members(x)  # was: ValueError "`images` must have shape (N, H, W, C)"
    assert members.shape == (2, 8, 3)
    assert not np.allclose(members[0], members[1])
    np.testing.assert_allclose(snap.predict(x), expected, rtol=1e-6, atol=1e-7)
    # tf.data datasets as keras.Model.predict takes them: bare inputs and (x, y) pairs
    for ds in (tf.data.Dataset.from_tensor_slices(x).batch(3), tf.data.Dataset.from_tensor_slices((x, y)).batch(3)):
        np.testing.assert_allclose(snap.predict(ds), expected, rtol=1e-6, atol=1e-7)
    # the model's weights are left as training left them
    np.testing.assert_array_equal(model.get_weights()[0], snap.snapshots[-1][0])
    with pytest.raises(ValueError, match="image input.*tta='flip'"):
        snap.predict(x, tta="flip")


def test_snapshot_ensemble_image_models_unchanged():
    keras.utils.set_random_seed(1)
    rng = np.random.default_rng(1)
    x = rng.normal(size=(8, 4, 4, 1)).astype("float32")
    y = np.arange(8) % 3
    model = keras.Sequential([keras.Input((4, 4, 1)), keras.layers.Flatten(), keras.layers.Dense(3)])
    snap = _fit_snapshots(model, x, y)
    np.testing.assert_allclose(snap.predict(x), _by_hand(model, snap, x), rtol=1e-6, atol=1e-7)
    # integer images keep the library's 1/255 scaling, and flip TTA still works
    xi = rng.integers(0, 256, size=(8, 4, 4, 1)).astype("uint8")
    np.testing.assert_allclose(snap.predict(xi), _by_hand(model, snap, xi.astype("float32") / 255.0),
                               rtol=1e-6, atol=1e-7)
    assert snap.predict(x, tta="flip").shape == (8, 3)


def _per_execution_model(steps_per_execution):
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)])
    model.compile(keras.optimizers.SGD(0.01), "mse", steps_per_execution=steps_per_execution)
    return model, np.ones((16, 4), np.float32), np.zeros((16, 2), np.float32)


def test_per_step_callbacks_refuse_steps_per_execution():
    """Keras runs batch callbacks once per execution: with steps_per_execution=4 WeightNoise drew one offset
    for 4 steps (`steps` == 2 after 8 optimizer steps) and ASWA averaged 2 of 8 steps, silently."""
    from tf_dlthesis.variability import StochasticWeightAveraging, WeightNoise

    for callback in (WeightNoise(0.01, seed=0), StochasticWeightAveraging("aswa")):
        model, x, y = _per_execution_model(4)
        with pytest.raises(ValueError, match="steps_per_execution=4"):
            model.fit(x, y, batch_size=2, epochs=1, verbose=0, callbacks=[callback])
    # one step per execution: every step is seen
    model, x, y = _per_execution_model(1)
    noise, aswa = WeightNoise(0.01, seed=0), StochasticWeightAveraging("aswa")
    model.fit(x, y, batch_size=2, epochs=1, verbose=0, callbacks=[noise, aswa])
    assert noise.steps == aswa.averaged == int(model.optimizer.iterations) == 8
    # plain SWA averages end-of-epoch weights only: any steps_per_execution is fine
    model, x, y = _per_execution_model(4)
    swa = StochasticWeightAveraging("swa")
    model.fit(x, y, batch_size=2, epochs=2, verbose=0, callbacks=[swa])
    assert swa.averaged == 2


def test_lm_protocol_takes_a_store_path_like_run_protocol(tmp_path):
    """`run_protocol(store="runs.sqlite")` opens a ResultsStore; run_lm_protocol failed with
    AttributeError: 'str' object has no attribute 'has' (and took any object, failing deep inside)."""
    from tf_dlthesis.variability._lm_corpus import load_corpus
    from tf_dlthesis.variability.language_model import LanguageModelSpec, run_lm_protocol

    with pytest.raises(TypeError, match="`store` must be a ResultsStore.*Received: store=42"):
        run_lm_protocol(LanguageModelSpec(vocab_size=50), sources=["init"], runs=2, store=42, executor="serial")
    try:
        load_corpus("fortunes", vocab_size=50)
    except FileNotFoundError:
        pytest.skip("the fortunes corpus is not installed")
    spec = LanguageModelSpec(vocab_size=50, train_tokens=400, embedding_dim=4, hidden=4, epochs=1, batch_size=4,
                             bptt=10, eval_batch=512)
    path = tmp_path / "lm.sqlite"
    first = run_lm_protocol(spec, sources=["init"], runs=2, store=str(path), executor="serial", progress=False,
                            bootstrap_samples=10)
    assert path.exists() and first.rows["init"]["runs"] == 2
    # resumed from the file (an os.PathLike this time): nothing is retrained, the same numbers come back
    again = run_lm_protocol(spec, sources=["init"], runs=2, store=path, executor="serial", progress=False,
                            bootstrap_samples=10)
    np.testing.assert_array_equal(again.target_log_probs["init"], first.target_log_probs["init"])
    assert again.info["init"][0]["seconds"] == first.info["init"][0]["seconds"]


@pytest.mark.parametrize("batch_size, error", [(0, ValueError), (2.5, TypeError), (True, TypeError)])
def test_layer_activations_checks_batch_size(batch_size, error):
    """batch_size=0 raised "range() arg 3 must not be zero", 2.5 "'float' object cannot be interpreted as an
    integer" (and True was read as 1): neither named the argument."""
    from tf_dlthesis.variability.cka import layer_activations, layer_cka

    model = keras.Sequential([keras.Input((5,)), keras.layers.Dense(3, name="h")])
    x = np.random.default_rng(0).normal(size=(6, 5)).astype("float32")
    with pytest.raises(error, match=f"`batch_size` must be an int >= 1. Received: batch_size={batch_size}"):
        layer_activations(model, x, batch_size=batch_size)
    with pytest.raises(error, match="`batch_size`"):
        layer_cka([model, model], x, batch_size=batch_size)
    assert layer_activations(model, x, batch_size=4)["h"].shape == (6, 3)


def test_layer_activations_feeds_token_ids_to_an_integer_input_model_as_given():
    import keras

    from tf_dlthesis.variability import layer_activations

    inputs = keras.Input((3,), dtype="int32")
    emb = keras.layers.Embedding(600, 2, name="emb")
    model = keras.Model(inputs, keras.layers.Dense(4, name="out")(keras.layers.Flatten()(emb(inputs))))
    ids = np.array([[0, 7, 599], [1, 2, 300]])  # ids above 255 were refused as "integer images", lower ones scaled
    acts = layer_activations(model, ids, ["emb"])
    table = emb.get_weights()[0]
    np.testing.assert_allclose(acts["emb"], table[ids].reshape(2, -1), rtol=1e-6)
    with pytest.raises(ValueError, match="integer input"):
        layer_activations(model, ids.astype(np.float32), ["emb"])
