"""Thesis App. B.4's options: gradient clipping, momentum / Adam, SWA and aggressive SWA, weight augmentation.

Each option is checked against the update rule it documents, computed by hand in NumPy.
"""

import keras
import numpy as np
import pytest

from tf_dlthesis.experiments import TrainSpec, train
from tf_dlthesis.experiments.training import _optimizer
from tf_dlthesis.variability import (
    StochasticWeightAveraging,
    SWASchedule,
    WeightNoise,
    recompute_batch_norm_statistics,
)


def _linear_regression(seed=0, inputs=3):
    model = keras.Sequential([keras.Input((inputs,)), keras.layers.Dense(
        1, kernel_initializer=keras.initializers.RandomNormal(seed=seed),
        bias_initializer=keras.initializers.Constant(0.5))])
    return model


def _mse_gradient(w, b, x, y):
    """d/d(w, b) of mean((x w + b - y)^2), by hand."""
    r = x @ w + b - y
    return 2.0 / len(x) * x.T @ r, 2.0 / len(x) * r.sum(axis=0)


class _Recorder(keras.callbacks.Callback):
    def __init__(self, when):
        super().__init__()
        self.when, self.seen = when, []

    def _keep(self):
        self.seen.append([np.array(v) for v in self.model.trainable_variables])

    def on_train_batch_begin(self, batch, logs=None):
        if self.when == "batch_begin":
            self._keep()

    def on_train_batch_end(self, batch, logs=None):
        if self.when == "batch_end":
            self._keep()

    def on_epoch_end(self, epoch, logs=None):
        if self.when == "epoch_end":
            self._keep()


def _data(n=16, inputs=3, scale=10.0, seed=1):
    rng = np.random.default_rng(seed)
    return rng.normal(size=(n, inputs)).astype(np.float32), (scale * rng.normal(size=(n, 1))).astype(np.float32)


# ----------------------------------------------------------------------------- gradient clipping
def _one_clipped_step(clip_norm):
    """One full-batch SGD step (lr 0.1) with `gradient_clip_norm=clip_norm`: (w0, b0, gw, gb, w1, b1)."""
    spec = TrainSpec(recipe="constant", learning_rate=0.1, momentum=0.0, weight_decay=0.0, gradient_clip_norm=clip_norm)
    model = _linear_regression()
    model.compile(optimizer=_optimizer(spec, steps=1), loss="mse")
    x, y = _data()
    w0, b0 = [np.array(v, np.float64) for v in model.get_weights()]
    gw, gb = _mse_gradient(w0, b0, x.astype(np.float64), y.astype(np.float64))
    model.fit(x, y, batch_size=len(x), epochs=1, verbose=0, shuffle=False)
    return (w0, b0, gw, gb, *model.get_weights())


