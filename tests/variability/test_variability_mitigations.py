"""Cyclic cosine schedule, snapshot ensembles and test-time augmentation (Thesis Sec. 5.5, B.3)."""

import math

import keras
import numpy as np
import pytest

from tf_dlthesis.variability import CyclicCosineSchedule, SnapshotEnsemble, predict_tta, tta_views


def test_cyclic_cosine_schedule_matches_formula():
    sched = CyclicCosineSchedule(0.4, total_steps=50, cycles=5)
    for t in (0, 3, 9, 10, 27, 49):
        expected = 0.4 / 2 * (math.cos(math.pi * (t % 10) / 10) + 1)  # Huang et al. Eq. 2, L = 10
        assert float(sched(t)) == pytest.approx(expected, rel=1e-5, abs=1e-7)
    assert float(sched(9)) < 0.025 * 0.4  # 1 - cos(pi/10) ~ 2.4% of the peak: ~0 where snapshots are taken
    restored = CyclicCosineSchedule.from_config(sched.get_config())
    assert float(restored(27)) == float(sched(27))
    warm = CyclicCosineSchedule(0.4, total_steps=50, cycles=5, warmup_steps=4)
    assert float(warm(0)) == pytest.approx(0.4 / 4 * 0.5 * (math.cos(0) + 1), rel=1e-6)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"initial_learning_rate": 0.0, "total_steps": 10}, "initial_learning_rate"),
        ({"initial_learning_rate": 0.1, "total_steps": 0}, "total_steps"),
        ({"initial_learning_rate": 0.1, "total_steps": 3, "cycles": 5}, "cycles"),
        ({"initial_learning_rate": 0.1, "total_steps": 10, "cycles": 5, "warmup_steps": 2}, "warmup_steps"),
    ],
)
def test_schedule_bad_input(kwargs, match):
    with pytest.raises(ValueError, match=match):
        CyclicCosineSchedule(**kwargs)


def test_schedule_accepts_numpy_rates_and_names_bad_types():
    for lr in (np.float32(0.25), np.float64(0.25), np.int64(1)):
        sched = CyclicCosineSchedule(lr, total_steps=10, cycles=2)
        assert float(sched(0)) == pytest.approx(float(lr)) and isinstance(sched.get_config()["initial_learning_rate"], float)
    assert float(CyclicCosineSchedule(np.float32(0.1), 10)(3)) == float(CyclicCosineSchedule(float(np.float32(0.1)), 10)(3))
    with pytest.raises(TypeError, match="initial_learning_rate='0.1'"):
        CyclicCosineSchedule("0.1", 10)
    with pytest.raises(TypeError, match="initial_learning_rate=True"):
        CyclicCosineSchedule(True, 10)
    with pytest.raises(ValueError, match="initial_learning_rate=inf"):
        CyclicCosineSchedule(float("inf"), 10)


def _tiny_model(seed=0):
    return keras.Sequential(
        [keras.Input((2, 2, 1)), keras.layers.Flatten(), keras.layers.Dense(3, kernel_initializer=keras.initializers.GlorotUniform(seed=seed))]
    )


