"""Layers of tf_dlthesis.normalization against hand-computed references (thesis Ch. 4)."""

import os

import keras
import numpy as np
import pytest
import tensorflow as tf

from tf_dlthesis.normalization import (
    BatchGroupNormalization,
    ExampleWeightedBatchNormalization,
    ExampleWeightedGroupNormalization,
    GhostBatchNormalization,
)

EPS = 1e-3


def _data(shape=(8, 4, 4, 6), seed=0):
    rng = np.random.default_rng(seed)
    return (rng.normal(size=shape) * 3 + 1).astype("float32")


def _params(c, seed=1):
    rng = np.random.default_rng(seed)
    return [rng.normal(size=c).astype("float32"), rng.normal(size=c).astype("float32"),
            rng.normal(size=c).astype("float32"), rng.uniform(0.5, 2.0, size=c).astype("float32")]


def _np_norm(x, mean, var, gamma, beta, eps=EPS):
    return gamma * (x - mean) / np.sqrt(var + eps) + beta


def _built(layer, x, weights):
    layer.build(x.shape)
    layer.set_weights(weights)
    return layer


def test_alpha0_equals_keras_bn_inference():
    x = _data()
    w = _params(6)
    bn = _built(keras.layers.BatchNormalization(), x, w)
    ew = _built(ExampleWeightedBatchNormalization(), x, w)
    assert [v.name for v in ew.weights] == ["gamma", "beta", "moving_mean", "moving_variance"]
    # Equal up to float32 rounding (1 ulp: broadcasting kernels may fuse mul+add differently).
    np.testing.assert_allclose(ew(x, training=False).numpy(), bn(x, training=False).numpy(), rtol=1e-6, atol=1e-6)


