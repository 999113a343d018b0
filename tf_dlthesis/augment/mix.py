"""`mix_pair` and `mix_batch`: the pure, vectorized mixing functions (Thesis Sec. 2.3).

Both are thin front ends over one vectorized core that mixes a batch of pairs
(x1[b], x2[b]) with per-pair randomness from one stateless seed; they run eagerly, in
`tf.data` maps, in `tf.function` and under XLA (`jit_compile=True`).
"""

from __future__ import annotations

from typing import NamedTuple, Optional

import tensorflow as tf

from tf_dlthesis._checks import check_bool, check_int
from tf_dlthesis.augment import _masks as M
from tf_dlthesis._seeds import as_seed
from tf_dlthesis.augment.methods import METHODS, get_method, resolve

_PAIRINGS = ("permute", "reverse")


def _images(x, rank, name):
    x = tf.convert_to_tensor(x)
    if x.shape.rank != rank:
        what = "(batch, height, width, channels)" if rank == 4 else "(height, width, channels)"
        raise ValueError(f"`{name}` must have rank {rank} {what}. Received shape {x.shape} "
                         f"for {name}.")
    if not (x.dtype.is_floating or x.dtype.is_integer) or x.dtype == tf.bool:
        raise TypeError(f"`{name}` must be a float or integer (e.g. uint8) tensor. "
                        f"Received dtype {x.dtype.name}.")
    spatial = x.shape[-3:]
    if any(d == 0 for d in spatial):
        raise ValueError(f"`{name}` must have non-empty height, width and channels (a 0-pixel image has "
                         f"no label weights to mix). Received shape {x.shape} for {name}.")
    return x


def pop_check_numerics(params):
    """Removes and validates the `check_numerics` option from method hyperparameters."""
    return check_bool("check_numerics", params.pop("check_numerics", False))


def check_numerics(x, name, enabled):
    """`tf.debugging.check_numerics` on float `x` when `enabled` (error message names `name`)."""
    if not enabled or not x.dtype.is_floating:
        return x
    return tf.debugging.check_numerics(x, f"`{name}` has NaN or Inf values (check_numerics=True)")


def _is_eager(t):
    return tf.executing_eagerly() and hasattr(t, "numpy")


def check_num_classes(num_classes, minimum=1):
    """`num_classes` as a Python int (NumPy integers accepted, e.g. `y.max() + 1`) or None."""
    return check_int("num_classes", num_classes, minimum, allow_none=True)


def labels_to_soft(labels, num_classes, sparse_rank, name="labels"):
    """Sparse int labels -> one-hot float32; float one-hot/soft labels pass through."""
    labels = tf.convert_to_tensor(labels)
    num_classes = check_num_classes(num_classes)
    if labels.dtype.is_integer:
        if labels.shape.rank != sparse_rank:
            raise ValueError(f"Sparse integer `{name}` must have rank {sparse_rank}; one-hot or "
                             f"soft labels must be float. Received shape {labels.shape}, dtype "
                             f"{labels.dtype.name}.")
        if num_classes is None:
            raise ValueError(f"Sparse integer `{name}` need `num_classes=` to be one-hot "
                             f"encoded. Received: num_classes=None")
        if labels.dtype != tf.int64:  # uint8 / int8 would wrap num_classes in the range check; int16 has no one_hot
            labels = tf.cast(labels, tf.int64)
        if _is_eager(labels):
            values = labels.numpy()
            if values.size and (values.min() < 0 or values.max() >= num_classes):
                bad = sorted({v.item() for v in values.reshape(-1)
                              if v < 0 or v >= num_classes})
                raise ValueError(f"`{name}` out of range for num_classes={num_classes}: "
                                 f"expected values in [0, {num_classes - 1}]. Received "
                                 f"out-of-range labels {bad[:10]}.")
            return tf.one_hot(labels, num_classes, dtype=tf.float32)
        what = f"`{name}` must be in [0, {num_classes - 1}] (num_classes={num_classes})"
        deps = [tf.debugging.assert_non_negative(labels, message=what),
                tf.debugging.assert_less(labels, tf.cast(num_classes, labels.dtype), message=what)]
        with tf.control_dependencies(deps):
            one_hot = tf.one_hot(labels, num_classes, dtype=tf.float32)
        # XLA drops the asserts: there an out-of-range label gives a NaN row (so the loss
        # is NaN) instead of tf.one_hot's silent all-zero row.
        valid = (labels >= 0) & (labels < tf.cast(num_classes, labels.dtype))
        return tf.where(valid[..., None], one_hot, float("nan"))
    if not labels.dtype.is_floating:
        raise TypeError(f"`{name}` must be integer (sparse) or float (one-hot/soft). "
                        f"Received dtype {labels.dtype.name}.")
    if labels.shape.rank != sparse_rank + 1:
        raise ValueError(f"One-hot/soft `{name}` must have rank {sparse_rank + 1}. Received "
                         f"shape {labels.shape}.")
    if num_classes is not None and labels.shape[-1] is not None and labels.shape[-1] != num_classes:
        raise ValueError(f"`{name}` have {labels.shape[-1]} classes but num_classes="
                         f"{num_classes}.")
    if labels.shape[-1] == 0:
        raise ValueError(f"One-hot/soft `{name}` must have at least one class. Received shape "
                         f"{labels.shape}.")
    if _is_eager(labels):
        values = labels.numpy()
        if values.size and values.min() < 0:
            raise ValueError(f"One-hot/soft `{name}` must be non-negative (class weights). Received "
                             f"min {values.min()}.")
    return labels


