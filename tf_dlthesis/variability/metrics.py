"""Variability metrics over a stack of R models' test logits (Thesis Sec. 5.3.1).

Every function takes `logits` of shape (R, N, C) (R training runs, N test examples,
C classes) and, where a metric needs them, integer `labels` of shape (N,). All
arithmetic is float64 and vectorized over runs and pairs of runs: no Python loop
over the R(R-1)/2 pairs (`ensemble_delta` walks pairs in memory-bounded chunks).

The six numbers of the thesis's tables:

* accuracy SD and cross-entropy SD across runs, with bootstrap error bars
  (the "±", the standard deviation of the standard deviation);
* pairwise disagreement: the fraction of test examples on which two runs' argmax
  predictions differ, averaged over all pairs;
* pairwise correlation: Spearman's rho between two runs' flattened (N*C) logits,
  averaged over all pairs;
* ensemble delta (Eq. 5.1): the mean over pairs of f(ensemble of the pair) minus
  the mean of f over the pair, the ensemble being the mean of the two logit tensors.

The language-model tables (5.2, 5.4, B.3) report three numbers per row, for a
stack of R models' next-token predictions on one test stream of N tokens:

* perplexity SD (`perplexity_sd`): the SD across runs of test perplexity
  exp(mean negative log-likelihood per token), with the same bootstrap "±";
* per-token disagreement: `pairwise_disagreement` over tokens (argmax of the
  next-token distribution), or `prediction_disagreement` from stored argmaxes;
* ensemble perplexity delta (`ensemble_perplexity_delta`): Eq. 5.1 with
  f = perplexity, negative when ensembling helps.

A language model's logits are (N, V) per run (V = vocabulary), too large to keep
for R runs of a real test set; each run's log-probability of the true next token
(N,) and its argmax (N,) suffice for all three numbers when the ensemble of two
models is the mixture of their next-token distributions, the usual ensemble of
language models: `language_model_metrics` takes those.

Reference: Thesis Ch. 5, Sec. 5.3.1; Summers & Dinneen, "Nondeterminism and
Instability in Neural Network Optimization", ICML 2021, arXiv:2103.04514.
"""

from __future__ import annotations

import numpy as np
from scipy.special import log_softmax
from scipy.stats import rankdata

from tf_dlthesis._checks import check_int

_METRICS = ("accuracy", "cross_entropy")
_COMBINE = ("probabilities", "logits")


def real_array(values, name: str, shape: str) -> np.ndarray:
    """`values` as float64, refusing what NumPy would convert quietly (strings, complex, bools, objects)."""
    try:
        raw = np.asarray(values)
    except (TypeError, ValueError) as exc:
        parts = _part_shapes(values)
        if parts is not None and len(set(parts)) > 1:  # e.g. runs evaluated on different test sets
            raise ValueError(f"`{name}` must have shape {shape}: its entries (runs) differ in shape. "
                             f"Received: entries of shapes {parts}") from exc
        raise TypeError(f"`{name}` must be a numeric array of shape {shape}. Received: {type(values).__name__}") from exc
    if not (np.issubdtype(raw.dtype, np.integer) or np.issubdtype(raw.dtype, np.floating)):
        raise TypeError(f"`{name}` must hold real numbers (int or float), shape {shape}. Received: dtype {raw.dtype}")
    return raw.astype(np.float64)


def _part_shapes(values) -> list | None:
    """The shapes of a list's or tuple's entries (None when not a sequence, or an entry is no array)."""
    if not isinstance(values, (list, tuple)):
        return None
    try:
        return [tuple(np.shape(v)) for v in values]
    except (TypeError, ValueError):
        return None


