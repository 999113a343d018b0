"""Audit 69 (models): the logits head computes in float32 under a mixed-precision policy."""

import json

import keras
import numpy as np
import pytest
import tensorflow as tf

from tf_dlthesis import models, runtime
from tf_dlthesis.robustness import RobustModel
from tf_dlthesis.variability.seed_plan import weights_hash

_SMALL = {"cnn": {"filters": (4, 8)}, "mlp": {"hidden": 8}, "resnet6": {"width_multiplier": 0.125},
          "preact_resnet6": {"width_multiplier": 0.125}, "shufflenet_v2_0.5": {"width_multiplier": 0.25,
                                                                              "repeats": (1, 1, 1)}}


def _build_under(policy, name="cnn", shape=(8, 8, 1), num_classes=3, **kwargs):
    keras.mixed_precision.set_global_policy(policy)
    try:
        return models.build(name, shape, num_classes, seed=0, **{**_SMALL.get(name, {}), **kwargs})
    finally:
        keras.mixed_precision.set_global_policy("float32")


def _images(n=4, shape=(8, 8, 1)):
    return np.random.default_rng(0).uniform(0, 1, (n,) + shape).astype("float32")


@pytest.mark.parametrize("policy", ["mixed_float16", "mixed_bfloat16"])
@pytest.mark.parametrize("name", ["linear", "mlp", "cnn", "resnet6", "preact_resnet6", "shufflenet_v2_0.5"])
def test_mixed_precision_models_return_float32_logits(policy, name):
    # Old: under a mixed policy every model's "logits" Dense computed in float16 / bfloat16, so the model
    # returned float16 / bfloat16 logits (against Keras's guidance: the output layer computes in float32).
    model = _build_under(policy, name)
    head = model.get_layer("logits")
    assert head.compute_dtype == "float32" and head.kernel.dtype == "float32"
    low = policy.split("_")[1]
    assert any(layer.compute_dtype == low for layer in model.layers if layer.name != "logits")  # body stays mixed
    out = model(_images())
    assert out.dtype == tf.float32 and np.isfinite(out.numpy()).all()


def test_mixed_float16_logits_beyond_float16_range_stay_finite():
    # Old: float16 logits overflowed to inf past 65504 (then softmax / cross-entropy gave NaN).
    model = _build_under("mixed_float16", "linear")
    head = model.get_layer("logits")
    head.kernel.assign(np.full(head.kernel.shape, 2000.0, "float32"))
    x = np.ones((2, 8, 8, 1), "float32")
    out = model(x).numpy()
    np.testing.assert_allclose(out, np.full((2, 3), 2000.0 * 64), rtol=1e-3)  # 128,000: not a float16
    loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)(np.array([0, 1]), out)
    assert np.isfinite(float(loss))


@pytest.mark.parametrize("name", ["linear", "cnn", "resnet6"])
def test_float32_policy_builds_are_unchanged(name):
    # The committed reports are float32: the head must build exactly as before (weights pinned by hash,
    # computed with the code before this fix; the head's config names the plain float32 policy).
    pinned = {"linear": "a0a01c40ede3afc0", "cnn": "ccb20c0b2e9a0089", "resnet6": "a72a656b56e7b425"}
    model = models.build(name, (8, 8, 1), 3, seed=0, **_SMALL.get(name, {}))
    if runtime.machine()["id"] == "6fba72b7cc9c":  # the class the hashes were computed on (CPU kernels round per ISA)
        assert weights_hash(model)[:16] == pinned[name]
    assert model.get_layer("logits").get_config()["dtype"]["config"] == {"name": "float32"}
    again = models.build(name, (8, 8, 1), 3, seed=0, **_SMALL.get(name, {}))
    assert json.dumps(model.get_config(), sort_keys=True) == json.dumps(again.get_config(), sort_keys=True)
    x = _images()
    np.testing.assert_array_equal(model(x).numpy(), again(x).numpy())


def test_mixed_float16_model_saves_and_loads_with_a_float32_head(tmp_path):
    model = _build_under("mixed_float16", "cnn")
    x = _images()
    path = str(tmp_path / "m.keras")
    model.save(path)
    for policy in ("mixed_float16", "float32"):  # the head's float32 is part of the saved config
        keras.mixed_precision.set_global_policy(policy)
        try:
            loaded = keras.models.load_model(path)
        finally:
            keras.mixed_precision.set_global_policy("float32")
        assert loaded.get_layer("logits").compute_dtype == "float32"
        assert loaded.get_layer("block1_conv1").compute_dtype == "float16"
        np.testing.assert_array_equal(loaded(x).numpy(), model(x).numpy())


def test_one_training_step_under_mixed_float16_with_the_library_losses():
    x, y = _images(8), np.arange(8) % 3
    model = _build_under("mixed_float16", "cnn")
    keras.mixed_precision.set_global_policy("mixed_float16")
    try:
        model.compile(keras.optimizers.SGD(0.1), loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
        history = model.fit(x, y, batch_size=8, epochs=1, verbose=0).history
        robust = RobustModel(_build_under("mixed_float16", "cnn"), "lrm", mixing=None, num_steps=1, seed=0,
                             epsilon=0.1)
        robust.compile(keras.optimizers.SGD(0.1))
        robust_history = robust.fit(x, y, batch_size=8, epochs=1, verbose=0).history
    finally:
        keras.mixed_precision.set_global_policy("float32")
    assert np.isfinite(history["loss"][0])
    assert all(np.isfinite(v[0]) for v in robust_history.values())
