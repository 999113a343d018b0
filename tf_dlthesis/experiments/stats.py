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

Bootstrap intervals have a fixed seed, so a report is reproducible bit for bit.
"""

from __future__ import annotations

import dataclasses
import functools
import math

import numpy as np

from tf_dlthesis._checks import check_int

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
        ValueError: if neither bound is given, a bound is not a number (or NaN), or `above >= below`.
        TypeError: `effect` is not an `Effect`.
    """
    if above is None and below is None:
        raise ValueError("A claim needs a region: give `above`, `below` or both.")
    for name, bound in (("above", above), ("below", below)):  # a NaN bound would make every verdict inconclusive
        if bound is not None and (isinstance(bound, (bool, np.bool_)) or not isinstance(bound, (int, float, np.integer,
                                                                                                  np.floating))
                                  or math.isnan(bound)):
            raise ValueError(f"`{name}` must be a number or None. Received: {name}={bound!r}")
    if not isinstance(effect, Effect):
        raise TypeError(f"`effect` must be an Effect (estimate and interval). Received: effect={effect!r}")
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


def _check_confidence(confidence) -> float:
    if (isinstance(confidence, bool) or not isinstance(confidence, (int, float, np.integer, np.floating))
            or not 0 < confidence < 1):
        raise ValueError(f"`confidence` must be a coverage strictly between 0 and 1 (e.g. 0.95). "
                         f"Received: confidence={confidence!r}")
    return float(confidence)


def _t_quantile(df: int, confidence: float) -> float:
    from scipy import stats

    return float(stats.t.ppf(0.5 + _check_confidence(confidence) / 2, df))


def _z(confidence: float) -> float:
    from scipy import stats

    return float(stats.norm.ppf(0.5 + _check_confidence(confidence) / 2))


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
    """Mean with a Student-t interval; a single value gets an infinite interval (no verdict possible).

    Values that are all equal (e.g. a grid value picked by every seed) give the t
    interval zero width, which would call three equal values significant. Their spread
    is then unknown rather than zero, and the interval is the distribution-free one of
    the sign test: the value itself when `n` equal values on one side of any point are
    improbable enough (`2 * 0.5**n <= 1 - confidence`: n >= 6 at 95%), else infinite.
    """
    _check_confidence(confidence)
    v = _vector("values", values)
    n = v.size
    if n == 1:
        return Effect(v[0], -math.inf, math.inf, f"{statistic} (1 value: no interval)", 1, confidence)
    if np.all(v == v[0]):
        if 2 * 0.5 ** n <= 1 - confidence:
            return Effect(v[0], v[0], v[0], f"{statistic} ({n} equal values: sign-test interval)", n, confidence)
        return Effect(v[0], -math.inf, math.inf, f"{statistic} ({n} equal values: no spread to estimate, "
                                                  f"no interval)", n, confidence)
    half = _t_quantile(n - 1, confidence) * v.std(ddof=1) / math.sqrt(n)
    return Effect(v.mean(), v.mean() - half, v.mean() + half, f"{statistic}, t interval over {n}", n, confidence)


def paired_difference(a, b, *, unit: str = "", what: str = "", confidence: float = CONFIDENCE) -> Effect:
    """Mean of `a - b` over paired units (seeds), Student-t interval.

    With one pair there is no interval (infinite bounds: every verdict is
    inconclusive), which is the honest answer for a single run.
    """
    if np.shape(a) != np.shape(b):  # (before flattening: (2, 3) and (3, 2) would pair the wrong values)
        raise ValueError(f"`a` and `b` must pair up (one value per seed each, the same shape). Received shapes "
                         f"{np.shape(a)} and {np.shape(b)}")
    a, b = _vector("a", a), _vector("b", b)
    label = f"mean paired difference{' of ' + what if what else ''}{' (' + unit + ')' if unit else ''} over {a.size} seed(s)"
    return mean_interval(a - b, statistic=label, confidence=confidence)


def _mcnemar_interval(diff: np.ndarray, confidence: float):
    """The exact (conditional) interval of McNemar's setting for a paired accuracy difference.

    `diff`: per-example correctness (0 / 1) of A minus B, in {-1, 0, 1} (None is
    returned for other values). Given the m discordant examples, b of them won by A, b ~ Bin(m, pi);
    the Clopper-Pearson interval of pi maps to the difference `m (2 pi - 1) / N`. With no
    discordant example, the Clopper-Pearson bound on the discordance rate bounds the
    difference on both sides. With a handful of discordant examples all won by one side
    the bootstrap alone calls the difference significant (4 of 4: exact p = 0.125).
    """
    from scipy import stats

    if not np.all(np.isin(diff, (-1.0, 0.0, 1.0))):
        return None
    n, b, c = diff.size, int(np.sum(diff > 0)), int(np.sum(diff < 0))
    m, tail = b + c, (1 - confidence) / 2
    if m == 0:
        bound = 1.0 - tail ** (1.0 / n)  # Clopper-Pearson upper bound of 0 discordant in n, one tail
        return -bound, bound
    low = float(stats.beta.ppf(tail, b, m - b + 1)) if b > 0 else 0.0
    high = float(stats.beta.ppf(1 - tail, b + 1, m - b)) if b < m else 1.0
    return m * (2 * low - 1) / n, m * (2 * high - 1) / n