def _check_logits(logits, *, min_runs: int = 2, name: str = "logits") -> np.ndarray:
    arr = real_array(logits, name, "(R, N, C)")
    if arr.ndim != 3:
        raise ValueError(f"`{name}` must have shape (R, N, C) (runs, examples, classes). Received: shape={arr.shape}")
    if arr.shape[0] < min_runs:
        raise ValueError(
            f"`{name}` must stack at least {min_runs} runs (axis 0) to measure variability. Received: runs={arr.shape[0]}"
        )
    if arr.shape[1] < 1 or arr.shape[2] < 2:
        raise ValueError(f"`{name}` needs N >= 1 examples and C >= 2 classes. Received: shape={arr.shape}")
    if not np.all(np.isfinite(arr)):
        bad = int(np.size(arr) - np.count_nonzero(np.isfinite(arr)))
        raise ValueError(f"`{name}` contains {bad} NaN or infinite values; a diverged run cannot be scored.")
    return arr


def _check_labels(labels, logits: np.ndarray) -> np.ndarray:
    lab = np.asarray(labels)
    if lab.ndim != 1 or lab.shape[0] != logits.shape[1]:
        raise ValueError(
            f"`labels` must have shape (N,) = ({logits.shape[1]},) to match logits of shape {logits.shape}. "
            f"Received: labels.shape={lab.shape}"
        )
    if not np.issubdtype(lab.dtype, np.integer):
        raise TypeError(f"`labels` must be integer class indices. Received: dtype={lab.dtype}")
    if lab.size and (lab.min() < 0 or lab.max() >= logits.shape[2]):
        raise ValueError(
            f"`labels` must lie in [0, {logits.shape[2]}). Received: min={lab.min()}, max={lab.max()}"
        )
    return lab.astype(np.int64)


def per_run_accuracy(logits, labels) -> np.ndarray:
    """Accuracy of each run, shape (R,), as a fraction."""
    arr = _check_logits(logits, min_runs=1)
    lab = _check_labels(labels, arr)
    return np.mean(np.argmax(arr, axis=-1) == lab[None, :], axis=-1)


def per_run_cross_entropy(logits, labels) -> np.ndarray:
    """Mean test cross-entropy (nats) of each run, shape (R,)."""
    arr = _check_logits(logits, min_runs=1)
    lab = _check_labels(labels, arr)
    return _cross_entropy(arr, lab)


def _cross_entropy(arr: np.ndarray, lab: np.ndarray) -> np.ndarray:
    logp = log_softmax(arr, axis=-1)
    picked = np.take_along_axis(logp, lab[None, :, None].repeat(arr.shape[0], axis=0), axis=-1)[..., 0]
    return -np.mean(picked, axis=-1)


def _sd(values: np.ndarray, axis: int = -1) -> np.ndarray:
    """Sample SD (ddof=1), shifted by the first value so equal values give exactly 0."""
    first = np.take(values, [0], axis=axis)
    return np.std(values - first, axis=axis, ddof=1)


def bootstrap_sd(values, *, num_samples: int = 1000, seed: int = 0) -> float:
    """Bootstrap error bar of a standard deviation (the thesis's "±").

    Resamples the R values with replacement `num_samples` times, takes the
    sample standard deviation (ddof=1) of each resample and returns the standard
    deviation of those: "the standard deviation of each standard deviation"
    (Table 5.1 caption).

    Args:
        values: 1-D array of R >= 2 per-run values (e.g. accuracies).
        num_samples: Number of bootstrap resamples.
        seed: Seed of the resampling generator.

    Returns:
        The error bar, a float.

    Raises:
        TypeError: if `num_samples` or `seed` is not an int.
        ValueError: if `values` is not 1-D with at least 2 finite entries,
            `num_samples` < 2 or `seed` is negative.
    """
    vals = real_array(values, "values", "(R,)")
    if vals.ndim != 1 or vals.shape[0] < 2:
        raise ValueError(f"`values` must be 1-D with at least 2 runs. Received: shape={vals.shape}")
    if not np.all(np.isfinite(vals)):
        raise ValueError("`values` contains NaN or infinite entries.")
    check_int("num_samples", num_samples, 2)
    check_int("seed", seed, 0, allow_none=True, why="None draws fresh entropy")
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, vals.shape[0], size=(int(num_samples), vals.shape[0]))
    return float(_sd(_sd(vals[idx], axis=1)))


