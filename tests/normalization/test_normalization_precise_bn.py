"""Precise BN (thesis App. A.3): `update_bn_statistics` and the `PreciseBN` callback against probe-model statistics."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from tf_dlthesis.normalization import (
    ExampleWeightedBatchNormalization,
    GhostBatchNormalization,
    PreciseBN,
    update_bn_statistics,
)


def _model(seed=0):
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((6, 6, 2))
    h = keras.layers.Conv2D(4, 3, padding="same")(inputs)
    h = keras.layers.BatchNormalization(name="bn1")(h)
    h = keras.layers.ReLU()(h)
    h = keras.layers.Conv2D(5, 3)(h)
    h = GhostBatchNormalization(4, name="ghost")(h)
    h = keras.layers.ReLU()(h)
    h = keras.layers.Conv2D(3, 3)(h)
    h = keras.layers.BatchNormalization(name="bn_renorm", renorm=True, renorm_clipping={"rmax": 1.5, "dmax": 0.3})(h)
    h = keras.layers.Flatten()(h)
    h = ExampleWeightedBatchNormalization(name="ew")(h)
    out = keras.layers.Dense(3)(h)
    model = keras.Model(inputs, out)
    # some training, so the moving statistics and the renorm statistics are not at their initial values
    x = np.random.default_rng(seed).normal(size=(64, 6, 6, 2)).astype("float32") + 1
    model.compile("sgd", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    model.fit(x, np.zeros(64, "int64"), batch_size=16, epochs=1, verbose=0)
    return model


_NAMES = ("bn1", "ghost", "bn_renorm", "ew")


def _probe_statistics(model, batches):
    """Per-batch statistics of each BN layer's input in the training-mode forward pass, averaged over batches.

    A probe model returns every BN layer's input; its training-mode forward pass
    is the model's own (each BN normalizes with the batch statistics), with every
    weight restored after each batch (renorm's (r, d) depend on its statistics). Ghost BN's
    statistic is the per-ghost-batch one, averaged over the ghost batches of each
    batch; the renorm layer's statistics are unaffected by its (r, d) correction.
    """
    layers = [model.get_layer(n) for n in _NAMES]
    probe = keras.Model(model.inputs, [layer.input for layer in layers])
    sums = {n: [0.0, 0.0] for n in _NAMES}
    state = [w.numpy().copy() for w in model.non_trainable_weights]
    for xb in batches:
        inputs = [np.asarray(t, np.float64) for t in probe([xb], training=True)]
        for w, value in zip(model.non_trainable_weights, state):  # frozen: the probe's pass updates nothing
            w.assign(value)
        for name, layer, v in zip(_NAMES, layers, inputs):
            if name == "ghost":
                g = layer.ghost_batch_size
                parts = [v[i:i + g] for i in range(0, len(v), g)]
                w = np.array([len(p) for p in parts], float) / len(v)
                mean = sum(wi * p.mean((0, 1, 2)) for wi, p in zip(w, parts))
                var = sum(wi * p.var((0, 1, 2)) for wi, p in zip(w, parts))
            else:
                axes = tuple(range(v.ndim - 1))
                mean, var = v.mean(axes), v.var(axes)
            sums[name][0] += mean
            sums[name][1] += var
    return {n: (m / len(batches), s / len(batches)) for n, (m, s) in sums.items()}


def test_update_bn_statistics_equals_the_average_of_per_batch_statistics():
    model = _model()
    renorm = model.get_layer("bn_renorm")
    renorm_state = [renorm.renorm_mean.numpy().copy(), renorm.renorm_stddev.numpy().copy()]
    weights = [w.numpy().copy() for w in model.trainable_weights]
    x = np.random.default_rng(1).normal(size=(44, 6, 6, 2)).astype("float32") * 1.5
    batches = [x[i:i + 12] for i in range(0, 44, 12)]  # 12, 12, 12, 8
    expected = _probe_statistics(model, batches)
    assert update_bn_statistics(model, tf.data.Dataset.from_tensor_slices((x, np.zeros(44))).batch(12)) == 4
    for name in _NAMES:
        layer = model.get_layer(name)
        np.testing.assert_allclose(layer.moving_mean.numpy(), expected[name][0], rtol=1e-5, atol=1e-5, err_msg=name)
        np.testing.assert_allclose(layer.moving_variance.numpy(), expected[name][1], rtol=1e-5, atol=1e-5,
                                   err_msg=name)
    # weights frozen; renorm statistics untouched; moving_stddev consistent with the new variance
    for w, before in zip(model.trainable_weights, weights):
        np.testing.assert_array_equal(w.numpy(), before)
    np.testing.assert_array_equal(renorm.renorm_mean.numpy(), renorm_state[0])
    np.testing.assert_array_equal(renorm.renorm_stddev.numpy(), renorm_state[1])
    np.testing.assert_allclose(renorm.moving_stddev.numpy(), np.sqrt(expected["bn_renorm"][1] + renorm.epsilon),
                               rtol=1e-5)
    # settings restored: a training step afterwards uses the layer's own momentum
    assert model.get_layer("bn1").momentum == 0.99 and model.get_layer("ghost").moving_update == "averaged"


def test_single_batch_gives_that_batch_statistics_and_steps_limits_batches():
    model = _model(seed=2)
    x = np.random.default_rng(3).normal(size=(16, 6, 6, 2)).astype("float32")
    expected = _probe_statistics(model, [x])
    assert update_bn_statistics(model, x, batch_size=16) == 1
    for name in _NAMES:
        np.testing.assert_allclose(model.get_layer(name).moving_mean.numpy(), expected[name][0], rtol=1e-5,
                                   atol=1e-5)
        np.testing.assert_allclose(model.get_layer(name).moving_variance.numpy(), expected[name][1], rtol=1e-5,
                                   atol=1e-5)
    # steps=1 on a longer stream: the first batch only
    more = np.concatenate([x, x[::-1] * 3])
    model2 = _model(seed=2)
    assert update_bn_statistics(model2, more, steps=1, batch_size=16) == 1
    np.testing.assert_allclose(model2.get_layer("bn1").moving_mean.numpy(), expected["bn1"][0], rtol=1e-5, atol=1e-5)


def test_precise_bn_callback_runs_at_chosen_epochs():
    model = _model(seed=4)
    x = np.random.default_rng(5).normal(size=(32, 6, 6, 2)).astype("float32")
    cb = PreciseBN(x, epochs=[1, 3], batch_size=16)
    model.fit(x, np.zeros(32, "int64"), batch_size=16, epochs=3, verbose=0, callbacks=[cb])
    assert cb.updated_epochs == [1, 3]
    expected = _probe_statistics(model, [x[:16], x[16:]])
    np.testing.assert_allclose(model.get_layer("bn1").moving_mean.numpy(), expected["bn1"][0], rtol=1e-5, atol=1e-5)
    last = PreciseBN(x, batch_size=16)
    model.fit(x, np.zeros(32, "int64"), batch_size=16, epochs=2, verbose=0, callbacks=[last])
    assert last.updated_epochs == [2] and last.get_config()["epochs"] == "last"


def test_bad_input_is_rejected():
    model = _model(seed=6)
    x = np.zeros((4, 6, 6, 2), "float32")
    with pytest.raises(ValueError, match="steps"):
        update_bn_statistics(model, x, steps=0)
    with pytest.raises(ValueError, match="batch_size"):
        update_bn_statistics(model, x, batch_size=0)
    with pytest.raises(ValueError, match="`average` must be 'batches' or 'examples'. Received: average='mean'"):
        update_bn_statistics(model, x, average="mean")
    with pytest.raises(ValueError, match="data"):
        update_bn_statistics(model, x[:0])
    with pytest.raises(TypeError, match="model"):
        update_bn_statistics("model", x)
    with pytest.raises(TypeError, match="data"):
        update_bn_statistics(model, 3)
    plain = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
    with pytest.raises(ValueError, match="no trainable, built BatchNormalization"):
        update_bn_statistics(plain, np.zeros((4, 3), "float32"))
    with pytest.raises(ValueError, match="epochs"):
        PreciseBN(x, epochs="sometimes")
    with pytest.raises(ValueError, match="epochs"):
        PreciseBN(x, epochs=[0, 2])
    # a configuration rebuilds the callback (without data, which no config can hold); fit then asks for data
    rebuilt = PreciseBN(**PreciseBN(x, epochs=[1, 3], steps=2).get_config())
    assert rebuilt.get_config() == {"epochs": [1, 3], "steps": 2, "batch_size": 32}
    with pytest.raises(ValueError, match="data"):
        model.fit(x, np.zeros(4, "int64"), epochs=1, verbose=0, callbacks=[rebuilt])


def _plain_bn_model():
    bn = keras.layers.BatchNormalization(center=False, scale=False, name="bn")
    return keras.Sequential([keras.Input((3,)), bn]), bn


def test_list_or_tuple_of_batches_uses_every_batch():
    rng = np.random.default_rng(7)
    batches = [rng.normal(loc=k, size=(8, 3)).astype("float32") for k in range(4)]  # means near 0, 1, 2, 3
    expected = np.mean([b.mean(0) for b in batches], 0)
    for data in (batches, tuple(batches), iter(batches), batches[:3] + [batches[3][:5]]):
        model, bn = _plain_bn_model()
        assert update_bn_statistics(model, data) == 4
        if not (isinstance(data, list) and len(data[3]) == 5):
            np.testing.assert_allclose(bn.moving_mean.numpy(), expected, rtol=1e-5)
    # (x,), (x, y), (x, y, w) and [x, y]: x split into batches of batch_size, as an array x
    x, y = np.concatenate(batches), np.arange(32)
    model, bn = _plain_bn_model()
    update_bn_statistics(model, x, batch_size=8)
    reference = bn.moving_mean.numpy(), bn.moving_variance.numpy()
    for data in ((x,), (x, y), (x, y, np.ones(32)), [x, y], (x, x)):
        model, bn = _plain_bn_model()
        assert update_bn_statistics(model, data, batch_size=8) == 4
        np.testing.assert_array_equal(bn.moving_mean.numpy(), reference[0])
        np.testing.assert_array_equal(bn.moving_variance.numpy(), reference[1])
    # 2-3 entries of different lengths: neither a valid (x, y) nor unambiguous batches
    with pytest.raises(ValueError, match=r"differ in length.*iter\(batches\)"):
        update_bn_statistics(_plain_bn_model()[0], [batches[0], batches[1][:5]])
    with pytest.raises(ValueError, match="differ in length"):
        update_bn_statistics(_plain_bn_model()[0], (x, y[:10]))


def test_precise_bn_last_runs_when_fit_stops_early():
    model = _model(seed=8)
    x = np.random.default_rng(9).normal(size=(32, 6, 6, 2)).astype("float32")
    cb = PreciseBN(x, batch_size=16)
    stop = keras.callbacks.EarlyStopping(monitor="loss", patience=0, min_delta=1e9)  # stops after epoch 2 of 10
    history = model.fit(x, np.zeros(32, "int64"), batch_size=16, epochs=10, verbose=0, callbacks=[stop, cb])
    assert len(history.history["loss"]) == 2 and cb.updated_epochs == [2]
    expected = _probe_statistics(model, [x[:16], x[16:]])
    for name in _NAMES:
        np.testing.assert_allclose(model.get_layer(name).moving_mean.numpy(), expected[name][0], rtol=1e-5,
                                   atol=1e-5, err_msg=name)
    # a run reaching its last epoch updates once, at that epoch; other schedules do not update at train end
    full, every = PreciseBN(x, batch_size=16), PreciseBN(x, epochs=5, batch_size=16)
    model.fit(x, np.zeros(32, "int64"), batch_size=16, epochs=2, verbose=0, callbacks=[full, every])
    assert full.updated_epochs == [2] and every.updated_epochs == []
