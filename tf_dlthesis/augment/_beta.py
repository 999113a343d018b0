"""XLA-safe stateless Beta sampling.

`tf.random.stateless_gamma` has no XLA kernel, so `keras.random.beta` and the usual
"ratio of two Gamma draws" recipe cannot run inside a `jit_compile=True` train step.
This module draws Gamma variates with the Marsaglia-Tsang squeeze/rejection method
built from `tf.random.stateless_normal` / `stateless_uniform` only, using a fixed
number of vectorized rejection rounds (no data-dependent loop), and combines them
in log space so that very small shape parameters do not underflow:

    Beta(a, b) = G_a / (G_a + G_b) = sigmoid(log G_a - log G_b).

For a shape below 1 the standard boost is used: G_a = G_{a+1} * U^(1/a).

Reference: G. Marsaglia and W. W. Tsang, "A simple method for generating gamma
variables", ACM TOMS 26(3), 2000.
"""

from __future__ import annotations

import numbers

import tensorflow as tf

from tf_dlthesis._seeds import as_seed

#: Vectorized rejection rounds. For shape >= 1 one round accepts with probability
#: > 0.95, so all rounds reject with probability < 0.05**8 ~ 4e-11 (then the
#: sample falls back to the distribution's central value d, a negligible bias).
_ROUNDS = 8

#: Concentrations below this take `_scaled_logit` (float32 overflows near 5e-38; far
#: below any concentration used in practice, so ordinary draws are unchanged).
_SCALED_BELOW = 1e-20


def _log_gamma_parts(seed, shape, concentration: float, dtype=tf.float32):
    """(log G, log U or None) with log Gamma(concentration, 1) = log G + log U / concentration.

    G is the Marsaglia-Tsang Gamma(a) draw (a = concentration + 1 for a shape below 1,
    the boost, else a = concentration) and U in (0, 1] the boost's uniform (None without
    the boost).
    """
    seeds = tf.random.experimental.stateless_split(seed, num=3, alg="philox")
    boost = concentration < 1.0
    a = concentration + 1.0 if boost else concentration
    d = a - 1.0 / 3.0
    c = 1.0 / (9.0 * d) ** 0.5
    shape = tf.concat([tf.reshape(tf.cast(shape, tf.int32), [-1]), [_ROUNDS]], 0)
    x = tf.random.stateless_normal(shape, seeds[0], dtype=dtype, alg="philox")
    u = tf.random.stateless_uniform(shape, seeds[1], dtype=dtype, alg="philox")
    v = 1.0 + c * x
    v = v * v * v
    safe_v = tf.where(v > 0.0, v, tf.ones_like(v))
    accept = (v > 0.0) & (
        tf.math.log(u) < 0.5 * x * x + d - d * safe_v + d * tf.math.log(safe_v))
    # First accepted round (argmax returns the first maximum); none -> fallback v = 1.
    first = tf.argmax(tf.cast(accept, tf.int32), axis=-1, output_type=tf.int32)
    chosen_v = tf.gather(safe_v, first[..., None], axis=-1, batch_dims=len(accept.shape) - 1)
    chosen_v = tf.squeeze(chosen_v, -1)
    any_accept = tf.reduce_any(accept, axis=-1)
    chosen_v = tf.where(any_accept, chosen_v, tf.ones_like(chosen_v))
    log_g = tf.math.log(tf.constant(d, dtype)) + tf.math.log(chosen_v)
    if not boost:
        return log_g, None
    ub = tf.random.stateless_uniform(tf.shape(log_g), seeds[2], minval=0.0, maxval=1.0,
                                     dtype=dtype, alg="philox")
    # U in (0, 1]: 1 - U avoids log(0).
    return log_g, tf.math.log(1.0 - ub)


def _log_gamma_sample(seed, shape, concentration: float, dtype=tf.float32):
    """Log of a Gamma(concentration, 1) sample of the given shape (stateless, XLA-safe)."""
    log_g, log_u = _log_gamma_parts(seed, shape, concentration, dtype)
    return log_g if log_u is None else log_g + log_u / concentration