class PairStats(NamedTuple):
    """Per-image statistics of the two inputs of each pair (BC+ family).

    mean/std: (B,), over all pixels and channels (std without the std floor). row_col (only
    for methods registered with `row_col=True`): for each input, the sums of the
    centred image and of its square per row (B, H) and per column (B, W), as
    ((rows1, rows_sq1, cols1, cols_sq1), (rows2, ...)).
    """

    mean1: tf.Tensor
    mean2: tf.Tensor
    std1: tf.Tensor
    std2: tf.Tensor
    row_col: Optional[tuple] = None


def centre_images(x):
    """Each image minus its mean over H, W and C: BC+'s test-time view of an image
    (Sec. 2.3.2), used by `MixStage.test_transform` and `MixedExample` at inference."""
    return x - tf.reduce_mean(x, axis=[1, 2, 3], keepdims=True)


def _image_moments(x):
    mean, var = tf.nn.moments(x, axes=[1, 2, 3])
    return mean, tf.sqrt(var)


def _row_col_sums(c):
    """Sums of c and c^2 per row (B, H) and per column (B, W) of c (B, H, W, C).

    Written as contractions with ones; under XLA the centring and squaring fuse into
    them, so neither the squared image nor a concatenation is materialized.
    """
    shape = tf.shape(c)
    h, w, ch = shape[1], shape[2], shape[3]
    flat = tf.reshape(c, tf.stack([shape[0], h, w * ch]))
    ones_row = tf.ones(tf.stack([w * ch]), c.dtype)
    ones_col = tf.ones(tf.stack([h, ch]), c.dtype)
    sq = c * c
    return (tf.einsum("bhn,n->bh", flat, ones_row),
            tf.einsum("bhn,n->bh", tf.reshape(sq, tf.shape(flat)), ones_row),
            tf.einsum("bhwc,hc->bw", c, ones_col),
            tf.einsum("bhwc,hc->bw", sq, ones_col))


class PairPlan(NamedTuple):
    """How a batch of pairs is mixed: the `MixPlan` (its label weight always set) and
    the per-image means subtracted from x1 and x2 first (BC+ family; None otherwise)."""

    plan: M.MixPlan
    mean1: Optional[tf.Tensor] = None
    mean2: Optional[tf.Tensor] = None


def centred_inputs(x1, x2, pair_plan: PairPlan):
    """The inputs the plan mixes: x1, x2 minus their per-image means where the plan centres."""
    if pair_plan.mean1 is None:
        return x1, x2
    return x1 - M.per_pair(pair_plan.mean1), x2 - M.per_pair(pair_plan.mean2)


def _with_label(plan):
    return plan._replace(label=M.label_weight(plan))


