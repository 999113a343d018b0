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
by construction, also under XLA; training statistics use the two-pass
``mean((x - mean)^2)`` for the same reason.

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
    """Number of unmasked values each per-channel statistic averages."""
    return tf.reduce_sum(tf.broadcast_to(mask, tf.shape(xr)), reduce_axes, keepdims=True)


def grouped_moments(xr: tf.Tensor, reduce_axes, mask: tf.Tensor | None = None, count: tf.Tensor | None = None):
    """Two-pass mean and (biased) variance of ``xr`` over ``reduce_axes``.

    Args:
        xr: The reshaped float32 input.
        reduce_axes: Axes to reduce (kept as size-1 dims).
        mask: Optional float mask broadcastable to ``xr``; masked-out entries
            (padding) do not count.
        count: ``_count(xr, reduce_axes, mask)`` if the caller already has it.

    Returns:
        ``(mean, variance)``.
    """
    # stop_gradient as in tf.nn.moments: d var / d mean = -2 mean(x - mean) = 0
    # exactly, so the backward pass skips that reduction.
    if mask is None:
        mean = tf.reduce_mean(xr, reduce_axes, keepdims=True)
        variance = tf.reduce_mean(tf.math.squared_difference(xr, tf.stop_gradient(mean)), reduce_axes, keepdims=True)
        return mean, variance
    safe = tf.maximum(_count(xr, reduce_axes, mask) if count is None else count, 1.0)
    mean = tf.reduce_sum(xr * mask, reduce_axes, keepdims=True) / safe
    variance = tf.reduce_sum(mask * tf.math.squared_difference(xr, tf.stop_gradient(mean)), reduce_axes,
                             keepdims=True) / safe
    return mean, variance


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
    differentiated. ``mask``/``count``: padded rows and `_count` of them, or
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
            per_channel = (tf.cast(tf.size(x) // tf.size(mean), tf.float32) if count is None
                           else tf.maximum(count, 1.0))
            n = per_channel * (channels // groups)
            dx = inv_std * (g - (_group_sum(g_sum, groups, channels)
                                 + xhat * _group_sum(g_xhat_sum, groups, channels)) / n)
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
    split); ``weights`` is ``None`` (plain mean) or an ``(n,)`` vector.
    """
    flat = tf.reshape(stat, [tf.shape(stat)[0], -1])  # (n, C)
    return tf.reduce_mean(flat, axis=0) if weights is None else tf.tensordot(weights, flat, 1)


def _stat_weights(n_groups, count, moving_update: str, momentum: float):
    """Weights over example groups for the moving-statistics update.

    ``"averaged"``: the groups' statistics are averaged (weighted by the
    number of values each one saw), then one momentum update is applied.
    ``"sequential"``: the closed form of applying one momentum update per
    example group in order; the returned weights then sum to ``1`` and the
    effective momentum becomes ``momentum ** n``.
    """
    if moving_update == "averaged" and count is None:
        return None, momentum
    if count is None:
        w = tf.ones([n_groups], tf.float32)
    else:
        w = tf.reshape(count, [n_groups, -1])[:, 0]
    if moving_update == "averaged":
        return w / tf.reduce_sum(w), momentum
    # sequential: m_n = rho^n m_0 + sum_j (1 - rho) rho^(n-1-j) s_j.
    n = tf.cast(n_groups, tf.float32)
    j = tf.range(n, dtype=tf.float32)
    rho = tf.constant(momentum, tf.float32)
    w = (1.0 - rho) * tf.pow(rho, n - 1.0 - j) * tf.cast(w > 0, tf.float32)
    total_momentum = tf.pow(rho, n)
    return w / tf.maximum(1.0 - total_momentum, 1e-12), total_momentum


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
):
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

    Returns:
        ``(outputs, batch_mean, batch_variance, effective_momentum)`` where the
        batch statistics are ``(C,)`` vectors (each channel gets the statistic
        of its group) to feed the moving averages:
        ``moving = moving * effective_momentum + stat * (1 - effective_momentum)``.
    """
    shape = tf.shape(x)
    batch = shape[0]

    def run(xin, ghost, mask_rows):
        view = _layout(xin, axis, ghost)
        xr = tf.reshape(xin, view.shape)
        mask = count = None
        if mask_rows is not None:  # one entry per example -> one per row of the (n, k, ...) view
            per_example = view.shape[1] // ghost
            rows = mask_rows if isinstance(per_example, int) and per_example == 1 else tf.repeat(
                mask_rows, per_example)
            mask = tf.reshape(rows, [-1, view.shape[1]] + [1] * (len(view.shape) - 2))
            count = _count(xr, view.reduce_axes, mask)
        y, mean, variance = _normalize_view(xr, gamma, beta, view, groups, epsilon, mask, count)
        n_groups = tf.shape(mean)[0]
        w, eff = _stat_weights(n_groups, count, moving_update, momentum)
        return (
            tf.reshape(y, tf.shape(xin)),
            _to_channels(mean, w),
            _to_channels(variance, w),
            eff,
        )

    if ghost_batch_size is None:
        return run(x, None, None)

    g = int(ghost_batch_size)
    static_batch = x.shape[0]
    if g == 1 or (static_batch is not None and static_batch % g == 0):
        return run(x, g, None)

    def padded():
        pad = (g - batch % g) % g
        paddings = [[0, pad]] + [[0, 0]] * (x.shape.rank - 1)
        xp = tf.pad(x, paddings)
        rows = tf.cast(tf.range(batch + pad) < batch, tf.float32)
        y, m, v, e = run(xp, g, rows)
        return y[:batch], m, v, e

    if static_batch is not None:  # known and not divisible
        return padded()
    return tf.cond(tf.equal(batch % g, 0), lambda: run(x, g, None), padded)


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

    Returns:
        The normalized tensor (float32).
    """
    view = _layout(x, axis, 1)
    channels = x.shape[axis]
    mu_m, var_m = _pool_channels(tf.reshape(moving_mean, view.param_shape),
                                 tf.reshape(moving_variance, view.param_shape), groups, channels)
    xr = tf.reshape(x, view.shape)
    alpha = tf.cast(example_weight, tf.float32)

    # No tf.cond on alpha: at alpha = 0 the blend reduces exactly to the
    # moving statistics (0 * finite + 1 * m == m in IEEE arithmetic), and a
    # cond per layer multiplies tracing time of deep nets (ResNet-50: 7x).
    mu_e, var_e = _pool_channels(*grouped_moments(xr, view.reduce_axes), groups, channels)
    mu = alpha * mu_e + (1.0 - alpha) * mu_m
    var = alpha * var_e + (1.0 - alpha) * var_m + alpha * (1.0 - alpha) * tf.math.squared_difference(mu_e, mu_m)
    y = _affine(xr, mu, var, gamma, beta, epsilon, view.param_shape)
    return tf.reshape(y, tf.shape(x))