def accuracy_sd(logits, labels) -> float:
    """Standard deviation (ddof=1) across runs of test accuracy, as a fraction."""
    return float(_sd(per_run_accuracy(_check_logits(logits), labels)))


def cross_entropy_sd(logits, labels) -> float:
    """Standard deviation (ddof=1) across runs of mean test cross-entropy."""
    return float(_sd(per_run_cross_entropy(_check_logits(logits), labels)))


def pairwise_disagreement(logits) -> float:
    """Mean over all pairs of runs of the fraction of examples whose argmax differs.

    Computed from per-example vote counts: with n_c runs predicting class c on an
    example, sum_c n_c (n_c - 1) / 2 of the R(R-1)/2 pairs agree on it, so the
    cost is O(R N C) rather than O(R^2 N).
    """
    arr = _check_logits(logits)
    return _disagreement(np.argmax(arr, axis=-1))


def _disagreement(preds: np.ndarray) -> float:
    runs, n = preds.shape
    # sort each example's R predictions: equal classes become runs of equal values
    ordered = np.sort(preds, axis=0)
    agreeing_pairs = 0
    start = np.zeros(n, dtype=np.int64)  # first row of the current group of equal predictions
    for r in range(1, runs + 1):
        ends = np.ones(n, dtype=bool) if r == runs else ordered[r] != ordered[r - 1]
        size = r - start
        agreeing_pairs += int(np.sum(np.where(ends, size * (size - 1) // 2, 0)))
        start = np.where(ends, r, start)
    return float(1.0 - agreeing_pairs / (n * runs * (runs - 1) / 2.0))


def prediction_disagreement(predictions) -> float:
    """`pairwise_disagreement` from stored argmax predictions, shape (R, N) integers.

    Example:

    >>> round(prediction_disagreement([[0, 1, 2], [0, 1, 3]]), 4)   # the runs differ on 1 of 3 tokens
    0.3333

    Raises:
        ValueError: not (R, N) with R >= 2 and N >= 1.
        TypeError: not integers.
    """
    preds = np.asarray(predictions)
    if preds.ndim != 2 or preds.shape[0] < 2 or preds.shape[1] < 1:
        raise ValueError(f"`predictions` must have shape (R, N) with R >= 2 runs and N >= 1. Received: shape={preds.shape}")
    if not np.issubdtype(preds.dtype, np.integer):
        raise TypeError(f"`predictions` must be integer class indices. Received: dtype={preds.dtype}")
    return _disagreement(preds.astype(np.int64))


def pairwise_correlation(logits) -> float:
    """Mean over all pairs of runs of Spearman's rho of the flattened (N*C) logits.

    Each run's logits are ranked once (average ranks for ties, as
    `scipy.stats.spearmanr`), standardised, and the sum of all pairwise Pearson
    correlations of the ranks is read off ``(|sum_i z_i|^2 - sum_i |z_i|^2) / 2``,
    so the cost is O(R M log M) for M = N*C instead of O(R^2 M log M).
    """
    z = _standardized_ranks(logits)
    runs = z.shape[0]
    total = z.sum(axis=0)
    pair_sum = (total @ total - float(runs)) / 2.0  # each |z_i|^2 == 1
    # rho lies in [-1, 1]; rounding can step past 1 by an ulp (identical runs)
    return float(np.clip(pair_sum / (runs * (runs - 1) / 2.0), -1.0, 1.0))


def pairwise_correlation_matrix(logits) -> np.ndarray:
    """(R, R) matrix of Spearman's rho between every two runs' flattened logits.

    One ranking per run and one (R, M) x (M, R) product: no loop over pairs.
    """
    z = _standardized_ranks(logits)
    return np.clip(z @ z.T, -1.0, 1.0)


def _standardized_ranks(logits) -> np.ndarray:
    """(R, N*C): each run's flattened logits ranked (average ranks for ties), centred, scaled to norm 1."""
    arr = _check_logits(logits)
    ranks = rankdata(arr.reshape(arr.shape[0], -1), axis=1)
    ranks -= ranks.mean(axis=1, keepdims=True)
    norms = np.linalg.norm(ranks, axis=1)
    if np.any(norms == 0):
        raise ValueError("Spearman correlation is undefined: a run's logits are all equal (constant ranks).")
    return ranks / norms[:, None]


def pair_indices(runs: int) -> tuple[np.ndarray, np.ndarray]:
    """Indices (i, j), i < j, of all R(R-1)/2 pairs of runs."""
    return np.triu_indices(runs, k=1)


def _metric_values(arr: np.ndarray, lab: np.ndarray, metric: str) -> np.ndarray:
    if metric == "accuracy":
        return np.mean(np.argmax(arr, axis=-1) == lab[None, :], axis=-1)
    return _cross_entropy(arr, lab)


def ensemble_delta(logits, labels, *, metric: str = "accuracy", max_chunk_bytes: int = 64 * 2**20) -> float:
    """Eq. 5.1: mean over pairs of f((S_i + S_j) / 2) - (f(S_i) + f(S_j)) / 2.

    The ensemble of two models is the mean of their logits (thesis convention).
    Positive for accuracy when ensembling helps; negative for cross-entropy.

    Args:
        logits: (R, N, C) logits.
        labels: (N,) integer labels.
        metric: `"accuracy"` (fraction) or `"cross_entropy"`.
        max_chunk_bytes: Memory bound of one chunk of pair ensembles.

    Returns:
        The mean change, a float.
    """
    if metric not in _METRICS:
        raise ValueError(f"`metric` must be one of {_METRICS}. Received: metric={metric!r}")
    check_int("max_chunk_bytes", max_chunk_bytes, 1)
    arr = _check_logits(logits)
    lab = _check_labels(labels, arr)
    runs = arr.shape[0]
    single = _metric_values(arr, lab, metric)
    ii, jj = pair_indices(runs)
    per_pair = max(1, int(max_chunk_bytes // max(1, arr[0].nbytes)))
    total = 0.0
    for start in range(0, ii.shape[0], per_pair):  # chunks of pairs, each chunk vectorized
        a, b = ii[start : start + per_pair], jj[start : start + per_pair]
        ens = 0.5 * (arr[a] + arr[b])
        total += float(np.sum(_metric_values(ens, lab, metric) - 0.5 * (single[a] + single[b])))
    return total / ii.shape[0]


def variability_metrics(logits, labels, *, bootstrap_samples: int = 1000, seed: int = 0) -> dict:
    """All of a table row's numbers for one stack of runs (Tables 5.1, 5.3, 5.5, B.1).

    Returns:
        Dict with `runs`, `accuracy` and `cross_entropy` (means), `accuracy_sd`,
        `accuracy_sd_err`, `cross_entropy_sd`, `cross_entropy_sd_err`,
        `disagreement`, `correlation`, `ensemble_delta` (accuracy, fraction).
        Fractions are fractions (the thesis prints percentages).
    """
    arr = _check_logits(logits)
    lab = _check_labels(labels, arr)
    acc = _metric_values(arr, lab, "accuracy")
    ce = _metric_values(arr, lab, "cross_entropy")
    return {
        "runs": int(arr.shape[0]),
        "accuracy": float(acc.mean()),
        "cross_entropy": float(ce.mean()),
        "accuracy_sd": float(_sd(acc)),
        "accuracy_sd_err": bootstrap_sd(acc, num_samples=bootstrap_samples, seed=seed),
        "cross_entropy_sd": float(_sd(ce)),
        "cross_entropy_sd_err": bootstrap_sd(ce, num_samples=bootstrap_samples, seed=seed),
        "disagreement": pairwise_disagreement(arr),
        "correlation": pairwise_correlation(arr),
        "ensemble_delta": ensemble_delta(arr, lab),
    }


# ---------------------------------------------------------------------------- language models
def _check_log_probs(target_log_probs, *, min_runs: int = 1) -> np.ndarray:
    arr = real_array(target_log_probs, "target_log_probs", "(R, N)")
    if arr.ndim != 2 or arr.shape[0] < min_runs or arr.shape[1] < 1:
        raise ValueError(f"`target_log_probs` must have shape (R, N) with R >= {min_runs} runs and N >= 1 tokens. "
                         f"Received: shape={arr.shape}")
    if not np.all(np.isfinite(arr)) or np.any(arr > 0):
        raise ValueError("`target_log_probs` must be finite log-probabilities (<= 0); a diverged run cannot be scored.")
    return arr


def target_log_probs(logits, labels) -> np.ndarray:
    """Each run's log-probability of the true class (next token), shape (R, N)."""
    arr = _check_logits(logits, min_runs=1)
    lab = _check_labels(labels, arr)
    logp = log_softmax(arr, axis=-1)
    return np.take_along_axis(logp, lab[None, :, None].repeat(arr.shape[0], axis=0), axis=-1)[..., 0]


def perplexity_from_log_probs(target_log_probs) -> np.ndarray:
    """Perplexity of each run, exp(-mean log p(true token)), shape (R,), from (R, N) log-probabilities."""
    return np.exp(-np.mean(_check_log_probs(target_log_probs), axis=-1))


def per_run_perplexity(logits, labels) -> np.ndarray:
    """Test perplexity exp(mean cross-entropy) of each run, shape (R,)."""
    return np.exp(per_run_cross_entropy(logits, labels))


def perplexity_sd(logits, labels) -> float:
    """Standard deviation (ddof=1) across runs of test perplexity (Tables 5.2, 5.4, B.3, "PPL SD").

    Example:

    >>> import numpy as np
    >>> logits = np.log([[[0.5, 0.5]], [[0.25, 0.75]]])   # 2 runs, 1 token, p(true) = 0.5 and 0.25
    >>> round(perplexity_sd(logits, np.array([0])), 4)   # perplexities 2 and 4
    1.4142

    Args:
        logits: (R, N, V) next-token logits of R runs on N test tokens.
        labels: (N,) the true next tokens.

    Returns:
        The SD, in perplexity units.
    """
    return float(_sd(per_run_perplexity(_check_logits(logits), labels)))


def mixture_perplexity_delta(target_log_probs) -> float:
    """Eq. 5.1 with f = perplexity, the pair's ensemble being the mixture of their distributions.

    The mixture's log-probability of the true token is log((p_i + p_j) / 2), so each
    run's (N,) log-probabilities of the true tokens are all the pairs need.

    Args:
        target_log_probs: (R, N), R >= 2, each run's log p(true token).

    Returns:
        Mean over the R(R-1)/2 pairs of PPL(mixture) - (PPL_i + PPL_j) / 2 (negative
        when ensembling helps).
    """
    arr = _check_log_probs(target_log_probs, min_runs=2)
    single = np.exp(-arr.mean(axis=1))
    ii, jj = pair_indices(arr.shape[0])
    total = 0.0
    per_chunk = max(1, int((64 * 2**20) // max(1, arr[0].nbytes)))
    for start in range(0, ii.shape[0], per_chunk):
        a, b = ii[start : start + per_chunk], jj[start : start + per_chunk]
        mixed = np.logaddexp(arr[a], arr[b]) - np.log(2.0)
        total += float(np.sum(np.exp(-mixed.mean(axis=1)) - 0.5 * (single[a] + single[b])))
    return total / ii.shape[0]


def ensemble_perplexity_delta(logits, labels, *, combine: str = "probabilities") -> float:
    """Eq. 5.1 with f = perplexity: mean over pairs of PPL(ensemble) - (PPL_i + PPL_j) / 2.

    Negative when ensembling two runs lowers perplexity (Table 5.2's "Ensemble PPL
    Delta", -2.07 for the thesis's QRNN).

    Example:

    >>> import numpy as np
    >>> logits = np.log([[[0.5, 0.5]], [[0.25, 0.75]]])   # p(true) = 0.5, 0.25 -> PPL 2, 4
    >>> round(ensemble_perplexity_delta(logits, np.array([0])), 4)   # mixture p = 0.375 -> 8/3 - 3
    -0.3333

    Args:
        logits: (R, N, V) next-token logits, R >= 2.
        labels: (N,) true next tokens.
        combine: How two runs are ensembled: `"probabilities"` (default; the
            mixture (p_i + p_j) / 2, the usual ensemble of language models) or
            `"logits"` (softmax of the mean logits, the convention of the image
            tables' `ensemble_delta`). The thesis does not say which its language
            model tables used.

    Returns:
        The mean change in perplexity, a float.

    Raises:
        ValueError: unknown `combine`, or logits/labels of the wrong shape.
    """
    if combine not in _COMBINE:
        raise ValueError(f"`combine` must be one of {_COMBINE}. Received: combine={combine!r}")
    arr = _check_logits(logits)
    lab = _check_labels(labels, arr)
    if combine == "probabilities":
        return mixture_perplexity_delta(target_log_probs(arr, lab))
    single = np.exp(_cross_entropy(arr, lab))
    ii, jj = pair_indices(arr.shape[0])
    per_pair = max(1, int((64 * 2**20) // max(1, arr[0].nbytes)))
    total = 0.0
    for start in range(0, ii.shape[0], per_pair):
        a, b = ii[start : start + per_pair], jj[start : start + per_pair]
        ens = np.exp(_cross_entropy(0.5 * (arr[a] + arr[b]), lab))
        total += float(np.sum(ens - 0.5 * (single[a] + single[b])))
    return total / ii.shape[0]


def language_model_metrics(target_log_probs, predictions, *, bootstrap_samples: int = 1000, seed: int = 0) -> dict:
    """A row of Tables 5.2 / 5.4 / B.3 from each run's log p(true token) and argmax prediction.

    Example:

    >>> import numpy as np
    >>> row = language_model_metrics(np.log([[0.5, 0.5], [0.25, 0.25]]), np.array([[1, 2], [1, 3]]))
    >>> row["perplexity"], row["disagreement"]
    (3.0, 0.5)

    Args:
        target_log_probs: (R, N) log-probability each run gave the true next token.
        predictions: (R, N) each run's argmax next token.
        bootstrap_samples: Resamples of the "±" (`bootstrap_sd`).
        seed: Seed of the bootstrap.

    Returns:
        Dict with `runs`, `perplexity` (mean over runs), `perplexity_sd`,
        `perplexity_sd_err`, `disagreement` (fraction of tokens, mean over pairs),
        `ensemble_perplexity_delta` (mixture ensembles, `mixture_perplexity_delta`).

    Raises:
        ValueError: shapes that do not match, R < 2, or invalid log-probabilities.
    """
    lp = _check_log_probs(target_log_probs, min_runs=2)
    preds = np.asarray(predictions)
    if preds.shape != lp.shape:
        raise ValueError(f"`predictions` must have the shape of `target_log_probs` {lp.shape}. "
                         f"Received: shape={preds.shape}")
    ppl = perplexity_from_log_probs(lp)
    return {
        "runs": int(lp.shape[0]),
        "perplexity": float(ppl.mean()),
        "perplexity_sd": float(_sd(ppl)),
        "perplexity_sd_err": bootstrap_sd(ppl, num_samples=bootstrap_samples, seed=seed),
        "disagreement": prediction_disagreement(preds),
        "ensemble_perplexity_delta": mixture_perplexity_delta(lp),
    }
