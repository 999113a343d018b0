"""Benchmarks for tf_dlthesis.variability (Thesis Ch. 5), each against a named peer in the same run.

1. `pairwise_correlation` (rank once, one product) vs looping `scipy.stats.spearmanr`
   over all R(R-1)/2 pairs, R = 100, N*C = 100,000. Goal >= 50x, equal within 1e-6.
   `--quick` times scipy on a random sample of pairs and scales its median per-pair
   time to all 4,950 pairs (stated in the output); `--full` loops over every pair.
2. `linear_cka` (feature-space form) vs the Gram-matrix form
   tr(KHLH) / sqrt(tr(KHKH) tr(LHLH)) at N = 10,000, d = 512. Goal >= 10x.
3. `run_protocol` with 2 local workers vs 1 (same tiny protocol; report the speedup).
4. One training step with TF op determinism on vs off (report the ratio; the
   thesis cites ~15% for cuDNN on GPU).

Run: python benchmarks/bench_variability.py [--quick | --full]
"""

from __future__ import annotations

import argparse
import functools
import os
import statistics
import time

import numpy as np


def _median_time(fn, repeats):
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def bench_correlation(quick: bool):
    from scipy.stats import spearmanr

    from tf_dlthesis.variability import pairwise_correlation, pairwise_correlation_matrix

    rng = np.random.default_rng(0)
    runs, n, c = 100, 10_000, 10
    shared = rng.normal(size=(n, c))
    logits = shared[None] + 0.3 * rng.normal(size=(runs, n, c))
    ii, jj = np.triu_indices(runs, k=1)
    sample = rng.choice(len(ii), size=40 if quick else len(ii), replace=False)
    ours_t, peer_t, peer_vals = [], [], []
    for rep in range(3):  # interleave ours and the peer
        t = time.perf_counter()
        ours = pairwise_correlation(logits)
        ours_t.append(time.perf_counter() - t)
        chunk = sample[rep::3]
        t = time.perf_counter()
        peer_vals += [(k, spearmanr(logits[ii[k]].ravel(), logits[jj[k]].ravel())[0]) for k in chunk]
        peer_t.append((time.perf_counter() - t) / len(chunk))
    per_pair = statistics.median(peer_t)
    peer_total = per_pair * len(ii)
    mat = pairwise_correlation_matrix(logits)
    max_err = max(abs(mat[ii[k], jj[k]] - v) for k, v in peer_vals)
    # the timed scalar itself: against scipy's mean over all pairs (--full) or the matrix's (--quick)
    reference = np.mean([v for _, v in peer_vals]) if not quick else float(np.mean(mat[ii, jj]))
    max_err = max(max_err, abs(reference - ours))
    ours_med = statistics.median(ours_t)
    how = f"scipy timed on {len(peer_vals)} pairs, scaled to {len(ii)}" if quick else f"scipy over all {len(ii)} pairs"
    return {
        "benchmark": f"pairwise_correlation R=100, N*C=100k ({how})",
        "ours": f"{ours_med:.2f} s",
        "peer": f"{peer_total:.1f} s (scipy.stats.spearmanr loop)",
        "ratio": peer_total / ours_med,
        "goal": ">= 50x, |diff| <= 1e-6",
        "note": f"max |diff| = {max_err:.1e}",
    }


def _gram_cka_explicit_h(x, y):
    k, l = x @ x.T, y @ y.T
    kc = k - k.mean(0, keepdims=True) - k.mean(1, keepdims=True) + k.mean()  # H K H without forming H
    lc = l - l.mean(0, keepdims=True) - l.mean(1, keepdims=True) + l.mean()
    return float(np.sum(kc * lc) / np.sqrt(np.sum(kc * kc) * np.sum(lc * lc)))


def bench_cka(quick: bool):
    from tf_dlthesis.variability import linear_cka

    rng = np.random.default_rng(1)
    n, d = 10_000, 512
    x = rng.normal(size=(n, d))
    y = x @ rng.normal(size=(d, d)) / np.sqrt(d) + rng.normal(size=(n, d))
    ours_t, peer_t = [], []
    for _ in range(2 if quick else 3):
        t = time.perf_counter()
        ours = linear_cka(x, y)
        ours_t.append(time.perf_counter() - t)
        t = time.perf_counter()
        peer = _gram_cka_explicit_h(x, y)
        peer_t.append(time.perf_counter() - t)
    ratio = statistics.median(peer_t) / statistics.median(ours_t)
    return {
        "benchmark": "linear_cka N=10,000, d=512",
        "ours": f"{statistics.median(ours_t):.2f} s",
        "peer": f"{statistics.median(peer_t):.2f} s (Gram-matrix form)",
        "ratio": ratio,
        "goal": ">= 10x",
        "note": f"|diff| = {abs(ours - peer):.1e}",
    }