def _percentile(samples: np.ndarray, confidence: float):
    q = 100 * (1 - _check_confidence(confidence)) / 2
    lo, hi = np.percentile(samples, [q, 100 - q])
    return float(lo), float(hi)


def _as_matrix(name, correct) -> np.ndarray:
    arr = np.asarray(correct)
    if arr.ndim == 1:
        arr = arr[None]
    if arr.ndim != 2 or arr.size == 0:
        raise ValueError(f"`{name}` must be (runs, examples) or (examples,) correctness. Received shape {np.shape(correct)}")
    arr = arr.astype(np.float64)
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"`{name}` must hold finite per-example values (correctness 0/1, or a per-example score). "
                         f"Received values such as {np.unique(arr[~np.isfinite(arr)])[:5].tolist()}")
    return arr


def _check_n_boot(n_boot) -> None:
    check_int("n_boot", n_boot, 2)


def accuracy_difference(correct_a, correct_b, *, what: str = "accuracy", unit: str = "pts", scale: float = 100.0,
                        n_boot: int = N_BOOT, seed: int = 0, confidence: float = CONFIDENCE) -> Effect:
    """Difference of two accuracies on the same test examples (and the same seeds).

    `correct_a`, `correct_b`: per-example correctness, shape (R, N) for R paired
    runs (seed r of A paired with seed r of B) or (N,) for one run each. With
    one run each the interval is the paired bootstrap of McNemar's setting
    (test examples resampled), widened where needed to McNemar's exact
    conditional interval (`_mcnemar_interval`): with a handful of discordant
    examples the bootstrap alone is too narrow (4 of 4 won by A: significant,
    where the exact test's p is 0.125). With R > 1 runs both the seed-to-seed spread and
    the finite test set are in the interval: see `accuracy_differences`.

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
    replicate resamples the test examples with replacement - the same draws for
    every pair, so the pairs stay paired. With one pair this is
    `accuracy_difference`.

    One run per method (R = 1): with one pair, the percentile interval of that
    bootstrap; with several, `reduce` of simultaneous per-pair intervals from the same
    replicates (`_simultaneous`), since a percentile interval of a minimum or median
    over pairs is too narrow.

    R > 1 paired runs: the seeds and the test set are two crossed sources of
    error, and the test set is shared by every run. The variance of the
    statistic is the sum of a seed part, the delete-one-seed jackknife variance
    (for a mean over seeds this is exactly s^2 / R of the per-seed effects, which
    also carry the seed-by-example noise), and a test-set part, the variance of
    the example bootstrap above with all R runs kept. Each part's half-width is
    its standard error times its own t quantile (R - 1 and N - 1 degrees of
    freedom), and the two half-widths add in quadrature:
    `estimate +/- sqrt((t_{R-1} se_seeds)^2 + (t_{N-1} se_examples)^2)`.
    In simulations with a shared test set and seed effects (tests/foundation/
    test_stats.py) it covers the truth at 95% with 2 and 3 seeds, and more often
    when the seeds do not matter (the seed part then holds only the runs'
    example-level noise, at 1 or 2 degrees of freedom). A percentile bootstrap
    that also resampled the seeds (this function before 2026-12-05) covered 60%
    with 2 seeds and 76% with 3: it sees at most 3 or 10 distinct seed sets and
    shrinks their spread by (R - 1) / R. Welch-Satterthwaite degrees of freedom
    for the sum covered 91% with 2 seeds. So with 2 seeds a seed-to-seed spread
    that rivals the effect leaves the finding inconclusive. Runs whose per-example
    differences are all identical (bit-identical seeds) are one run's evidence repeated:
    where some example tells A and B apart, their interval is never narrower than that run's
    McNemar exact interval, as with R = 1 (the crossed interval alone called 4 of 4
    discordant examples significant there); where none does it is [0, 0] (inconclusive).

    Example:

    >>> effect = accuracy_differences([(correct[m], correct["baseline"]) for m in methods], np.median,
    ...                               what="median test-accuracy gain over the baseline")

    Args:
        pairs: `(correct_a, correct_b)` per-example correctness, each (R seeds, N test
            examples) or (N,), all of one shape (the same seeds and test examples).
        reduce: vector of per-pair effects -> number, non-decreasing in every pair (min, max,
            median, mean).
        what: what the statistic is (the `Effect`'s description).
        unit, scale: the effect's unit and the factor from an accuracy difference to it.
        n_boot, seed, confidence: bootstrap replicates, its seed, the interval's coverage.

    With fewer than `MIN_BOOTSTRAP_UNITS` (6) test examples there is nothing to
    resample and the interval is infinite (as `bootstrap`'s).

    Raises:
        ValueError: no pairs, or matrices of different shapes.
    """
    if not pairs:
        raise ValueError("`pairs` is empty: give at least one (correct_a, correct_b) pair.")
    mats, binary = [], True  # binary: per-example correctness (0 / 1), not e.g. cross-entropies
    for a, b in pairs:
        a, b = _as_matrix("correct_a", a), _as_matrix("correct_b", b)
        if a.shape != b.shape:
            raise ValueError(f"`correct_a` and `correct_b` must have the same shape. Received {a.shape} and {b.shape}")
        mats.append(a - b)
        binary = binary and bool(np.all(np.isin(a, (0.0, 1.0))) and np.all(np.isin(b, (0.0, 1.0))))
    if len({m.shape for m in mats}) != 1:
        raise ValueError(f"Every pair must have the same shape. Received {sorted({m.shape for m in mats})}")
    d = np.stack(mats)                       # (pairs, R, N)
    _, r, n = d.shape
    estimate, lo, hi = _interval(d, reduce, scale, n_boot, seed, confidence, exact=binary)
    if n < MIN_BOOTSTRAP_UNITS:
        return Effect(estimate, lo, hi, f"{what} ({unit}) over {n} test examples (fewer than "
                      f"{MIN_BOOTSTRAP_UNITS}: no interval)", n, confidence)
    if r == 1:
        exact = " (at least McNemar's exact interval)" if len(pairs) == 1 and binary else ""
        return Effect(estimate, lo, hi, f"{what} ({unit}), bootstrap over {n} test examples{exact}", n, confidence)
    identical = " (the runs' differences identical: at least McNemar's exact interval of one)" if (
        len(pairs) == 1 and binary and _repeated_discordance(d[0])) else ""
    return Effect(estimate, lo, hi, f"{what} ({unit}) over {r} paired runs x {n} test examples: {_CROSSED}{identical}",
                  r, confidence)


