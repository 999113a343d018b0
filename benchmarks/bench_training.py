"""Benchmark for `experiments.train` (one quick-scale model); prints a ratio against a peer measured in the same run.

`train` builds the optimizer's slots and the compiled metrics' state before `fit`
(`training._build_before_fit`). The peer is the same `train` with that step left
out, i.e. Keras 3's own default without a distribution strategy, which creates that
state inside the first trace of the train step, so TF traces the step twice.

For each of the quick scale's Table 2.1 settings timed here (baseline, pair-mode
mixup), both contenders train the same spec and seed, interleaved, `--repeats`
times; the script prints the median seconds per model, the ratio, how many times
the train step was traced, and checks that both gave bit-identical test predictions.
Goal: ours faster (ratio < 1) with the same predictions.

Usage: python benchmarks/bench_training.py [--repeats N]
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from contextlib import nullcontext
from unittest import mock

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import tf_dlthesis  # noqa: E402,F401  (first: it keeps TF's start-up banners quiet)
import numpy as np  # noqa: E402

from tf_dlthesis import runtime  # noqa: E402
from tf_dlthesis.experiments import train, training  # noqa: E402
from tf_dlthesis.experiments.chapter2 import SETTINGS  # noqa: E402


def settings() -> dict:
    """The quick scale's Table 2.1 spec: its baseline and its pair-mode mixup row."""
    spec = SETTINGS["quick"]["2.1"].baseline  # Table 2.1 quick: small CNN on digits, 8 epochs
    return {"baseline": spec, "pair-mode mixup": spec.replace(mixing={"method": "mixup", "mode": "pair"})}


def _time(spec, seed, prebuild: bool) -> tuple:
    """(seconds, run, times the Keras train step was traced) for one model."""
    from keras.src.backend.tensorflow.trainer import TensorFlowTrainer

    traced, original = [], TensorFlowTrainer.train_step

    def counting(self, data):  # Python runs the train step only while TF traces it
        traced.append(1)
        return original(self, data)

    runtime.configure(seed=0, deterministic=True)
    skip = mock.patch.object(training, "_build_before_fit", lambda *a: None) if not prebuild else nullcontext()
    with skip, mock.patch.object(TensorFlowTrainer, "train_step", counting):
        start = time.perf_counter()
        run = train(spec, [seed])[0]
        return time.perf_counter() - start, run, len(traced)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args(argv)
    if args.repeats < 1:
        parser.error(f"--repeats must be >= 1. Received: {args.repeats}")
    train(settings()["baseline"], [99])  # warm-up: imports, data, first-use costs
    print(f"{'setting':<18} {'ours s/model':>13} {'peer s/model':>13} {'ratio':>7}  traces ours/peer  same predictions")
    for name, spec in settings().items():
        ours, peer, same, traces = [], [], True, None
        for r in range(args.repeats):
            t_ours, run_ours, traced_ours = _time(spec, r, True)
            t_peer, run_peer, traced_peer = _time(spec, r, False)
            ours.append(t_ours)
            peer.append(t_peer)
            same &= bool(np.array_equal(run_ours.test_pred, run_peer.test_pred))
            traces = (traced_ours, traced_peer)
        o, p = statistics.median(ours), statistics.median(peer)
        print(f"{name:<18} {o:>13.2f} {p:>13.2f} {o / p:>6.2f}x  {traces[0]} / {traces[1]}{'':<13}{same}")


if __name__ == "__main__":
    main()