def test_alpha1_equals_per_example_statistics():
    x = _data().astype(np.float64)
    g, b, mm, mv = _params(6)
    ew = _built(ExampleWeightedBatchNormalization(example_weight=1.0), x, [g, b, mm, mv])
    mean = x.mean(axis=(1, 2), keepdims=True)
    var = x.var(axis=(1, 2), keepdims=True)
    np.testing.assert_allclose(ew(x.astype("float32"), training=False).numpy(), _np_norm(x, mean, var, g, b),
                               rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("alpha", [0.1, 0.37, 0.8])
def test_intermediate_alpha_equals_eq_4_3(alpha):
    x = _data().astype(np.float64)
    g, b, mm, mv = _params(6)
    ew = _built(ExampleWeightedBatchNormalization(example_weight=alpha), x, [g, b, mm, mv])
    ex = x.mean(axis=(1, 2), keepdims=True)
    ex2 = (x ** 2).mean(axis=(1, 2), keepdims=True)
    mx, mx2 = mm, mv + mm ** 2  # m_{x^2} from a standard checkpoint
    mu = alpha * ex + (1 - alpha) * mx
    var = alpha * ex2 + (1 - alpha) * mx2 - mu ** 2
    np.testing.assert_allclose(ew(x.astype("float32"), training=False).numpy(), _np_norm(x, mu, var, g, b),
                               rtol=1e-4, atol=1e-4)


def test_training_equals_keras_bn_and_moving_update():
    x = _data()
    w = _params(6)
    bn = _built(keras.layers.BatchNormalization(momentum=0.9), x, w)
    ew = _built(ExampleWeightedBatchNormalization(momentum=0.9, example_weight=0.5), x, w)
    np.testing.assert_allclose(ew(x, training=True).numpy(), bn(x, training=True).numpy(), atol=1e-5)
    xd = x.astype(np.float64)
    np.testing.assert_allclose(ew.moving_mean.numpy(), 0.9 * w[2] + 0.1 * xd.mean(axis=(0, 1, 2)), rtol=1e-5)
    np.testing.assert_allclose(ew.moving_variance.numpy(), 0.9 * w[3] + 0.1 * xd.var(axis=(0, 1, 2)), rtol=1e-5)


@pytest.mark.parametrize("batch", [8, 7])
def test_ghost_equals_bn_per_ghost_batch(batch):
    x = _data((batch, 3, 3, 4)).astype(np.float64)
    g, b, mm, mv = _params(4)
    layer = _built(GhostBatchNormalization(3, momentum=0.5), x, [g, b, mm, mv])
    out = layer(x.astype("float32"), training=True).numpy()
    expected, means, variances = [], [], []
    for start in range(0, batch, 3):
        chunk = x[start:start + 3]
        m, v = chunk.mean(axis=(0, 1, 2)), chunk.var(axis=(0, 1, 2))
        expected.append(_np_norm(chunk, m, v, g, b))
        means.append((len(chunk), m))
        variances.append((len(chunk), v))
    np.testing.assert_allclose(out, np.concatenate(expected), rtol=1e-4, atol=1e-4)
    # "averaged" moving update: ghost statistics weighted by their sizes.
    avg_m = sum(n * m for n, m in means) / batch
    avg_v = sum(n * v for n, v in variances) / batch
    np.testing.assert_allclose(layer.moving_mean.numpy(), 0.5 * mm + 0.5 * avg_m, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(layer.moving_variance.numpy(), 0.5 * mv + 0.5 * avg_v, rtol=1e-4, atol=1e-5)


def test_ghost_sequential_moving_update():
    x = _data((6, 2, 2, 3)).astype(np.float64)
    layer = GhostBatchNormalization(2, momentum=0.8, moving_update="sequential")
    layer.build(x.shape)
    layer(x.astype("float32"), training=True)
    m = np.zeros(3)
    for start in range(0, 6, 2):
        m = 0.8 * m + 0.2 * x[start:start + 2].mean(axis=(0, 1, 2))
    np.testing.assert_allclose(layer.moving_mean.numpy(), m, rtol=1e-4, atol=1e-6)


def test_ghost_training_as_tensor_and_dynamic_batch():
    x = _data((8, 2, 2, 3))
    layer = GhostBatchNormalization(4)
    layer.build(x.shape)
    fn = tf.function(lambda v, t: layer(v, training=t),
                     input_signature=[tf.TensorSpec([None, 2, 2, 3]), tf.TensorSpec([], tf.bool)])
    got = fn(x, tf.constant(True)).numpy()
    ref = np.concatenate([_np_norm(x[i:i + 4], x[i:i + 4].mean((0, 1, 2)), x[i:i + 4].var((0, 1, 2)), 1, 0)
                          for i in (0, 4)])
    np.testing.assert_allclose(got, ref, rtol=1e-4, atol=1e-4)
    odd = fn(x[:6], tf.constant(True)).numpy()  # 6 = 4 + 2: smaller last ghost batch
    ref6 = np.concatenate([_np_norm(c, c.mean((0, 1, 2)), c.var((0, 1, 2)), 1, 0) for c in (x[:4], x[4:6])])
    np.testing.assert_allclose(odd, ref6, rtol=1e-4, atol=1e-4)
    inf = fn(x, tf.constant(False)).numpy()
    np.testing.assert_allclose(inf, _np_norm(x, layer.moving_mean.numpy(), layer.moving_variance.numpy(), 1, 0),
                               rtol=1e-4, atol=1e-4)


def test_group_variant_equals_keras_group_normalization():
    x = _data((4, 5, 5, 8))
    gn = keras.layers.GroupNormalization(groups=4, epsilon=EPS)
    gn.build(x.shape)
    rng = np.random.default_rng(3)
    gn.set_weights([rng.normal(size=8).astype("float32"), rng.normal(size=8).astype("float32")])
    ew = ExampleWeightedGroupNormalization(4)
    ew.build(x.shape)
    ew.gamma.assign(gn.gamma)
    ew.beta.assign(gn.beta)
    np.testing.assert_allclose(ew(x, training=True).numpy(), gn(x).numpy(), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(ew(x, training=False).numpy(), gn(x).numpy(), rtol=1e-5, atol=1e-5)


def test_batch_group_statistics_pool_examples_and_channels():
    x = _data((4, 3, 3, 6)).astype(np.float64)
    layer = BatchGroupNormalization(groups=3, ghost_batch_size=2, center=False, scale=False)
    layer.build(x.shape)
    out = layer(x.astype("float32"), training=True).numpy()
    ref = np.empty_like(x)
    for s in (0, 2):
        for k in range(3):
            blk = x[s:s + 2, :, :, 2 * k:2 * k + 2]
            ref[s:s + 2, :, :, 2 * k:2 * k + 2] = (blk - blk.mean()) / np.sqrt(blk.var() + EPS)
    np.testing.assert_allclose(out, ref, rtol=1e-4, atol=1e-4)


def test_variance_nonnegative_with_large_offset_under_xla():
    # E[x^2] - E[x]^2 cancels catastrophically for large offsets; the layer
    # must stay finite and non-negative (two-pass / blended form).
    x = (1e4 + np.random.default_rng(0).normal(size=(4, 2, 2, 3)) * 1e-3).astype("float32")
    layer = ExampleWeightedBatchNormalization(example_weight=0.5, epsilon=1e-6)
    layer.build(x.shape)
    layer.moving_mean.assign(np.full(3, 1e4, "float32"))
    layer.moving_variance.assign(np.zeros(3, "float32"))
    fn = tf.function(lambda v: layer(v, training=False), jit_compile=True)
    out = fn(x).numpy()
    assert np.all(np.isfinite(out))
    train = tf.function(lambda v: layer(v, training=True), jit_compile=True)(x).numpy()
    assert np.all(np.isfinite(train))


def test_mixed_precision_statistics_in_float32():
    keras.mixed_precision.set_global_policy("mixed_float16")
    try:
        layer = GhostBatchNormalization(2, example_weight=0.3)
        x = (_data((4, 2, 2, 3)) * 100).astype("float16")
        out = layer(x, training=True)
        assert out.dtype == tf.float16
        assert layer.moving_mean.dtype == "float32" and layer.gamma.dtype == "float32"
        assert np.all(np.isfinite(layer(x, training=False).numpy()))
    finally:
        keras.mixed_precision.set_global_policy("float32")


def test_keras_roundtrip_safe_mode(tmp_path):
    inputs = keras.Input((4, 4, 6))
    h = GhostBatchNormalization(2, example_weight=0.25)(inputs)
    h = BatchGroupNormalization(3, ghost_batch_size=2, example_weight=0.5)(h)
    h = ExampleWeightedGroupNormalization(2, example_weight=0.9)(h)
    h = ExampleWeightedBatchNormalization(example_weight=0.1)(h)
    model = keras.Model(inputs, h)
    x = _data()
    model(x, training=True)
    path = tmp_path / "m.keras"
    model.save(path)
    loaded = keras.models.load_model(path, safe_mode=True)
    np.testing.assert_allclose(loaded(x, training=False).numpy(), model(x, training=False).numpy(), atol=1e-6)
    assert loaded.layers[1].example_weight == 0.25 and loaded.layers[3].groups == 2


_MIRRORED = r"""
import numpy as np, keras, tensorflow as tf
cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
from tf_dlthesis.normalization import GhostBatchNormalization, set_example_weight
strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
with strategy.scope():
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(6), GhostBatchNormalization(2),
                              keras.layers.Dense(2)])
    model.compile("sgd", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
x = np.random.default_rng(0).normal(size=(16, 4)).astype("float32")
y = (x[:, 0] > 0).astype("int64")
model.fit(x, y, batch_size=8, epochs=2, verbose=0)
a = model.predict(x, verbose=0)
set_example_weight(model, 0.5)
b = model.predict(x, verbose=0)
assert np.all(np.isfinite(a)) and not np.allclose(a, b)
assert not np.allclose(model.layers[1].moving_mean.numpy(), 0)
import sys
# importing tf_dlthesis.normalization must not pull in tf_slim / tf_keras (only .slim does)
assert "tf_slim" not in sys.modules and "tf_keras" not in sys.modules, "slim imported"
print("MIRRORED_OK")
"""


def test_mirrored_strategy_two_cpus_and_no_slim_import():
    import subprocess
    import sys

    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "CUDA_VISIBLE_DEVICES": ""}
    proc = subprocess.run([sys.executable, "-c", _MIRRORED], capture_output=True, text=True, env=env, timeout=300)
    assert "MIRRORED_OK" in proc.stdout, proc.stderr[-3000:]


@pytest.mark.parametrize(
    "make, exc",
    [
        (lambda: GhostBatchNormalization(0), ValueError),
        (lambda: GhostBatchNormalization(-4), ValueError),
        (lambda: GhostBatchNormalization(2.5), TypeError),
        (lambda: ExampleWeightedBatchNormalization(example_weight=1.5), ValueError),
        (lambda: ExampleWeightedBatchNormalization(example_weight=-0.1), ValueError),
        (lambda: ExampleWeightedBatchNormalization(example_weight="a"), TypeError),
        (lambda: ExampleWeightedBatchNormalization(moving_update="bogus"), ValueError),
        (lambda: BatchGroupNormalization(0), ValueError),
        (lambda: ExampleWeightedBatchNormalization(axis=1.5), TypeError),
    ],
)
def test_bad_arguments(make, exc):
    with pytest.raises(exc):
        make()


@pytest.mark.parametrize(
    "make, exc, match",
    [
        (lambda: ExampleWeightedBatchNormalization(momentum="a"), ValueError, "momentum='a'"),
        (lambda: ExampleWeightedBatchNormalization(momentum=None), ValueError, "momentum=None"),
        (lambda: GhostBatchNormalization(4, momentum=1.5), ValueError, "momentum=1.5"),
        (lambda: ExampleWeightedBatchNormalization(epsilon=float("nan")), ValueError, "epsilon=nan"),
        (lambda: ExampleWeightedBatchNormalization(epsilon=float("inf")), ValueError, "epsilon=inf"),
        (lambda: ExampleWeightedBatchNormalization(epsilon="a"), ValueError, "epsilon='a'"),
        (lambda: ExampleWeightedBatchNormalization(example_weight="a", moving_statistics=False), TypeError,
         "example_weight='a'"),
        (lambda: ExampleWeightedGroupNormalization(2, example_weight=None, moving_statistics=False), TypeError,
         "example_weight=None"),
    ],
)
def test_bad_numeric_arguments_name_the_value(make, exc, match):
    with pytest.raises(exc, match=match):
        make()


@pytest.mark.parametrize(
    "layer, shape",
    [
        (lambda: BatchGroupNormalization(4), (2, 3, 3, 6)),
        (lambda: ExampleWeightedGroupNormalization(5), (2, 3, 3, 6)),
        (lambda: ExampleWeightedBatchNormalization(axis=0), (2, 3)),
        (lambda: ExampleWeightedBatchNormalization(axis=4), (2, 3, 3, 6)),
    ],
)
def test_bad_groups_or_axis(layer, shape):
    with pytest.raises(ValueError, match="groups|axis"):
        layer().build(shape)


def test_channels_first_axis():
    x = _data((4, 6, 3, 3))
    w = _params(6)
    bn = _built(keras.layers.BatchNormalization(axis=1), x, w)
    ew = _built(ExampleWeightedBatchNormalization(axis=1), x, w)
    np.testing.assert_allclose(ew(x, training=True).numpy(), bn(x, training=True).numpy(), atol=1e-5)
    np.testing.assert_allclose(ew(x, training=False).numpy(), bn(x, training=False).numpy(), rtol=1e-5, atol=1e-5)


def test_set_alpha_no_retrace():
    layer = ExampleWeightedBatchNormalization()
    x = _data()
    layer.build(x.shape)
    fn = tf.function(lambda v: layer(v, training=False))
    a = fn(x).numpy()
    layer.example_weight = 0.7
    b = fn(x).numpy()
    assert fn.experimental_get_tracing_count() == 1
    assert not np.allclose(a, b)


def test_batch_group_gradients_match_reshape_reference():
    # Forward and backward of the pooled (per-channel -> group) statistics equal
    # a direct reshape + tf.nn.moments implementation, also with a dynamic batch.
    rng = np.random.default_rng(0)
    x = tf.constant((rng.normal(size=(4, 3, 3, 8)) * 2 + 1).astype("float32"))
    w = tf.constant(rng.normal(size=(4, 3, 3, 8)).astype("float32"))
    layer = BatchGroupNormalization(4, ghost_batch_size=2, center=False, scale=False)

    def ref(v):
        vr = tf.reshape(v, [-1, 2, 3, 3, 4, 2])
        m, s = tf.nn.moments(vr, [1, 2, 3, 5], keepdims=True)
        return tf.reshape((vr - m) / tf.sqrt(s + EPS), tf.shape(v))

    @tf.function(input_signature=[tf.TensorSpec([None, 3, 3, 8])])
    def both(v):
        with tf.GradientTape(persistent=True) as tape:
            tape.watch(v)
            a, b = layer(v, training=True), ref(v)
            la, lb = tf.reduce_sum(a * w), tf.reduce_sum(b * w)
        return a, b, tape.gradient(la, v), tape.gradient(lb, v)

    a, b, ga, gb = both(x)
    np.testing.assert_allclose(a.numpy(), b.numpy(), atol=1e-5)
    np.testing.assert_allclose(ga.numpy(), gb.numpy(), atol=1e-5)


@pytest.mark.parametrize("axis", [1, 2, -1])
def test_any_channel_axis_ghost_training_and_weighted_inference(axis):
    # The flat (n, k, C[, r]) view must give the same statistics whatever the
    # channel position: channels first (r > 1), in the middle (k and r > 1), last.
    x = _data((7, 4, 5, 3)).astype(np.float64)
    c_axis = axis % 4
    c = x.shape[c_axis]
    g, b, mm, mv = _params(c)
    layer = _built(GhostBatchNormalization(3, axis=axis, momentum=0.5), x, [g, b, mm, mv])
    pshape = [1, 1, 1, 1]
    pshape[c_axis] = c
    red = tuple(i for i in range(4) if i != c_axis)
    gp, bp = g.reshape(pshape), b.reshape(pshape)
    expected = [_np_norm(ch, ch.mean(red, keepdims=True), ch.var(red, keepdims=True), gp, bp)
                for ch in (x[0:3], x[3:6], x[6:7])]
    # dynamic batch and spatial sizes exercise the run-time shape arithmetic
    spec = [None] * 4
    spec[c_axis] = c
    fn = tf.function(lambda v: layer(v, training=True), input_signature=[tf.TensorSpec(spec)])
    np.testing.assert_allclose(fn(x.astype("float32")).numpy(), np.concatenate(expected), rtol=1e-4, atol=1e-4)

    alpha = 0.4
    mm2, mv2 = layer.moving_mean.numpy().reshape(pshape), layer.moving_variance.numpy().reshape(pshape)
    layer.example_weight = alpha
    red_e = tuple(i for i in range(1, 4) if i != c_axis)
    mu = alpha * x.mean(red_e, keepdims=True) + (1 - alpha) * mm2
    ex2 = alpha * (x ** 2).mean(red_e, keepdims=True) + (1 - alpha) * (mv2 + mm2 ** 2)  # Eq. 4.3
    np.testing.assert_allclose(layer(x.astype("float32"), training=False).numpy(),
                               _np_norm(x, mu, ex2 - mu ** 2, gp, bp), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("axis", [1, 2, -1])
def test_any_channel_axis_batch_group(axis):
    # Channel groups split the channel axis of the flat view; check them at every position.
    c_axis = axis % 4
    shape = [5, 3, 4, 2]
    shape[c_axis] = 6
    x = _data(tuple(shape)).astype(np.float64)
    g, b, mm, mv = _params(6)
    layer = _built(BatchGroupNormalization(2, ghost_batch_size=2, axis=axis, momentum=0.5), x, [g, b, mm, mv])
    out = layer(x.astype("float32"), training=True).numpy()
    pshape = [1, 1, 1, 1]
    pshape[c_axis] = 6
    expected = np.empty_like(x)
    for start in range(0, 5, 2):
        for grp in range(2):
            index = [slice(start, start + 2), slice(None), slice(None), slice(None)]
            index[c_axis] = slice(3 * grp, 3 * grp + 3)
            chunk = x[tuple(index)]
            expected[tuple(index)] = (chunk - chunk.mean()) / np.sqrt(chunk.var() + EPS)
    expected = expected * g.reshape(pshape) + b.reshape(pshape)
    np.testing.assert_allclose(out, expected, rtol=1e-4, atol=1e-4)


def _reference_training(x, gamma, beta, axis, ghost, groups):
    """Plain TF implementation (moved axes, a loop over ghost batches, tf.nn.moments)."""
    rank = len(x.shape)
    axis = axis % rank
    perm = [i for i in range(rank) if i != axis] + [axis]
    xt = tf.transpose(x, perm)
    c = xt.shape[-1]
    size = ghost or xt.shape[0]
    outs = []
    for start in range(0, xt.shape[0], size):
        chunk = xt[start:start + size]
        shape = tf.shape(chunk)
        grouped = tf.reshape(chunk, [shape[0], -1, groups, c // groups])
        m, v = tf.nn.moments(grouped, [0, 1, 3], keepdims=True)
        outs.append(tf.reshape((grouped - m) / tf.sqrt(v + EPS), shape) * gamma + beta)
    return tf.transpose(tf.concat(outs, 0), np.argsort(perm))


@pytest.mark.parametrize("layer_kwargs, shape", [
    ({"axis": -1}, (6, 3, 3, 4)),                                   # BN
    ({"ghost_batch_size": 3, "axis": -1}, (7, 3, 3, 4)),            # Ghost BN, padded last ghost batch
    ({"ghost_batch_size": 2, "groups": 2, "axis": 1}, (6, 4, 3, 2)),  # Batch Group Norm, channels first
    ({"ghost_batch_size": 1, "groups": 3, "axis": 2}, (4, 3, 6, 2)),  # Group Norm, channels in the middle
])
def test_training_gradients_match_autodiff_reference(layer_kwargs, shape):
    # The closed-form backward (dx, dgamma, dbeta) against automatic
    # differentiation of a plain implementation, eagerly and under XLA.
    from tf_dlthesis.normalization._base import ExampleGroupNormalization

    rng = np.random.default_rng(3)
    x = tf.constant((rng.normal(size=shape) * 2 + 1).astype("float32"))
    w = tf.constant(rng.normal(size=shape).astype("float32"))
    layer = ExampleGroupNormalization(**layer_kwargs)
    layer.build(shape)
    c = shape[layer_kwargs["axis"]]
    layer.gamma.assign(rng.normal(size=c).astype("float32"))
    layer.beta.assign(rng.normal(size=c).astype("float32"))
    groups = layer_kwargs.get("groups", c)

    def grads(fn):
        with tf.GradientTape() as tape:
            tape.watch(x)
            out = fn()
            loss = tf.reduce_sum(tf.sin(out) * w)
        return [out, *tape.gradient(loss, [x, layer.gamma.value, layer.beta.value])]

    ref = grads(lambda: _reference_training(x, layer.gamma.value, layer.beta.value, layer_kwargs["axis"],
                                            layer_kwargs.get("ghost_batch_size"), groups))
    ours = grads(lambda: layer(x, training=True))
    xla = tf.function(lambda: grads(lambda: layer(x, training=True)), jit_compile=True)()
    for got in (ours, xla):
        for a, b in zip(got, ref):
            np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-4, atol=2e-4)


def test_example_statistics_stay_accurate_far_from_zero():
    # mean / std = 1000: the former one-pass E[x^2] - E[x]^2 erred by 0.15-0.35 here (float32 cancellation);
    # the two-pass form is as accurate as Keras GN (~2e-4 against a float64 reference of the same input).
    rng = np.random.default_rng(0)
    x = (1000.0 + rng.normal(size=(4, 8, 8, 8))).astype("float32")
    x64 = x.astype(np.float64)
    g = x64.reshape(4, 8, 8, 2, 4)  # 2 groups of 4 channels
    gn_ref = ((g - g.mean((1, 2, 4), keepdims=True)) / np.sqrt(g.var((1, 2, 4), keepdims=True) + EPS)).reshape(x.shape)
    ew = ExampleWeightedGroupNormalization(2)
    np.testing.assert_allclose(ew(x, training=False).numpy(), gn_ref, atol=1e-3)
    np.testing.assert_allclose(ew(x, training=False).numpy(), keras.layers.GroupNormalization(2)(x).numpy(), atol=1e-3)
    # Eq. 4.3 at alpha = 0.5 with moving statistics near the data (per channel, Batch Norm)
    mm, mv = np.full(8, 1000.5), np.full(8, 2.0)
    bn = _built(ExampleWeightedBatchNormalization(example_weight=0.5, center=False, scale=False), x,
                [mm.astype("float32"), mv.astype("float32")])
    mu_e, var_e = x64.mean((1, 2), keepdims=True), x64.var((1, 2), keepdims=True)
    mu = 0.5 * mu_e + 0.5 * mm
    var = 0.5 * (var_e + mu_e ** 2) + 0.5 * (mv + mm ** 2) - mu ** 2
    np.testing.assert_allclose(bn(x, training=False).numpy(), (x64 - mu) / np.sqrt(var + EPS), atol=1e-3)


@pytest.mark.parametrize("jit", [False, True])
def test_alpha0_is_classical_inference_for_non_finite_and_huge_values(jit):
    # 0 * inf = NaN: the example's moments must not reach the output at alpha = 0 (Keras BN's output there)
    x = np.random.default_rng(0).normal(size=(2, 4, 3)).astype("float32")
    x[0, 1, 0], x[1, 2, 1], x[1, 0, 2] = np.inf, np.nan, 2e19  # 2e19 ** 2 overflows float32
    w = _params(3)
    bn = _built(keras.layers.BatchNormalization(), x, w)
    ew = _built(ExampleWeightedBatchNormalization(example_weight=0.0), x, w)
    run = tf.function(lambda v: ew(v, training=False), jit_compile=True) if jit else (lambda v: ew(v, training=False))
    expected = bn(x, training=False).numpy()
    out = run(x).numpy()
    assert np.isfinite(expected).sum() == x.size - 2  # only the inf and the NaN themselves
    np.testing.assert_array_equal(np.isfinite(out), np.isfinite(expected))
    np.testing.assert_allclose(out, expected, rtol=1e-6, atol=1e-6)  # equal_nan: inf/NaN in the same places
    ew.example_weight = 0.5  # alpha > 0: the example statistics of the affected channels are non-finite
    assert not np.isfinite(run(x).numpy()[0, :, 0]).any()