def smallest_difference(pairs, *, what: str, unit: str = "pts", scale: float = 100.0, n_boot: int = N_BOOT,
                        seed: int = 0, confidence: float = CONFIDENCE) -> Effect:
    """The smallest of several paired accuracy differences, for claims that hold "on every" pair ("uniformly").

    Each pair gets its own `accuracy_difference` interval. The lower bound is the
    smallest per-pair lower bound at `confidence`: it lies below the true minimum
    whenever the pair that attains the minimum is covered (an intersection-union
    argument, no multiplicity correction needed). The upper bound is the smallest
    per-pair upper bound at the Bonferroni level `1 - (1 - confidence) / P`, so that
    every pair is covered at once and no pair's chance low bound makes "some pair
    goes the other way" look significant. Together the interval covers the true
    minimum with probability >= `confidence`, for any number of seeds (a jackknife
    of the minimum over 2-3 seeds is too narrow when the pair that attains it
    changes with the seed).

    Args:
        pairs: `(correct_a, correct_b)` per-example correctness, as `accuracy_differences`.
        what, unit, scale, n_boot, seed, confidence: as `accuracy_differences`.

    Raises:
        ValueError: no pairs, or matrices of different shapes.
    """
    confidence = _check_confidence(confidence)
    if not pairs:
        raise ValueError("`pairs` is empty: give at least one (correct_a, correct_b) pair.")
    adjusted = 1 - (1 - confidence) / len(pairs)
    kw = dict(unit=unit, scale=scale, n_boot=n_boot, seed=seed)
    each = [accuracy_difference(a, b, what=what, confidence=confidence, **kw) for a, b in pairs]
    wide = [accuracy_difference(a, b, what=what, confidence=adjusted, **kw) for a, b in pairs]
    r, n = _as_matrix("correct_a", pairs[0][0]).shape
    per_pair = (f"bootstrap over {n} test examples" if r == 1 else f"over {r} paired runs x {n} test examples: "
                f"{_CROSSED}")
    statistic = (f"{what} ({unit}): the smallest of {len(pairs)} per-pair differences, each {per_pair}; low: the "
                 f"smallest per-pair {confidence:.0%} low; high: the smallest per-pair high at {adjusted:.2%} "
                 f"(Bonferroni over the {len(pairs)} pairs)")
    return Effect(min(e.estimate for e in each), min(e.low for e in each), min(e.high for e in wide), statistic,
                  each[0].n, confidence)


