"""Effects with 95% intervals, and the verdict rule every finding uses.

A thesis finding is a claim about an effect: "VH-Mixup has lower error than the
baseline" (a paired difference over seeds), "label smoothing lifts FGSM accuracy"
(a difference of two accuracies on one test set), "every source's SD is within a
factor of 2" (a ratio of two standard deviations). Each function here measures one
kind of effect and returns an `Effect`: the estimate, a 95% interval and the name of
the statistic. `verdict(effect, region)` then compares the interval with the region
of effects the thesis claims:

* "reproduced": the whole interval lies inside the claimed region;
* "not reproduced": the whole interval lies outside it (the opposite is significant);
* "inconclusive": the interval straddles the region's boundary (no effect cannot
  be excluded, or the claimed size cannot be confirmed).

For a directional claim ("A > B") the region is `(0, inf)`, so the rule reads:
significant in the thesis's direction -> reproduced; significant in the opposite
direction -> not reproduced; an interval covering 0 -> inconclusive. A zero-width
interval on the boundary (e.g. two bit-identical models) counts as inconclusive.

Bootstrap intervals are percentile intervals with a fixed seed, so a report is
reproducible bit for bit.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np

CONFIDENCE = 0.95
N_BOOT = 2000
_NO_EFFECT = "inconclusive"


@dataclasses.dataclass(frozen=True)
class Effect:
    """A measured effect with its interval.

    Attributes:
        estimate: the point estimate.
        low, high: the interval (`confidence`, two-sided).
        statistic: what was measured and how the interval was computed,
            e.g. "mean paired difference of test error over 3 seeds (pts), t interval".
        n: the number of independent units behind the interval (seeds, examples).
        confidence: the interval's coverage.
    """

    estimate: float
    low: float
    high: float
    statistic: str
    n: int = 0
    confidence: float = CONFIDENCE

    def __post_init__(self):
        for name in ("estimate", "low", "high"):
            object.__setattr__(self, name, float(getattr(self, name)))
        if not (self.low <= self.high) and not (math.isnan(self.low) or math.isnan(self.high)):
            raise ValueError(f"`low` must be <= `high`. Received: low={self.low}, high={self.high}")

    def text(self, digits: int = 3) -> str:
        """`estimate [low, high]` in significant digits."""
        return f"{_g(self.estimate, digits)} [{_g(self.low, digits)}, {_g(self.high, digits)}]"

    def scaled(self, factor: float, statistic: str | None = None) -> "Effect":
        """The same effect in other units (a negative factor swaps the bounds)."""
        lo, hi = sorted((self.low * factor, self.high * factor))
        return Effect(self.estimate * factor, lo, hi, statistic or self.statistic, self.n, self.confidence)

    def to_config(self) -> dict:
        return dataclasses.asdict(self)


def _g(value: float, digits: int) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "nan"
    if math.isinf(value):
        return "inf" if value > 0 else "-inf"
    if value == 0:
        return "0"
    if abs(value) >= 1e4 or abs(value) < 1e-3:
        return f"{value:.{max(1, digits - 1)}e}"
    return f"{value:.{digits}g}"


def verdict(effect: Effect, above: float | None = None, below: float | None = None) -> str:
    """The verdict for a claim that the effect lies in the region (`above`, `below`).

    Args:
        effect: the measured effect.
        above: the claimed region's lower bound (None: unbounded).
        below: the claimed region's upper bound (None: unbounded).

    Returns:
        "reproduced", "not reproduced" or "inconclusive".

    Raises:
        ValueError: if neither bound is given or `above >= below`.
    """
    if above is None and below is None:
        raise ValueError("A claim needs a region: give `above`, `below` or both.")
    if above is not None and below is not None and not above < below:
        raise ValueError(f"`above` must be < `below`. Received: above={above}, below={below}")
    lo, hi = effect.low, effect.high
    if math.isnan(lo) or math.isnan(hi):
        return _NO_EFFECT
    inside = (above is None or lo > above) and (below is None or hi < below)
    if inside:
        return "reproduced"
    outside = (above is not None and hi < above) or (below is not None and lo > below)
    return "not reproduced" if outside else _NO_EFFECT


def _t_quantile(df: int, confidence: float) -> float:
    from scipy import stats

    return float(stats.t.ppf(0.5 + confidence / 2, df))


def _z(confidence: float) -> float:
    from scipy import stats

    return float(stats.norm.ppf(0.5 + confidence / 2))


def _vector(name, values) -> np.ndarray:
    arr = np.asarray(values, dtype=np.float64).reshape(-1)
    if arr.size == 0:
        raise ValueError(f"`{name}` must not be empty.")
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"`{name}` must be finite. Received: {name}={arr.tolist()}")
    return arr


def exact(value: float, statistic: str) -> Effect:
    """A statistic with no sampling error (a deterministic measurement): a zero-width interval.

    Use it for claims about one fixed object, e.g. "no training-mode output exceeds
    the bound" measured on every output; `statistic` must say why it is exact.
    """
    return Effect(value, value, value, f"{statistic} (exact: no sampling)", 0)


def mean_interval(values, *, statistic: str = "mean", confidence: float = CONFIDENCE) -> Effect:
    """Mean with a Student-t interval; a single value gets an infinite interval (no verdict possible)."""
    v = _vector("values", values)
    n = v.size
    if n == 1:
        return Effect(v[0], -math.inf, math.inf, f"{statistic} (1 value: no interval)", 1, confidence)
    half = _t_quantile(n - 1, confidence) * v.std(ddof=1) / math.sqrt(n)
    return Effect(v.mean(), v.mean() - half, v.mean() + half, f"{statistic}, t interval over {n}", n, confidence)


def paired_difference(a, b, *, unit: str = "", what: str = "", confidence: float = CONFIDENCE) -> Effect:
    """Mean of `a - b` over paired units (seeds), Student-t interval.

    With one pair there is no interval (infinite bounds: every verdict is
    inconclusive), which is the honest answer for a single run.
    """
    a, b = _vector("a", a), _vector("b", b)
    if a.shape != b.shape:
        raise ValueError(f"`a` and `b` must pair up. Received {a.size} and {b.size} values.")
    label = f"mean paired difference{' of ' + what if what else ''}{' (' + unit + ')' if unit else ''} over {a.size} seed(s)"
    return mean_interval(a - b, statistic=label, confidence=confidence)


def _percentile(samples: np.ndarray, confidence: float):
    q = 100 * (1 - confidence) / 2
    lo, hi = np.percentile(samples, [q, 100 - q])
    return float(lo), float(hi)


def _as_matrix(name, correct) -> np.ndarray:
    arr = np.asarray(correct)
    if arr.ndim == 1:
        arr = arr[None]
    if arr.ndim != 2 or arr.size == 0:
        raise ValueError(f"`{name}` must be (runs, examples) or (examples,) correctness. Received shape {np.shape(correct)}")
    return arr.astype(np.float64)


def accuracy_difference(correct_a, correct_b, *, what: str = "accuracy", unit: str = "pts", scale: float = 100.0,
                        n_boot: int = N_BOOT, seed: int = 0, confidence: float = CONFIDENCE) -> Effect:
    """Difference of two accuracies on the same test examples (and the same seeds).

    `correct_a`, `correct_b`: per-example correctness, shape (R, N) for R paired
    runs (seed r of A paired with seed r of B) or (N,) for one run each. The
    interval is a two-level (cluster) bootstrap: runs are resampled with
    replacement (when R > 1) and, independently, test examples, so both the
    seed-to-seed spread and the finite test set are in the interval. With one
    run each this is the paired bootstrap of McNemar's setting.

    Returns:
        An `Effect` of `scale * (acc_a - acc_b)` (default: percentage points).
    """
    return accuracy_differences([(correct_a, correct_b)], lambda v: v[0], what=f"difference of {what}", unit=unit,
                                scale=scale, n_boot=n_boot, seed=seed, confidence=confidence)


def accuracy_differences(pairs, reduce, *, what: str, unit: str = "pts", scale: float = 100.0, n_boot: int = N_BOOT,
                         seed: int = 0, confidence: float = CONFIDENCE) -> Effect:
    """A statistic of several paired accuracy differences, with one cluster bootstrap for all of them.

    Each pair `(correct_a, correct_b)` gives `scale * (acc_a - acc_b)`; `reduce`
    maps the vector of per-pair effects to one number (`np.median` for "most
    methods beat the baseline", `np.min` for "every" / "both"). Every bootstrap
    replicate resamples the seeds and, independently, the test examples with
    replacement - the same draws for every pair, so the pairs stay paired. With
    one pair this is `accuracy_difference`.

    Example:

    >>> effect = accuracy_differences([(correct[m], correct["baseline"]) for m in methods], np.median,
    ...                               what="median test-accuracy gain over the baseline")

    Args:
        pairs: `(correct_a, correct_b)` per-example correctness, each (R seeds, N test
            examples) or (N,), all of one shape (the same seeds and test examples).
        reduce: vector of per-pair effects -> number.
        what: what the statistic is (the `Effect`'s description).
        unit, scale: the effect's unit and the factor from an accuracy difference to it.
        n_boot, seed, confidence: bootstrap replicates, its seed, the interval's coverage.

    Raises:
        ValueError: no pairs, or matrices of different shapes.
    """
    if not pairs:
        raise ValueError("`pairs` is empty: give at least one (correct_a, correct_b) pair.")
    mats = []
    for a, b in pairs:
        a, b = _as_matrix("correct_a", a), _as_matrix("correct_b", b)
        if a.shape != b.shape:
            raise ValueError(f"`correct_a` and `correct_b` must have the same shape. Received {a.shape} and {b.shape}")
        mats.append(a - b)
    if len({m.shape for m in mats}) != 1:
        raise ValueError(f"Every pair must have the same shape. Received {sorted({m.shape for m in mats})}")
    d = np.stack(mats)                       # (pairs, R, N)
    p, r, n = d.shape
    flat = d.reshape(p * r, n)
    rng = np.random.default_rng(seed)
    out = np.empty(n_boot)
    for i in range(n_boot):
        rows = rng.integers(0, r, r) if r > 1 else np.zeros(1, np.int64)
        cols = rng.integers(0, n, n)
        per_run = (flat @ np.bincount(cols, minlength=n)).reshape(p, r) / n
        out[i] = reduce(scale * (per_run @ np.bincount(rows, minlength=r)) / len(rows))
    lo, hi = _percentile(out, confidence)
    runs = f"{r} paired run(s) x " if r > 1 else ""
    label = f"{what} ({unit}), bootstrap over {runs}{n} test examples"
    return Effect(float(reduce(scale * d.mean(axis=(1, 2)))), lo, hi, label, r if r > 1 else n, confidence)


def proportion(correct, *, what: str = "accuracy", scale: float = 100.0, confidence: float = CONFIDENCE) -> Effect:
    """One accuracy with a Wilson score interval (per-example correctness, pooled over runs)."""
    c = _as_matrix("correct", correct).reshape(-1)
    n, k = c.size, float(c.sum())
    z = _z(confidence)
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return Effect(scale * p, scale * max(0.0, centre - half), scale * min(1.0, centre + half),
                  f"{what} (x{scale:g}), Wilson interval over {n} predictions", n, confidence)


def bootstrap(statistic, *samples, what: str, paired: bool = False, n_boot: int = N_BOOT, seed: int = 0,
              confidence: float = CONFIDENCE) -> Effect:
    """Percentile bootstrap of `statistic(*samples)` resampling the first axis of each sample.

    `paired=True` resamples the same indices in every sample (they must have the
    same length); otherwise each sample is resampled independently.
    """
    arrays = [np.asarray(s) for s in samples]
    if not arrays or any(len(s) == 0 for s in arrays):
        raise ValueError("`bootstrap` needs non-empty samples.")
    if paired and len({len(s) for s in arrays}) != 1:
        raise ValueError("`paired=True` needs samples of equal length.")
    rng = np.random.default_rng(seed)
    point = float(statistic(*arrays))
    out = np.empty(n_boot)
    for i in range(n_boot):
        if paired:
            idx = rng.integers(0, len(arrays[0]), len(arrays[0]))
            out[i] = statistic(*(s[idx] for s in arrays))
        else:
            out[i] = statistic(*(s[rng.integers(0, len(s), len(s))] for s in arrays))
    out = out[np.isfinite(out)]
    if out.size < n_boot // 2:
        return Effect(point, -math.inf, math.inf, f"{what} (bootstrap undefined)", min(len(s) for s in arrays), confidence)
    lo, hi = _percentile(out, confidence)
    sizes = "/".join(str(len(s)) for s in arrays)
    return Effect(point, lo, hi, f"{what}, percentile bootstrap over {sizes}", min(len(s) for s in arrays), confidence)


def _sd(v):
    """Sample SD, shifted by the first value so that equal values give exactly 0 (not round-off)."""
    return float(np.std(v - v[0], ddof=1)) if len(v) > 1 else float("nan")


def sd_ratio(values_a, values_b, *, what: str = "SD ratio", n_boot: int = N_BOOT, seed: int = 0,
             confidence: float = CONFIDENCE) -> Effect:
    """Ratio of the sample SDs of two independent sets of runs, bootstrap interval.

    Used for "source A's variability is within a factor of 2 of source B's": the
    claimed region is then `(0.5, 2)`.
    """
    a, b = _vector("values_a", values_a), _vector("values_b", values_b)
    if a.size < 2 or b.size < 2:
        raise ValueError(f"`sd_ratio` needs >= 2 runs per side. Received {a.size} and {b.size}")

    def stat(x, y):
        sy = _sd(y)
        return _sd(x) / sy if sy > 0 else (math.inf if _sd(x) > 0 else 1.0)

    return bootstrap(stat, a, b, what=what, n_boot=n_boot, seed=seed, confidence=confidence)


def mcnemar_counts(correct_a, correct_b) -> dict:
    """Discordant-pair counts of two classifiers on the same examples (pooled over runs)."""
    a = _as_matrix("correct_a", correct_a).astype(bool).reshape(-1)
    b = _as_matrix("correct_b", correct_b).astype(bool).reshape(-1)
    if a.shape != b.shape:
        raise ValueError("`correct_a` and `correct_b` must have the same shape.")
    return {"a_only": int((a & ~b).sum()), "b_only": int((~a & b).sum()), "n": int(a.size)}


__all__ = [
    "CONFIDENCE", "Effect", "accuracy_difference", "accuracy_differences", "bootstrap", "exact", "mcnemar_counts", "mean_interval",
    "paired_difference", "proportion", "sd_ratio", "verdict",
]