def test_snapshot_ensemble_takes_one_snapshot_per_cycle():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(32, 2, 2, 1)).astype("float32")
    y = rng.integers(0, 3, size=32)
    model = _tiny_model()
    steps = 2
    sched = CyclicCosineSchedule(0.1, total_steps=10 * steps, cycles=5)
    model.compile(keras.optimizers.SGD(sched), keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    snap = SnapshotEnsemble(cycles=5)
    model.fit(x, y, batch_size=16, epochs=10, verbose=0, shuffle=False, callbacks=[snap])
    assert snap.snapshot_epochs == [1, 3, 5, 7, 9]
    members = snap.predict_members(x)
    assert members.shape == (5, 32, 3)
    np.testing.assert_allclose(members[-1], model.predict_on_batch(x), rtol=1e-6)  # last snapshot = final weights
    assert not np.allclose(members[0], members[-1])
    np.testing.assert_allclose(snap.predict(x), members.mean(axis=0), rtol=1e-12)
    bad = SnapshotEnsemble(cycles=3)
    with pytest.raises(ValueError, match="multiple of cycles=3"):
        model.fit(x, y, epochs=4, verbose=0, callbacks=[bad])
    with pytest.raises(ValueError, match="cycles"):
        SnapshotEnsemble(cycles=0)
    with pytest.raises(ValueError, match="no snapshots"):
        SnapshotEnsemble().predict(x)


def test_tta_view_counts():
    assert len(tta_views("flip")) == 2
    assert len(tta_views("crop", pad=4)) == 81
    assert len(tta_views("flip_crop", pad=4)) == 162  # (4*2+1)^2 * 2, App. B.3
    assert len(tta_views("flip_grid_crop")) == 18


class PixelProbe(keras.Model):
    """'Logits' = the image's pixels, so TTA output is the average view, checkable by hand."""

    def call(self, x):
        return keras.ops.reshape(x, (keras.ops.shape(x)[0], -1))


def _shift(img, dy, dx):
    """Hand-written zero-padded shift: out[i, j] = img[i + dy, j + dx] or 0 outside."""
    h, w = img.shape[:2]
    out = np.zeros_like(img)
    for i in range(h):
        for j in range(w):
            if 0 <= i + dy < h and 0 <= j + dx < w:
                out[i, j] = img[i + dy, j + dx]
    return out


def test_predict_tta_averages_the_views_by_hand():
    rng = np.random.default_rng(1)
    images = rng.normal(size=(3, 4, 5, 1)).astype("float32")
    probe = PixelProbe()
    np.testing.assert_allclose(predict_tta(probe, images, mode="none"), images.reshape(3, -1), rtol=1e-6)
    flip = (images + images[:, :, ::-1]) / 2
    np.testing.assert_allclose(predict_tta(probe, images, mode="flip"), flip.reshape(3, -1), rtol=1e-6)
    crops = np.mean([[_shift(im, dy, dx) for dy in (-1, 0, 1) for dx in (-1, 0, 1)] for im in images], axis=1)
    np.testing.assert_allclose(predict_tta(probe, images, mode="crop", pad=1), crops.reshape(3, -1), rtol=1e-5, atol=1e-6)
    both = np.mean(
        [[_shift(v, dy, dx) for v in (im, im[:, ::-1]) for dy in (-1, 0, 1) for dx in (-1, 0, 1)] for im in images], axis=1
    )
    out = predict_tta(probe, images, mode="flip_crop", pad=1, batch_size=2)  # per-view batching path
    np.testing.assert_allclose(out, both.reshape(3, -1), rtol=1e-5, atol=1e-6)


def test_predict_tta_grid_and_errors():
    images = np.arange(2 * 6 * 6, dtype="float32").reshape(2, 6, 6, 1)
    out = predict_tta(PixelProbe(), images, mode="grid_crop", crop_size=4, grid=2, grid_spacing=2)
    expected = np.mean([images[:, dy : dy + 4, dx : dx + 4] for dy in (0, 2) for dx in (0, 2)], axis=0)
    np.testing.assert_allclose(out, expected.reshape(2, -1))
    with pytest.raises(ValueError, match="needs 8px"):
        predict_tta(PixelProbe(), images, mode="grid_crop", crop_size=4, grid=3, grid_spacing=2)
    with pytest.raises(ValueError, match="mode"):
        predict_tta(PixelProbe(), images, mode="rotate")
    with pytest.raises(ValueError, match=r"\(N, H, W, C\)"):
        predict_tta(PixelProbe(), images[0], mode="flip")


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        ({"crop_size": 4, "grid": 0}, ValueError, "grid=0"),
        ({"crop_size": 4, "grid": 2.0}, TypeError, "grid=2.0"),
        ({"crop_size": 2, "grid_spacing": -1}, ValueError, "grid_spacing=-1"),
        ({"crop_size": 4.0, "grid": 2, "grid_spacing": 2}, TypeError, "crop_size=4.0"),
        ({"crop_size": None}, TypeError, "crop_size=None"),
    ],
)
def test_predict_tta_grid_arguments_are_validated(kwargs, error, match):
    images = np.zeros((2, 6, 6, 1), "float32")
    with pytest.raises(error, match=match):
        predict_tta(PixelProbe(), images, mode="flip_grid_crop", **kwargs)
    # the non-grid modes ignore the grid arguments, as before
    assert tta_views("flip", grid=0, grid_spacing=-1) == tta_views("flip")