def mix_pairs(x1, y1, x2, y2, names, params, seed, partner=None):
    """Core: mix pairs (x1[b], x2[b]) (float32 (B,H,W,C)) and (y1[b], y2[b]) (float (B,K)).

    `names`/`params` come from `methods.resolve`; with several names each pair draws
    one method uniformly at random. `partner` (batch mode) says that x2 = x1[partner]:
    the per-image statistics of x2 (BC+ family) are then gathered from x1's instead of
    being recomputed.
    """
    pair_plan = plan_pairs(x1, x2, names, params, seed, partner)
    a, c = centred_inputs(x1, x2, pair_plan)
    return M.mix(a, c, pair_plan.plan, y1, y2)


def plan_pairs(x1, x2, names, params, seed, partner=None) -> PairPlan:
    """The randomness of `mix_pairs` (same arguments, without labels) as a `PairPlan`."""
    seeds = tf.unstack(tf.random.experimental.stateless_split(seed, num=len(names) + 1,
                                                              alg="philox"),
                       num=len(names) + 1)
    specs = [get_method(n) for n in names]
    stats = None
    if any(s.center for s in specs):
        mean1, std1 = _image_moments(x1)
        if partner is not None:
            mean2, std2 = tf.gather(mean1, partner), tf.gather(std1, partner)
        else:
            mean2, std2 = _image_moments(x2)
        # Centred inputs: elementwise, so XLA fuses them into their consumers.
        centred = (x1 - M.per_pair(mean1), x2 - M.per_pair(mean2))
        row_col = None
        if any(s.row_col for s in specs):
            first = _row_col_sums(centred[0])
            if partner is not None:
                second = tuple(tf.gather(t, partner) for t in first)
            else:
                second = _row_col_sums(centred[1])
            row_col = (first, second)
        stats = PairStats(mean1, mean2, std1, std2, row_col)

    def make_plan(spec, s):
        if spec.center:
            return spec.plan(s, *centred, params[spec.name], stats)
        return spec.plan(s, x1, x2, params[spec.name])

    plans = [make_plan(spec, s) for spec, s in zip(specs, seeds[1:])]
    if len(plans) == 1:
        if specs[0].center:
            return PairPlan(_with_label(plans[0]), stats.mean1, stats.mean2)
        return PairPlan(_with_label(plans[0]))

    # Several methods: every pair picks one; select its plan element-wise (exact: the
    # selector is 0/1, so a selected weight is copied bit-for-bit).
    k = len(plans)
    b = tf.shape(x1)[0]
    choice = tf.minimum(tf.cast(tf.floor(M.uniform(seeds[0], [b]) * k), tf.int32), k - 1)
    sel = tf.one_hot(choice, k, dtype=tf.float32)
    full_c = tf.shape(x1)[3] if any(p.weight.shape[3] != 1 for p in plans) else 1
    full = tf.stack([b, tf.shape(x1)[1], tf.shape(x1)[2], full_c])
    weight = 0.0
    label = 0.0
    scale = 0.0
    centre_flag = 0.0
    rows, cols = None, None
    for i, (spec, plan) in enumerate(zip(specs, plans)):
        on = sel[:, i]
        weight += M.per_pair(on) * tf.broadcast_to(plan.weight, full)
        lab = plan.label if plan.label is not None else tf.reduce_mean(plan.weight, [1, 2, 3])
        label += on * lab
        scale += on * (plan.scale if plan.scale is not None else 1.0)
        if spec.center:
            centre_flag += on
        pick = tf.equal(choice, i)[:, None]
        if plan.source_rows is not None:
            base = rows if rows is not None else M.index_range(tf.shape(x1)[1]) + tf.zeros(
                tf.stack([b, 1]), tf.int32)
            rows = tf.where(pick, plan.source_rows, base)
        if plan.source_cols is not None:
            base = cols if cols is not None else M.index_range(tf.shape(x1)[2]) + tf.zeros(
                tf.stack([b, 1]), tf.int32)
            cols = tf.where(pick, plan.source_cols, base)
    plan = M.MixPlan(weight=weight, label=label, scale=scale, source_rows=rows, source_cols=cols)
    if stats is None:
        return PairPlan(plan)
    return PairPlan(plan, centre_flag * stats.mean1, centre_flag * stats.mean2)


def _out_dtype(x):
    return x.dtype if x.dtype.is_floating else tf.float32