def bench_protocol(quick: bool):
    from tf_dlthesis import data
    from tf_dlthesis.experiments import TrainSpec
    from tf_dlthesis.experiments.chapter5 import protocol_run
    from tf_dlthesis.variability import run_protocol

    labels = data.load_arrays("digits", "test")[1]
    fn = functools.partial(protocol_run, spec=TrainSpec(dataset="digits", model="mlp", model_kwargs={"hidden": 32}, epochs=3, batch_size=128))
    runs = 4 if quick else 8
    run_protocol(fn, sources=["init"], runs=2, labels=labels, workers=2, progress=False)  # start the forkserver
    times = {1: [], 2: []}
    for rep in range(1 if quick else 2):
        for workers in (1, 2):
            t = time.perf_counter()
            run_protocol(fn, sources=["init"], runs=runs, labels=labels, workers=workers, progress=False)
            times[workers].append(time.perf_counter() - t)
    one, two = statistics.median(times[1]), statistics.median(times[2])
    return {
        "benchmark": f"run_protocol, {runs} runs of a digits MLP (one process each)",
        "ours": f"{two:.1f} s (2 workers)",
        "peer": f"{one:.1f} s (1 worker)",
        "ratio": one / two,
        "goal": "report (2 CPU cores)",
        "note": "",
    }


def bench_determinism(quick: bool):
    import keras
    import tensorflow as tf

    from tf_dlthesis import data, models, runtime

    (x, y) = data.load_arrays("digits", "train")
    xb, yb = tf.constant(x[:128]), tf.constant(y[:128])
    steps = 20 if quick else 100
    times = {True: [], False: []}
    for _ in range(3 if quick else 7):
        for det in (True, False):
            runtime.configure(deterministic=det)
            # a fresh model and trace under each setting, so kernels are chosen with it in force
            model = models.build("cnn", x.shape[1:], 10, seed=0)
            model.compile(keras.optimizers.SGD(0.01), keras.losses.SparseCategoricalCrossentropy(from_logits=True), jit_compile=False)
            model.train_on_batch(xb, yb)
            t = time.perf_counter()
            for _ in range(steps):
                model.train_on_batch(xb, yb)
            times[det].append((time.perf_counter() - t) / steps)
    runtime.configure(deterministic=False)
    det, nondet = statistics.median(times[True]), statistics.median(times[False])
    device = "GPU" if tf.config.list_physical_devices("GPU") else "CPU"
    return {
        "benchmark": f"train step, small CNN, batch 128, op determinism on vs off ({device})",
        "ours": f"{1000 * det:.2f} ms (deterministic)",
        "peer": f"{1000 * nondet:.2f} ms (nondeterministic)",
        "ratio": det / nondet,
        "goal": "report (thesis: ~1.15 for cuDNN)",
        "note": "ratio = deterministic / nondeterministic step time",
    }


def determinism_check():
    """The GPU check of issue 6: two deterministic runs bit-identical? plus the step-time ratio.

    Under op determinism Keras 3 compiles no model with XLA (`runtime.jit_compile()` is False),
    so the runs use XLA only where the library calls `tf.function(jit_compile=True)` itself.
    """
    import dataclasses

    import tensorflow as tf

    from tf_dlthesis import runtime
    from tf_dlthesis.experiments import TrainSpec
    from tf_dlthesis.experiments.chapter5 import protocol_run
    from tf_dlthesis.variability import SeedPlan

    runtime.configure(seed=0, deterministic=True, jit=True)
    spec = TrainSpec(dataset="digits", model="cnn", model_kwargs={"filters": [8, 16]}, epochs=3, batch_size=32)
    plan = dataclasses.replace(SeedPlan().vary("all", 0), deterministic_ops=True)
    first, second = protocol_run(plan, spec=spec), protocol_run(plan, spec=spec)
    same = bool(np.array_equal(first["logits"], second["logits"]))
    device = "GPU" if tf.config.list_physical_devices("GPU") else "CPU"
    print(f"two deterministic runs on {device} (Model.fit with XLA: {runtime.jit_compile()}): bit-identical = {same}, "
          f"max |diff| = {np.max(np.abs(first['logits'] - second['logits'])):.2e}", flush=True)
    row = bench_determinism(quick=True)
    print(f"{row['benchmark']}: {row['ours']} vs {row['peer']} -> ratio {row['ratio']:.2f}", flush=True)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--quick", action="store_true", default=True, help="sampled scipy peer, fewer repeats (default)")
    group.add_argument("--full", action="store_true", help="every scipy pair, more repeats")
    group.add_argument("--determinism-check", action="store_true", help="only the GPU check: two deterministic runs + step ratio")
    args = parser.parse_args()
    if args.determinism_check:
        determinism_check()
        return
    quick = not args.full
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    rows = []
    for bench in (bench_correlation, bench_cka, bench_protocol, bench_determinism):
        t = time.perf_counter()
        row = bench(quick)
        rows.append(row)
        print(f"[{time.perf_counter() - t:.0f} s] {row['benchmark']}: ratio {row['ratio']:.2f}x ({row['note']})", flush=True)
    print("\n| benchmark | ours | peer | ratio | goal |\n|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['benchmark']} | {r['ours']} | {r['peer']} | {r['ratio']:.1f}x | {r['goal']} |")


if __name__ == "__main__":
    main()
