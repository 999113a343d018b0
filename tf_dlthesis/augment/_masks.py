"""The one abstraction every mixing method is built on: a per-pair mixing plan.

Every method of Thesis Sec. 2.3 maps a batch of pairs (x1, x2) to

    x = scale * (w * x1' + (1 - w) * x2'),      y = l * y1 + (1 - l) * y2,

where
  * ``w`` is a per-element weight of x1, stored in the smallest broadcastable shape
    ((B,1,1,1) for mixup, (B,H,1,1) for row methods, (B,1,W,1) for column methods,
    (B,H,W,1) for pixel methods, (B,H,W,C) for element methods); binary for the
    mask-based methods (the concatenations, Random 2x2 / Square / intervals / rows /
    columns / pixels / elements), so every output element is exactly x1's or x2's,
    and fractional for mixup, BC+, VH-Mixup, VH-BC+ and Noisy Mixup, which blend;
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


def _hash32(x):
    """`lowbias32` (C. Wellons, "Prospecting for Hash Functions", 2018): an integer hash
    that is a bijection of uint32 with very low avalanche bias (0.17 on his scale)."""
    x = tf.bitwise.bitwise_xor(x, tf.bitwise.right_shift(x, tf.constant(16, tf.uint32)))
    x = x * tf.constant(0x7FEB352D, tf.uint32)
    x = tf.bitwise.bitwise_xor(x, tf.bitwise.right_shift(x, tf.constant(15, tf.uint32)))
    x = x * tf.constant(0x846CA68B, tf.uint32)
    return tf.bitwise.bitwise_xor(x, tf.bitwise.right_shift(x, tf.constant(16, tf.uint32)))


def random_words(seed, shape):
    """uint32 random words of `shape` (leading dim B): counter-based, stateless.

    Each pair b gets a 32-bit Philox key k_b; element i (row-major index within the
    pair) gets hash(hash(i) XOR k_b), `hash` = `_hash32`, a bijection, so the words of
    one pair are distinct and no two pairs share a shifted stream. The per-element
    work is a few integer ops that XLA fuses into the mixing loop, instead of one
    Philox block per 4 words written to memory: several times faster on CPU for the
    per-pixel/per-element methods (Random Pixels, Random Elements, Noisy Mixup), whose
    cost was dominated by random-number generation. Eager, graph and XLA give the same
    words for the same keys.
    """
    shape = tf.cast(shape, tf.int32)
    keys = tf.random.stateless_uniform(shape[:1], seed, minval=None, maxval=None,
                                       dtype=tf.uint32, alg="philox")
    ones = tf.ones(tf.size(shape) - 1, tf.int32)
    keys = tf.reshape(keys, tf.concat([[-1], ones], 0))
    index = tf.reshape(tf.cast(tf.range(tf.reduce_prod(shape[1:])), tf.uint32),
                       tf.concat([[1], shape[1:]], 0))
    return _hash32(tf.bitwise.bitwise_xor(_hash32(index), keys))


def _top24(words):
    """The top 24 bits of uint32 words as int32 in [0, 2^24)."""
    return tf.cast(tf.bitwise.right_shift(words, tf.constant(8, tf.uint32)), tf.int32)


def word_uniform(seed, shape):
    """float32 uniform on {0, 1, ..., 2^24 - 1} * 2^-24, from `random_words`."""
    return as_float(_top24(random_words(seed, shape))) * (2.0 ** -24)


def word_normal(seed, shape):
    """float32 standard normal of `shape` (leading dim B) from `random_words`.

    Inverse CDF: z = sqrt(2) erfinv(t) with t = (2k + 1 - 2^24) / 2^24 for a uniform
    24-bit k, i.e. t uniform on the odd multiples of 2^-24 in (-1, 1) (exact in
    float32, symmetric, never +-1), as XLA's own normal sampler does; tails are cut
    at |z| ~ 5.4 (probability ~ 1e-7).
    """
    k = _top24(random_words(seed, shape))
    t = as_float(2 * k + (1 - 2 ** 24)) * (2.0 ** -24)
    return tf.math.erfinv(t) * (2.0 ** 0.5)


def bernoulli(seed, shape, prob):
    """Float {0, 1} mask of `shape` (leading dim B) with P(1) = prob[b] per pair.

    A draw is 1 when a 24-bit uniform of `word_uniform` is below prob[b] (as with a
    float uniform; P(1) is prob rounded up to a multiple of 2^-24).
    """
    shape = tf.cast(shape, tf.int32)
    u = word_uniform(seed, shape)
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


def mean_per_pair(weight):
    """(B, h, w, c) -> (B,) mean, reduced over one flattened axis (XLA's CPU backend
    lowers a multi-axis mean of a 4-D tensor to a slower chain of reduce-windows)."""
    return tf.reduce_mean(tf.reshape(weight, tf.stack([tf.shape(weight)[0], -1])), axis=1)


def mix_images(x1, x2, plan: MixPlan):
    """The image half of `mix`: x1, x2 float (B,H,W,C), already centred if needed."""
    if plan.source_rows is not None:
        x2 = tf.gather(x2, plan.source_rows, axis=1, batch_dims=1)
    if plan.source_cols is not None:
        x2 = tf.gather(x2, plan.source_cols, axis=2, batch_dims=1)
    w = tf.cast(plan.weight, x1.dtype)
    x = w * x1 + (1.0 - w) * x2
    if plan.scale is not None:
        x = x * tf.cast(per_pair(plan.scale), x.dtype)
    return x


def label_weight(plan: MixPlan):
    """(B,) label weight of x1: the plan's, or the realised fraction mean(weight)."""
    return mean_per_pair(plan.weight) if plan.label is None else plan.label


def mix_labels(y1, y2, plan: MixPlan):
    """The label half of `mix`: y float (B,K)."""
    label = tf.cast(label_weight(plan), y1.dtype)[:, None]
    return label * y1 + (1.0 - label) * y2


def mix(x1, x2, plan: MixPlan, y1, y2):
    """Apply a plan: x1, x2 float (B,H,W,C) (already centred if needed), y float (B,K)."""
    return mix_images(x1, x2, plan), mix_labels(y1, y2, plan)