_CROSSED = "t half-widths of a seed jackknife and an example bootstrap, added in quadrature"


def _interval(d: np.ndarray, reduce, scale: float, n_boot: int, seed: int, confidence: float,
              exact: bool = False) -> tuple:
    """(estimate, low, high) of `reduce(scale * per-pair means)` for `d` of shape (pairs, R runs, N examples).

    R = 1: percentile interval of the example bootstrap for one pair (with `exact`, d
    a difference of 0 / 1 correctness, at least McNemar's exact interval), `reduce` of
    simultaneous per-pair intervals for several (`_simultaneous`). R > 1: the seed part (a
    delete-one-run jackknife, R - 1 df) and the test-set part (the example
    bootstrap with every run kept, N - 1 df), their t half-widths added in
    quadrature (see `accuracy_differences`); with `exact` and one pair whose runs all gave
    the same differences, some discordant, at least McNemar's exact interval of that one.
    """
    _check_n_boot(n_boot)
    _, r, n = d.shape
    _check_confidence(confidence)
    if n < MIN_BOOTSTRAP_UNITS:  # as `bootstrap`: too few test examples to resample (3 of 3 discordant: 100 [100, 100])
        effects = scale * d.mean(axis=(1, 2))
        return float(reduce(effects)), -math.inf, math.inf
    per_example = d.mean(axis=1)             # (pairs, N): the runs' mean per test example
    rng = np.random.default_rng(seed)
    replicates = np.empty((n_boot, len(d)))  # every pair's effect per replicate
    for i in range(n_boot):
        counts = np.bincount(rng.integers(0, n, n), minlength=n)
        replicates[i] = scale * (per_example @ counts) / n
    out = np.array([reduce(v) for v in replicates])
    effects = scale * d.mean(axis=(1, 2))
    estimate = float(reduce(effects))
    if r == 1 and len(d) == 1:
        lo, hi = _percentile(out, confidence)
        exact = _mcnemar_interval(d[0, 0], confidence) if exact else None
        if exact is not None:  # never narrower than McNemar's exact interval (few discordant examples)
            lo, hi = min(lo, float(reduce(np.array([scale * exact[0]])))), max(hi, float(reduce(np.array([scale * exact[1]]))))
        return (estimate, lo, hi)
    if r == 1:
        return (estimate, *_simultaneous(replicates, effects, reduce, confidence))
    per_run = d.mean(axis=2)                 # (pairs, R)
    leave_one_out = np.array([reduce(scale * np.delete(per_run, k, axis=1).mean(axis=1)) for k in range(r)])
    var_seeds = float((r - 1) / r * np.sum((leave_one_out - leave_one_out.mean()) ** 2))
    half = math.hypot(_t_quantile(r - 1, confidence) * math.sqrt(var_seeds),
                      _t_quantile(n - 1, confidence) * math.sqrt(float(out.var(ddof=1))))
    lo, hi = estimate - half, estimate + half
    if exact and len(d) == 1 and _repeated_discordance(d[0]):
        # every run gave the same per-example differences (e.g. bit-identical runs): one run's evidence,
        # repeated, with no seed spread; never narrower than that run's McNemar interval, as with R = 1
        mcnemar = _mcnemar_interval(d[0, 0], confidence)
        if mcnemar is not None:
            lo = min(lo, float(reduce(np.array([scale * mcnemar[0]]))))
            hi = max(hi, float(reduce(np.array([scale * mcnemar[1]]))))
    return estimate, lo, hi


def _repeated_discordance(runs: np.ndarray) -> bool:
    """Whether runs (R, N) of per-example differences all repeat the first and it has a discordant example.

    Without one (no example told apart on any run) the crossed interval is [0, 0], a zero-width
    interval at no effect, which every verdict already reads as inconclusive.
    """
    return bool(np.all(runs == runs[:1]) and np.any(runs[0] != 0))


