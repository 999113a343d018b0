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

The op works by reshaping (never transposing) the input to
``(n, g, *spatial_before, G, C/G, *spatial_after)`` and reducing over every axis
except ``n`` and ``G``.

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

import tensorflow as tf

__all__ = ["grouped_moments", "normalize_training", "normalize_inference"]


def _layout(x: tf.Tensor, axis: int, ghost: int | None):
    """Reshape target and reduction axes for per-(example group, channel) moments.

    ``ghost=None``: statistics over the whole batch (no reshape); ``1``: per
    example (no reshape, the batch axis is kept); otherwise the batch axis is
    split into ``(n, ghost)``. Channel groups are formed afterwards on the
    small statistics tensors (`_pool_channels`), so the input is never
    reshaped across its channel axis.

    Returns:
        ``(new_shape or None, reduce_axes, param_shape, channel_axis)`` in the
        (possibly reshaped) layout.
    """
    rank = x.shape.rank
    channels = x.shape[axis]
    if ghost is None or ghost == 1:
        keep = {axis} if ghost is None else {0, axis}
        param_shape = [1] * rank
        param_shape[axis] = channels
        return None, [i for i in range(rank) if i not in keep], param_shape, axis
    shape = tf.shape(x)
    dims = [x.shape[i] if x.shape[i] is not None else shape[i] for i in range(rank)]
    new_shape = [-1, ghost] + dims[1:]
    c_axis = axis + 1
    param_shape = [1] * (rank + 1)
    param_shape[c_axis] = channels
    return new_shape, [i for i in range(1, rank + 1) if i != c_axis], param_shape, c_axis


def _pool_channels(mean, variance, groups: int, c_axis: int):
    """Pools per-channel moments into moments of groups of ``C / groups`` channels.

    Exact for equal counts per channel (law of total variance):
    ``mu_g = mean_c mu_c``, ``var_g = mean_c var_c + mean_c (mu_c - mu_g)^2``;
    both are broadcast back to every channel of the group. Non-negative by
    construction.
    """
    channels = mean.shape[c_axis]
    if groups == channels:
        return mean, variance
    shape = tf.shape(mean)
    n = shape[0]
    m = tf.reshape(mean, [n, groups, channels // groups])
    v = tf.reshape(variance, [n, groups, channels // groups])
    mg = tf.reduce_mean(m, axis=2, keepdims=True)
    vg = tf.reduce_mean(v, axis=2, keepdims=True) + tf.reduce_mean(tf.math.squared_difference(m, mg), axis=2,
                                                                     keepdims=True)
    ones = tf.ones_like(m)
    return tf.reshape(mg * ones, shape), tf.reshape(vg * ones, shape)


def grouped_moments(xr: tf.Tensor, reduce_axes, mask: tf.Tensor | None = None):
    """Two-pass mean and (biased) variance of ``xr`` over ``reduce_axes``.

    Args:
        xr: The reshaped float32 input.
        reduce_axes: Axes to reduce (kept as size-1 dims).
        mask: Optional float mask broadcastable to ``xr``; masked-out entries
            (padding) do not count.

    Returns:
        ``(mean, variance, count)``; ``count`` is the number of values each
        statistic averages (a tensor when ``mask`` is given, else ``None``).
    """
    # stop_gradient as in tf.nn.moments: d var / d mean = -2 mean(x - mean) = 0
    # exactly, so the backward pass skips that reduction.
    if mask is None:
        mean = tf.reduce_mean(xr, reduce_axes, keepdims=True)
        variance = tf.reduce_mean(tf.math.squared_difference(xr, tf.stop_gradient(mean)), reduce_axes, keepdims=True)
        return mean, variance, None
    ones = tf.broadcast_to(mask, tf.shape(xr))
    count = tf.reduce_sum(ones, reduce_axes, keepdims=True)
    safe = tf.maximum(count, 1.0)
    mean = tf.reduce_sum(xr, reduce_axes, keepdims=True) / safe
    variance = tf.reduce_sum(ones * tf.math.squared_difference(xr, tf.stop_gradient(mean)), reduce_axes,
                             keepdims=True) / safe
    return mean, variance, count


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
    """Weighted average over example groups of per-channel stats -> (C,).

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
        new_shape, axes, param_shape, c_axis = _layout(xin, axis, ghost)
        xr = xin if new_shape is None else tf.reshape(xin, new_shape)
        mask = None
        if mask_rows is not None:
            mshape = [-1, ghost] + [1] * (len(new_shape) - 2)
            mask = tf.reshape(mask_rows, mshape)
        mean, variance, count = grouped_moments(xr, axes, mask)
        mean, variance = _pool_channels(mean, variance, groups, c_axis)
        y = _affine(xr, mean, variance, gamma, beta, epsilon, param_shape)
        n_groups = tf.shape(mean)[0]
        w, eff = _stat_weights(n_groups, count, moving_update, momentum)
        return (
            y if new_shape is None else tf.reshape(y, tf.shape(xin)),
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
    channels = x.shape[axis]
    per_group = channels // groups
    _, axes, param_shape, _ = _layout(x, axis, 1)
    mm, mv = moving_mean, moving_variance
    if per_group > 1:
        mm, mv = _pool_channels(mm[None], mv[None], groups, 1)
        mm, mv = mm[0], mv[0]
    mu_m = tf.reshape(mm, param_shape)
    var_m = tf.reshape(mv, param_shape)
    xr = x
    alpha = tf.cast(example_weight, tf.float32)

    # No tf.cond on alpha: at alpha = 0 the blend reduces exactly to the
    # moving statistics (0 * finite + 1 * m == m in IEEE arithmetic), and a
    # cond per layer multiplies tracing time of deep nets (ResNet-50: 7x).
    mu_e, var_e, _ = grouped_moments(xr, axes)
    mu_e, var_e = _pool_channels(mu_e, var_e, groups, axis)
    mu = alpha * mu_e + (1.0 - alpha) * mu_m
    var = alpha * var_e + (1.0 - alpha) * var_m + alpha * (1.0 - alpha) * tf.math.squared_difference(mu_e, mu_m)
    y = _affine(xr, mu, var, gamma, beta, epsilon, param_shape)
    return y
