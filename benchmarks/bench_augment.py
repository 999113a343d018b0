"""Throughput of tf_dlthesis.augment against named peers measured in the same run.

Pipelines: 32x32x3 float32 images, batches of 128, from a cached `tf.data` dataset.
Peers: identity (no mixing), `keras.layers.MixUp`, `keras.layers.CutMix` and a naive
per-pair `zip` + `map` mixup. Every round runs every pipeline once, in an interleaved
order, and the report gives medians over rounds (the machine is shared and noisy).
Each measurement is steady-state: a fresh iterator, `batches` untimed batches (start-up
and buffered read-ahead), then `batches` timed ones.
The last section times a pre-activation ResNet train step with and without the
`MixedExample` layer inside it.

    python benchmarks/bench_augment.py            # --quick (default), < 3 min
    python benchmarks/bench_augment.py --full     # more rounds and batches
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import tf_dlthesis  # noqa: E402,F401  (first: it keeps TF's start-up banners quiet)
import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from _common import sgd_train_step  # noqa: E402
from tf_dlthesis import models  # noqa: E402
from tf_dlthesis.augment import METHODS, MixedExample, mix_dataset  # noqa: E402

BATCH, SHAPE, CLASSES = 128, (32, 32, 3), 10


def _source(n):
    rng = np.random.default_rng(0)
    x = rng.uniform(size=(n,) + SHAPE).astype(np.float32)
    y = np.eye(CLASSES, dtype=np.float32)[rng.integers(0, CLASSES, n)]
    return tf.data.Dataset.from_tensor_slices((x, y)).cache()


def _naive_mixup(ds, seed=0):
    """The per-pair pipeline the thesis's authors describe: zip two streams, map per pair.

    Lambda ~ U(0, 1) = Beta(1, 1) per pair, stateless from (seed, pair index) as ours is, so the
    stream is the same on every pass and for any `num_parallel_calls`.
    """
    def mix(i, pair):
        (x1, y1), (x2, y2) = pair
        lam = tf.random.stateless_uniform([], tf.stack([tf.constant(seed, tf.int64), i]))
        return lam * x1 + (1 - lam) * x2, lam * y1 + (1 - lam) * y2
    return tf.data.Dataset.zip((ds, ds.skip(1))).enumerate().map(mix, num_parallel_calls=tf.data.AUTOTUNE)


def pipelines(n):
    src = _source(n)
    batched = src.batch(BATCH)
    keras_mixup = keras.layers.MixUp(alpha=1.0, seed=0)
    keras_cutmix = keras.layers.CutMix(seed=0)

    def keras_layer(layer):
        return batched.map(lambda x, y: tuple(layer({"images": x, "labels": y}).values()),
                           num_parallel_calls=tf.data.AUTOTUNE)

    out = {
        "identity": batched,
        "keras.MixUp": keras_layer(keras_mixup),
        "keras.CutMix": keras_layer(keras_cutmix),
        "naive per-pair mixup": _naive_mixup(src).batch(BATCH),
        # pair mode reads two examples per output (N in, N // 2 out): two passes give one epoch's length,
        # the read pattern of `training_dataset(..., mix=MixStage(...))`
        "pair-mode mixup": mix_dataset(src.repeat(2), "mixup", seed=0, mode="pair", batch_size=BATCH),
    }
    for method in METHODS:
        out[f"batch {method}"] = mix_dataset(batched, method, seed=0, mode="batch")
    return {k: v.prefetch(2) for k, v in out.items()}


def _throughput(ds, batches, settle):
    """Steady-state images/s of `ds` (a repeated pipeline).

    A fresh iterator per measurement, so no pipeline fills its buffers in the
    background while another one is timed, and the first `settle` batches are not
    timed: they include the start-up and whatever the pipeline's buffers (prefetch,
    parallel map/batch results) produced ahead, which would otherwise be counted as
    throughput (by a lot for a stage that emits several batches per call).
    """
    it = iter(ds)
    for _ in range(settle):
        next(it)
    count = 0
    start = time.perf_counter()
    for _ in range(batches):
        x, _ = next(it)
        count += int(x.shape[0])
    rate = count / (time.perf_counter() - start)
    del it
    return rate


def bench_pipelines(rounds, batches, n):
    pipes = pipelines(n)
    names = list(pipes)
    repeated = {name: pipes[name].repeat() for name in names}
    for name in names:                         # first pass: fill caches, trace maps
        _throughput(repeated[name], 2, settle=n // BATCH + 1)
    results = {name: [] for name in names}
    for r in range(rounds):
        order = names if r % 2 == 0 else names[::-1]
        for name in order:
            results[name].append(_throughput(repeated[name], batches, settle=batches))
    return {name: statistics.median(v) for name, v in results.items()}


def bench_layer(rounds, steps, depth):
    model = models.build(f"preact_resnet{depth}", SHAPE, CLASSES, seed=0)
    model.compile("sgd", keras.losses.CategoricalCrossentropy(from_logits=True))
    opt = keras.optimizers.SGD(0.01)
    loss_fn = keras.losses.CategoricalCrossentropy(from_logits=True)
    mixer = MixedExample("vh_mixup", seed=0)
    x = tf.random.stateless_uniform((BATCH,) + SHAPE, [0, 0])
    y = tf.one_hot(tf.range(BATCH) % CLASSES, CLASSES)

    def mix(x, y):
        batch = mixer({"images": x, "labels": y}, training=True)
        return batch["images"], batch["labels"]

    fns = {
        "train step": sgd_train_step(model, opt, loss_fn),
        "train step + MixedExample": sgd_train_step(model, opt, loss_fn, before=mix),
    }
    for f in fns.values():
        f(x, y).numpy()
    times = {k: [] for k in fns}
    for r in range(rounds):
        for name in (list(fns) if r % 2 == 0 else list(fns)[::-1]):
            start = time.perf_counter()
            for _ in range(steps):
                loss = fns[name](x, y)
            loss.numpy()
            times[name].append((time.perf_counter() - start) / steps)
    return {k: statistics.median(v) for k, v in times.items()}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    size = parser.add_mutually_exclusive_group()
    size.add_argument("--full", action="store_true", help="more rounds and batches")
    size.add_argument("--quick", action="store_true", help="the default")
    parser.add_argument("--skip-layer", action="store_true", help="skip the train-step part")
    args = parser.parse_args()
    rounds, batches, n = (7, 100, 128 * 40) if args.full else (5, 30, 128 * 16)
    tput = bench_pipelines(rounds, batches, n)
    mix = tput["batch mixup"]
    print(f"\nimages/s (median of {rounds} interleaved rounds, {batches} timed batches of {BATCH} "
          f"x {SHAPE} after {batches} untimed; steady state); {os.cpu_count()} CPUs")
    print(f"{'pipeline':32s} {'img/s':>10s}")
    for name, v in tput.items():
        print(f"{name:32s} {v:10.0f}")

    def ratio(label, ours, peer, goal):
        r = tput[ours] / tput[peer]
        print(f"| {label} | {tput[ours]:.0f} | {tput[peer]:.0f} ({peer}) | {r:.2f}x | "
              f">= {goal}x {'met' if r >= goal else 'NOT met'} |")

    print("\n| benchmark | ours (img/s) | peer (img/s) | ratio | goal |")
    print("|---|---|---|---|---|")
    ratio("batch-mode mixup vs keras.layers.MixUp", "batch mixup", "keras.MixUp", 1.0)
    ratio("random_square vs keras.layers.CutMix", "batch random_square", "keras.CutMix", 1.5)
    ratio("pair-mode vs batch-mode mixup", "pair-mode mixup", "batch mixup", 0.8)
    ratio("pair-mode vs naive per-pair mixup", "pair-mode mixup", "naive per-pair mixup", 5.0)
    worst = min((m for m in METHODS if m != "mixup"), key=lambda m: tput[f"batch {m}"])
    ratio(f"slowest other method ({worst}) vs our mixup", f"batch {worst}", "batch mixup", 0.7)
    below = [m for m in METHODS if tput[f"batch {m}"] / mix < 0.7]
    print(f"methods below 0.7x our mixup: {below or 'none'}")

    if not args.skip_layer:
        depth = 18 if args.full else 10
        times = bench_layer(rounds=5 if args.full else 3, steps=5 if args.full else 3,
                            depth=depth)
        base, mixed = times["train step"], times["train step + MixedExample"]
        print(f"\n| MixedExample(vh_mixup) in a preact_resnet{depth} train step (batch {BATCH}, "
              f"32x32x3) | {mixed * 1e3:.1f} ms | {base * 1e3:.1f} ms (no mixing) | "
              f"{100 * (mixed / base - 1):+.1f}% | <= +5% "
              f"{'met' if mixed / base <= 1.05 else 'NOT met'} |")


if __name__ == "__main__":
    main()