def test_gradient_clipping_scales_the_global_gradient_norm_to_the_limit():
    w0, b0, gw, gb, w1, b1 = _one_clipped_step(0.5)
    norm = np.sqrt((gw ** 2).sum() + (gb ** 2).sum())
    assert norm > 0.5  # the clip is active
    np.testing.assert_allclose(w1, w0 - 0.1 * gw * 0.5 / norm, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(b1, b0 - 0.1 * gb * 0.5 / norm, rtol=1e-4, atol=1e-6)
    step = np.sqrt(((w1 - w0) ** 2).sum() + ((b1 - b0) ** 2).sum())
    assert step == pytest.approx(0.1 * 0.5, rel=1e-4)  # lr x the clipped norm


def test_gradient_below_the_limit_is_not_clipped():
    w0, b0, gw, gb, w1, b1 = _one_clipped_step(1e6)
    np.testing.assert_allclose(w1, w0 - 0.1 * gw, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(b1, b0 - 0.1 * gb, rtol=1e-4, atol=1e-6)


# ----------------------------------------------------------------------------- optimizer choice
def test_momentum_and_adam_settings_reach_the_optimizer():
    sgd = _optimizer(TrainSpec(momentum=0.0), steps=10)
    assert isinstance(sgd, keras.optimizers.SGD) and sgd.momentum == 0.0 and not sgd.nesterov
    heavy = _optimizer(TrainSpec(momentum=0.999), steps=10)
    assert heavy.momentum == pytest.approx(0.999)
    default = _optimizer(TrainSpec(), steps=10)
    assert default.momentum == pytest.approx(0.9) and default.nesterov  # the cosine recipe's Nesterov 0.9
    adam = _optimizer(TrainSpec(optimizer="adam", momentum=0.5), steps=10)
    assert isinstance(adam, keras.optimizers.Adam) and adam.beta_1 == pytest.approx(0.5)
    assert _optimizer(TrainSpec(gradient_clip_norm=2.0), steps=10).global_clipnorm == 2.0


# ----------------------------------------------------------------------------- SWA
def test_swa_schedule_follows_izmailov_et_al():
    s = SWASchedule(0.4, swa_lr=0.04, swa_start_step=1000)
    # constant to 50% of the start, linear to swa_lr at 90%, then constant
    expected = {0: 0.4, 500: 0.4, 600: 0.4 - 0.36 * 0.25, 800: 0.4 - 0.36 * 0.75, 900: 0.04, 5000: 0.04}
    for step, value in expected.items():
        assert float(s(step)) == pytest.approx(value, rel=1e-5)
    with pytest.raises(ValueError, match="swa_lr"):
        SWASchedule(0.4, swa_lr=0.0, swa_start_step=10)


def test_swa_average_is_the_mean_of_the_end_of_epoch_weights():
    model = _linear_regression()
    model.compile(optimizer=keras.optimizers.SGD(0.01), loss="mse")
    x, y = _data(n=32)
    recorder = _Recorder("epoch_end")
    swa = StochasticWeightAveraging(mode="swa", start_epoch=2)
    model.fit(x, y, batch_size=8, epochs=5, verbose=0, shuffle=False, callbacks=[recorder, swa])
    assert swa.averaged == 3
    snapshots = recorder.seen[2:]  # epochs 2, 3, 4
    for i, v in enumerate(model.get_weights()):
        np.testing.assert_allclose(v, np.mean([s[i] for s in snapshots], axis=0), rtol=1e-5, atol=1e-7)
    # and the average is not simply the last weights
    assert not np.allclose(model.get_weights()[0], recorder.seen[-1][0])


def test_aggressive_swa_averages_every_step_and_restarts_each_epoch_from_the_average():
    model = _linear_regression()
    model.compile(optimizer=keras.optimizers.SGD(0.01), loss="mse")
    x, y = _data(n=32)
    steps, epochs = 4, 3
    recorder = _Recorder("batch_end")
    at_epoch_end = _Recorder("epoch_end")
    aswa = StochasticWeightAveraging(mode="aswa", start_epoch=1)
    model.fit(x, y, batch_size=8, epochs=epochs, verbose=0, shuffle=False,
              callbacks=[recorder, aswa, at_epoch_end])
    assert aswa.averaged == steps * (epochs - 1)
    after_steps = recorder.seen[steps:]  # every step from epoch 1 on
    # end of epoch 1: the mean of its 4 steps; end of epoch 2: the mean of all 8 steps since epoch 1
    for e, upto in ((1, steps), (2, 2 * steps)):
        for i in range(2):
            np.testing.assert_allclose(at_epoch_end.seen[e][i], np.mean([s[i] for s in after_steps[:upto]], axis=0),
                                       rtol=1e-5, atol=1e-7)
    # epoch 0 is before start_epoch: its end-of-epoch weights are the plain last step
    np.testing.assert_array_equal(at_epoch_end.seen[0][0], recorder.seen[steps - 1][0])


def test_batch_norm_statistics_are_recomputed_as_the_mean_over_batches():
    model = keras.Sequential([keras.Input((4,)), keras.layers.BatchNormalization(momentum=0.99)])
    rng = np.random.default_rng(0)
    batches = [rng.normal(loc=3.0, scale=2.0, size=(10, 4)).astype(np.float32) for _ in range(5)]
    assert recompute_batch_norm_statistics(model, batches) == 5
    bn = model.layers[0]
    np.testing.assert_allclose(bn.moving_mean.numpy(), np.mean([b.mean(0) for b in batches], 0), rtol=1e-5)
    np.testing.assert_allclose(bn.moving_variance.numpy(), np.mean([b.var(0) for b in batches], 0), rtol=1e-5)
    assert bn.momentum == 0.99  # restored


def test_batch_norm_recomputation_weighs_batches_by_size_and_covers_the_chapter_4_layers():
    from tf_dlthesis.normalization import GhostBatchNormalization

    rng = np.random.default_rng(1)
    batches = [rng.normal(loc=m, scale=s, size=(n, 3)).astype(np.float64) for m, s, n in ((0.0, 1.0, 8),
                                                                                          (5.0, 3.0, 2))]
    # Izmailov et al.'s bn_update: batch b counts b / (n + b) -> weights 8 and 2 (before: 1 and 1)
    mean = (8 * batches[0].mean(0) + 2 * batches[1].mean(0)) / 10
    var = (8 * batches[0].var(0) + 2 * batches[1].var(0)) / 10
    model = keras.Sequential([keras.Input((3,)), keras.layers.BatchNormalization()])
    assert recompute_batch_norm_statistics(model, [b.astype(np.float32) for b in batches]) == 2
    np.testing.assert_allclose(model.layers[0].moving_mean.numpy(), mean, rtol=1e-5)
    np.testing.assert_allclose(model.layers[0].moving_variance.numpy(), var, rtol=1e-5)
    # a Ghost BN layer (not a Keras BN subclass) was skipped: its statistics stayed 0 / 1
    ghost = keras.Sequential([keras.Input((3,)), GhostBatchNormalization(2)])
    assert recompute_batch_norm_statistics(ghost, [batches[0].astype(np.float32)]) == 1
    halves = batches[0].reshape(4, 2, 3)  # four ghost batches of 2
    np.testing.assert_allclose(ghost.layers[0].moving_mean.numpy(), halves.mean(1).mean(0), rtol=1e-5)
    np.testing.assert_allclose(ghost.layers[0].moving_variance.numpy(), halves.var(1).mean(0), rtol=1e-5)
    assert recompute_batch_norm_statistics(keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)]),
                                           batches) == 0


