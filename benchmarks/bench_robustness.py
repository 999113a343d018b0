"""Benchmark for tf_dlthesis.robustness (thesis Ch. 3); prints ratios against peers measured in the same run.

1. ``RobustModel`` PGD-10 training step vs a minimal hand-written ``tf.function``
   step calling CleverHans's ``projected_gradient_descent`` and applying one SGD
   update (same small CNN, batch 128, 32x32x3), without and with XLA; also each
   step's ratio to a clean training step (theory: k + 1 = 11 passes).
   Goal: RobustModel / hand-written <= 1.05.
2. Batched SPSA on 32 images vs looping CleverHans's batch-1 SPSA (through our
   Keras-3 adapter) over the same 32 images, identical settings.  Goal >= 10x.
3. The attack's tracing count inside ``fit`` over epochs (goal: constant).
4. A white-box evaluation of a freshly trained model with PGD-5, PGD-10 and
   PGD-20 (``make_attack``: one compiled ``tf.while_loop`` shared by the three
   step counts) vs CleverHans's ``projected_gradient_descent`` in one
   ``tf.function`` per step count (its unrolled loop), on the same 364 8x8
   images: first call (tracing included, what an evaluation of each new model
   pays) and a repeated call.  Goal: first call <= 0.5x, repeat <= 1.1x.

Timings interleave the contenders, repeat, and report medians.

Usage: python benchmarks/bench_robustness.py [--quick | --full] [--no-xla]
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
from cleverhans.tf2.attacks.projected_gradient_descent import projected_gradient_descent  # noqa: E402

from tf_dlthesis import models  # noqa: E402
from tf_dlthesis.robustness import RobustModel, cleverhans_spsa, make_attack, spsa  # noqa: E402

EPS, STEP = 0.03, 0.0078


def _cnn(seed=0, shape=(32, 32, 3)):
    return models.build("cnn", shape, 10, seed=seed)


def _median_interleaved(fns: dict, repeats: int) -> dict:
    times = {k: [] for k in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            t = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t)
    return {k: statistics.median(v) for k, v in times.items()}


def bench_train_step(batch, repeats, jit):
    rng = np.random.default_rng(0)
    x = tf.constant(rng.random((batch, 32, 32, 3), dtype=np.float32))
    y = tf.constant(rng.integers(0, 10, batch), tf.int64)

    # peer: minimal hand-written PGD-10 step (CleverHans PGD + one SGD update)
    peer_model = _cnn(0)
    peer_opt = keras.optimizers.SGD(0.01)
    peer_opt.build(peer_model.trainable_variables)
    model_fn = lambda t: peer_model(t, training=False)  # noqa: E731

    @tf.function(jit_compile=jit)
    def peer_step(x, y):
        adv = projected_gradient_descent(model_fn, x, EPS, STEP, 10, np.inf, clip_min=0.0, clip_max=1.0, y=y,
                                         rand_init=True)
        with tf.GradientTape() as tape:
            logits = peer_model(adv, training=True)
            loss = tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(y, logits))
        grads = tape.gradient(loss, peer_model.trainable_variables)
        peer_opt.apply_gradients(zip(grads, peer_model.trainable_variables))
        return loss

    clean_model = _cnn(0)
    clean_opt = keras.optimizers.SGD(0.01)
    clean_opt.build(clean_model.trainable_variables)

    @tf.function(jit_compile=jit)
    def clean_step(x, y):
        with tf.GradientTape() as tape:
            logits = clean_model(x, training=True)
            loss = tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(y, logits))
        grads = tape.gradient(loss, clean_model.trainable_variables)
        clean_opt.apply_gradients(zip(grads, clean_model.trainable_variables))
        return loss

    robust = RobustModel(_cnn(0), "pgd", clean_weight=0.0, epsilon=EPS, step_size=STEP, num_steps=10)
    robust.compile(keras.optimizers.SGD(0.01), jit_compile=jit)
    fns = {"robust_model": lambda: robust.train_on_batch(x, y),
           "handwritten_pgd10": lambda: float(peer_step(x, y)),
           "clean": lambda: float(clean_step(x, y))}
    for fn in fns.values():  # trace / compile
        fn()
        fn()
    t = _median_interleaved(fns, repeats)
    return t


def bench_spsa(n, steps, samples, repeats):
    model = _cnn(0, (8, 8, 1))
    rng = np.random.default_rng(1)
    x = tf.constant(rng.random((n, 8, 8, 1), dtype=np.float32))
    y = tf.constant(rng.integers(0, 10, n), tf.int64)
    kw = dict(epsilon=0.1, num_steps=steps, spsa_samples=samples, learning_rate=0.01, delta=0.01)
    fns = {"batched_spsa": lambda: spsa(model, x, y, seed=0, **kw).numpy(),
           "cleverhans_loop": lambda: cleverhans_spsa(model, x, y, **kw).numpy()}
    for fn in fns.values():
        fn()
    return _median_interleaved(fns, repeats)


def bench_tracing(epochs):
    rng = np.random.default_rng(2)
    x = rng.random((256, 8, 8, 1), dtype=np.float32)
    y = rng.integers(0, 10, 256)
    robust = RobustModel(_cnn(0, (8, 8, 1)), "lrm", epsilon=0.1, step_size=0.025, num_steps=3)
    robust.compile(keras.optimizers.SGD(0.01), jit_compile=False)
    counts = []
    for _ in range(epochs):
        robust.fit(x, y, batch_size=64, epochs=1, verbose=0)
        counts.append(robust._attack_trace_count)  # private test counter
    return counts


def bench_evaluation(repeats):
    """Seconds for PGD-5/10/20 on a fresh model: first call (with tracing) and repeated, ours vs CleverHans."""
    rng = np.random.default_rng(3)
    x = tf.constant(rng.random((364, 8, 8, 1), dtype=np.float32))
    y = tf.constant(rng.integers(0, 10, 364), tf.int64)
    steps = (5, 10, 20)

    def ours(model):
        attacks = [make_attack(f"pgd{k}", epsilon=0.15, step_size=0.0375) for k in steps]
        return lambda: [a(model, x, y, seed=0).numpy() for a in attacks]

    def peer(model):
        fn = lambda t: model(t, training=False)  # noqa: E731
        compiled = [tf.function(lambda a, b, k=k: projected_gradient_descent(
            fn, a, 0.15, 0.0375, k, np.inf, clip_min=0.0, clip_max=1.0, y=b, rand_init=True)) for k in steps]
        return lambda: [f(x, y).numpy() for f in compiled]

    first, again = {"ours": [], "cleverhans": []}, {"ours": [], "cleverhans": []}
    for r in range(repeats):
        for name, make in (("ours", ours), ("cleverhans", peer)):
            run = make(_cnn(r, (8, 8, 1)))           # a new model: nothing compiled for it yet
            t = time.perf_counter()
            run()
            first[name].append(time.perf_counter() - t)
            t = time.perf_counter()
            run()
            again[name].append(time.perf_counter() - t)
    med = statistics.median
    return {k: med(v) for k, v in first.items()}, {k: med(v) for k, v in again.items()}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    size = parser.add_mutually_exclusive_group()
    size.add_argument("--quick", action="store_true", help="the default")
    size.add_argument("--full", action="store_true", help="more repeats")
    xla = parser.add_mutually_exclusive_group()
    xla.add_argument("--no-xla", action="store_true", help="skip the XLA variant")
    xla.add_argument("--xla-only", action="store_true", help="only the XLA train-step benchmark (GPU script)")
    args = parser.parse_args(argv)
    repeats = 15 if args.full else 5
    print(f"device: {'GPU' if tf.config.list_physical_devices('GPU') else 'CPU'}; TF {tf.__version__}")
    print("| benchmark | ours | peer | ratio | goal |")
    print("|---|---|---|---|---|")
    for jit in ([True] if args.xla_only else [False] + ([] if args.no_xla else [True])):
        t = bench_train_step(128, repeats, jit)
        tag = "XLA" if jit else "no XLA"
        r = t["robust_model"] / t["handwritten_pgd10"]
        print(f"| RobustModel PGD-10 step vs hand-written CleverHans step ({tag}, batch 128, 32x32x3 CNN) | "
              f"{1e3 * t['robust_model']:.0f} ms | {1e3 * t['handwritten_pgd10']:.0f} ms | {r:.3f}x | <= 1.05x |")
        print(f"| PGD-10 step / clean step ({tag}; theory k+1 = 11) | {t['robust_model'] / t['clean']:.1f}x "
              f"(ours) | {t['handwritten_pgd10'] / t['clean']:.1f}x (hand-written) | clean {1e3 * t['clean']:.0f} ms | "
              f"<= 11x |")
    if args.xla_only:
        return
    n, steps, samples = 32, (10 if args.full else 5), 64
    s = bench_spsa(n, steps, samples, 3 if args.full else 1)
    print(f"| batched SPSA vs looped CleverHans batch-1 SPSA ({n} images, {steps} steps x {samples} samples, 8x8 CNN) "
          f"| {s['batched_spsa']:.2f} s | {s['cleverhans_loop']:.2f} s | "
          f"{s['cleverhans_loop'] / s['batched_spsa']:.1f}x faster | >= 10x |")
    first, again = bench_evaluation(5 if args.full else 3)
    print(f"| PGD-5/10/20 evaluation of a new model, first call (tracing included; 364 8x8 images) | "
          f"{first['ours']:.2f} s | {first['cleverhans']:.2f} s (CleverHans PGD, a tf.function per step count) | "
          f"{first['ours'] / first['cleverhans']:.2f}x | <= 0.5x |")
    print(f"| the same evaluation repeated (traced) | {again['ours']:.3f} s | {again['cleverhans']:.3f} s | "
          f"{again['ours'] / again['cleverhans']:.2f}x | <= 1.1x |")
    counts = bench_tracing(3)
    print(f"| attack traces inside fit after epochs 1..3 | {counts} | - | "
          f"{'constant' if len(set(counts)) == 1 else 'GROWS'} | constant |")


if __name__ == "__main__":
    main()
