"""`plot_methods`: Thesis Figure 2.2, one example output of every mixing method."""

from __future__ import annotations

import math

import numpy as np

from tf_dlthesis.augment.methods import DISPLAY_NAMES, METHODS, canonical_name
from tf_dlthesis.augment.mix import mix_pair


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


def plot_methods(x1, x2, methods=METHODS, *, seed=0, columns=6, path=None, **params):
    """Draws the Figure 2.2 grid: x1, x2, then one mixed output per method.

    Example:

    >>> fig = plot_methods(img_a, img_b, path="fig_2_2.png")

    Args:
        x1, x2: (H, W, C) images in [0, 1] (C = 1 or 3).
        methods: method names to show (default: all of `METHODS`).
        seed: int seed; method i uses seed (seed, i).
        columns: panels per row.
        path: if given, the figure is also saved there as a PNG.
        **params: hyperparameters passed to every method that accepts them.

    Returns:
        The matplotlib `Figure`. BC+ outputs (zero-mean) are min-max rescaled for display;
        each title gives the label weight of x1.

    Raises:
        ValueError: unknown method or mismatched image shapes (from `mix_pair`).

    Reference:
        Thesis Figure 2.2, Sec. 2.3.
    """
    import matplotlib.pyplot as plt
    from tf_dlthesis.augment.methods import default_params

    names = [canonical_name(m) for m in methods]
    panels = [(np.asarray(x1), "x1"), (np.asarray(x2), "x2")]
    for i, name in enumerate(names):
        accepted = default_params(name)
        kwargs = {k: v for k, v in params.items() if k in accepted}
        image, label = mix_pair(x1, [1.0, 0.0], x2, [0.0, 1.0], name, seed=[seed, i], **kwargs)
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
