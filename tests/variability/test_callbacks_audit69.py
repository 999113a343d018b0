"""Audit 69 of the Chapter 5 callbacks inside real Keras training code (resuming with `initial_epoch` and
`keras.callbacks.BackupAndRestore`): each fix's test fails on the code before it; the last tests pin the
behaviour of the fresh, epoch-0 `fit` the library's experiments make."""

import warnings

import keras
import numpy as np
import pytest
import tensorflow as tf

from tf_dlthesis.variability import SnapshotEnsemble, StochasticWeightAveraging, WeightNoise

RNG = np.random.default_rng(0)
X = RNG.normal(size=(16, 4)).astype("float32")
Y = RNG.integers(0, 3, 16)


def _model():
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3)])
    model.compile(keras.optimizers.SGD(0.1, momentum=0.9), keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    return model


class _Kill(keras.callbacks.Callback):
    """Stands for the process dying at the start of epoch `k` (Keras's BackupAndRestore example)."""

    def __init__(self, k):
        super().__init__()
        self.k = k

    def on_epoch_begin(self, epoch, logs=None):
        if epoch == self.k:
            raise RuntimeError("killed")


def _fit(model, callbacks, epochs=4, **kwargs):
    model.fit(X, Y, batch_size=8, epochs=epochs, shuffle=False, verbose=0, callbacks=callbacks, **kwargs)


def _interrupted_then_resumed(tmp_path, make_callback, k=3):
    """Runs the same script twice under BackupAndRestore, the first run killed at epoch k; the second run's callback."""
    model = _model()
    with pytest.raises(RuntimeError, match="killed"):
        _fit(model, [keras.callbacks.BackupAndRestore(str(tmp_path)), make_callback(), _Kill(k)])
    model, callback = _model(), make_callback()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        _fit(model, [keras.callbacks.BackupAndRestore(str(tmp_path)), callback])
    return model, callback, [str(w.message) for w in caught]


def test_weight_noise_resumed_by_backup_and_restore_matches_the_uninterrupted_run(tmp_path):
    # was: the fresh callback of the resumed run restarted at step 0, re-drawing epochs 0..'s offsets for epoch 3,
    # so the resumed run ended 1e-3 away from the uninterrupted one (the seed's promise of reproducibility broken)
    reference = _model()
    noise = WeightNoise(0.05, seed=1)
    _fit(reference, [noise])
    model, resumed, _ = _interrupted_then_resumed(tmp_path, lambda: WeightNoise(0.05, seed=1))
    assert resumed.steps == noise.steps == 8
    for a, b in zip(reference.get_weights(), model.get_weights()):
        np.testing.assert_array_equal(a, b)


def test_weight_noise_initial_epoch_with_unknown_epoch_length_warns():
    ds = tf.data.Dataset.from_tensor_slices((X, Y)).batch(8).filter(lambda x, y: True)  # unknown cardinality
    assert int(ds.cardinality()) == tf.data.UNKNOWN_CARDINALITY
    model, noise = _model(), WeightNoise(0.05, seed=1)
    with pytest.warns(UserWarning, match=r"WeightNoise: training resumes at epoch 2 with an unknown number of steps"):
        model.fit(ds, epochs=3, initial_epoch=2, verbose=0, callbacks=[noise])
    assert noise.steps == 2


def test_snapshot_ensemble_second_fit_with_initial_epoch_keeps_the_first_fits_snapshots():
    # was: on_train_begin emptied the ensemble, so continuing with `initial_epoch` lost cycle 1: [3], not [1, 3]
    model, snap = _model(), SnapshotEnsemble(cycles=2)
    _fit(model, [snap, _StopAt(2)])
    assert snap.snapshot_epochs == [1]
    first = [w.copy() for w in snap.snapshots[0]]
    _fit(model, [snap], initial_epoch=2)
    assert snap.snapshot_epochs == [1, 3]
    for a, b in zip(first, snap.snapshots[0]):
        np.testing.assert_array_equal(a, b)
    # a fit from epoch 0 starts a new ensemble
    _fit(model, [snap])
    assert snap.snapshot_epochs == [1, 3] and len(snap.snapshots) == 2


class _StopAt(keras.callbacks.Callback):
    def __init__(self, epoch):
        super().__init__()
        self.epoch = epoch

    def on_epoch_end(self, epoch, logs=None):
        if epoch + 1 == self.epoch:
            self.model.stop_training = True


def test_snapshot_ensemble_resumed_fresh_callback_warns_about_the_lost_snapshots(tmp_path):
    # was: silently an ensemble of 1 snapshot where the script asked for 2
    _, snap, messages = _interrupted_then_resumed(tmp_path, lambda: SnapshotEnsemble(cycles=2))
    assert snap.snapshot_epochs == [3]
    assert any("SnapshotEnsemble: training resumes at epoch 3" in m and "epochs [1]" in m
               and "1 of 2 snapshots" in m for m in messages), messages


def test_swa_resumed_after_start_epoch_warns_that_the_average_restarts(tmp_path):
    # was: silently an average of epoch 3 only where the uninterrupted run averages epochs 1..3
    _, swa, messages = _interrupted_then_resumed(tmp_path, lambda: StochasticWeightAveraging("swa", start_epoch=1))
    assert swa.averaged == 1
    assert any("StochasticWeightAveraging: training resumes at epoch 3, after start_epoch=1" in m
               and "epochs 1..2 are not in it" in m for m in messages), messages


def test_resuming_before_start_epoch_does_not_warn():
    model, swa = _model(), StochasticWeightAveraging("swa", start_epoch=3)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        _fit(model, [swa], initial_epoch=2)
    assert swa.averaged == 1


# The experiments' calls: fresh callbacks, `fit` from epoch 0. Checked against references computed without them.

def test_fresh_snapshot_ensemble_holds_the_cycle_end_weights():
    seen = {}
    keep = keras.callbacks.LambdaCallback(on_epoch_end=lambda e, logs: seen.__setitem__(e, reference.get_weights()))
    reference = _model()
    _fit(reference, [keep])
    model, snap = _model(), SnapshotEnsemble(cycles=2)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        _fit(model, [snap])
    assert snap.snapshot_epochs == [1, 3]
    for got, epoch in zip(snap.snapshots, (1, 3)):
        for a, b in zip(got, seen[epoch]):
            np.testing.assert_array_equal(a, b)


def test_fresh_weight_noise_starts_at_step_zero():
    """A fresh callback from epoch 0 draws step t's offset of variable i from seed (seed, t, i), t = 0, 1, ..."""
    model, noise = _model(), WeightNoise(0.05, seed=7)
    _fit(model, [noise], epochs=1)
    by_hand = _model()
    for t, lo in enumerate((0, 8)):
        variables = by_hand.trainable_variables
        step_seed = tf.random.experimental.stateless_fold_in(tf.constant([7, 0], tf.int64), tf.constant(t, tf.int64))
        eps = [tf.random.stateless_normal(tf.shape(v), tf.random.experimental.stateless_fold_in(step_seed, i),
                                          stddev=0.05, dtype=v.dtype) for i, v in enumerate(variables)]
        clean = [v.numpy() for v in variables]
        for v, e in zip(variables, eps):
            v.assign(v + e)
        noisy = [v.numpy() for v in variables]
        by_hand.train_on_batch(X[lo:lo + 8], Y[lo:lo + 8])
        for v, c, nz in zip(variables, clean, noisy):
            v.assign(c + (v.numpy() - nz))
    assert noise.steps == 2
    for a, b in zip(model.get_weights(), by_hand.get_weights()):
        np.testing.assert_allclose(a, b, rtol=0, atol=1e-6)
