"""Audit 70 of the Chapter 5 callbacks: ASWA's validation sees the averaged weights, and SnapshotEnsemble /
StochasticWeightAveraging survive a restart under `keras.callbacks.BackupAndRestore` with `backup_dir`
(bit for bit the uninterrupted run). Each fix's test fails on the code before it."""

import os
import pathlib
import warnings

import keras
import numpy as np
import pytest

from tf_dlthesis.variability import SnapshotEnsemble, StochasticWeightAveraging

RNG = np.random.default_rng(0)
X = RNG.normal(size=(16, 4)).astype("float32")
Y = RNG.integers(0, 3, 16)
XV = RNG.normal(size=(8, 4)).astype("float32")
YV = RNG.integers(0, 3, 8)


def _model(units=3):
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(5, activation="relu"), keras.layers.Dense(units)])
    model.compile(keras.optimizers.SGD(0.1, momentum=0.9), keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    return model


def _fit(model, callbacks, epochs=4, **kwargs):
    return model.fit(X, Y, batch_size=8, epochs=epochs, shuffle=False, verbose=0, callbacks=callbacks, **kwargs)


class _Kill(keras.callbacks.Callback):
    """Stands for the process dying at the start (or, `at_end`, the end) of epoch `k`."""

    def __init__(self, k, at_end=False):
        super().__init__()
        self.k, self.at_end = k, at_end

    def on_epoch_begin(self, epoch, logs=None):
        if epoch == self.k and not self.at_end:
            raise RuntimeError("killed")

    def on_epoch_end(self, epoch, logs=None):
        if epoch == self.k and self.at_end:
            raise RuntimeError("killed")


def _interrupted_then_resumed(tmp_path, make_callback, *, ours_first, kill=None, model=_model):
    """The same script run twice under BackupAndRestore, the first run killed; the second run's model and callback."""
    keras_dir, ours = str(tmp_path / "keras"), str(tmp_path / "ours")

    def callbacks(callback, extra):
        bar = keras.callbacks.BackupAndRestore(keras_dir)
        return ([callback] + extra + [bar]) if ours_first else ([bar, callback] + extra)

    with pytest.raises(RuntimeError, match="killed"):
        _fit(model(), callbacks(make_callback(ours), [kill or _Kill(3)]))
    resumed_model, callback = model(), make_callback(ours)
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)  # nothing lost: no warning
        _fit(resumed_model, callbacks(callback, []))
    return resumed_model, callback


def _equal(a, b):
    assert len(a) == len(b)
    for x, y in zip(a, b):
        assert x.dtype == y.dtype and np.array_equal(x, y)


# ASWA's validation ------------------------------------------------------------------------------------------

def test_aswa_val_loss_is_the_loss_of_the_averaged_weights():
    # was: Keras validates before on_epoch_end, so val_loss of epochs >= start_epoch was the SGD iterate's
    # (epochs 1 and 2 were up to 6e-3 off the loss of the averaged weights the model continues from)
    model = _model()
    history = _fit(model, [StochasticWeightAveraging("aswa", start_epoch=1)], epochs=3, validation_data=(XV, YV))
    # by hand: per-step running average from epoch 1 on, assigned at the end of each such epoch
    ref = _model()
    avg, n, expected = None, 0, []
    for epoch in range(3):
        for lo in (0, 8):
            ref.train_on_batch(X[lo:lo + 8], Y[lo:lo + 8])
            if epoch >= 1:
                n += 1
                w = [v.numpy() for v in ref.trainable_variables]
                avg = w if avg is None else [a + (b - a) / np.float32(n) for a, b in zip(avg, w)]
        if epoch >= 1:
            for v, a in zip(ref.trainable_variables, avg):
                v.assign(a)
        expected.append(ref.evaluate(XV, YV, verbose=0))
    np.testing.assert_allclose(history.history["val_loss"], expected, rtol=1e-5)
    np.testing.assert_allclose(history.history["val_loss"][-1], model.evaluate(XV, YV, verbose=0), rtol=1e-6)