def test_swa_bad_settings_are_rejected():
    with pytest.raises(ValueError, match="mode"):
        StochasticWeightAveraging(mode="ema")
    with pytest.raises(ValueError, match="start_epoch"):
        StochasticWeightAveraging(start_epoch=-1)
    model = _linear_regression()
    model.compile(optimizer="sgd", loss="mse")
    x, y = _data()
    with pytest.raises(ValueError, match="start_epoch"):
        model.fit(x, y, epochs=2, verbose=0, callbacks=[StochasticWeightAveraging(start_epoch=2)])


# ----------------------------------------------------------------------------- weight augmentation
def test_weight_noise_offsets_have_the_documented_scale_and_are_removed_after_the_step():
    model = keras.Sequential([keras.Input((64,)), keras.layers.Dense(128, use_bias=False)])
    model.compile(optimizer=keras.optimizers.SGD(0.0), loss="mse")
    w0 = np.array(model.get_weights()[0])
    probe = _Recorder("batch_begin")
    noise = WeightNoise(stddev=0.05, seed=3)
    x = np.zeros((12, 64), np.float32)
    model.fit(x, np.zeros((12, 128), np.float32), batch_size=4, epochs=1, verbose=0, shuffle=False,
              callbacks=[noise, probe])
    assert noise.steps == 3 and len(probe.seen) == 3
    offsets = [s[0] - w0 for s in probe.seen]
    for off in offsets:  # 8,192 draws of N(0, 0.05^2): SD within 3%, mean within 4 standard errors
        assert off.std() == pytest.approx(0.05, rel=0.03)
        assert abs(off.mean()) < 4 * 0.05 / np.sqrt(off.size)
    assert not np.allclose(offsets[0], offsets[1])  # a fresh offset every step
    np.testing.assert_array_equal(model.get_weights()[0], w0)  # zero learning rate: exactly back at w0
    # stateless: the same seed gives the same offsets
    again = _Recorder("batch_begin")
    model.fit(x, np.zeros((12, 128), np.float32), batch_size=4, epochs=1, verbose=0, shuffle=False,
              callbacks=[WeightNoise(stddev=0.05, seed=3), again])
    np.testing.assert_array_equal(again.seen[0][0], probe.seen[0][0])


