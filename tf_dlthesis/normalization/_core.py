"""The one normalization op behind every layer of `tf_dlthesis.normalization`.

Thesis Sec. 4.3.4 generalises Batch and Group Normalization by grouping over
*examples* (ghost batches of ``g`` examples) and over *channels* (``G`` groups of
``C / G`` consecutive channels) at once. Every layer of this package is one
setting of those two knobs:

=====================================  ==================  ==============
layer                                  examples per group  channel groups
=====================================  ==================  ==============
Batch Normalization                    whole batch         ``C``
Ghost Batch Normalization (Eq. 4.4)    ``B'``              ``C``
Group Normalization                    1                   ``G``
Batch Group Normalization (Sec 4.3.4)  ``B'`` or batch     ``G``
=====================================  ==================  ==============

The op works by reshaping (never transposing) the input to the flat view
``(n, k, C, r)``: ``n`` groups of examples, ``k`` the group's examples times
the positions before the channel axis, and ``r`` the positions after it
(size-1 parts are left out, so channels-last BN is a plain ``(k, C)`` view).
Per-channel moments reduce over ``k`` and ``r``; channel groups are formed
afterwards on the small ``(n, C)`` statistics (law of total variance), so
the large tensor is only ever reduced per channel. Both choices are for
speed: XLA on CPU reduces a ``(k, C)`` view about twice as fast as the same
reduction over three axes of the 4-D tensor, and splitting the channel axis
into ``(G, C/G)`` made Batch Group Norm 1.3x slower without XLA. The backward
pass is the closed form of Ioffe & Szegedy (`_normalize_view`).

Inference follows Eq. 4.3 with the example weight ``alpha``: the example's own
statistics (over its spatial positions and the channels of its group) are
blended with the moving statistics. The blend is computed in the algebraically
equal but cancellation-free form

``var = alpha * var_e + (1 - alpha) * var_m + alpha * (1 - alpha) * (mu_e - mu_m)^2``

(``= alpha * E[x^2] + (1 - alpha) * m_{x^2} - mu^2`` with
``m_{x^2} = moving_variance + moving_mean^2``), so the variance is non-negative
by construction, also under XLA. Every variance, in training and of the
example at inference (`example_moments`), is the two-pass
``mean((x - mean)^2)``: the one-pass ``E[x^2] - E[x]^2`` loses about
``(mean / std)^2`` float32 epsilons (already visible at ``mean / std = 100``).
The blend and affine fold into one per-(example, channel) scale and offset,
so the activation is read twice for statistics and once by the multiply-add.
At ``alpha = 0`` the example's statistics are replaced by zeros before the
blend (an elementwise select on the small statistics, no ``tf.cond``), so a
non-finite or huge example value cannot leak into its channel through
``0 * inf = NaN``: the output is classical inference, as Keras BN's.

Masks (Keras BN's convention), Batch Renormalization and cross-replica
("synchronized") statistics are options of `normalize_training`; a batch not
divisible by the ghost size is split into its full ghost batches and a
smaller last one (no ``tf.cond``: a differentiated cond made TF's type
inference print a ~40-line warning).

Reference:
    C. Summers, *Understanding and Improving Deep Learning*, PhD thesis,
    Sec. 4.3.1, 4.3.2, 4.3.4 (2021); Summers & Dinneen, "Four Things Everyone
    Should Know to Improve Batch Normalization", https://arxiv.org/abs/1906.03548.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import tensorflow as tf

__all__ = ["grouped_moments", "normalize_training", "normalize_inference"]


class _View(NamedTuple):
    """The flat view of the input (see `_layout`)."""

    shape: list          # reshape target (n, k, C[, r]) or (k, C[, r])
    reduce_axes: list    # axes a per-channel statistic reduces over
    param_shape: list    # where a (C,) parameter or statistic goes


def _static_or_dynamic_dims(x: tf.Tensor):
    shape = tf.shape(x)
    return [x.shape[i] if x.shape[i] is not None else shape[i] for i in range(x.shape.rank)]


def _product(dims):
    out = 1
    for d in dims:
        out = out * d
    return out


def _layout(x: tf.Tensor, axis: int, ghost: int | None) -> _View:
    """The flat view of ``x`` the statistics are computed on (module docstring).

    Args:
        x: The input; ``axis`` (positive) is its channel axis.
        ghost: Examples per statistic: ``None`` = the whole batch (the view
            is then ``(k, C[, r])``: one implicit example group), ``1`` = per
            example, otherwise the batch is split into groups of ``ghost``.
    """
    dims = _static_or_dynamic_dims(x)
    before = _product(dims[1:axis])
    after = _product(dims[axis + 1:])
    head = [-1] if ghost is None else [-1, ghost * before]
    tail = [] if isinstance(after, int) and after == 1 else [after]
    shape = head + [x.shape[axis]] + tail
    c_axis = len(head)
    reduce_axes = [c_axis - 1] + ([c_axis + 1] if tail else [])
    param_shape = [1] * len(shape)
    param_shape[c_axis] = x.shape[axis]
    return _View(shape, reduce_axes, param_shape)


def _group_sum(t: tf.Tensor, groups: int, channels: int) -> tf.Tensor:
    """Sums a per-channel statistic over each channel group, broadcast back to its channels.

    ``t`` holds one value per (example group, channel) (every other axis has
    size 1); ``groups == channels`` returns it unchanged. One small matmul with
    the block matrix ``[c, c'] = 1 if c and c' share a group``: a single op
    where reshape / reduce / broadcast took four (Batch Group Norm's step
    under XLA went from about 1.06x to 1.0x of Ghost BN's on CPU).
    """
    if groups == channels:
        return t
    per_group = channels // groups
    same_group = np.kron(np.eye(groups, dtype=np.float32), np.ones((per_group, per_group), np.float32))
    return tf.reshape(tf.matmul(tf.reshape(t, [-1, channels]), same_group), tf.shape(t))


def _pool_channels(mean, variance, groups: int, channels: int):
    """Per-channel moments -> moments of their channel group, broadcast per channel.

    Exact for equal counts per channel (law of total variance):
    ``mu_g = mean_c mu_c``, ``var_g = mean_c var_c + mean_c (mu_c - mu_g)^2``.
    Non-negative by construction.
    """
    if groups == channels:
        return mean, variance
    per_group = channels // groups
    mu_g = _group_sum(mean, groups, channels) / per_group
    var_g = _group_sum(variance + tf.math.squared_difference(mean, mu_g), groups, channels) / per_group
    return mu_g, var_g


def _count(xr: tf.Tensor, reduce_axes, mask: tf.Tensor) -> tf.Tensor:
    """Number of unmasked values each per-channel statistic averages.

    ``mask`` has ``xr``'s size along every reduced axis (see `_view_mask`),
    so a plain sum counts it.
    """
    count = tf.reduce_sum(mask, reduce_axes, keepdims=True)
    dims = _static_or_dynamic_dims(xr)
    stat_shape = [1 if a in reduce_axes else d for a, d in enumerate(dims)]
    return tf.broadcast_to(count, tf.stack(stat_shape))  # one count per statistic (per channel)


def grouped_moments(xr: tf.Tensor, reduce_axes, mask: tf.Tensor | None = None, count: tf.Tensor | None = None):
    """Two-pass mean and (biased) variance of ``xr`` over ``reduce_axes``.

    Args:
        xr: The reshaped float32 input.
        reduce_axes: Axes to reduce (kept as size-1 dims).
        mask: Optional float 0/1 mask with ``xr``'s size on every reduced axis
            (size 1 or full on the others); masked-out entries (padding,
            Keras masks) do not count, as in Keras ``BatchNormalization``.
        count: ``_count(xr, reduce_axes, mask)`` if the caller already has it.

    Returns:
        ``(mean, variance)``; both 0 where every value is masked out.
    """
    # stop_gradient as in tf.nn.moments: d var / d mean = -2 mean(x - mean) = 0
    # exactly, so the backward pass skips that reduction.
    if mask is None:
        mean = tf.reduce_mean(xr, reduce_axes, keepdims=True)
        variance = tf.reduce_mean(tf.math.squared_difference(xr, tf.stop_gradient(mean)), reduce_axes, keepdims=True)
        return mean, variance
    safe = tf.maximum(_count(xr, reduce_axes, mask) if count is None else count, 1.0)
    # a multiply by the 0/1 mask, not tf.where: no boolean intermediate for
    # the gradient (inside a tf.cond one made TF's type inference warn)
    mean = tf.reduce_sum(xr * mask, reduce_axes, keepdims=True) / safe
    variance = tf.reduce_sum(mask * tf.math.squared_difference(xr, tf.stop_gradient(mean)), reduce_axes,
                             keepdims=True) / safe
    return mean, variance


def example_moments(xr: tf.Tensor, reduce_axes, mask: tf.Tensor | None = None):
    """Two-pass mean and (biased) variance of ``xr`` over ``reduce_axes`` (inference, Eq. 4.3).

    The statistics of `grouped_moments` (``mean((x - mean)^2)``, accurate to
    a few float32 epsilons whatever the mean / std ratio), computed faster
    for the channels-last view ``(n, k, C)``: both reductions are batched
    products with ``ones(1, k) / k``, since XLA on CPU runs a fused
    square-and-reduce about 2-4x slower than this product (measured on a
    ``(128, 32, 32, 64)`` activation, where the two-pass form then costs
    about what the former one-pass ``E[x^2] - E[x]^2`` did); without XLA
    it is as fast as the reductions.

    Returns:
        ``(mean, variance)``.
    """
    rank = xr.shape.rank
    if mask is not None or list(reduce_axes) != [rank - 2] or rank < 3:
        return grouped_moments(xr, reduce_axes, mask)
    dims = _static_or_dynamic_dims(xr)
    k = dims[rank - 2]
    averager = tf.fill(tf.stack(dims[:rank - 2] + [1, k]), 1.0 / tf.cast(k, tf.float32))
    mean = tf.matmul(averager, xr)
    # stop_gradient as in `grouped_moments`: d var / d mean is exactly 0
    return mean, tf.matmul(averager, tf.math.squared_difference(xr, tf.stop_gradient(mean)))


def _reduced_size(xr: tf.Tensor, reduce_axes) -> tf.Tensor:
    """Number of values one statistic over ``reduce_axes`` reduces (float32)."""
    dims = _static_or_dynamic_dims(xr)
    return tf.cast(_product([dims[a] for a in reduce_axes]), tf.float32)


def _normalize_view(xr: tf.Tensor, gamma, beta, view: _View, groups: int, epsilon: float, mask, count):
    """Training-mode normalization of the flat view, with the closed-form backward.

    Forward: two-pass per-channel moments, pooled over channel groups, then
    `_affine`. Backward (Ioffe & Szegedy 2015, for statistics over any set of
    values): with ``xhat = (x - mu) * s``, ``s = 1 / sqrt(var + eps)`` and
    ``g = dL/dy * gamma``, ``dL/dx = s * (g - mean(g) - xhat * mean(g * xhat))``
    (means over the values of each statistic), ``dL/dgamma = sum(dL/dy * xhat)``
    and ``dL/dbeta = sum(dL/dy)``: two fused reductions and one elementwise
    pass, about half of what automatic differentiation of the forward
    produces (that difference kept Ghost BN 10-20% behind Keras BN under XLA).
    The statistics are returned for the moving averages and are not
    differentiated. ``mask``/``count``: the 0/1 mask of counted values and `_count` of it, or
    ``None`` for both.
    """
    gamma = None if gamma is None else tf.convert_to_tensor(gamma)  # read variables outside
    beta = None if beta is None else tf.convert_to_tensor(beta)
    params = [p for p in (gamma, beta) if p is not None]
    channels = max(view.param_shape)
    outer_axes = [a for a, d in enumerate(view.param_shape) if d == 1]   # every axis but C

    @tf.custom_gradient
    def normalize(x, *param_values):
        values = iter(param_values)
        gamma_t = None if gamma is None else next(values)
        beta_t = None if beta is None else next(values)
        mean, variance = _pool_channels(*grouped_moments(x, view.reduce_axes, mask, count), groups, channels)
        y = _affine(x, mean, variance, gamma_t, beta_t, epsilon, view.param_shape)

        def backward(dy, *_unused_stat_grads):
            inv_std = tf.math.rsqrt(variance + epsilon)
            xhat = (x - mean) * inv_std
            dy_sum = tf.reduce_sum(dy, view.reduce_axes, keepdims=True)              # per (n, C)
            dy_xhat_sum = tf.reduce_sum(dy * xhat, view.reduce_axes, keepdims=True)
            g, g_sum, g_xhat_sum = dy, dy_sum, dy_xhat_sum
            if gamma_t is not None:
                gamma_b = tf.reshape(gamma_t, view.param_shape)
                g, g_sum, g_xhat_sum = dy * gamma_b, dy_sum * gamma_b, dy_xhat_sum * gamma_b
            correction = _group_sum(g_sum, groups, channels) + xhat * _group_sum(g_xhat_sum, groups, channels)
            if count is None:  # max(., 1): an empty part (a batch smaller than the ghost size) has no statistic
                n = tf.cast(tf.size(x) // tf.maximum(tf.size(mean), 1), tf.float32) * (channels // groups)
            else:  # masked values do not move the statistics: no correction term there
                n = tf.maximum(_group_sum(count, groups, channels), 1.0)
                correction = correction * mask
            dx = inv_std * (g - correction / n)
            grads = [dx]
            if gamma_t is not None:
                grads.append(tf.reshape(tf.reduce_sum(dy_xhat_sum, outer_axes), [-1]))
            if beta_t is not None:
                grads.append(tf.reshape(tf.reduce_sum(dy_sum, outer_axes), [-1]))
            return grads

        return (y, tf.stop_gradient(mean), tf.stop_gradient(variance)), backward

    return normalize(xr, *params)


def _affine(xr, mean, variance, gamma, beta, epsilon, param_shape):
    """``gamma * (x - mean) / sqrt(var + eps) + beta`` as one multiply-add.

    Uses the operation order of ``tf.nn.batch_normalization`` (Keras
    ``BatchNormalization``), so equal statistics give equal results up to
    float rounding.
    """
    inv = tf.math.rsqrt(variance + epsilon)
    if gamma is not None:
        inv = inv * tf.reshape(gamma, param_shape)
    offset = -mean * inv
    if beta is not None:
        offset = tf.reshape(beta, param_shape) + offset
    return xr * inv + offset


def _to_channels(stat: tf.Tensor, weights) -> tf.Tensor:
    """Weighted average over example groups of per-channel stats -> ``(C,)``.

    ``stat`` has the example-group axis first (size 1 when the batch was not
    split); ``weights`` is ``None`` (plain mean) or an ``(n, C)`` / ``(n, 1)``
    matrix whose columns sum to 1.
    """
    flat = tf.reshape(stat, [tf.shape(stat)[0], -1])  # (n, C)
    return tf.reduce_mean(flat, axis=0) if weights is None else tf.reduce_sum(weights * flat, axis=0)


def _stat_weights(n_groups, count, moving_update: str, momentum: float):
    """Weights over example groups for the moving-statistics update.

    ``"averaged"``: the groups' statistics are averaged (weighted by the
    number of unmasked values each one saw, per channel), then one momentum
    update is applied. ``"sequential"``: the closed form of applying one
    momentum update per example group in order (groups with no unmasked
    value skipped); the returned weights then sum to ``1`` and the effective
    momentum becomes ``momentum ** n``.

    Returns:
        ``(weights, effective_momentum)``; ``weights`` is ``None`` or ``(n, C)``.
    """
    if moving_update == "averaged" and count is None:
        return None, momentum
    if count is None:
        w = tf.ones([n_groups, 1], tf.float32)
    else:
        w = tf.reshape(count, [n_groups, -1])
    if moving_update == "averaged":
        return w / tf.maximum(tf.reduce_sum(w, axis=0, keepdims=True), 1e-12), momentum
    # sequential: m_n = rho^n m_0 + sum_j (1 - rho) rho^(n-1-j) s_j over the n groups with data, in order.
    seen = tf.cast(w > 0, tf.float32)
    n = tf.reduce_sum(seen, axis=0, keepdims=True)
    j = tf.cumsum(seen, axis=0, exclusive=True)
    rho = tf.constant(momentum, tf.float32)
    # A group with no data after the last one that has some (an empty last
    # ghost batch of an unknown-size batch, a fully masked one) has exponent
    # -1: clamped, since at momentum 0 ``0 ** -1 * 0`` would be NaN.
    w = (1.0 - rho) * tf.pow(rho, tf.maximum(n - 1.0 - j, 0.0)) * seen
    total_momentum = tf.pow(rho, n)
    return w / tf.maximum(1.0 - total_momentum, 1e-12), total_momentum[0]


class TrainingStatistics(NamedTuple):
    """What `normalize_training` returns.

    Attributes:
        outputs: the normalized tensor (float32, the input's shape).
        mean, variance: ``(C,)`` statistics for the moving averages (each
            channel gets its group's value, averaged over example groups):
            ``moving = moving * momentum + stat * (1 - momentum)``.
        momentum: the effective momentum (``momentum ** n`` for
            ``moving_update="sequential"``).
        stddev: ``(C,)`` average of ``sqrt(var + eps)`` over the example
            groups (Batch Renormalization's moving/renorm stddev), or ``None``.
        renorm_mean, renorm_stddev: with renorm, the mean and stddev averaged
            with the *renorm* momentum's weights (equal to ``mean`` /
            ``stddev`` for ``"averaged"``); ``renorm_momentum`` its effective value.
    """

    outputs: tf.Tensor
    mean: tf.Tensor
    variance: tf.Tensor
    momentum: object
    stddev: tf.Tensor | None = None
    renorm_mean: tf.Tensor | None = None
    renorm_stddev: tf.Tensor | None = None
    renorm_momentum: object = None


def _view_mask(mask: tf.Tensor, x: tf.Tensor, axis: int, view: _View) -> tf.Tensor:
    """An input-layout float mask (size 1 or full on each axis) -> the flat view's layout.

    The result has ``x``'s size on every axis the statistics reduce, and size
    1 on the channel axis unless the mask varies across channels.
    """
    dims = _static_or_dynamic_dims(x)
    channel_size = mask.shape[axis] if mask.shape[axis] == 1 else dims[axis]
    dims[axis] = channel_size
    full = tf.broadcast_to(mask, tf.stack(dims))
    c_axis = view.reduce_axes[0] + 1
    shape = list(view.shape)
    shape[c_axis] = channel_size
    return tf.reshape(full, shape)


def _all_reduce_sum(value: tf.Tensor) -> tf.Tensor:
    """Sum over replicas in a `tf.distribute` replica context (differentiable), else identity."""
    ctx = tf.distribute.get_replica_context()
    if ctx is None or ctx.num_replicas_in_sync == 1:
        return value
    return ctx.all_reduce(tf.distribute.ReduceOp.SUM, value)


def _synchronized_moments(xr, reduce_axes, mask, count):
    """Cross-replica two-pass mean and variance (``synchronized=True``): two all-reduces."""
    if count is None:
        count = tf.fill(tf.shape(tf.reduce_sum(xr, reduce_axes, keepdims=True)), _reduced_size(xr, reduce_axes))
    total = tf.maximum(_all_reduce_sum(count), 1.0)
    mean = _all_reduce_sum(tf.reduce_sum(xr if mask is None else xr * mask, reduce_axes, keepdims=True)) / total
    dev = tf.math.squared_difference(xr, tf.stop_gradient(mean))
    variance = _all_reduce_sum(tf.reduce_sum(dev if mask is None else dev * mask, reduce_axes, keepdims=True)) / total
    return mean, variance


def _renorm_affine(xr, mean, variance, gamma, beta, epsilon, param_shape, renorm):
    """Batch Renormalization's training output ``((x - mu) / sigma * r + d) * gamma + beta`` (one multiply-add).

    ``r = sigma / sigma_r`` and ``d = (mu - mu_r) / sigma_r`` (clipped, no
    gradient) with ``sigma = sqrt(var + eps)`` of each statistic and the
    layer's renorm mean / stddev ``mu_r``, ``sigma_r`` (``sigma_r`` at least
    ``sqrt(eps)``), as Ioffe (2017) and Keras.
    """
    sigma = tf.sqrt(variance + epsilon)
    r_mean = tf.reshape(renorm["mean"], param_shape)
    r_std = tf.maximum(tf.reshape(renorm["stddev"], param_shape), float(np.sqrt(epsilon)))
    r = sigma / r_std
    d = (mean - r_mean) / r_std
    if renorm.get("rmin") is not None:
        r = tf.maximum(r, float(renorm["rmin"]))
    if renorm.get("rmax") is not None:
        r = tf.minimum(r, float(renorm["rmax"]))
    if renorm.get("dmax") is not None:
        d = tf.clip_by_value(d, -float(renorm["dmax"]), float(renorm["dmax"]))
    r, d = tf.stop_gradient(r), tf.stop_gradient(d)
    scale = r / sigma
    if gamma is not None:
        g = tf.reshape(gamma, param_shape)
        scale, d = scale * g, d * g
    offset = d - mean * scale
    if beta is not None:
        offset = offset + tf.reshape(beta, param_shape)
    return xr * scale + offset


def normalize_training(
    x: tf.Tensor,
    gamma,
    beta,
    *,
    axis: int,
    ghost_batch_size: int | None,
    groups: int,
    epsilon: float,
    momentum: float = 0.99,
    moving_update: str = "averaged",
    mask: tf.Tensor | None = None,
    renorm: dict | None = None,
    synchronized: bool = False,
) -> TrainingStatistics:
    """Training-mode normalization over groups of examples x groups of channels.

    Args:
        x: float32 input, batch axis 0, channels at ``axis`` (positive).
        gamma: ``(C,)`` scale or ``None``.
        beta: ``(C,)`` offset or ``None``.
        axis: Channel axis (``>= 1``).
        ghost_batch_size: Examples per statistic; ``None`` = the whole batch.
            A batch not divisible by it gets a smaller last ghost batch.
        groups: Number of channel groups (``C`` = per-channel, as in BN).
        epsilon: Variance epsilon.
        momentum: Moving-average momentum (only used for the returned update).
        moving_update: ``"averaged"`` or ``"sequential"`` (see `_stat_weights`).
        mask: Optional float 0/1 mask of ``x``'s rank (size 1 or full on each
            axis): masked-out values do not count in the statistics (Keras BN).
        renorm: Batch Renormalization: ``{"mean", "stddev"}`` (the layer's
            ``(C,)`` renorm statistics), optional ``"rmin"``, ``"rmax"``,
            ``"dmax"`` and ``"momentum"`` (the renorm momentum).
        synchronized: Statistics over the global batch of all replicas
            (``ghost_batch_size=None`` only).

    Returns:
        A `TrainingStatistics`.
    """
    def part(xin, ghost, vmask_in):
        """Normalizes ``xin``; returns its output and per-group ``(n, C)`` mean, variance and count (or None)."""
        view = _layout(xin, axis, ghost)
        xr = tf.reshape(xin, view.shape)
        vmask = count = None
        if vmask_in is not None:
            vmask = _view_mask(vmask_in, xin, axis, view)
            count = _count(xr, view.reduce_axes, vmask)
        channels = xin.shape[axis]
        if renorm is None and not synchronized:
            y, mean, variance = _normalize_view(xr, gamma, beta, view, groups, epsilon, vmask, count)
        else:
            moments = _synchronized_moments if synchronized else grouped_moments
            mean, variance = _pool_channels(*moments(xr, view.reduce_axes, vmask, count), groups, channels)
            if renorm is None:
                y = _affine(xr, mean, variance, gamma, beta, epsilon, view.param_shape)
            else:
                y = _renorm_affine(xr, mean, variance, gamma, beta, epsilon, view.param_shape, renorm)
            mean, variance = tf.stop_gradient(mean), tf.stop_gradient(variance)
        n = tf.shape(mean)[0]
        flat = [tf.reshape(t, [n, -1]) for t in (mean, variance)]
        if count is not None:
            count = tf.reshape(count, [n, -1])
        return tf.reshape(y, tf.shape(xin)), flat[0], flat[1], count, _reduced_size(xr, view.reduce_axes)

    def finish(outputs, mean, variance, count):
        w, eff = _stat_weights(tf.shape(mean)[0], count, moving_update, momentum)
        out = TrainingStatistics(outputs, _to_channels(mean, w), _to_channels(variance, w), eff)
        if renorm is not None:
            stddev = tf.sqrt(variance + epsilon)
            rw, reff = _stat_weights(tf.shape(mean)[0], count, moving_update, float(renorm.get("momentum", 0.99)))
            out = out._replace(stddev=_to_channels(stddev, w), renorm_mean=_to_channels(mean, rw),
                               renorm_stddev=_to_channels(stddev, rw), renorm_momentum=reff)
        return out

    if ghost_batch_size is not None:
        g = int(ghost_batch_size)
        static_batch = x.shape[0]
        if not (g == 1 or (static_batch is not None and static_batch % g == 0)):
            return finish(*_split_ghost_batches(x, g, mask, part))
    y, mean, variance, count, _ = part(x, ghost_batch_size, mask)
    return finish(y, mean, variance, count)


def _split_ghost_batches(x, g: int, mask, part):
    """Ghost batches of a batch not divisible by ``g`` (or of unknown size): full ghost batches plus a smaller last one.

    No ``tf.cond`` and no padding: the batch is sliced into its ``batch // g``
    full ghost batches (one reshape) and the remaining ``batch % g`` examples
    (possibly none: their statistics then have count 0 and weight 0), and the
    two outputs are concatenated. A differentiated ``tf.cond`` here made TF's
    type inference print a ~40-line "Type inference failed" warning
    (issue 15).

    Returns:
        ``(outputs, mean, variance, count)`` with one row per ghost batch.
    """
    batch = tf.shape(x)[0]
    n_main = (batch // g) * g
    rank = x.shape.rank
    if mask is not None:
        dims = _static_or_dynamic_dims(mask)
        dims[0] = batch
        mask = tf.broadcast_to(mask, tf.stack(dims))
        mask_main, mask_tail = mask[:n_main], mask[n_main:]
    else:
        mask_main = None
        mask_tail = tf.ones(tf.stack([batch - n_main] + [1] * (rank - 1)), tf.float32)  # counts the tail (0 if empty)
    y_main, mean_main, var_main, count_main, size = part(x[:n_main], g, mask_main)
    y_tail, mean_tail, var_tail, count_tail, _ = part(x[n_main:], None, mask_tail)
    if count_main is None:
        count_main = tf.fill(tf.shape(mean_main[:, :1]), size)
    channels = tf.shape(mean_main)[1]
    counts = [tf.broadcast_to(c, tf.stack([tf.shape(c)[0], channels])) for c in (count_main, count_tail)]
    return (tf.concat([y_main, y_tail], 0), tf.concat([mean_main, mean_tail], 0),
            tf.concat([var_main, var_tail], 0), tf.concat(counts, 0))


def normalize_inference(
    x: tf.Tensor,
    gamma,
    beta,
    moving_mean,
    moving_variance,
    *,
    axis: int,
    groups: int,
    epsilon: float,
    example_weight,
    mask: tf.Tensor | None = None,
):
    """Inference with example weighing (Eq. 4.3) over channel groups.

    The moving statistics are per channel; for ``groups < C`` they are
    pooled over the channels of a group exactly as the group statistic pools
    values: ``mu_m = mean_c m_x`` and ``var_m = mean_c(m_{x^2}) - mu_m^2``
    (with ``m_{x^2} = moving_variance + moving_mean^2``). The example's
    statistics are its mean and variance over spatial positions and the
    group's channels. ``example_weight = 0`` uses only the moving statistics
    (classical BN inference, equal to Keras up to float rounding); ``1`` only the example's
    (Group / Instance / Layer Normalization inference).

    Args:
        x: float32 input.
        gamma, beta: ``(C,)`` or ``None``.
        moving_mean, moving_variance: ``(C,)`` moving statistics.
        axis: Channel axis (``>= 1``).
        groups: Number of channel groups.
        epsilon: Variance epsilon.
        example_weight: Scalar float32 tensor/variable ``alpha`` in [0, 1].
        mask: Optional float 0/1 mask of ``x``'s rank (as `normalize_training`):
            the example's statistics use its unmasked positions only (at
            alpha = 0 the mask changes nothing, as in Keras BN inference).

    Returns:
        The normalized tensor (float32).
    """
    view = _layout(x, axis, 1)
    channels = x.shape[axis]
    mu_m, var_m = _pool_channels(tf.reshape(moving_mean, view.param_shape),
                                 tf.reshape(moving_variance, view.param_shape), groups, channels)
    xr = tf.reshape(x, view.shape)
    alpha = tf.cast(example_weight, tf.float32)

    # No tf.cond on alpha (a cond per layer multiplied the tracing time of
    # deep nets, ResNet-50: 7x): at alpha = 0 a select on the small
    # statistics zeroes the example's moments, so the blend is exactly the
    # moving statistics (0 * 0 + 1 * m == m) even where an example holds
    # inf / NaN or values whose square overflows (0 * inf would be NaN).
    # The blend and affine fold into one per-(example, channel) scale and
    # offset: the activation is read twice for the moments, once for the
    # multiply-add.
    vmask = None if mask is None else _view_mask(mask, x, axis, view)
    mu_e, var_e = _pool_channels(*example_moments(xr, view.reduce_axes, vmask), groups, channels)
    use_example = alpha > 0.0
    mu_e = tf.where(use_example, mu_e, tf.zeros_like(mu_e))
    var_e = tf.where(use_example, var_e, tf.zeros_like(var_e))
    mu = alpha * mu_e + (1.0 - alpha) * mu_m
    var = alpha * var_e + (1.0 - alpha) * var_m + alpha * (1.0 - alpha) * tf.math.squared_difference(mu_e, mu_m)
    y = _affine(xr, mu, var, gamma, beta, epsilon, view.param_shape)
    return tf.reshape(y, tf.shape(x))