def _simultaneous(replicates: np.ndarray, effects: np.ndarray, reduce, confidence: float) -> tuple:
    """`(reduce(lows), reduce(highs))` of per-pair intervals that hold for all pairs at once.

    A percentile interval of `reduce` over the replicates is too narrow for a
    non-smooth `reduce`: with one run per method and 8 methods all as good as the
    baseline, that of the minimum excluded 0 in 41% of simulations. Here each pair
    gets `effect +/- c * se` with one `c`, the `confidence` quantile of the largest
    standardized deviation over the pairs (a max-|t| bootstrap), so that all pairs'
    true effects lie in their intervals together with probability `confidence`; for a
    `reduce` that is non-decreasing in every pair (min, max, median, mean) the true
    statistic then lies in `[reduce(lows), reduce(highs)]`.
    """
    _check_confidence(confidence)
    se = replicates.std(axis=0, ddof=1)
    varies = se > 0
    if varies.any():
        worst = np.max(np.abs(replicates[:, varies] - effects[varies]) / se[varies], axis=1)
        c = float(np.percentile(worst, 100 * confidence))
    else:
        c = 0.0
    return float(reduce(effects - c * se)), float(reduce(effects + c * se))


def proportion(correct, *, what: str = "accuracy", scale: float = 100.0, n_boot: int = N_BOOT, seed: int = 0,
               confidence: float = CONFIDENCE) -> Effect:
    """One accuracy with its 95% interval, from per-example correctness of shape (N,) or (R runs, N).

    One run: the Wilson score interval over the N test examples. R > 1 runs on the
    same test examples are not R x N independent predictions (pooling them in one
    Wilson interval would shrink it by up to sqrt(R)): the interval is then the one
    `accuracy_differences` uses, seed and test-set parts in quadrature, widened where
    needed to the Wilson interval of N examples at the runs' mean accuracy (at 0% or
    100% the crossed interval alone has width 0).
    """
    c = _as_matrix("correct", correct)
    if not np.all((c >= 0) & (c <= 1)):
        raise ValueError(f"`correct` must hold per-example correctness in [0, 1]. Received values such as "
                         f"{np.unique(c[(c < 0) | (c > 1)])[:5].tolist()}")
    if c.shape[0] > 1:
        # never narrower than the Wilson interval of one run's N examples at the runs' mean accuracy: at
        # 0% or 100% every bootstrap replicate and jackknife value ties, and the crossed interval has width 0
        estimate, lo, hi = _interval(c[None], lambda v: v[0], scale, n_boot, seed, confidence)
        w_lo, w_hi = _wilson(float(c.mean(axis=0).sum()), c.shape[1], confidence)
        return Effect(estimate, max(0.0, min(lo, scale * w_lo)), min(scale, max(hi, scale * w_hi)),
                      f"{what} (x{scale:g}) over {c.shape[0]} runs x {c.shape[1]} test examples: {_CROSSED} "
                      f"(at least the Wilson interval of one run's {c.shape[1]})", c.shape[0], confidence)
    c = c.reshape(-1)
    n, k = c.size, float(c.sum())
    low, high = _wilson(k, n, confidence)
    return Effect(scale * k / n, scale * low, scale * high,
                  f"{what} (x{scale:g}), Wilson interval over {n} predictions", n, confidence)


def _wilson(k: float, n: int, confidence: float) -> tuple:
    """The Wilson score interval (as fractions) of `k` successes in `n` trials."""
    z = _z(confidence)
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    low = 0.0 if k == 0 else max(0.0, centre - half)   # exact at the ends: round-off would exclude p itself
    high = 1.0 if k == n else min(1.0, centre + half)
    return low, high


#: Fewest units in a sample for which `bootstrap` gives an interval.
MIN_BOOTSTRAP_UNITS = 6


def _expanded_tail(n: int, confidence: float) -> float:
    """The tail probability of Hesterberg's expanded percentile interval for `n` units.

    A percentile interval from `n` units is too narrow by the factor sqrt((n - 1) / n)
    and uses a normal where a t quantile belongs; taking the percentiles at
    `Phi(-sqrt(n / (n - 1)) t_{n-1})` corrects both (Hesterberg 2015, "What teachers
    should know about the bootstrap", Sec. 4.3). It tends to `(1 - confidence) / 2`
    as `n` grows.
    """
    from scipy import stats

    return float(stats.norm.cdf(-math.sqrt(n / (n - 1)) * _t_quantile(n - 1, confidence)))


