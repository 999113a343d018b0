"""Audit 67: retroactive example weighing (Keras, TF-Slim, GraphDef), Precise BN, gamma/beta decay, diagnostics.

Every expected value is computed in NumPy from the thesis's formulas (Eq. 4.2,
Eq. 4.3), not by the code under test.
"""

import numpy as np
import pytest
import tensorflow as tf


def _eq43(x, gamma, beta, mm, mv, alpha, channel_axis, eps):
    """Thesis Eq. 4.3 in float64: the example's own moments (over its spatial axes) blended with the moving ones."""
    x = x.astype(np.float64)
    shape = [1] * x.ndim
    shape[channel_axis] = -1
    gamma, beta, mm, mv = (np.asarray(p, np.float64).reshape(shape) for p in (gamma, beta, mm, mv))
    spatial = tuple(a for a in range(1, x.ndim) if a != channel_axis)
    mu_e = x.mean(spatial, keepdims=True) if spatial else x
    x2_e = (x ** 2).mean(spatial, keepdims=True) if spatial else x ** 2
    mu = alpha * mu_e + (1 - alpha) * mm
    var = alpha * x2_e + (1 - alpha) * (mv + mm ** 2) - mu ** 2
    return gamma * (x - mu) / np.sqrt(var + eps) + beta


# --------------------------------------------------------------------- TF-Slim
def _assign_random(sess, rng):
    values = {}
    for v in tf.compat.v1.global_variables():
        name = v.op.name.rsplit("/", 1)[-1]
        c = v.shape.as_list()
        val = rng.uniform(0.5, 2.0, c) if name in ("moving_variance", "gamma") else rng.normal(0, 0.5, c)
        sess.run(v.assign(val.astype(np.float32)))
        values[name] = val.astype(np.float32)
    return values


@pytest.mark.parametrize("shape, updates", [((5, 4), "update_ops"), ((3, 3, 3, 4), None)])
def test_slim_batch_norm_on_the_fused_path_and_with_reused_variables(shape, updates):
    # TF-Slim's fused path (rank-2 inputs as after slim.fully_connected, or
    # updates_collections=None) failed on TF 2.21 with "ops has no attribute
    # 'Tensor'"; and an inference tower reusing the training tower's variables
    # (reuse=True) then found no moving statistics ("Could not find ...").
    slim_mod = pytest.importorskip("tf_dlthesis.normalization.slim")
    tf_slim = pytest.importorskip("tf_slim")
    updates = tf.compat.v1.GraphKeys.UPDATE_OPS if updates == "update_ops" else None
    rng = np.random.default_rng(0)
    x = (rng.normal(size=shape) * 2 + 1).astype("float32")
    with tf.Graph().as_default():
        inp = tf.compat.v1.placeholder(tf.float32, [None, *shape[1:]])
        common = dict(scope="bn", scale=True, epsilon=1e-3, updates_collections=updates)
        tf_slim.batch_norm(inp, is_training=True, **common)  # the training tower creates the variables
        n_vars = len(tf.compat.v1.global_variables())
        stock = tf_slim.batch_norm(inp, is_training=False, reuse=True, **common)
        weighted = slim_mod.batch_norm(inp, is_training=False, reuse=True, example_weight=0.3, **common)
        assert len(tf.compat.v1.global_variables()) == n_vars  # reused, not created
        with tf.compat.v1.Session() as sess:
            sess.run(tf.compat.v1.global_variables_initializer())
            p = _assign_random(sess, rng)
            out_stock, out = sess.run([stock, weighted], {inp: x})
    axis = x.ndim - 1
    expected = _eq43(x, p["gamma"], p["beta"], p["moving_mean"], p["moving_variance"], 0.3, axis, 1e-3)
    np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-5)
    expected0 = _eq43(x, p["gamma"], p["beta"], p["moving_mean"], p["moving_variance"], 0.0, axis, 1e-3)
    np.testing.assert_allclose(out_stock, expected0, rtol=1e-5, atol=1e-5)


# ----------------------------------------------------------------- diagnostics
def test_measure_output_range_counts_a_keras_group_norm_statistic_per_example():
    # Eq. 4.2's B for Group Normalization is one example's spatial positions x the C / G channels of its group
    # (here 3 * 3 * 2 = 18); it was counted as batch x spatial (36), a bound from the wrong B.
    import keras

    from tf_dlthesis.normalization import measure_output_range

    rng = np.random.default_rng(0)
    inputs = keras.Input((3, 3, 4))
    gn = keras.layers.GroupNormalization(groups=2, name="gn")
    model = keras.Model(inputs, gn(inputs))
    gamma, beta = np.array([0.5, 1.0, 2.0, 3.0], "float32"), np.array([0.1, -0.2, 0.3, 0.0], "float32")
    gn.set_weights([gamma, beta])
    r = measure_output_range(model, "gn", rng.normal(size=(8, 3, 3, 4)).astype("float32"), batch_size=4)
    assert r["values_per_statistic"] == 18
    np.testing.assert_allclose(r["bound_max"], np.max(beta + np.abs(gamma) * np.sqrt(17.0)), rtol=1e-6)
    np.testing.assert_allclose(r["bound_min"], np.min(beta - np.abs(gamma) * np.sqrt(17.0)), rtol=1e-6)
    assert r["train_within_bound"]

    ln_in = keras.Input((3, 3, 4))
    ln = keras.layers.LayerNormalization(name="ln")
    with pytest.raises(TypeError, match="layer='ln' of type LayerNormalization"):
        measure_output_range(keras.Model(ln_in, ln(ln_in)), "ln", np.zeros((4, 3, 3, 4), "float32"), batch_size=2)


# ------------------------------------------------------------------ Precise BN
def test_precise_bn_callback_round_trips_through_keras_serialization():
    # registered serializable with a get_config, but Keras's deserialization raised "missing a `from_config()`"
    import keras

    from tf_dlthesis.normalization import PreciseBN

    cb = PreciseBN(epochs=[3, 1], steps=5, batch_size=4)
    rebuilt = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(cb))
    assert type(rebuilt) is PreciseBN and rebuilt.data is None
    assert rebuilt.get_config() == {"epochs": [1, 3], "steps": 5, "batch_size": 4}


def test_update_bn_statistics_takes_exactly_steps_batches_from_an_iterator():
    # it pulled one batch more than `steps` before stopping, so a shared iterator silently lost a batch
    import keras

    from tf_dlthesis.normalization import update_bn_statistics

    inputs = keras.Input((3,))
    bn = keras.layers.BatchNormalization()
    model = keras.Model(inputs, bn(inputs))
    batches = [np.full((4, 3), i, "float32") + np.arange(4, dtype="float32")[:, None] for i in range(5)]
    it = iter(batches)
    assert update_bn_statistics(model, it, steps=2) == 2
    assert next(it)[0, 0] == 2.0  # batches 0 and 1 used, batch 2 still there
    # batch i holds i + (0, 1, 2, 3) per channel: mean i + 1.5, biased variance 1.25 (Keras's moving variance)
    np.testing.assert_allclose(bn.moving_mean.numpy(), [2.0] * 3, rtol=1e-6)
    np.testing.assert_allclose(bn.moving_variance.numpy(), [1.25] * 3, rtol=1e-6)