def test_aswa_without_validation_still_assigns_at_epoch_end_and_standalone_evaluate_is_untouched():
    model, swa = _model(), StochasticWeightAveraging("aswa", start_epoch=1)
    _fit(model, [swa], epochs=2, validation_data=(XV, YV), validation_freq=2)  # epoch 0 and 1: 1 validated
    _equal([v.numpy() for v in model.trainable_variables], swa.average())
    _fit(model, [swa], epochs=2)  # no validation at all
    _equal([v.numpy() for v in model.trainable_variables], swa.average())
    model.set_weights([np.zeros_like(w) for w in model.get_weights()])
    model.evaluate(XV, YV, verbose=0, callbacks=[swa])  # outside fit: the average is not assigned
    assert all(not np.any(v.numpy()) for v in model.trainable_variables)


# Backups ----------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("ours_first", [True, False])
def test_snapshot_ensemble_resumed_with_backup_dir_is_the_uninterrupted_ensemble(tmp_path, ours_first):
    # was: a fresh callback after the restart lost the snapshot of epoch 1 (1 of 2 snapshots, a warning)
    reference, ref_snap = _model(), SnapshotEnsemble(cycles=2)
    _fit(reference, [ref_snap])
    model, snap = _interrupted_then_resumed(tmp_path, lambda d: SnapshotEnsemble(cycles=2, backup_dir=d),
                                            ours_first=ours_first)
    assert snap.snapshot_epochs == ref_snap.snapshot_epochs == [1, 3]
    for a, b in zip(ref_snap.snapshots, snap.snapshots):
        _equal(a, b)
    _equal(reference.get_weights(), model.get_weights())
    np.testing.assert_array_equal(snap.predict(X), ref_snap.predict(X))
    # the snapshots are the deliverable: kept after the successful fit
    assert sorted(os.listdir(tmp_path / "ours")) == ["snapshot_epoch1.npz", "snapshot_epoch3.npz"]


@pytest.mark.parametrize("mode", ["swa", "aswa"])
@pytest.mark.parametrize("ours_first", [True, False])
def test_swa_resumed_with_backup_dir_is_the_uninterrupted_average(tmp_path, mode, ours_first):
    # was: the fresh callback restarted the average at epoch 3 (swa: 1 weight set, not 3; aswa: 2 steps, not 6)
    reference, ref_swa = _model(), StochasticWeightAveraging(mode, start_epoch=1)
    _fit(reference, [ref_swa])
    model, swa = _interrupted_then_resumed(
        tmp_path, lambda d: StochasticWeightAveraging(mode, start_epoch=1, backup_dir=d), ours_first=ours_first)
    assert swa.averaged == ref_swa.averaged == (3 if mode == "swa" else 6)
    _equal(ref_swa.average(), swa.average())
    _equal(reference.get_weights(), model.get_weights())


def test_swa_backup_ahead_of_the_keras_backup_resumes_from_the_previous_epoch(tmp_path):
    # killed between this callback's epoch-end backup (epoch 2) and BackupAndRestore's: Keras resumes at 2
    reference, ref_swa = _model(), StochasticWeightAveraging("aswa", start_epoch=1)
    _fit(reference, [ref_swa])
    model, swa = _interrupted_then_resumed(
        tmp_path, lambda d: StochasticWeightAveraging("aswa", start_epoch=1, backup_dir=d), ours_first=True,
        kill=_Kill(2, at_end=True))
    _equal(ref_swa.average(), swa.average())
    _equal(reference.get_weights(), model.get_weights())


