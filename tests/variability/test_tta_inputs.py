"""Issue 15 (hardening): `predict_tta` rejects empty batches and images the model cannot take."""

import keras
import numpy as np
import pytest

from tf_dlthesis.variability.tta import predict_tta


@pytest.fixture(scope="module")
def model():
    """Logits = (sum of pixels, -sum of pixels): TTA of the flip mode leaves them unchanged."""
    inp = keras.Input((4, 4, 1))
    dense = keras.layers.Dense(2, use_bias=False)
    out = dense(keras.layers.Flatten()(inp))
    dense.set_weights([np.stack([np.ones(16), -np.ones(16)], axis=1).astype(np.float32)])
    return keras.Model(inp, out)


def test_empty_batch_is_rejected(model):
    with pytest.raises(ValueError, match=r"`images` is an empty batch.*\(0, 4, 4, 1\)"):
        predict_tta(model, np.zeros((0, 4, 4, 1), np.float32), "flip")


def test_empty_images_are_rejected(model):
    with pytest.raises(ValueError, match="`images` must have non-empty"):
        predict_tta(model, np.zeros((2, 0, 4, 1), np.float32), "none", pad=0)


def test_channel_mismatch_is_rejected(model):
    with pytest.raises(ValueError, match=r"`images` have 3 channels but the model expects 1"):
        predict_tta(model, np.zeros((2, 4, 4, 3), np.float32), "flip")


def test_view_size_mismatch_is_rejected(model):
    with pytest.raises(ValueError, match=r"views of `images` are 5x5 but the model expects 4x4"):
        predict_tta(model, np.zeros((2, 5, 5, 1), np.float32), "flip")


def test_valid_input_still_averages_views(model):
    x = np.arange(32, dtype=np.float32).reshape(2, 4, 4, 1) / 32
    sums = x.reshape(2, -1).sum(1)
    np.testing.assert_allclose(predict_tta(model, x, "flip"), np.stack([sums, -sums], 1), rtol=1e-5)
    # crop mode, pad 1: 9 shifted views; each drops the pixels shifted out of the window
    crops = predict_tta(model, x, "crop", pad=1)
    padded = np.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
    want = np.mean([padded[:, dy:dy + 4, dx:dx + 4].reshape(2, -1).sum(1) for dy in range(3) for dx in range(3)], 0)
    np.testing.assert_allclose(crops[:, 0], want, rtol=1e-5)