def _scaled_logit(seeds, shape, alpha: float, beta: float, dtype):
    """log G_alpha - log G_beta for tiny concentrations, without inf - inf.

    With s = min(alpha, beta), the boost terms log U / alpha overflow to -inf once
    s * float_max < 17 (about 5e-38 in float32), and two infinite logs gave a NaN
    lambda. Here the difference is formed scaled by s (every term finite) and only
    then multiplied by 1 / s (capped at the largest float): a difference of either
    sign saturates to +-inf, and the sigmoid of it is exactly 1 or 0, the limit of
    Beta(alpha, beta) as the concentrations go to 0.
    """
    s = min(alpha, beta)
    terms = []
    for seed, conc in ((seeds[0], alpha), (seeds[1], beta)):
        log_g, log_u = _log_gamma_parts(seed, shape, conc, dtype)
        scaled = s * log_g if log_u is None else s * log_g + log_u * (s / conc)
        terms.append(scaled)
    top = float(dtype.max)
    inverse = top if s < 1.0 / top else min(1.0 / s, top)
    return (terms[0] - terms[1]) * inverse


def sample_beta(seed, shape, alpha: float, beta: float | None = None, dtype=tf.float32):
    """Stateless Beta(alpha, beta) samples that compile under XLA.

    Example:

    >>> lam = sample_beta(tf.constant([1, 2]), [4], alpha=0.4)

    Args:
        seed: shape-[2] integer tensor (stateless seed; any integer dtype, the same
            samples as the same values given as a list), a scalar integer tensor `s`
            (= `[s, 0]`), an int, or None (fresh entropy per call, also inside
            `tf.function` / `tf.data`).
        shape: output shape (list or 1-D int tensor).
        alpha: first concentration, > 0.
        beta: second concentration, > 0; defaults to `alpha` (symmetric Beta).
        dtype: floating output dtype (float16 / bfloat16 are drawn in float32 and
            rounded).

    Returns:
        Tensor of `shape` with values in [0, 1]. Beta(1, 1) is drawn directly as a
        uniform variate.

    Raises:
        ValueError: if a concentration is not a positive finite number; a negative
            int seed or a seed tensor of another shape than [2] or [].
        TypeError: a `dtype` that is not floating; a float or bool seed.
    """
    beta = alpha if beta is None else beta
    for name, value in (("alpha", alpha), ("beta", beta)):
        if not isinstance(value, numbers.Real) or isinstance(value, bool) or not (
                0.0 < float(value) < float("inf")):
            raise ValueError(
                f"Beta concentration `{name}` must be a positive finite number. "
                f"Received: {name}={value!r}")
    alpha, beta = float(alpha), float(beta)
    dtype = tf.as_dtype(dtype)
    if not dtype.is_floating:
        raise TypeError(f"`dtype` must be a floating dtype (Beta samples lie in [0, 1]). "
                        f"Received: dtype={dtype.name}")
    # Every seed, tensors (traced ones included) too, goes through `as_seed`: a scalar
    # integer tensor is [s, 0], a float or wrongly shaped tensor is refused, and an int32
    # tensor is widened to the int64 of an int seed (`stateless_split` draws in the seed's
    # dtype, so [1, 2] as int32 gave other samples than [1, 2] as a list or int64).
    seed = as_seed(seed)
    if alpha == 1.0 and beta == 1.0:
        return tf.random.stateless_uniform(shape, seed, dtype=dtype, alg="philox")
    # Half precision would overflow the boost term log U / alpha (float16 for alpha
    # below ~1e-4: a NaN lambda); draw in float32 and round the result instead.
    work = dtype if dtype in (tf.float32, tf.float64) else tf.float32
    seeds = tf.random.experimental.stateless_split(seed, num=2, alg="philox")
    if min(alpha, beta) < _SCALED_BELOW:
        logit = _scaled_logit(seeds, shape, alpha, beta, work)
    else:
        logit = (_log_gamma_sample(seeds[0], shape, alpha, work)
                 - _log_gamma_sample(seeds[1], shape, beta, work))
    return tf.cast(tf.math.sigmoid(logit), dtype)
