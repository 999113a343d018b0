"""`plot_methods`: Thesis Figure 2.2, one example output of every mixing method."""

from __future__ import annotations

import math

import numpy as np

from tf_dlthesis._checks import check_int
from tf_dlthesis._seeds import as_seed, check_int_seed, fresh_seed
from tf_dlthesis.augment.methods import DISPLAY_NAMES, METHODS, canonical_name, resolve
from tf_dlthesis.augment.mix import mix_pair, mix_pairs, pop_check_numerics


def _show(ax, image, title):
    image = np.asarray(image, dtype=np.float32)
    lo, hi = float(image.min()), float(image.max())
    if lo < 0.0 or hi > 1.0:              # BC+ outputs are zero-mean: rescale for display
        image = (image - lo) / max(hi - lo, 1e-12)
    if image.shape[-1] == 1:
        ax.imshow(image[..., 0], cmap="gray", vmin=0.0, vmax=1.0, interpolation="nearest")
    else:
        ax.imshow(np.clip(image, 0.0, 1.0), interpolation="nearest")
    ax.set_title(title, fontsize=8)
    ax.set_xticks([])
    ax.set_yticks([])


def _check_lam(lam, draws):
    if lam is None:
        return None
    if isinstance(lam, bool) or not isinstance(lam, (int, float, np.floating)) or not 0.0 < float(lam) < 1.0:
        raise ValueError(f"`lam` (the target label weight of x1) must be a number in (0, 1) or None. "
                         f"Received: lam={lam!r}")
    check_int("draws", draws, 1)
    return float(lam)


def _closest_draw(x1, x2, name, kwargs, seed, lam, draws):
    """Of `draws` mixes of (x1, x2) drawn with one seed, the one whose x1 label weight is closest to `lam`."""
    import tensorflow as tf

    kwargs = dict(kwargs)
    pop_check_numerics(kwargs)             # mix_pair has checked the inputs
    names, full = resolve(name, kwargs)
    a = tf.repeat(tf.convert_to_tensor(x1, tf.float32)[None], draws, axis=0)
    b = tf.repeat(tf.convert_to_tensor(x2, tf.float32)[None], draws, axis=0)
    ya = tf.repeat(tf.constant([[1.0, 0.0]]), draws, axis=0)
    yb = tf.repeat(tf.constant([[0.0, 1.0]]), draws, axis=0)
    images, labels = mix_pairs(a, ya, b, yb, names, full, as_seed(seed))
    k = int(np.argmin(np.abs(labels.numpy()[:, 0] - lam)))   # ties: the first draw
    return images[k], labels[k]


def plot_methods(x1, x2, methods=METHODS, *, seed=0, columns=6, path=None, lam=None, draws=64, **params):
    """Draws the Figure 2.2 grid: x1, x2, then one mixed output per method.

    Each method draws its own mixing randomness (lambda ~ Beta(alpha, alpha), cut
    positions, masks), so one draw may take (almost) everything from one image: at
    seed 0 on two digits, Rand. 2x2 draws a label weight of 1.00 and Rand. Rows 0.00.
    `lam` asks for panels that show both images: of `draws` draws of each method,
    the one whose realised label weight of x1 is closest to `lam` is shown (the
    draw is chosen; lambda itself is not forced, so methods whose weight cannot
    reach `lam`, e.g. Rand. Square with its fixed patch size, show their closest).

    Example:

    >>> fig = plot_methods(img_a, img_b, path="fig_2_2.png")
    >>> fig = plot_methods(img_a, img_b, lam=0.4)   # every panel mixes both images

    Args:
        x1, x2: (H, W, C) images in [0, 1] (C = 1 or 3).
        methods: method names to show (default: all of `METHODS`), or one name.
        seed: int seed >= 0 (NumPy integers accepted); method i uses seed (seed, i).
            None draws a fresh one (a different figure on every call).
        columns: panels per row (an int >= 1).
        path: if given, the figure is also saved there as a PNG.
        lam: None (each method's own draw with seed (seed, i)) or a target label
            weight of x1 in (0, 1): method i shows the one of `draws` pairs mixed
            with seed (seed, i) whose label weight of x1 is closest to `lam`.
        draws: how many draws `lam` chooses from.
        **params: hyperparameters passed to every method that accepts them.

    Returns:
        The matplotlib `Figure`. BC+ outputs (zero-mean) are min-max rescaled for display;
        each title gives the label weight of x1.

    Raises:
        ValueError: unknown method or mismatched image shapes (from `mix_pair`),
            `lam` outside (0, 1), `draws` or `columns` < 1, a negative `seed`.
        TypeError: a hyperparameter no method knows (e.g. a misspelled `alpah`), a
            non-int `columns` or `seed`.

    Reference:
        Thesis Figure 2.2, Sec. 2.3.
    """
    import matplotlib.pyplot as plt

    lam = _check_lam(lam, draws)
    # Method i mixes with the stateless seed [seed, i], so `seed` must be one int (None: a
    # fresh one); checked here so an error names the value passed, not [seed, i].
    seed = fresh_seed() if seed is None else check_int_seed(seed, allow_none=False)
    columns = check_int("columns", columns, 1)
    if isinstance(methods, str):          # one name, not a sequence of one-letter names
        methods = [methods]
    names = [canonical_name(m) for m in methods]
    panels = [(np.asarray(x1), "x1"), (np.asarray(x2), "x2")]
    for i, name in enumerate(names):
        # Every method accepts (and ignores where it has none) any method's hyperparameter;
        # an unknown name raises a TypeError, as in `mix_pair`.
        image, label = mix_pair(x1, [1.0, 0.0], x2, [0.0, 1.0], name, seed=[seed, i], **params)
        if lam is not None:   # mix_pair above validated the inputs
            image, label = _closest_draw(x1, x2, name, params, [seed, i], lam, int(draws))
        panels.append((image.numpy(), f"{DISPLAY_NAMES[name]}\n$\\lambda$={float(label[0]):.2f}"))
    rows = math.ceil(len(panels) / columns)
    fig, axes = plt.subplots(rows, columns, figsize=(1.7 * columns, 1.9 * rows))
    axes = np.atleast_1d(axes).ravel()
    for ax, (image, title) in zip(axes, panels):
        _show(ax, image, title)
    for ax in axes[len(panels):]:
        ax.axis("off")
    fig.suptitle("Mixed-example outputs (Thesis Fig. 2.2)", fontsize=10)
    fig.tight_layout()
    if path is not None:
        fig.savefig(path, dpi=120)
    return fig
