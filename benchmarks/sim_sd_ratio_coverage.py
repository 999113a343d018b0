"""Coverage of the SD-ratio interval (`experiments.stats.sd_ratio`) in simulation.

Not a timing: it checks the statistics behind every "SDs within a factor of 2" verdict.
For each data distribution and pair of run counts it draws `--draws` pairs of samples
whose true SD ratio is 2 and counts how often the 95% interval contains 2. With
`--bootstrap` it also scores the percentile bootstrap used before 2026-12-05
(slow: ~0.1 s a draw).

With `--tied` it checks instead the case where a side's runs all tie: accuracies on a
grid of step 1 / N (here N = 500) that can coincide although the runs differ. The values
are normal draws rounded to the grid (latent SDs `sigma_a`, `sigma_b` in grid steps, a
random offset from the grid per side); the target is the rounded values' own SD ratio.
It scores `sd_ratio(..., resolution=1 / N)` against the same call without `resolution`
(which reads an SD of 0 as exact and took the percentile bootstrap).

    python benchmarks/sim_sd_ratio_coverage.py --draws 4000
    python benchmarks/sim_sd_ratio_coverage.py --tied --draws 1500
"""

import argparse
import math

import numpy as np

from tf_dlthesis.experiments import stats

DISTRIBUTIONS = {
    "normal": lambda rng, n: rng.normal(0, 1, n),
    "binomial accuracies": lambda rng, n: (rng.binomial(2000, 0.85, n) - 1700) / math.sqrt(2000 * 0.85 * 0.15),
    "Student t, 5 df": lambda rng, n: rng.standard_t(5, n) / math.sqrt(5 / 3),
    "uniform": lambda rng, n: rng.uniform(-1, 1, n) * math.sqrt(3),
}
SIZES = [(2, 2), (3, 3), (4, 4), (3, 10), (5, 5), (10, 10), (20, 20)]
RATIO = 2.0
TIED_SIZES = [(3, 3), (5, 10), (10, 10), (20, 20)]
TIED_SIGMAS = [(0.15, 1.0), (0.3, 1.0), (0.3, 0.3), (0.6, 2.0), (1.0, 0.2)]  # latent SDs in grid steps
GRID = 1 / 500


def _old_bootstrap(a, b):
    """The percentile bootstrap `sd_ratio` used before (kept here for the comparison only)."""
    def ratio(x, y):
        sy = np.std(y - y[0], ddof=1)
        sx = np.std(x - x[0], ddof=1)
        return sx / sy if sy > 0 else (math.inf if sx > 0 else 1.0)

    e = stats.bootstrap(ratio, a, b, what="SD ratio", n_boot=1000)
    return e.low, e.high


def _rounded_sd(sigma: float, offset: float) -> float:
    """SD, in grid steps, of a normal (SD `sigma`, mean `offset` from a grid point) rounded to the grid."""
    from scipy import stats as sps

    points = np.arange(-64, 65)
    p = sps.norm.cdf((points + 0.5 - offset) / sigma) - sps.norm.cdf((points - 0.5 - offset) / sigma)
    return math.sqrt(max(float(np.sum(p * points ** 2) - np.sum(p * points) ** 2), 0.0))


def tied(draws: int) -> None:
    print(f"coverage of 95% intervals with tied accuracies (grid 1/{round(1 / GRID)}), {draws} draws a setting: "
          "all draws (tied draws, their coverage) with resolution= / without")
    for n_a, n_b in TIED_SIZES:
        for sigma_a, sigma_b in TIED_SIGMAS:
            rng = np.random.default_rng([n_a, n_b, round(100 * sigma_a), round(100 * sigma_b)])
            hits, old_hits, ties, tie_hits, old_tie_hits = 0, 0, 0, 0, 0
            for _ in range(draws):
                u_a, u_b = rng.uniform(-0.5, 0.5, 2)
                a = np.round(u_a + sigma_a * rng.normal(size=n_a))
                b = np.round(u_b + sigma_b * rng.normal(size=n_b))
                target = _rounded_sd(sigma_a, u_a) / _rounded_sd(sigma_b, u_b)
                new = stats.sd_ratio(0.8 + GRID * a, 0.8 + GRID * b, resolution=GRID)
                old = stats.sd_ratio(0.8 + GRID * a, 0.8 + GRID * b)
                ok, old_ok = new.low <= target <= new.high, old.low <= target <= old.high
                hits, old_hits = hits + ok, old_hits + old_ok
                if np.ptp(a) == 0 or np.ptp(b) == 0:
                    ties, tie_hits, old_tie_hits = ties + 1, tie_hits + ok, old_tie_hits + old_ok
            share = (lambda k: f"{100 * k / ties:5.1f}%") if ties else (lambda k: "   - ")
            print(f"{n_a:2d} vs {n_b:2d}, sigma {sigma_a:4.2f} / {sigma_b:4.2f}: {100 * hits / draws:5.1f}% "
                  f"({ties:4d} tied, {share(tie_hits)})  without: {100 * old_hits / draws:5.1f}% "
                  f"({share(old_tie_hits)})", flush=True)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--draws", type=int, default=1000)
    parser.add_argument("--bootstrap", action="store_true", help="also the percentile bootstrap used before")
    parser.add_argument("--tied", action="store_true", help="accuracies on a grid whose runs can tie")
    args = parser.parse_args(argv)
    if args.draws < 1:
        parser.error(f"--draws must be >= 1. Received: {args.draws}")
    if args.tied:
        tied(args.draws)
        return
    print(f"coverage of 95% intervals for a true SD ratio of {RATIO:g}, {args.draws} draws a setting")
    for dist, draw in DISTRIBUTIONS.items():
        for n_a, n_b in SIZES:
            rng = np.random.default_rng([n_a, n_b, len(dist)])
            hits, old_hits = 0, 0
            for _ in range(args.draws):
                a, b = RATIO * draw(rng, n_a), draw(rng, n_b)
                e = stats.sd_ratio(a, b)
                hits += e.low <= RATIO <= e.high
                if args.bootstrap:
                    lo, hi = _old_bootstrap(a, b)
                    old_hits += lo <= RATIO <= hi
            kind = "F" if min(n_a, n_b) < 5 else "Bonett"
            old = f"   bootstrap {100 * old_hits / args.draws:5.1f}%" if args.bootstrap else ""
            print(f"{dist:20s} {n_a:2d} vs {n_b:2d}  {kind:6s} {100 * hits / args.draws:5.1f}%{old}", flush=True)


if __name__ == "__main__":
    main()
