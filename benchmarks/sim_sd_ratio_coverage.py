"""Coverage of the SD-ratio interval (`experiments.stats.sd_ratio`) in simulation.

Not a timing: it checks the statistics behind every "SDs within a factor of 2" verdict.
For each data distribution and pair of run counts it draws `--draws` pairs of samples
whose true SD ratio is 2 and counts how often the 95% interval contains 2. With
`--bootstrap` it also scores the percentile bootstrap used before 2026-12-05
(slow: ~0.1 s a draw).

    python benchmarks/sim_sd_ratio_coverage.py --draws 4000
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


def _old_bootstrap(a, b):
    """The percentile bootstrap `sd_ratio` used before (kept here for the comparison only)."""
    def ratio(x, y):
        sy = np.std(y - y[0], ddof=1)
        sx = np.std(x - x[0], ddof=1)
        return sx / sy if sy > 0 else (math.inf if sx > 0 else 1.0)

    e = stats.bootstrap(ratio, a, b, what="SD ratio", n_boot=1000)
    return e.low, e.high


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--draws", type=int, default=1000)
    parser.add_argument("--bootstrap", action="store_true", help="also the percentile bootstrap used before")
    args = parser.parse_args(argv)
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