def bootstrap(statistic, *samples, what: str, paired: bool = False, n_boot: int = N_BOOT, seed: int = 0,
              confidence: float = CONFIDENCE) -> Effect:
    """Expanded percentile bootstrap of `statistic(*samples)`, resampling the first axis of each sample.

    `paired=True` resamples the same indices in every sample (they must have the
    same length); otherwise each sample is resampled independently.

    The plain percentile interval undercovers with few units: for a mean of normal
    values it covered 85% with 6 units and 90% with 10 (1,500 simulations each,
    2,000 replicates). The interval is therefore the expanded percentile one
    (`_expanded_tail`, with the smallest sample's size), which covered 94% from 6
    units on, for one sample and for a difference of two. Below
    `MIN_BOOTSTRAP_UNITS` (6) units in a sample even that undercovered (one sample: 93%
    with 5 units, 88% with 4; the bootstrap cannot reach past the sample's range), so
    the interval is infinite and every verdict inconclusive. With many units (test examples) it is the plain
    percentile interval.
    """
    _check_n_boot(n_boot)
    _check_confidence(confidence)
    arrays = [np.asarray(s) for s in samples]
    if not arrays or any(len(s) == 0 for s in arrays):
        raise ValueError("`bootstrap` needs non-empty samples.")
    if paired and len({len(s) for s in arrays}) != 1:
        raise ValueError("`paired=True` needs samples of equal length.")
    point = float(statistic(*arrays))
    sizes = "/".join(str(len(s)) for s in arrays)
    units = min(len(s) for s in arrays)
    if units < MIN_BOOTSTRAP_UNITS:
        return Effect(point, -math.inf, math.inf, f"{what} (bootstrap over {sizes}: fewer than "
                                                  f"{MIN_BOOTSTRAP_UNITS} units, no interval)", units, confidence)
    rng = np.random.default_rng(seed)
    out = np.empty(n_boot)
    for i in range(n_boot):
        if paired:
            idx = rng.integers(0, len(arrays[0]), len(arrays[0]))
            out[i] = statistic(*(s[idx] for s in arrays))
        else:
            out[i] = statistic(*(s[rng.integers(0, len(s), len(s))] for s in arrays))
    out = out[~np.isnan(out)]  # undefined replicates (0/0); +-inf ones are kept: they are where the bounds go
    if out.size < n_boot // 2:
        return Effect(point, -math.inf, math.inf, f"{what} (bootstrap undefined)", units, confidence)
    q = 100 * _expanded_tail(units, confidence)
    # nearest rank when a replicate is infinite: interpolating towards it is undefined
    method = "linear" if np.all(np.isfinite(out)) else "inverted_cdf"
    lo, hi = (float(v) for v in np.percentile(out, [q, 100 - q], method=method))
    return Effect(point, lo, hi, f"{what}, expanded percentile bootstrap over {sizes}", units, confidence)


def _sd(v):
    """Sample SD, shifted by the first value so that equal values give exactly 0 (not round-off)."""
    return float(np.std(v - v[0], ddof=1)) if len(v) > 1 else float("nan")


def _trimmed_mean(v: np.ndarray) -> float:
    """Mean of `v` with a proportion 1 / (2 sqrt(n - 4)) trimmed from each end (Bonett 2006; n >= 5)."""
    from scipy import stats

    return float(stats.trim_mean(v, 1.0 / (2.0 * math.sqrt(v.size - 4))))


@functools.lru_cache(maxsize=64)
def _tied_sd_units(n: int, tail: float) -> float:
    """Upper `1 - tail` bound, in grid steps, on the SD of values rounded to a grid when all
    `n` runs fell on one grid point (multiply by the grid step for the values' units).

    Model: a normal variable (SD `sigma`, mean at offset `u` from a grid point) rounded to
    the grid; its rounded values have SD `tau(sigma, u)` and put all `n` runs on one point
    with probability `P(sigma, u)`. The bound is the largest `tau` with `P >= tail` over
    every `sigma` and `u`; at 2.5%: 1.89, 0.84, 0.56, 0.41 for n = 3, 5, 10, 20."""
    from scipy import optimize
    from scipy import stats

    points = np.arange(-64, 65)

    def cells(sigma, u):
        return stats.norm.cdf((points + 0.5 - u) / sigma) - stats.norm.cdf((points - 0.5 - u) / sigma)

    def rounded_sd(u):  # tau at the largest sigma with P(sigma, u) >= tail (P falls as sigma grows)
        sigma = optimize.brentq(lambda t: float(np.sum(cells(t, u) ** n)) - tail, 1e-6, 1e4, xtol=1e-12)
        p = cells(sigma, u)
        return float(np.sqrt(max(np.sum(p * points ** 2) - np.sum(p * points) ** 2, 0.0)))

    offsets = np.linspace(0.0, 0.5, 101)  # by symmetry u and -u, u and 1 - u give the same
    # at u = 0.5 (the mean midway between two points) P tends to 2 * 0.5^n as sigma -> 0, so no
    # sigma reaches the tail there once 2 * 0.5^n < tail; any u < 0.5 reaches P = 1
    feasible = [u for u in offsets if 2.0 * 0.5 ** n >= tail or u < 0.5]
    best = max(feasible, key=rounded_sd)
    step = offsets[1] - offsets[0]
    fine = optimize.minimize_scalar(lambda u: -rounded_sd(u), bounds=(max(best - step, 0.0), min(best + step, 0.5 - 1e-9)),
                                    method="bounded", options={"xatol": 1e-9})
    return max(rounded_sd(best), -float(fine.fun))