def test_weight_noise_takes_the_gradient_at_the_offset_and_applies_it_to_the_clean_weights():
    model = _linear_regression()
    model.compile(optimizer=keras.optimizers.SGD(0.1), loss="mse")
    x, y = _data()
    w0, b0 = [np.array(v, np.float64) for v in model.get_weights()]
    probe = _Recorder("batch_begin")
    model.fit(x, y, batch_size=len(x), epochs=1, verbose=0, shuffle=False,
              callbacks=[WeightNoise(stddev=0.3, seed=0), probe])
    wn, bn = [np.array(v, np.float64) for v in probe.seen[0]]
    gw, gb = _mse_gradient(wn, bn, x.astype(np.float64), y.astype(np.float64))
    w1, b1 = model.get_weights()
    np.testing.assert_allclose(w1, w0 - 0.1 * gw, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(b1, b0 - 0.1 * gb, rtol=1e-4, atol=1e-5)
    gw_clean, _ = _mse_gradient(w0, b0, x.astype(np.float64), y.astype(np.float64))
    assert not np.allclose(w1, w0 - 0.1 * gw_clean, rtol=1e-3)


def test_weight_noise_rejects_bad_settings():
    with pytest.raises(ValueError, match="stddev"):
        WeightNoise(stddev=0.0)
    with pytest.raises(ValueError, match="seed"):
        WeightNoise(stddev=0.1, seed=-1)


# ----------------------------------------------------------------------------- through TrainSpec / train
@pytest.mark.parametrize("kwargs, match", [
    ({"momentum": 1.0}, "momentum"),
    ({"gradient_clip_norm": 0}, "gradient_clip_norm"),
    ({"weight_noise": -0.1}, "weight_noise"),
    ({"swa": {"mode": "ema"}}, "mode"),
    ({"swa": {"mode": "swa", "start_epoch": 10}}, "start_epoch"),
    ({"swa": {"mode": "aswa", "swa_lr": 0.1}}, "swa_lr"),
    ({"swa": {"mode": "swa", "every": 2}}, "Unknown `swa` settings"),
    ({"swa": "swa", "snapshots": 5}, "cannot be combined"),
])
def test_train_spec_rejects_bad_b4_options(kwargs, match):
    with pytest.raises(ValueError, match=match):
        TrainSpec(epochs=10, **kwargs)


def test_train_with_every_b4_option_runs_and_is_keyed_by_it():
    base = TrainSpec(dataset="digits", model="cnn", model_kwargs={"filters": [4, 8]}, train_examples=200,
                     test_examples=100, epochs=2, batch_size=32)
    spec = base.replace(gradient_clip_norm=1.0, weight_noise=0.01, momentum=0.5, swa={"mode": "aswa"})
    assert spec.key() != base.key() and "weight noise sd 0.01" in spec.describe()
    [run] = train(spec, seeds=0)
    assert np.isfinite(run.metrics["test_loss"]) and run.info["bit_change"] is None
    [swa_run] = train(base.replace(swa={"mode": "swa", "start_epoch": 1}), seeds=0)
    assert np.isfinite(swa_run.metrics["test_loss"])