def test_backup_of_another_model_or_setting_raises(tmp_path):
    keras_dir, ours = str(tmp_path / "keras"), str(tmp_path / "ours")
    with pytest.raises(RuntimeError, match="killed"):
        _fit(_model(), [keras.callbacks.BackupAndRestore(keras_dir),
                        StochasticWeightAveraging("swa", start_epoch=1, backup_dir=ours),
                        SnapshotEnsemble(cycles=2, backup_dir=ours), _Kill(3)])
    cases = [(StochasticWeightAveraging("aswa", start_epoch=1, backup_dir=ours), "written with mode='swa'"),
             (StochasticWeightAveraging("swa", start_epoch=0, backup_dir=ours), "written with start_epoch=1"),
             (SnapshotEnsemble(cycles=4, backup_dir=ours), "written with cycles=2")]
    for callback, message in cases:
        with pytest.raises(ValueError, match=message):
            _fit(_model(), [keras.callbacks.BackupAndRestore(keras_dir, delete_checkpoint=False), callback])
    # another model (the Keras backup is rewritten for it; ours still holds the 3-class model's weights)
    for callback in (StochasticWeightAveraging("swa", start_epoch=1, backup_dir=ours),
                     SnapshotEnsemble(cycles=2, backup_dir=ours)):
        model = _model(units=2)  # the Keras backup does not fit this model: resumed by `initial_epoch` instead
        with pytest.raises(ValueError, match="written for another model"):
            model.fit(X, Y % 2, batch_size=8, epochs=4, initial_epoch=3, verbose=0, callbacks=[callback])


def test_fit_from_epoch_zero_removes_only_its_own_earlier_files(tmp_path):
    ours = tmp_path / "ours"
    _fit(_model(), [SnapshotEnsemble(cycles=2, backup_dir=ours), StochasticWeightAveraging("swa", 1, backup_dir=ours)])
    (ours / "notes.txt").write_text("mine")
    assert sorted(os.listdir(ours)) == ["notes.txt", "snapshot_epoch1.npz", "snapshot_epoch3.npz",
                                        "swa_epoch2.npz", "swa_epoch3.npz"]
    _fit(_model(), [SnapshotEnsemble(cycles=2, backup_dir=ours)], epochs=2)  # a new run: epochs 0 and 1
    assert sorted(os.listdir(ours)) == ["notes.txt", "snapshot_epoch0.npz", "snapshot_epoch1.npz",
                                        "swa_epoch2.npz", "swa_epoch3.npz"]


def test_backup_dir_is_checked_and_serialized(tmp_path):
    for bad in (3, b"dir", ["dir"]):
        for make in (lambda v: SnapshotEnsemble(2, backup_dir=v), lambda v: StochasticWeightAveraging(backup_dir=v)):
            with pytest.raises(TypeError, match=rf"backup_dir={bad!r}".replace("[", r"\[").replace("]", r"\]")):
                make(bad)
    with pytest.raises(ValueError, match="non-empty"):
        SnapshotEnsemble(2, backup_dir="")
    path = pathlib.Path(tmp_path)
    snap = SnapshotEnsemble(2, backup_dir=path)
    swa = StochasticWeightAveraging("aswa", 1, backup_dir=path)
    assert snap.get_config() == {"cycles": 2, "backup_dir": str(path)}
    assert swa.get_config() == {"mode": "aswa", "start_epoch": 1, "backup_dir": str(path)}
    assert SnapshotEnsemble.from_config(snap.get_config()).backup_dir == str(path)
    assert StochasticWeightAveraging.from_config(swa.get_config()).backup_dir == str(path)
    assert StochasticWeightAveraging.from_config({"mode": "swa", "start_epoch": 0}).backup_dir is None


def test_resumed_without_backup_dir_warnings_name_it(tmp_path):
    for callback, start in ((SnapshotEnsemble(cycles=2), "SnapshotEnsemble: training resumes at epoch 3"),
                            (StochasticWeightAveraging("swa", 1), "StochasticWeightAveraging: training resumes")):
        with pytest.warns(UserWarning, match=start) as caught:
            _fit(_model(), [callback], initial_epoch=3)
        assert any("pass `backup_dir`" in str(w.message) for w in caught)