def _tied_sd_ratio(sa: float, sb: float, na: int, nb: int, resolution: float, what: str,
                   confidence: float) -> Effect:
    """`sd_ratio` when a side's values (SDs `sa`, `sb` over `na`, `nb` runs) are all equal on a
    grid of step `resolution`: that side's SD is bounded by `_tied_sd_units`, the other side's
    by its chi-square interval (normal theory), each at half the error rate (Bonferroni), so
    the ratio's interval is one-sided: `[0, up_a / low_b]`, `[low_a / up_b, inf]`, or
    `[0, inf]` with both tied."""
    from scipy import stats

    tail = (1 - confidence) / 2

    def bounds(s, n):
        if s == 0:
            return 0.0, resolution * _tied_sd_units(n, tail)
        df = n - 1
        return s * math.sqrt(df / float(stats.chi2.ppf(1 - tail, df))), s * math.sqrt(df / float(stats.chi2.ppf(tail, df)))

    (low_a, up_a), (low_b, up_b) = bounds(sa, na), bounds(sb, nb)
    estimate = sa / sb if sb > 0 else (math.inf if sa > 0 else 1.0)
    low, high = low_a / up_b, (up_a / low_b if low_b > 0 else math.inf)
    steps = 1.0 / resolution
    grid = f"1/{round(steps)}" if abs(steps - round(steps)) < 1e-6 * steps else f"{resolution:g}"
    name = f"{what}, tied-values bound (grid {grid}) with a chi-square interval over {na}/{nb} runs"
    return Effect(estimate, low, high, name, min(na, nb), confidence)


