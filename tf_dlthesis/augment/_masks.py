"""The one abstraction every mixing method is built on: a per-pair mixing plan.

Every method of Thesis Sec. 2.3 maps a batch of pairs (x1, x2) to

    x = scale * (w * x1' + (1 - w) * x2'),      y = l * y1 + (1 - l) * y2,

where
  * ``w`` is a per-element weight of x1, stored in the smallest broadcastable shape
    ((B,1,1,1) for mixup, (B,H,1,1) for row methods, (B,1,W,1) for column methods,
    (B,H,W,1) for pixel methods, (B,H,W,C) for element methods); binary for the
    non-linear methods, so every output element is exactly x1's or x2's;
  * ``l`` is the label weight: by default the realised fraction ``mean(w)``;
  * x1', x2' are the inputs, zero-meaned per image for the BC+ family (``center``),
    and x2 optionally re-indexed so that a random region of x2 lands in the mixed
    region (Random Square, the interval methods);
  * ``scale`` is BC+'s 1 / sqrt(p^2 + (1-p)^2), 1 otherwise.
"""

from __future__ import annotations

from typing import NamedTuple, Optional

import tensorflow as tf


class MixPlan(NamedTuple):
    """How one batch of pairs is mixed (see the module docstring)."""

    weight: tf.Tensor                      # (B, h, w, c) broadcastable to (B, H, W, C)
    label: Optional[tf.Tensor] = None      # (B,); None -> mean(weight)
    scale: Optional[tf.Tensor] = None      # (B,); None -> 1
    source_rows: Optional[tf.Tensor] = None  # (B, H) int32 row of x2 feeding each output row
    source_cols: Optional[tf.Tensor] = None  # (B, W) int32 column of x2 feeding each output column


def as_float(x):
    return tf.cast(x, tf.float32)


def uniform(seed, shape):
    return tf.random.stateless_uniform(shape, seed, dtype=tf.float32, alg="philox")


def uniform_int(seed, low, high):
    """Integers uniform on {low, ..., high} (inclusive; tensors of shape (B,))."""
    low = tf.cast(low, tf.int32)
    high = tf.cast(high, tf.int32)
    u = uniform(seed, tf.shape(low))
    span = as_float(high - low + 1)
    return low + tf.minimum(tf.cast(tf.floor(u * span), tf.int32), high - low)


def index_range(n):
    return tf.range(n, dtype=tf.int32)[None, :]


def cut_mask(cut, n):
    """(B, n) float mask: 1 at positions i < cut[b] (the first `cut` rows/columns)."""
    return as_float(index_range(n) < cut[:, None])


def interval_mask(low, high, n):
    """(B, n) float mask: 1 at positions low[b] <= i < high[b]."""
    i = index_range(n)
    return as_float((i >= low[:, None]) & (i < high[:, None]))


def bernoulli(seed, shape, prob):
    """Float {0, 1} mask of `shape` (leading dim B) with P(1) = prob[b] per pair."""
    u = uniform(seed, shape)
    prob = tf.reshape(prob, tf.concat([[-1], tf.ones([tf.size(shape) - 1], tf.int32)], 0))
    return as_float(u < prob)


def rows(mask):
    """(B, H) -> (B, H, 1, 1) weight."""
    return mask[:, :, None, None]


def cols(mask):
    """(B, W) -> (B, 1, W, 1) weight."""
    return mask[:, None, :, None]


def per_pair(value):
    """(B,) -> (B, 1, 1, 1) weight."""
    return tf.reshape(value, [-1, 1, 1, 1])


def shifted_source(low, high, n, source_low):
    """(B, n) indices into x2 mapping output positions low..high-1 to source_low...

    Positions outside the interval map to themselves (they are masked out anyway).
    """
    i = index_range(n)
    inside = (i >= low[:, None]) & (i < high[:, None])
    return tf.where(inside, source_low[:, None] + i - low[:, None], i)


def mix(x1, x2, plan: MixPlan, y1, y2):
    """Apply a plan: x1, x2 float (B,H,W,C) (already centred if needed), y float (B,K)."""
    if plan.source_rows is not None:
        x2 = tf.gather(x2, plan.source_rows, axis=1, batch_dims=1)
    if plan.source_cols is not None:
        x2 = tf.gather(x2, plan.source_cols, axis=2, batch_dims=1)
    w = tf.cast(plan.weight, x1.dtype)
    x = w * x1 + (1.0 - w) * x2
    if plan.scale is not None:
        x = x * tf.cast(per_pair(plan.scale), x.dtype)
    label = plan.label
    if label is None:
        label = tf.reduce_mean(plan.weight, axis=[1, 2, 3])
    label = tf.cast(label, y1.dtype)[:, None]
    y = label * y1 + (1.0 - label) * y2
    return x, y
