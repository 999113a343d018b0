"""Test-time augmentation (TTA) by averaging logits over augmented views (Thesis Sec. 5.5, B.3).

Views per mode (pad p, image H x W):

* ``"none"``: the image itself (1 view);
* ``"flip"``: the image and its horizontal mirror (2 views);
* ``"crop"``: every H x W crop of the image zero-padded by p on each side,
  (2p + 1)^2 views (81 for the CIFAR-10 setting p = 4);
* ``"flip_crop"``: every crop and its mirror, 2 (2p + 1)^2 views (162);
* ``"grid_crop"`` / ``"flip_grid_crop"``: the large-image variant of Sec. B.3
  (ImageNet): a 3 x 3 grid of `crop_size` crops starting at the top-left corner,
  `grid_spacing` pixels apart (9 or 18 views); the model sees `crop_size` inputs.

The prediction is the mean of the views' logits (the thesis's ensemble rule).

Reference: Thesis Ch. 5, Sec. 5.5 and App. B.3; arXiv:2103.04514.
"""

from __future__ import annotations

import numpy as np

from tf_dlthesis._checks import check_int
from tf_dlthesis.data._arrays import as_images

TTA_MODES = ("none", "flip", "crop", "flip_crop", "grid_crop", "flip_grid_crop")


def tta_views(mode: str, *, pad: int = 4, grid: int = 3, grid_spacing: int = 16) -> list[tuple[int, int, bool]]:
    """The (row offset, column offset, flipped) triples of a TTA mode.

    Offsets index the zero-padded image for the crop modes and the raw image for
    the grid modes; ``len(tta_views("flip_crop", pad=4)) == 162``.
    """
    if mode not in TTA_MODES:
        raise ValueError(f"`mode` must be one of {TTA_MODES}. Received: mode={mode!r}")
    check_int("pad", pad, 0)
    if mode in ("grid_crop", "flip_grid_crop"):
        check_int("grid", grid, 1)
        check_int("grid_spacing", grid_spacing, 0)
    flips = (False, True) if mode.startswith("flip") else (False,)
    if mode in ("none", "flip"):
        offsets = [(pad, pad)]  # the unshifted image inside the padding
    elif mode in ("crop", "flip_crop"):
        offsets = [(dy, dx) for dy in range(2 * pad + 1) for dx in range(2 * pad + 1)]
    else:
        offsets = [(gy * grid_spacing, gx * grid_spacing) for gy in range(grid) for gx in range(grid)]
    return [(dy, dx, f) for dy, dx in offsets for f in flips]


def _input_shape(model):
    """A Keras model's `input_shape`, or None when it has none yet (a subclassed or unbuilt model)."""
    try:
        return model.input_shape
    except (AttributeError, ValueError, RuntimeError):
        return None


def _model_input_shape(model):
    """(H, W, C) of a Keras model's single 4-D input (entries may be None), or None when unknown."""
    shape = _input_shape(model)
    if isinstance(shape, tuple) and len(shape) == 4 and all(d is None or isinstance(d, int) for d in shape):
        return tuple(shape[1:])
    return None


def predict_tta(
    model,
    images,
    mode: str = "flip",
    pad: int = 4,
    *,
    batch_size: int = 512,
    crop_size: int | None = None,
    grid: int = 3,
    grid_spacing: int = 16,
) -> np.ndarray:
    """Mean logits of `model` over the TTA views of `images`.

    Example:

    >>> # logits = predict_tta(model, x_test, mode="flip_crop", pad=4)  # 162 views on CIFAR

    Args:
        model: A callable Keras model mapping (B, h, w, C) images to logits.
        images: (N, H, W, C) images (integer ones are scaled by 1/255, as everywhere
            in the library), or an `(x, y)` pair or `tf.data` dataset whose images are
            used (`data.as_arrays`; grey ones get a channel axis there).
        mode: One of `TTA_MODES`.
        pad: Zero padding of the crop modes (4 for CIFAR-10, 1 for MNIST).
        batch_size: Maximum number of view images per forward pass.
        crop_size: Side of the grid-mode crops (required for the grid modes).
        grid: Grid side of the grid modes (3 in the thesis).
        grid_spacing: Pixel spacing of the grid crops (16 in the thesis).

    Returns:
        (N, num_classes) float64 mean logits.

    Raises:
        TypeError: for `pad`, `batch_size` or (grid modes) `crop_size`, `grid`,
            `grid_spacing` that are not ints (`crop_size=None` included).
        ValueError: for a bad mode, images that are not 4-D, not finite, an empty batch
            (N = 0) or empty images, images whose channel count (or, for a model
            with a fixed input size, view size) differs from the model's input,
            a grid mode's `crop_size` / `grid` < 1 or `grid_spacing` < 0, or a
            grid that does not fit the image.
    """
    x = as_images(images, ranks=(4,)).astype(np.float32, copy=False)
    if x.ndim != 4:
        raise ValueError(f"`images` must have shape (N, H, W, C). Received: shape={x.shape}")
    if 0 in x.shape[1:]:
        raise ValueError(f"`images` must have non-empty height, width and channels. Received: shape={x.shape}")
    views = tta_views(mode, pad=pad, grid=grid, grid_spacing=grid_spacing)
    n, h, w, c = x.shape
    expected = _model_input_shape(model)
    if mode in ("grid_crop", "flip_grid_crop"):
        check_int("crop_size", crop_size, 1, why="the crop side the grid modes require")
        reach = (grid - 1) * grid_spacing + crop_size
        if reach > min(h, w):
            raise ValueError(
                f"A {grid}x{grid} grid of {crop_size}px crops {grid_spacing}px apart needs {reach}px; images are {h}x{w}."
            )
        source, out_h, out_w = x, crop_size, crop_size
    else:
        source = np.pad(x, ((0, 0), (pad, pad), (pad, pad), (0, 0))) if pad else x
        out_h, out_w = h, w
    check_int("batch_size", batch_size, 1)
    if expected is not None:
        want_h, want_w, want_c = expected
        if want_c is not None and want_c != c:
            raise ValueError(f"`images` have {c} channels but the model expects {want_c}. "
                             f"Received: images.shape={x.shape}, model input shape (None, {want_h}, {want_w}, {want_c})")
        if (want_h is not None and want_h != out_h) or (want_w is not None and want_w != out_w):
            raise ValueError(f"The {mode!r} views of `images` are {out_h}x{out_w} but the model expects "
                             f"{want_h}x{want_w} inputs. Received: images.shape={x.shape}")

    def view(dy, dx, flip, lo, hi):
        v = source[lo:hi, dy : dy + out_h, dx : dx + out_w]
        return v[:, :, ::-1] if flip else v

    total = None
    per_chunk = max(1, batch_size // max(1, n))  # whole views per forward pass when N is small
    if per_chunk > 1:
        for start in range(0, len(views), per_chunk):
            chunk = views[start : start + per_chunk]
            batch = np.concatenate([view(dy, dx, f, 0, n) for dy, dx, f in chunk])
            out = np.asarray(model.predict_on_batch(batch), dtype=np.float64).reshape(len(chunk), n, -1).sum(axis=0)
            total = out if total is None else total + out
    else:
        for dy, dx, f in views:
            parts = [
                np.asarray(model.predict_on_batch(np.ascontiguousarray(view(dy, dx, f, lo, lo + batch_size))), dtype=np.float64)
                for lo in range(0, n, batch_size)
            ]
            out = np.concatenate(parts)
            total = out if total is None else total + out
    return total / len(views)