def sd_ratio(values_a, values_b, *, what: str = "SD ratio", confidence: float = CONFIDENCE,
             resolution: float | None = None) -> Effect:
    """Ratio of the sample SDs of two independent sets of runs, with a 95% interval.

    Used for "source A's variability is within a factor of 2 of source B's": the
    claimed region is then `(0.5, 2)`.

    The interval, for the ratio of variances (its square root bounds the SD ratio):

    * With >= 5 runs a side, Bonett's (2006) interval, which corrects the normal-theory
      interval for the data's kurtosis: `exp(ln(c s_a^2 / s_b^2) +- z se)` with
      `se^2 = (k - (n_a - 3) / n_a) / (n_a - 1) + (k - (n_b - 3) / n_b) / (n_b - 1)`, `k` the
      pooled kurtosis `(n_a + n_b) sum (y - m)^4 / (sum (y - mean)^2)^2` about each side's
      trimmed mean `m` (1 / (2 sqrt(n - 4)) trimmed from each end) and
      `c = (n_a / (n_a - z)) / (n_b / (n_b - z))`.
    * With fewer runs on either side, where a kurtosis cannot be estimated, the
      normal-theory F interval: `(s_a^2 / s_b^2) / F` at the F quantiles with
      `n_a - 1` and `n_b - 1` degrees of freedom (exact for normal data).

    Simulated coverage at 95% (`benchmarks/sim_sd_ratio_coverage.py`, 4,000 draws a
    setting, true ratio 2): normal data 95.1-95.4% (F: 2-4 runs a side, 3 vs 10) and
    95.2-97.3% (Bonett: 5-20 a side); accuracies of a binomial test set 94.8-97.0%;
    Student-t data with 5 degrees of freedom (heavy tails) 91.2-94.3% (F) and 94.0-95.4%
    (Bonett), where the F interval alone fell to 84% at 20 a side. The percentile
    bootstrap used before covered 93% (normal) and 90.5% (t5) at 10 a side and 72-75% at
    3 vs 10, and had infinite width at 2-3 a side.

    A side whose runs are all equal has an SD of exactly 0, which neither interval
    covers:

    * With `resolution`, the step of the grid the values lie on (`1 / N` for accuracies
      on N test examples), the tie is read as rounding: that side's SD is bounded above by
      the SD at which a normal variable rounded to the grid puts all its runs in one cell
      with probability 2.5% (`_tied_sd_units`), the other side's by its chi-square
      interval at 2.5%, and the ratio's interval is one-sided (it starts at 0 or ends at
      inf). Simulated coverage on a grid of 1 / 500 (`benchmarks/sim_sd_ratio_coverage.py
      --tied`, 1,500 draws a setting): 94.4-100% over all draws and 99-100% over the tied
      ones, where the bootstrap below covered 0-4% of tied draws at >= 5 runs a side.
    * Without it, the values are taken as continuous, so an SD of exactly 0 means the runs
      gave identical values (bit-identical models), and the other side's differing values
      show that its SD is above 0: the ratio is then exactly 0 or inf, or (0 / 0) 1, a
      zero-width interval. (A bootstrap over the runs, used before 2026-12-05, could only
      add 0 / 0 replicates to it.)

    Raises:
        ValueError: for fewer than 2 runs a side, non-finite values, or a `resolution`
            that is not a positive finite number.
    """
    _check_confidence(confidence)
    a, b = _vector("values_a", values_a), _vector("values_b", values_b)
    if a.size < 2 or b.size < 2:
        raise ValueError(f"`sd_ratio` needs >= 2 runs per side. Received {a.size} and {b.size}")
    if resolution is not None and (isinstance(resolution, bool) or not isinstance(resolution, (int, float, np.integer, np.floating))
                                   or not math.isfinite(resolution) or resolution <= 0):
        raise ValueError(f"`resolution` must be a positive finite number (the values' grid step) or None. "
                         f"Received: resolution={resolution!r}")
    a, b = a - a[0], b - b[0]  # shifted as in `_sd`: equal values give an SD of exactly 0
    sa, sb = _sd(a), _sd(b)
    if (sa == 0 or sb == 0) and resolution is not None:
        return _tied_sd_ratio(sa, sb, a.size, b.size, float(resolution), what, confidence)
    if sa == 0 or sb == 0:
        # a side's runs are identical (no rounding: the values are continuous) and the other's
        # differ, so the population SDs are 0 and > 0: the ratio is exactly 0 or inf (1 for 0 / 0)
        value = 1.0 if sa == sb else (0.0 if sa == 0 else math.inf)
        side = "both sides'" if sa == sb else ("A's" if sa == 0 else "B's")
        return Effect(value, value, value, f"{what} ({side} {a.size if sa == 0 else b.size} runs identical: exact)",
                      min(a.size, b.size), confidence)
    ratio = (sa / sb) ** 2
    na, nb = a.size, b.size
    sizes = f"{na}/{nb} runs"
    if min(na, nb) < 5:
        from scipy import stats

        q = (1 - confidence) / 2
        low = ratio / float(stats.f.ppf(1 - q, na - 1, nb - 1))
        high = ratio / float(stats.f.ppf(q, na - 1, nb - 1))
        name = f"{what}, F interval (normal theory) over {sizes}"
    else:
        z = _z(confidence)
        ma, mb = _trimmed_mean(a), _trimmed_mean(b)
        squares = float(np.sum((a - a.mean()) ** 2) + np.sum((b - b.mean()) ** 2))
        kurtosis = (na + nb) * float(np.sum((a - ma) ** 4) + np.sum((b - mb) ** 4)) / squares ** 2
        se = math.sqrt((kurtosis - (na - 3) / na) / (na - 1) + (kurtosis - (nb - 3) / nb) / (nb - 1))
        centre = math.log(ratio * (na / (na - z)) / (nb / (nb - z)))
        low, high = math.exp(centre - z * se), math.exp(centre + z * se)
        name = f"{what}, Bonett interval over {sizes}"
    return Effect(sa / sb, math.sqrt(low), math.sqrt(high), name, min(na, nb), confidence)


def mcnemar_counts(correct_a, correct_b) -> dict:
    """Discordant-pair counts of two classifiers on the same examples (pooled over runs)."""
    a, b = _as_matrix("correct_a", correct_a), _as_matrix("correct_b", correct_b)
    for name, c in (("correct_a", a), ("correct_b", b)):
        if not np.all(np.isin(c, (0.0, 1.0))):  # a score of 0.3 would count as correct
            raise ValueError(f"`{name}` must hold per-example correctness (0 / 1 or bools). Received values such as "
                             f"{np.unique(c[~np.isin(c, (0.0, 1.0))])[:5].tolist()}")
    if a.shape != b.shape:  # (before flattening: (2, 3) and (3, 2) would pair the wrong examples)
        raise ValueError(f"`correct_a` and `correct_b` must have the same shape. Received {a.shape} and {b.shape}")
    a, b = a.astype(bool).reshape(-1), b.astype(bool).reshape(-1)
    return {"a_only": int((a & ~b).sum()), "b_only": int((~a & b).sum()), "n": int(a.size)}


__all__ = [
    "CONFIDENCE", "Effect", "accuracy_difference", "accuracy_differences", "bootstrap", "exact", "mcnemar_counts", "mean_interval",
    "paired_difference", "proportion", "sd_ratio", "verdict",
]
