"""Drop-in parity with Keras BN / GN (issue 14): masks, Batch Renormalization, groups, mixed precision, sync.

Each case mirrors one of Keras 3's own test cases, written independently, and
checks numbers against hand computations (NumPy) or Keras's own layer at
alpha = 0.
"""

import os
import subprocess
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf

from tf_dlthesis.normalization import (
    BatchGroupNormalization,
    ExampleWeightedBatchNormalization,
    ExampleWeightedGroupNormalization,
    GhostBatchNormalization,
    patch_model,
    sweep_example_weight,
)

EPS = 1e-3


def _rng(seed=0):
    return np.random.default_rng(seed)


# ------------------------------------------------------------------ masks
def _masked_stats(x, mask):
    """Per-channel mean / biased variance over the unmasked (B, T) positions of (B, T, C)."""
    m = mask.astype(bool)
    values = x[m]  # (count, C)
    return values.mean(0), values.var(0)


@pytest.mark.parametrize("layer_fn", [lambda: ExampleWeightedBatchNormalization(momentum=0.5),
                                      lambda: BatchGroupNormalization(-1, momentum=0.5)])
def test_masked_training_statistics_match_a_hand_computation(layer_fn):
    x = (_rng().normal(size=(4, 5, 3)) * 2 + 1).astype("float32")
    mask = np.array([[1, 1, 1, 0, 0], [1, 0, 0, 0, 0], [1, 1, 1, 1, 1], [0, 0, 0, 0, 0]], bool)
    layer = layer_fn()
    y = layer(x, training=True, mask=mask).numpy()
    mean, var = _masked_stats(x, mask)
    np.testing.assert_allclose(y, (x - mean) / np.sqrt(var + EPS), rtol=1e-4, atol=1e-4)  # every position
    np.testing.assert_allclose(layer.moving_mean.numpy(), 0.5 * mean, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(layer.moving_variance.numpy(), 0.5 + 0.5 * var, rtol=1e-5, atol=1e-6)


def test_masked_ghost_batches_and_group_norm_match_a_hand_computation():
    x = (_rng(1).normal(size=(4, 6, 4)) * 3).astype("float32")
    mask = _rng(2).uniform(size=(4, 6)) > 0.3
    mask[:, 0] = True
    # Ghost BN, B' = 2: statistics per pair of examples over their unmasked positions
    ghost = GhostBatchNormalization(2, momentum=0.0, center=False, scale=False)
    y = ghost(x, training=True, mask=mask).numpy()
    counts, means, vars_ = [], [], []
    for i in (0, 2):
        mean, var = _masked_stats(x[i:i + 2], mask[i:i + 2])
        np.testing.assert_allclose(y[i:i + 2], (x[i:i + 2] - mean) / np.sqrt(var + EPS), rtol=1e-4, atol=1e-4)
        counts.append(mask[i:i + 2].sum())
        means.append(mean)
        vars_.append(var)
    w = np.array(counts, float) / sum(counts)  # "averaged": weighted by the values each ghost batch saw
    np.testing.assert_allclose(ghost.moving_mean.numpy(), w @ np.array(means), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(ghost.moving_variance.numpy(), w @ np.array(vars_), rtol=1e-5, atol=1e-5)
    # Group Norm (2 groups of 2 channels): one statistic per example and group, unmasked positions only
    gn = ExampleWeightedGroupNormalization(2, center=False, scale=False)
    y = gn(x, training=True, mask=mask).numpy()
    for i in range(4):
        for grp in range(2):
            vals = x[i][mask[i]][:, 2 * grp:2 * grp + 2]
            ref = (x[i, :, 2 * grp:2 * grp + 2] - vals.mean()) / np.sqrt(vals.var() + EPS)
            np.testing.assert_allclose(y[i, :, 2 * grp:2 * grp + 2], ref, rtol=1e-4, atol=1e-4)


def test_masked_inference_uses_unmasked_positions_for_the_example_statistics():
    x = (_rng(3).normal(size=(2, 5, 3)) + 2).astype("float32")
    mask = np.array([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]], bool)
    layer = ExampleWeightedBatchNormalization(example_weight=1.0, center=False, scale=False)
    layer.build(x.shape)
    y = layer(x, training=False, mask=mask).numpy()
    for i in range(2):
        vals = x[i][mask[i]]
        np.testing.assert_allclose(y[i], (x[i] - vals.mean(0)) / np.sqrt(vals.var(0) + EPS), rtol=1e-4, atol=1e-4)
    layer.example_weight = 0.0  # alpha = 0: the mask changes nothing (Keras BN inference)
    np.testing.assert_array_equal(layer(x, training=False, mask=mask).numpy(), layer(x, training=False).numpy())


def test_fully_masked_input_gives_zeros_and_bad_mask_rank_is_rejected():
    for layer in (ExampleWeightedBatchNormalization(center=False, scale=False),
                  GhostBatchNormalization(2, center=False, scale=False)):
        y = layer(np.zeros((4, 5), "float32"), mask=np.zeros((4,), "float32"), training=True).numpy()
        np.testing.assert_array_equal(y, 0.0)
        assert np.all(np.isfinite(layer.moving_variance.numpy()))
    with pytest.raises(ValueError, match="mask"):
        ExampleWeightedBatchNormalization()(np.ones((2, 3, 4), "float32"), mask=np.ones((2, 3, 4)), training=True)


@pytest.mark.parametrize("steps", [3, 5])  # T == C (a wrong axis broadcast silently) and T != C
def test_mask_with_the_channel_axis_first_masks_the_right_axis(steps):
    # (B, C, T) with axis=1: the mask (B, T) is the input's shape without the channel axis. (Keras 3.15's
    # BN appends the channel dimension last, so it masks along the wrong axis here: compare with NumPy.)
    x = (_rng(4).normal(size=(2, 3, steps)) * 2 + 1).astype("float32")
    mask = np.zeros((2, steps), bool)
    mask[0, :2], mask[1, :1] = True, True
    values = np.moveaxis(x, 1, -1)[mask]  # (count, C): the unmasked (b, t) positions
    mean, var = values.mean(0), values.var(0)
    layer = ExampleWeightedBatchNormalization(axis=1, momentum=0.0, center=False, scale=False)
    y = layer(x, training=True, mask=mask).numpy()
    np.testing.assert_allclose(layer.moving_mean.numpy(), mean, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(layer.moving_variance.numpy(), var, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(y, (x - mean[:, None]) / np.sqrt(var[:, None] + EPS), rtol=1e-4, atol=1e-4)
    layer.example_weight = 1.0  # inference: each example's statistics over its own unmasked positions
    y = layer(x, training=False, mask=mask).numpy()
    for i in range(2):
        vals = x[i][:, mask[i]]
        ref = (x[i] - vals.mean(1, keepdims=True)) / np.sqrt(vals.var(1, keepdims=True) + EPS)
        np.testing.assert_allclose(y[i], ref, rtol=1e-4, atol=1e-4)


def test_a_keras_propagated_mask_with_the_channel_axis_first_matches_keras_bn():
    # Keras's Masking propagates the input's shape without the *last* axis: (B, C) for (B, C, T). When that
    # shape does not also fit (B, T), it is read as Keras BN reads it: mask[b, c] masks x[b, c, :].
    x = (_rng(5).normal(size=(4, 2, 3)) * 2 + 1).astype("float32")
    mask = np.array([[1, 0], [1, 1], [0, 1], [1, 1]], bool)
    keras_bn = keras.layers.BatchNormalization(axis=1, momentum=0.0)
    ours = ExampleWeightedBatchNormalization(axis=1, momentum=0.0)
    np.testing.assert_allclose(ours(x, training=True, mask=mask).numpy(),
                               keras_bn(x, training=True, mask=mask).numpy(), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(ours.moving_mean.numpy(), keras_bn.moving_mean.numpy(), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(ours.moving_variance.numpy(), keras_bn.moving_variance.numpy(), rtol=1e-5, atol=1e-6)


def test_a_mask_of_the_wrong_shape_is_rejected():
    x = np.ones((2, 3, 5), "float32")
    with pytest.raises(ValueError, match=r"without the channel axis 1, \(2, 5\).*mask.shape=\(2, 4\)"):
        ExampleWeightedBatchNormalization(axis=1)(x, mask=np.ones((2, 4), bool), training=True)


@pytest.mark.parametrize("make", [lambda: ExampleWeightedBatchNormalization(momentum=0.0),
                                  lambda: GhostBatchNormalization(5, momentum=0.0)])
def test_masked_values_are_ignored_through_fit(make):
    # Keras's test_bachnorm_ignore_masked_values, independently: padded sequences under a Masking layer.
    seq = np.array([[1, 5], [2, 5], [0, 0], [0, 0]], "float32")
    data = np.stack([seq] * 10)
    inputs = keras.Input((None, 2))
    norm = make()
    model = keras.Model(inputs, norm(keras.layers.Masking(0.0)(inputs)))
    model.compile("sgd", "mse")
    model.fit(data, data, batch_size=10, epochs=2, verbose=0)
    np.testing.assert_allclose(norm.moving_mean.numpy(), [1.5, 5.0], rtol=1e-5)   # (1 + 2) / 2, 5
    np.testing.assert_allclose(norm.moving_variance.numpy(), [0.25, 0.0], atol=1e-5)


# ---------------------------------------------------------------- renorm
def _renorm_pair(**kwargs):
    ours = ExampleWeightedBatchNormalization(renorm=True, **kwargs)
    ref = keras.layers.BatchNormalization(renorm=True, **kwargs)
    shape = (8, 3, 3, 4)
    ours.build(shape)
    ref.build(shape)
    rng = _rng(4)
    values = [rng.normal(1, 0.2, 4), rng.normal(0, 0.2, 4), rng.normal(0, 1, 4), rng.uniform(0.5, 2, 4)]
    values += [np.sqrt(values[3]), rng.normal(0, 1, 4), rng.uniform(0.5, 2, 4)]
    values = [v.astype("float32") for v in values]
    ours.set_weights(values)
    ref.set_weights(values)
    return ours, ref


@pytest.mark.parametrize("clipping", [None, {"rmax": 1.5, "rmin": 0.7, "dmax": 0.5}])
def test_renorm_equals_keras_batch_renormalization_at_alpha_0(clipping):
    ours, ref = _renorm_pair(momentum=0.9, renorm_momentum=0.8, renorm_clipping=clipping)
    assert [w.name for w in ours.weights] == [w.name for w in ref.weights]
    rng = _rng(5)
    for step in range(3):
        x = (rng.normal(size=(8, 3, 3, 4)) * 2 + 0.5).astype("float32")
        np.testing.assert_allclose(ours(x, training=True).numpy(), ref(x, training=True).numpy(), rtol=1e-5,
                                   atol=1e-5)
        for a, b in zip(ours.weights, ref.weights):
            np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-5, atol=1e-6, err_msg=f"{a.name} step {step}")
    np.testing.assert_allclose(ours(x, training=False).numpy(), ref(x, training=False).numpy(), rtol=1e-5, atol=1e-5)


def test_renorm_hand_computation_with_ghost_batches_and_alpha_at_inference():
    x = (_rng(6).normal(size=(4, 3)) * 2 + 1).astype("float32")
    layer = GhostBatchNormalization(2, renorm=True, momentum=0.9, renorm_momentum=0.8, center=False, scale=False,
                                    renorm_clipping={"rmax": 2.0, "dmax": 1.0})
    layer.build(x.shape)
    r_mean, r_std = np.array([0.5, -0.5, 0.0], "float32"), np.array([1.5, 0.8, 1.0], "float32")
    layer.renorm_mean.assign(r_mean)
    layer.renorm_stddev.assign(r_std)
    y = layer(x, training=True).numpy()
    means, stds = [], []
    for i in (0, 2):
        xb = x[i:i + 2]
        mu, sd = xb.mean(0), np.sqrt(xb.var(0) + EPS)
        r = np.minimum(sd / r_std, 2.0)
        d = np.clip((mu - r_mean) / r_std, -1.0, 1.0)
        np.testing.assert_allclose(y[i:i + 2], (xb - mu) / sd * r + d, rtol=1e-4, atol=1e-5)
        means.append(mu)
        stds.append(sd)
    mu_bar, sd_bar = np.mean(means, 0), np.mean(stds, 0)  # averaged over the ghost batches
    np.testing.assert_allclose(layer.renorm_mean.numpy(), 0.8 * r_mean + 0.2 * mu_bar, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(layer.renorm_stddev.numpy(), 0.8 * r_std + 0.2 * sd_bar, rtol=1e-5, atol=1e-6)
    moving_sd = 0.9 * 1.0 + 0.1 * sd_bar
    np.testing.assert_allclose(layer.moving_stddev.numpy(), moving_sd, rtol=1e-5)
    np.testing.assert_allclose(layer.moving_variance.numpy(), moving_sd ** 2 - EPS, rtol=1e-5)
    # inference: Eq. 4.3 on the moving statistics, alpha unchanged by renorm
    layer.example_weight = 0.5
    mm, mv = layer.moving_mean.numpy(), layer.moving_variance.numpy()
    mu = 0.5 * x + 0.5 * mm  # one value per channel and example (no spatial axis)
    var = 0.5 * 0.0 + 0.5 * mv + 0.25 * (x - mm) ** 2
    np.testing.assert_allclose(layer(x, training=False).numpy(), (x - mu) / np.sqrt(var + EPS), rtol=1e-4, atol=1e-5)


def test_renorm_arguments_are_validated_and_serialized():
    for bad, exc in (({"random_key": 1.0}, ValueError), ({"rmax": 0.0, "rmin": 1.0}, ValueError),
                     ({"dmax": -1.0}, ValueError), ("rmax", TypeError)):
        with pytest.raises(exc, match="renorm_clipping"):
            ExampleWeightedBatchNormalization(renorm=True, renorm_clipping=bad)
    with pytest.raises(ValueError, match="renorm_momentum"):
        ExampleWeightedBatchNormalization(renorm=True, renorm_momentum=1.5)
    layer = GhostBatchNormalization(4, renorm=True, renorm_clipping={"rmax": 3.0, "rmin": 0.3, "dmax": 5.0},
                                    renorm_momentum=0.95)
    config = layer.get_config()
    assert GhostBatchNormalization.from_config(config).get_config() == config
    layer.build((None, 5))
    assert len(layer.non_trainable_weights) == 5  # moving mean/var + moving_stddev, renorm_mean, renorm_stddev


# ---------------------------------------------------------------- groups
def test_group_norm_defaults_to_32_groups_and_minus_one_is_instance_norm():
    assert ExampleWeightedGroupNormalization().groups == 32
    x = np.array([[[-1.0, 1.0, 0.0, 2.0], [1.0, 3.0, -4.0, -2.0]]], "float32")
    inst = ExampleWeightedGroupNormalization(groups=-1, center=False, scale=False)
    y = inst(x, training=True).numpy()
    ref = (x - x.mean(1, keepdims=True)) / np.sqrt(x.var(1, keepdims=True) + EPS)
    np.testing.assert_allclose(y, ref, rtol=1e-5, atol=1e-5)
    assert inst.get_config()["groups"] == -1
    np.testing.assert_allclose(BatchGroupNormalization(-1, center=False, scale=False)(x, training=True).numpy(),
                               ref, rtol=1e-5, atol=1e-5)  # one example per batch here: BGN = instance norm
    for bad, error in ((0, ValueError), (-2, ValueError), (1.5, TypeError), ("32", TypeError), (True, TypeError)):
        with pytest.raises(error, match="groups"):
            ExampleWeightedGroupNormalization(groups=bad)
    with pytest.raises(ValueError, match="groups"):
        ExampleWeightedGroupNormalization(groups=5)(np.ones((2, 4), "float32"))


def test_default_group_norm_has_keras_gn_weights_and_loads_them():
    x = (_rng(9).normal(size=(2, 3, 8)) * 2 + 1).astype("float32")
    keras_gn = keras.layers.GroupNormalization(groups=4)
    keras_gn.build(x.shape)
    keras_gn.set_weights([_rng(10).normal(size=8).astype("float32") for _ in range(2)])
    ours = ExampleWeightedGroupNormalization(groups=4)
    ours.build(x.shape)
    assert [w.name for w in ours.weights] == [w.name for w in keras_gn.weights] == ["gamma", "beta"]
    ours.set_weights(keras_gn.get_weights())
    for training in (True, False):
        np.testing.assert_allclose(ours(x, training=training).numpy(), keras_gn(x).numpy(), rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="moving statistics"):
        ours.example_weight = 0.9
    with pytest.raises(ValueError, match="moving_statistics"):
        ExampleWeightedGroupNormalization(4, example_weight=0.5, moving_statistics=False)
    assert len(ExampleWeightedGroupNormalization(4, example_weight=0.9).get_config()) > 0
    tracked = ExampleWeightedGroupNormalization(4, moving_statistics=True)
    tracked.build(x.shape)
    assert [w.name for w in tracked.weights] == ["gamma", "beta", "moving_mean", "moving_variance"]
    old = {k: v for k, v in tracked.get_config().items() if k != "moving_statistics"}  # a config saved before
    assert ExampleWeightedGroupNormalization.from_config(old).moving_statistics


# ------------------------------------------------------- mixed precision
@pytest.mark.parametrize("make", [lambda: ExampleWeightedBatchNormalization(example_weight=0.3),
                                  lambda: GhostBatchNormalization(2, example_weight=0.3),
                                  lambda: BatchGroupNormalization(2, example_weight=0.3),
                                  lambda: ExampleWeightedGroupNormalization(2, example_weight=0.9)])
def test_mixed_precision_input_above_float16_max_gives_finite_output(make):
    keras.mixed_precision.set_global_policy("mixed_float16")
    try:
        layer = make()
        x = np.full((4, 3, 8), 70000.0, "float32")
        x[:, 0] += 1000.0
        for training in (True, False):
            out = layer(x, training=training)
            assert out.dtype == tf.float16
            assert np.all(np.isfinite(out.numpy())), training
        assert layer.moving_mean.dtype == "float32"
    finally:
        keras.mixed_precision.set_global_policy("float32")


# ----------------------------------------------------------- synchronized
def test_synchronized_is_refused_where_statistics_are_local():
    for make in (lambda: GhostBatchNormalization(4, synchronized=True),
                 lambda: ExampleWeightedGroupNormalization(4, synchronized=True)):
        with pytest.raises(ValueError, match="synchronized"):
            make()


_SYNC = r"""
import numpy as np, tensorflow as tf
cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
from tf_dlthesis.normalization import ExampleWeightedBatchNormalization, BatchGroupNormalization
strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
x = (np.random.default_rng(0).normal(size=(8, 3, 4)) * 2).astype("float32")
x[4:] += 3.0  # the replicas' halves differ: local statistics would differ from global ones
for make, groups in ((lambda: ExampleWeightedBatchNormalization(synchronized=True, momentum=0.0), 4),
                     (lambda: BatchGroupNormalization(2, synchronized=True, momentum=0.0), 2)):
    with strategy.scope():
        layer = make()
        layer.build((None, 3, 4))
    def step(v):
        with tf.GradientTape() as tape:
            tape.watch(v)
            y = layer(v, training=True)
            loss = tf.reduce_sum(y * tf.range(4, dtype=tf.float32))
        return y, tape.gradient(loss, v)
    halves = strategy.experimental_distribute_values_from_function(
        lambda ctx: tf.constant(x[4 * ctx.replica_id_in_sync_group:4 * (ctx.replica_id_in_sync_group + 1)]))
    y, g = strategy.run(tf.function(step), args=(halves,))
    y = np.concatenate([t.numpy() for t in strategy.experimental_local_results(y)])
    g = np.concatenate([t.numpy() for t in strategy.experimental_local_results(g)])
    xg = x.reshape(8, 3, groups, 4 // groups)
    mean, var = xg.mean((0, 1, 3), keepdims=True), xg.var((0, 1, 3), keepdims=True)
    ref = ((xg - mean) / np.sqrt(var + 1e-3)).reshape(x.shape)
    assert np.allclose(y, ref, atol=1e-4), np.abs(y - ref).max()
    # the gradient is the full-batch one (a single-device layer on the whole batch)
    plain = make.__call__().__class__.from_config({**layer.get_config(), "synchronized": False})
    plain.build((None, 3, 4))
    xt = tf.constant(x)
    with tf.GradientTape() as tape:
        tape.watch(xt)
        loss = tf.reduce_sum(plain(xt, training=True) * tf.range(4, dtype=tf.float32))
    assert np.allclose(g, tape.gradient(loss, xt).numpy(), atol=1e-4)
    mm = layer.moving_mean.values[0].numpy() if hasattr(layer.moving_mean, "values") else layer.moving_mean.numpy()
    assert np.allclose(mm, np.broadcast_to(mean.reshape(groups, 1), (groups, 4 // groups)).reshape(-1), atol=1e-5)
print("SYNC_OK")
"""


def test_synchronized_uses_global_batch_statistics_under_mirrored_strategy():
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "CUDA_VISIBLE_DEVICES": ""}
    proc = subprocess.run([sys.executable, "-c", _SYNC], capture_output=True, text=True, env=env, timeout=300)
    assert "SYNC_OK" in proc.stdout, proc.stderr[-3000:]


# ------------------------------------------------------ issue 15 (a)-(c)
_COND = r"""
import numpy as np, tensorflow as tf
from tf_dlthesis.normalization import GhostBatchNormalization
layer = GhostBatchNormalization(4)
layer.build((None, 4, 4, 3))
@tf.function(input_signature=[tf.TensorSpec([None, 4, 4, 3]), tf.TensorSpec([], tf.bool)])
def f(v, t):
    with tf.GradientTape() as tape:
        tape.watch(v)
        loss = tf.reduce_sum(layer(v, training=t) * tf.range(3, dtype=tf.float32))
    return tape.gradient(loss, v)
x = np.random.default_rng(0).normal(size=(10, 4, 4, 3)).astype("float32")
g = f(x, tf.constant(True))
assert g is not None and np.all(np.isfinite(g.numpy()))
assert np.allclose(f(x, tf.constant(False)).numpy(), f(x, tf.constant(False)).numpy())
print("COND_OK")
"""


def test_ghost_bn_with_tensor_training_and_ragged_batch_prints_no_type_inference_warning():
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "0", "CUDA_VISIBLE_DEVICES": ""}
    proc = subprocess.run([sys.executable, "-c", _COND], capture_output=True, text=True, env=env, timeout=300)
    assert "COND_OK" in proc.stdout, proc.stderr[-3000:]
    assert "Type inference failed" not in proc.stderr, proc.stderr[-3000:]


def test_tensor_training_flag_updates_statistics_only_when_true():
    layer = GhostBatchNormalization(2, momentum=0.5)
    x = (_rng(7).normal(size=(5, 3)) + 4).astype("float32")
    layer.build(x.shape)
    fn = tf.function(lambda v, t: layer(v, training=t))
    inference = fn(x, tf.constant(False)).numpy()
    np.testing.assert_array_equal(layer.moving_mean.numpy(), 0.0)
    np.testing.assert_allclose(inference, x / np.sqrt(1 + EPS), rtol=1e-5)
    fn(x, tf.constant(True))
    # ghost batches of 2, 2, 1 (averaged, weighted by size): the weighted mean is the batch mean
    np.testing.assert_allclose(layer.moving_mean.numpy(), 0.5 * x.mean(0), rtol=1e-5)


def test_sweep_example_weight_traces_once_per_shape_and_rejects_mismatched_lengths():
    # Seeded weights: the sweep's padded batches of 16 (traced) and model(x) on all 37 (eager) round the logits
    # differently (up to ~5e-7 here), so with random weights a near-tie could flip one argmax (about 1e-5 per
    # run). With these seeds the smallest top-2 logit gap is 0.075, far above any rounding difference.
    model = keras.Sequential([keras.Input((4, 4, 2)),
                              keras.layers.Conv2D(3, 3, kernel_initializer=keras.initializers.GlorotUniform(seed=1)),
                              ExampleWeightedBatchNormalization(), keras.layers.Flatten(),
                              keras.layers.Dense(3, kernel_initializer=keras.initializers.GlorotUniform(seed=2))])
    rng = _rng(8)
    x, y = rng.uniform(size=(37, 4, 4, 2)).astype("float32"), rng.integers(0, 3, 37)
    first = sweep_example_weight(model, (x, y), [0.0, 0.5, 1.0], batch_size=16)  # batches 16, 16, 5 (padded)
    sweep_example_weight(model, (x, y), [0.2], batch_size=16)
    [step] = model._tf_dlthesis_sweep_steps.values()
    assert step.experimental_get_tracing_count() == 1
    # the padded last batch changes nothing: per-example predictions as the plain model's
    logits = model(x, training=False).numpy()
    assert first["accuracy"][0] == pytest.approx(np.mean(logits.argmax(1) == y))
    with pytest.raises(ValueError, match=r"`dataset`.*37.*30"):
        sweep_example_weight(model, (x, y[:30]), [0.0])


def test_sweep_example_weight_reaches_keras_bn_layers_beside_this_packages():
    # a model with one package layer was taken as already example-weighted: its Keras BN stayed classical
    rng = np.random.default_rng(5)
    inputs = keras.Input((5,))
    h = GhostBatchNormalization(2, name="gbn")(keras.layers.Dense(8)(inputs))
    h = keras.layers.BatchNormalization(name="kbn")(h)
    model = keras.Model(inputs, keras.layers.Dense(3)(h))
    for name in ("gbn", "kbn"):
        model.get_layer(name).set_weights([np.ones(8, np.float32), np.zeros(8, np.float32),
                                           rng.normal(size=8).astype(np.float32),
                                           rng.uniform(0.5, 2, 8).astype(np.float32)])
    x, y = rng.normal(size=(20, 5)).astype(np.float32), rng.integers(0, 3, 20)
    got = sweep_example_weight(model, (x, y), [0.0, 1.0])
    want = sweep_example_weight(patch_model(model, 0.0), (x, y), [0.0, 1.0])
    np.testing.assert_allclose(got["cross_entropy"], want["cross_entropy"], rtol=1e-6)
    assert isinstance(model.get_layer("kbn"), keras.layers.BatchNormalization)  # the model itself is untouched


@pytest.mark.parametrize("keras_cls, ours_cls, kwargs", [
    (keras.layers.BatchNormalization, ExampleWeightedBatchNormalization, {}),
    (keras.layers.BatchNormalization, GhostBatchNormalization, {"ghost_batch_size": 2}),
    (keras.layers.GroupNormalization, ExampleWeightedGroupNormalization, {"groups": 2}),
])
def test_keras_model_weights_copy_into_ours_but_a_weights_h5_file_does_not_load(tmp_path, keras_cls, ours_cls,
                                                                                kwargs):
    # README ("Weights of a Keras model"): set_weights and tf.train.Checkpoint copy a Keras BN / GN model's
    # weights into the same model built with our layers; Keras 3's .weights.h5 keys layers by class name
    def model(norm, **kw):
        return keras.Sequential([keras.Input((4, 4, 4)), keras.layers.Conv2D(4, 3), norm(**kw),
                                 keras.layers.Flatten(), keras.layers.Dense(2)])

    source = model(keras_cls, **({"groups": 2} if keras_cls is keras.layers.GroupNormalization else {}))
    for w in source.layers[1].weights:
        w.assign(np.arange(1.0, 5.0, dtype="float32") * (3.0 if "variance" in w.name else 0.5))
    expected = [w.numpy() for w in source.weights]
    ours = model(ours_cls, **kwargs)
    ours.set_weights(source.get_weights())
    assert all(np.array_equal(a, b.numpy()) for a, b in zip(expected, ours.weights))
    path = tf.train.Checkpoint(model=source).save(str(tmp_path / "ckpt"))
    restored = model(ours_cls, **kwargs)
    tf.train.Checkpoint(model=restored).restore(path).assert_existing_objects_matched()
    assert all(np.array_equal(a, b.numpy()) for a, b in zip(expected, restored.weights))
    source.save_weights(str(tmp_path / "m.weights.h5"))
    with pytest.raises(ValueError, match="could not be loaded"):
        model(ours_cls, **kwargs).load_weights(str(tmp_path / "m.weights.h5"))
