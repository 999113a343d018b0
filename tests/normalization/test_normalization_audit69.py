"""Audit 69 (Chapter 4): the normalization layers inside real Keras training code, side by side with Keras's layers."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf

from tf_dlthesis import runtime
from tf_dlthesis.normalization import (
    BatchGroupNormalization,
    ExampleWeightedBatchNormalization,
    ExampleWeightedGroupNormalization,
    GhostBatchNormalization,
    apply_normalization_weight_decay,
)


def _x(shape, seed=0):
    return (np.random.RandomState(seed).randn(*shape) * 2.0 + 1.0).astype("float32")


def _grads(layer, x):
    xt = tf.constant(x)
    with tf.GradientTape() as tape:
        tape.watch(xt)
        loss = tf.reduce_sum(layer(xt, training=True) * tf.range(1.0, x.shape[-1] + 1.0))
    return [g.numpy() for g in tape.gradient(loss, [xt] + layer.trainable_weights)]


# ------------------------------------------------- a batch smaller than the ghost size
@pytest.mark.parametrize("make", [lambda: GhostBatchNormalization(4),
                                  lambda: GhostBatchNormalization(4, moving_update="sequential"),
                                  lambda: BatchGroupNormalization(groups=3, ghost_batch_size=4)])
@pytest.mark.parametrize("batch", [1, 3])
def test_gradient_of_a_batch_smaller_than_the_ghost_size_is_keras_bn_gradient(make, batch):
    # The whole batch is one (smaller) ghost batch, so training is Keras BN's on it. The
    # closed-form backward of the empty full-ghost-batch part divided tf.size(x) by
    # tf.size(mean), both 0: "InvalidArgumentError: Integer division by zero" on every
    # gradient (fit's last batch of 2 with B' = 3 crashed the epoch).
    x = _x((batch, 2, 2, 3))
    ours, keras_bn = make(), keras.layers.BatchNormalization()
    for g_ours, g_keras in zip(_grads(ours, x), _grads(keras_bn, x)):
        np.testing.assert_allclose(g_ours, g_keras, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(ours.moving_mean.numpy(), keras_bn.moving_mean.numpy(), rtol=1e-6, atol=1e-7)


def test_fit_whose_last_batch_is_smaller_than_the_ghost_size():
    x, y = _x((10, 4, 4, 3)), np.arange(10) % 2
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((4, 4, 3)), keras.layers.Conv2D(4, 1), GhostBatchNormalization(3),
                              BatchGroupNormalization(groups=2, ghost_batch_size=3),
                              keras.layers.GlobalAveragePooling2D(), keras.layers.Dense(2)])
    model.compile("sgd", keras.losses.SparseCategoricalCrossentropy(from_logits=True), steps_per_execution=4)
    history = model.fit(x, y, batch_size=4, epochs=1, verbose=0, shuffle=False, validation_data=(x, y))  # 4, 4, 2
    assert np.isfinite(history.history["loss"][0]) and np.isfinite(history.history["val_loss"][0])
    assert all(np.all(np.isfinite(w)) for w in model.get_weights())


# ------------------------------------------------- renorm in a non-float32 layer
@pytest.mark.parametrize("dtype", ["float16", "bfloat16", "float64"])
def test_renorm_layer_with_a_non_float32_dtype_builds_as_keras(dtype):
    # The renorm stddev initializer always returned float32: building a dtype="float16" /
    # "bfloat16" / "float64" renorm layer raised "ValueError: initial_value: Tensor conversion
    # requested dtype float16 for Tensor with dtype float32" (Keras's renorm layer builds).
    x = _x((6, 3, 3, 4))
    ours = ExampleWeightedBatchNormalization(renorm=True, dtype=dtype)
    ref = keras.layers.BatchNormalization(renorm=True, dtype=dtype)
    y_ours, y_ref = ours(x, training=True), ref(x, training=True)
    assert y_ours.dtype == y_ref.dtype == dtype
    assert [(w.name, w.dtype) for w in ours.weights] == [(w.name, w.dtype) for w in ref.weights]
    tol = 1e-2 if dtype in ("float16", "bfloat16") else 1e-5
    np.testing.assert_allclose(tf.cast(y_ours, "float32").numpy(), tf.cast(y_ref, "float32").numpy(), atol=tol)
    for a, b in zip(ours.weights, ref.weights):
        np.testing.assert_allclose(np.asarray(a.numpy(), "float32"), np.asarray(b.numpy(), "float32"), atol=tol)


# ------------------------------------------------- an empty local batch
_EMPTY_CASES = [lambda: ExampleWeightedBatchNormalization(), lambda: GhostBatchNormalization(3),
                lambda: BatchGroupNormalization(groups=2), lambda: ExampleWeightedGroupNormalization(2, 0.5)]


@pytest.mark.parametrize("make", _EMPTY_CASES)
def test_an_empty_batch_leaves_the_moving_statistics_unchanged(make):
    # A replica's share of a short last batch under MirroredStrategy is empty. Its training
    # step set the moving statistics to NaN (mean of nothing; Keras BN does the same, so the
    # replica's evaluate() returned NaN), and Ghost BN's averaged update pulled them toward 0.
    layer = make()
    layer.build((None, 2, 2, 4))
    layer.moving_mean.assign([1.0, 2.0, 3.0, 4.0])
    layer.moving_variance.assign([5.0, 6.0, 7.0, 8.0])
    step = tf.function(lambda a: layer(a, training=True), input_signature=[tf.TensorSpec([None, 2, 2, 4])])
    out = step(np.zeros((0, 2, 2, 4), "float32"))
    assert out.shape == (0, 2, 2, 4)
    layer(np.zeros((0, 2, 2, 4), "float32"), training=True)              # static empty batch (eager)
    np.testing.assert_array_equal(layer.moving_mean.numpy(), [1.0, 2.0, 3.0, 4.0])
    np.testing.assert_array_equal(layer.moving_variance.numpy(), [5.0, 6.0, 7.0, 8.0])
    step(_x((5, 2, 2, 4)))                                                # a non-empty batch still updates
    assert not np.allclose(layer.moving_mean.numpy(), [1.0, 2.0, 3.0, 4.0])


_MIRRORED_SHORT_LAST_BATCH = r"""
import numpy as np, keras, tensorflow as tf
cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
from tf_dlthesis.normalization import ExampleWeightedBatchNormalization, GhostBatchNormalization
strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
x = np.random.default_rng(0).normal(1.0, 2.0, size=(17, 4, 4, 3)).astype("float32")
y = np.arange(17) % 2
result = {}
for name, make in [("keras", keras.layers.BatchNormalization), ("ew_batch", ExampleWeightedBatchNormalization),
                   ("ghost", lambda: GhostBatchNormalization(3))]:
    with strategy.scope():
        keras.utils.set_random_seed(0)
        model = keras.Sequential([keras.Input((4, 4, 3)), make(), keras.layers.GlobalAveragePooling2D(),
                                  keras.layers.Dense(2)])
        model.compile("sgd", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    model.fit(x, y, batch_size=8, epochs=1, verbose=0, shuffle=False)   # batches 8, 8, 1: replica 1 gets 0 examples
    replicas = [v.numpy() for v in model.layers[0].moving_mean.value.values]
    result[name] = replicas, model.evaluate(x, y, batch_size=8, verbose=0)
ours, _ = result["ew_batch"]
keras_bn, _ = result["keras"]
np.testing.assert_allclose(ours[0], keras_bn[0], rtol=1e-6)           # the replica that saw data: as Keras
for name in ("ew_batch", "ghost"):
    replicas, loss = result[name]
    assert all(np.all(np.isfinite(r)) for r in replicas) and np.isfinite(loss), (name, replicas, loss)
    assert np.all(replicas[1] > 0.01), (name, replicas)                 # not decayed toward 0
print("SHORT_LAST_BATCH_OK")
"""


def test_mirrored_strategy_with_an_empty_replica_batch_keeps_finite_statistics():
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "CUDA_VISIBLE_DEVICES": ""}
    proc = subprocess.run([sys.executable, "-c", _MIRRORED_SHORT_LAST_BATCH], capture_output=True, text=True,
                          env=env, timeout=300)
    assert "SHORT_LAST_BATCH_OK" in proc.stdout, proc.stderr[-3000:]


# ------------------------------------------------- gamma / beta weight decay
def test_weight_decay_on_layers_without_gamma_and_beta_is_refused_not_counted():
    # Layers with center=False and scale=False have nothing to decay: the call returned 2
    # ("two layers regularized") and model.losses stayed empty, so the penalty silently never applied.
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3),
                              keras.layers.BatchNormalization(center=False, scale=False),
                              GhostBatchNormalization(2, center=False, scale=False)])
    with pytest.raises(ValueError, match=r"no normalization layer with gamma or beta.*2 normalization layer"):
        apply_normalization_weight_decay(model, 1e-3)
    mixed = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3),
                              keras.layers.BatchNormalization(center=False, scale=False),
                              GhostBatchNormalization(2, center=False)])
    assert apply_normalization_weight_decay(mixed, 0.5, gamma_center=1.0) == 1
    gamma = mixed.layers[2].gamma.numpy()
    np.testing.assert_allclose(float(sum(mixed.losses)), 0.5 * np.sum((gamma - 1.0) ** 2), rtol=1e-6)


# ------------------------------------------------- float32 numbers unchanged by this audit
# sha256 (first 16 hex digits) of the float32 bytes of: the eager training output, its
# gradients (input, gamma, beta) and every weight after it, the same through a tf.function
# with an unknown batch size (Keras fit's path), and the inference output. Computed with the
# code before audit 69 (batch 7: ghost batches 3+3+1, 2+2+2+1 and 4+3).
_PRE_AUDIT69 = {
    "ew_batch": "6cc04ba1bca64088",
    "ew_batch_renorm": "6f60dd1220192575",
    "ghost_3": "f2986a38be11b54b",
    "ghost_2_sequential": "f051dd55a75b6709",
    "batch_group": "b6822cdc9def6c51",
    "ew_group": "a2f517307b0423d3",
}
_CASES = {
    "ew_batch": lambda: ExampleWeightedBatchNormalization(example_weight=0.3),
    "ew_batch_renorm": lambda: ExampleWeightedBatchNormalization(
        example_weight=0.3, renorm=True, renorm_clipping={"rmax": 2.0, "rmin": 0.5, "dmax": 1.0}),
    "ghost_3": lambda: GhostBatchNormalization(3, example_weight=0.2),
    "ghost_2_sequential": lambda: GhostBatchNormalization(2, moving_update="sequential"),
    "batch_group": lambda: BatchGroupNormalization(groups=2, ghost_batch_size=4, example_weight=0.5),
    "ew_group": lambda: ExampleWeightedGroupNormalization(groups=2, example_weight=0.7),
}


@pytest.mark.skipif(runtime.machine()["id"] != "6fba72b7cc9c",
                    reason="digests computed on the Intel Xeon class 6fba72b7cc9c; TensorFlow's CPU kernels "
                           "round differently per instruction set, so other classes give other bits")
@pytest.mark.parametrize("name", sorted(_CASES))
def test_float32_single_device_numbers_are_bit_identical_to_before_audit69(name):
    x = (np.random.default_rng(0).normal(size=(7, 3, 2, 4)) * 3 + 1).astype("float32")
    layer = _CASES[name]()
    layer.build(x.shape)
    for i, w in enumerate(layer.weights):
        w.assign(np.linspace(0.5, 1.5, 4).astype("float32") + 0.1 * i)
    step = tf.function(lambda a: layer(a, training=True))
    parts = []
    for call in (lambda a: layer(a, training=True), step.get_concrete_function(tf.TensorSpec([None, 3, 2, 4]))):
        xt = tf.constant(x)
        with tf.GradientTape() as tape:
            tape.watch(xt)
            y = call(xt)
            loss = tf.reduce_sum(y * tf.range(1.0, 5.0))
        parts += [y] + tape.gradient(loss, [xt] + layer.trainable_weights) + [w.value for w in layer.weights]
    parts.append(layer(x, training=False))
    digest = hashlib.sha256(b"".join(np.asarray(p, np.float32).tobytes() for p in parts)).hexdigest()[:16]
    assert digest == _PRE_AUDIT69[name]