def mix_batch(images, labels, method, *, seed, pairing="permute", num_classes=None, **params):
    """Mixes every example of a batch with a partner from the same batch.

    Each output example b mixes images[b] (x1) with images[partner[b]] (x2) by one of
    the Sec. 2.3 methods, with its own random coefficients; the output label is the
    fraction each input contributes (the realised mask mean for mask methods, lambda
    for mixup/BC/BC+/noisy mixup). Works in eager mode, inside `tf.function`,
    `tf.data` and XLA (`jit_compile=True`). A seed gives the same output in eager and
    graph mode up to float rounding: the random draws are the same, but values
    computed from them in float (lambda from Beta(alpha, alpha) with alpha != 1, the
    BC+ family's p and scale, noisy mixup's weights) can differ in the last bits, as
    graph optimizations reorder float operations. Under XLA the output is deterministic
    too but differs, because XLA's Philox kernel orders its random stream differently.

    BC+ and VH-BC+ zero-mean each image (and VH-BC+ does so before concatenating), so
    a model trained with them should also see per-image zero-mean images at test time,
    as in the authors' preprocessing.

    Example:

    >>> x = tf.random.uniform([8, 32, 32, 3])
    >>> y = tf.one_hot(tf.range(8) % 10, 10)
    >>> xm, ym = mix_batch(x, y, "vh_mixup", seed=tf.constant([0, 1]))

    Args:
        images: (B, H, W, C) float or integer (e.g. uint8) images, B >= 2.
        labels: (B, K) one-hot/soft float labels, or (B,) sparse int labels (then
            `num_classes` is required).
        method: a name in `METHODS` (or a list of names: each pair then draws one).
        seed: int or shape-[2] integer tensor (may be a traced tensor); None draws
            fresh entropy on every call, also inside `tf.function` / `tf.data` (an
            in-graph draw, not one seed frozen at trace time).
        pairing: "permute" (a random permutation, as in mixup) or "reverse".
        num_classes: number of classes for sparse labels.
        **params: method hyperparameters (thesis defaults): `alpha=1.0` (lambda ~
            Beta(alpha, alpha)); `std_floor=1e-3` (BC+ guard added to each image's
            std); `p=0.5` (Random 2x2 grid lines in the middle p of each axis);
            `size=0.5` (Random Square side: float fraction of min(H, W), i.e. 16 px on
            32x32, or int pixels); `source` (where x2's region comes from: "random"
            for Random Square, as the thesis states; "same" position for the
            interval methods, which generalize the concatenations); `noise_std=0.025`
            and `noisy_label="lambda"` (noisy mixup). `check_numerics=True` (default
            False) fails with an error naming `images` / `labels` when they hold NaN
            or Inf (one `tf.debugging.check_numerics` per call; off by default).

    Returns:
        (images, labels): mixed images (input float dtype; float32 for integer input;
        BC+ outputs are zero-mean, not in [0, 1]) and soft labels (B, K).

    Raises:
        ValueError: unknown method (with a suggestion), wrong rank, an empty (0-pixel)
            image, batch of 1, bad hyperparameter, sparse labels without `num_classes`
            or out of range, negative soft labels (range and sign are checked on eager
            tensors; traced sparse labels get an in-graph assert, which XLA drops: under
            `jit_compile=True` an out-of-range sparse label gives a NaN label row instead).
        TypeError: unexpected hyperparameter, non-numeric images/labels.

    Reference:
        Thesis Sec. 2.3; Summers & Dinneen, WACV 2019, https://arxiv.org/abs/1805.11272
    """
    numerics = pop_check_numerics(params)
    names, full = resolve(method, params)
    images = _images(images, 4, "images")
    if pairing not in _PAIRINGS:
        raise ValueError(f"`pairing` must be one of {_PAIRINGS}. Received: pairing={pairing!r}")
    soft = labels_to_soft(labels, num_classes, 1)
    b_static = images.shape[0]
    if b_static is not None and b_static < 2:
        raise ValueError(f"Batch mode needs at least 2 examples to pair; received a batch of "
                         f"{b_static} (images shape {images.shape}).")
    if b_static is not None and soft.shape[0] is not None and soft.shape[0] != b_static:
        raise ValueError(f"images and labels disagree on batch size: {images.shape} vs "
                         f"{tf.convert_to_tensor(labels).shape}.")
    x1 = check_numerics(tf.cast(images, tf.float32), "images", numerics)
    soft = check_numerics(soft, "labels", numerics)
    x, y = batch_core(x1, soft, names, full, as_seed(seed), pairing)
    return tf.cast(x, _out_dtype(images)), y


