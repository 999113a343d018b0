"""Audit 68 (Chapter 4): defects found in tf_dlthesis.normalization, each checked by hand with NumPy."""

from __future__ import annotations

import keras
import numpy as np
import pytest
import tensorflow as tf

from tf_dlthesis.normalization import GhostBatchNormalization, measure_output_range


def _x(shape, seed=0):
    return (np.random.RandomState(seed).randn(*shape) * 2.0 + 1.0).astype("float32")


def test_sequential_update_at_momentum_0_with_an_unknown_batch_size_is_the_last_ghost_batch():
    # A batch of unknown size divisible by B' has an empty last ghost batch; its exponent in the
    # closed form of the sequential update was -1 and 0 ** -1 * 0 = NaN made every moving statistic NaN.
    x = _x((8, 3))
    layer = GhostBatchNormalization(4, momentum=0.0, moving_update="sequential")
    step = tf.function(lambda v: layer(v, training=True), input_signature=[tf.TensorSpec([None, 3])])
    step(x)
    np.testing.assert_allclose(layer.moving_mean.numpy(), x[4:].mean(0), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(layer.moving_variance.numpy(), x[4:].var(0), rtol=1e-5, atol=1e-6)


def test_sequential_update_at_momentum_0_skips_a_fully_masked_last_ghost_batch():
    # static batch of 8, B' = 4, the second ghost batch fully masked: the moving statistics are the
    # first ghost batch's masked statistics (momentum 0), as in a masked Keras BN step; they were NaN
    x = _x((8, 5, 2), seed=1)
    mask = np.ones((8, 5), bool)
    mask[0, 3:] = False
    mask[4:] = False
    layer = GhostBatchNormalization(4, momentum=0.0, renorm=True, renorm_momentum=0.0, moving_update="sequential")
    layer(x, training=True, mask=mask)
    kept = x[:4][mask[:4]]                             # (values, channels)
    np.testing.assert_allclose(layer.moving_mean.numpy(), kept.mean(0), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(layer.moving_variance.numpy(), kept.var(0), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(layer.renorm_mean.numpy(), kept.mean(0), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(layer.renorm_stddev.numpy(), np.sqrt(kept.var(0) + layer.epsilon), rtol=1e-5)


def test_sequential_update_at_momentum_0_in_fit_with_a_divisible_batch_keeps_weights_finite():
    # Keras fit traces the step with an unknown batch size: 10 examples in batches of 9 (B' = 3)
    x = _x((10, 4, 3), seed=2)
    y = np.arange(10) % 2
    keras.utils.set_random_seed(0)
    inputs = keras.Input((4, 3))
    h = GhostBatchNormalization(3, momentum=0.0, moving_update="sequential")(inputs)
    model = keras.Model(inputs, keras.layers.Dense(2)(keras.layers.Flatten()(h)))
    model.compile("sgd", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    model.fit(x, y, batch_size=9, epochs=1, verbose=0)
    assert all(np.isfinite(w).all() for w in model.get_weights())


@pytest.mark.parametrize("batch_size", [True, 2.0, "4"])
def test_measure_output_range_rejects_a_batch_size_that_is_not_an_int(batch_size):
    # True was read as a batch of 1 (every training output = beta); 2.0 and "4" failed inside range() / <
    inputs = keras.Input((4,))
    bn = keras.layers.BatchNormalization()
    model = keras.Model(inputs, bn(inputs))
    with pytest.raises(TypeError, match=r"`batch_size` must be an int >= 1\. Received: batch_size="):
        measure_output_range(model, bn, _x((8, 4)), batch_size=batch_size)


def test_update_bn_statistics_keeps_a_shared_layers_last_call_as_documented():
    from tf_dlthesis.normalization import update_bn_statistics

    a, b = keras.Input((3,)), keras.Input((3,))
    bn = keras.layers.BatchNormalization(name="bn")
    model = keras.Model([a, b], keras.layers.Concatenate()([bn(a), bn(b)]))  # one BN layer, called twice
    xa = np.random.default_rng(0).normal(0, 1, (8, 3)).astype("float32")
    xb = xa + 5.0
    update_bn_statistics(model, [((xa, xb),)], batch_size=8)
    np.testing.assert_allclose(bn.moving_mean.numpy(), xb.mean(0), rtol=1e-5)  # the last call's batch mean
