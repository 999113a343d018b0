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

Reference: Thesis Ch. 5, Sec. 5.3.1; Summers & Dinneen, "Nondeterminism and
Instability in Neural Network Optimization", ICML 2021, arXiv:2103.04514.
"""

from __future__ import annotations

import numpy as np
from scipy.special import log_softmax
from scipy.stats import rankdata

_METRICS = ("accuracy", "cross_entropy")


def _check_logits(logits, *, min_runs: int = 2, name: str = "logits") -> np.ndarray:
    try:
        arr = np.asarray(logits, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise TypeError(f"`{name}` must be a numeric array of shape (R, N, C). Received: {type(logits).__name__}") from exc
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
        ValueError: if `values` is not 1-D with at least 2 finite entries or
            `num_samples` < 2.
    """
    vals = np.asarray(values, dtype=np.float64)
    if vals.ndim != 1 or vals.shape[0] < 2:
        raise ValueError(f"`values` must be 1-D with at least 2 runs. Received: shape={vals.shape}")
    if not np.all(np.isfinite(vals)):
        raise ValueError("`values` contains NaN or infinite entries.")
    if isinstance(num_samples, bool) or not isinstance(num_samples, (int, np.integer)) or num_samples < 2:
        raise ValueError(f"`num_samples` must be an int >= 2. Received: num_samples={num_samples!r}")
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
    runs, n, c = arr.shape
    preds = np.argmax(arr, axis=-1)  # (R, N)
    counts = np.zeros((n, c), dtype=np.int64)
    np.add.at(counts, (np.broadcast_to(np.arange(n), preds.shape), preds), 1)
    agreeing_pairs = np.sum(counts * (counts - 1)) / 2.0
    return float(1.0 - agreeing_pairs / (n * runs * (runs - 1) / 2.0))


def pairwise_correlation(logits) -> float:
    """Mean over all pairs of runs of Spearman's rho of the flattened (N*C) logits.

    Each run's logits are ranked once (average ranks for ties, as
    `scipy.stats.spearmanr`), standardised, and the sum of all pairwise Pearson
    correlations of the ranks is read off ``(|sum_i z_i|^2 - sum_i |z_i|^2) / 2``,
    so the cost is O(R M log M) for M = N*C instead of O(R^2 M log M).
    """
    arr = _check_logits(logits)
    runs = arr.shape[0]
    ranks = rankdata(arr.reshape(runs, -1), axis=1)
    ranks -= ranks.mean(axis=1, keepdims=True)
    norms = np.linalg.norm(ranks, axis=1)
    if np.any(norms == 0):
        raise ValueError("Spearman correlation is undefined: a run's logits are all equal (constant ranks).")
    z = ranks / norms[:, None]
    total = z.sum(axis=0)
    pair_sum = (total @ total - float(runs)) / 2.0  # each |z_i|^2 == 1
    return float(pair_sum / (runs * (runs - 1) / 2.0))


def pairwise_correlation_matrix(logits) -> np.ndarray:
    """(R, R) matrix of Spearman's rho between every two runs' flattened logits.

    One ranking per run and one (R, M) x (M, R) product: no loop over pairs.
    """
    arr = _check_logits(logits)
    ranks = rankdata(arr.reshape(arr.shape[0], -1), axis=1)
    ranks -= ranks.mean(axis=1, keepdims=True)
    norms = np.linalg.norm(ranks, axis=1)
    if np.any(norms == 0):
        raise ValueError("Spearman correlation is undefined: a run's logits are all equal (constant ranks).")
    z = ranks / norms[:, None]
    return z @ z.T


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