def batch_partner(x1, seed, pairing):
    """(partner (B,) int32, mixing seed) of batch mode: x2[b] = x1[partner[b]]."""
    s_pair, s_mix = tf.unstack(tf.random.experimental.stateless_split(seed, num=2, alg="philox"),
                               num=2)
    b = tf.shape(x1)[0]
    if pairing == "permute":
        partner = tf.argsort(tf.random.stateless_uniform([b], s_pair, alg="philox"), stable=True)
    else:
        partner = tf.reverse(tf.range(b), [0])
    return partner, s_mix


def batch_core(x1, soft, names, full, seed, pairing):
    """Validated-input core of `mix_batch`: x1 float32 (B,H,W,C), soft labels (B,K)."""
    partner, s_mix = batch_partner(x1, seed, pairing)
    x2 = tf.gather(x1, partner)
    y2 = tf.gather(soft, partner)
    return mix_pairs(x1, soft, x2, y2, names, full, s_mix, partner=partner)


def _same_shape(a, b, name_a, name_b):
    """(a, b) after checking that they have one shape: statically where both shapes are
    known, else (a traced tensor with unknown dimensions, e.g. from a `tf.data` map) with
    an in-graph assert, so compatible static shapes such as (32, 32, 3) and
    (None, None, 3) are accepted."""
    what = f"{name_a} and {name_b} must have the same shape"
    if not a.shape.is_compatible_with(b.shape):
        raise ValueError(f"{what}. Received {a.shape} and {b.shape}.")
    if a.shape.is_fully_defined() and b.shape.is_fully_defined():
        return a, b
    with tf.control_dependencies([tf.debugging.assert_equal(tf.shape(a), tf.shape(b),
                                                            message=what)]):
        return tf.identity(a), tf.identity(b)


def mix_pair(x1, y1, x2, y2, method, *, seed, num_classes=None, **params):
    """Mixes one pair of examples (Eq. 2.2): (x, y) = f((x1, y1), (x2, y2)).

    Example:

    >>> x, y = mix_pair(img_a, tf.one_hot(3, 10), img_b, tf.one_hot(7, 10),
    ...                 "vertical_concat", seed=42)

    Args:
        x1, x2: (H, W, C) images of equal shape (float or integer).
        y1, y2: (K,) one-hot/soft float labels, or int scalars with `num_classes`.
        method: a name in `METHODS` or a list of names (one is drawn).
        seed: int or shape-[2] integer tensor; None as in `mix_batch`.
        num_classes: number of classes for sparse labels.
        **params: method hyperparameters, as in `mix_batch`.

    Returns:
        (image (H, W, C), label (K,)).

    Raises:
        ValueError / TypeError: as `mix_batch`, plus mismatched image or label shapes.

    Reference:
        Thesis Sec. 2.3; https://arxiv.org/abs/1805.11272
    """
    numerics = pop_check_numerics(params)
    names, full = resolve(method, params)
    x1 = _images(x1, 3, "x1")
    x2 = _images(x2, 3, "x2")
    x1, x2 = _same_shape(x1, x2, "x1", "x2")
    s1 = labels_to_soft(y1, num_classes, 0, "y1")
    s2 = labels_to_soft(y2, num_classes, 0, "y2")
    s1, s2 = _same_shape(s1, s2, "y1", "y2")
    if s1.dtype != s2.dtype:
        # e.g. float32 one-hot with float64 soft labels (or sparse ints, made float32):
        # mix in the wider float dtype, as NumPy would.
        wide = s1.dtype if s1.dtype.size > s2.dtype.size else (
            s2.dtype if s2.dtype.size > s1.dtype.size else tf.float32)
        s1, s2 = tf.cast(s1, wide), tf.cast(s2, wide)
    a = check_numerics(tf.cast(x1, tf.float32), "x1", numerics)
    b = check_numerics(tf.cast(x2, tf.float32), "x2", numerics)
    s1 = check_numerics(s1, "y1", numerics)
    s2 = check_numerics(s2, "y2", numerics)
    x, y = mix_pairs(a[None], s1[None], b[None], s2[None], names, full, as_seed(seed))
    return tf.cast(x[0], _out_dtype(x1)), y[0]


__all__ = ["METHODS", "mix_batch", "mix_pair"]
