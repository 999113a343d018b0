"""Benchmark: tf_dlthesis.normalization layers vs Keras BatchNormalization (thesis Ch. 4).

Prints ratios measured in one run (interleaved repeats, medians):

1. train-step time of a small pre-activation ResNet with each of our layers /
   the same net with Keras 3 ``BatchNormalization`` (goal <= 1.10x), with
   ``jit_compile`` off and on; the peer ratio is tf_keras's Ghost BN
   (``virtual_batch_size=16``) / tf_keras BN on a 3-conv net (if tf_keras is
   installed), printed beside ours on that same net (``GhostBatchNormalization(16)``
   / Keras 3 BN, same initial weights), interleaved in one timing;
2. inference with example weight alpha = 0.1 / Keras BN inference (goal <= 1.10x),
   with ``jit_compile`` off and on, on the realistic net (a pre-activation
   ResNet-18 at full width on 32x32 inputs, batch 128: normalization a
   realistic share of the step) and on the small nets (the train-step net
   below and the quick-scale digits CNN), each beside the *floor*: Keras BN
   inference plus one more read of every activation (each BN layer also
   reduces its input to a per-example mean that shifts the offset: the
   least any per-example statistic costs);
3. ``sweep_example_weight`` over 11 alphas vs re-patching the model per alpha
   (goal >= 5x faster).

``--inference`` runs only part 2.

Usage: ``python benchmarks/bench_normalization.py [--quick|--medium|--full]``:
``--quick`` (default) a ResNet-6 at width 0.25 on 16x16 inputs, batch 64, where
normalization is a large share of the step (the hardest case for the ratios);
``--medium`` a ResNet-6 at width 0.5 on 32x32 inputs, batch 128 (the issue's
batch size); ``--full`` ResNet-18 on 32x32 inputs, batch 128 (meant for a GPU).
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
from tf_dlthesis.normalization import patch_model, sweep_example_weight  # noqa: E402


def _step_fn(model, jit):
    opt = keras.optimizers.SGD(0.01)
    loss_fn = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    opt.build(model.trainable_variables)
    return sgd_train_step(model, opt, loss_fn, jit=jit)


def _time(fn, args, iters):
    fn(*args)  # compile / warm up
    start = time.perf_counter()
    for _ in range(iters):
        out = fn(*args)
    np.asarray(out)
    return (time.perf_counter() - start) / iters


def _interleaved(fns, args, iters, repeats):
    times = {k: [] for k in fns}
    for k, f in fns.items():
        f(*args)
    keys = list(fns)
    for r in range(repeats):  # rotate the order: no variant always runs first (cache / frequency effects)
        for k in keys[r % len(keys):] + keys[:r % len(keys)]:
            times[k].append(_time(fns[k], args, iters))
    return {k: statistics.median(v) for k, v in times.items()}


@keras.saving.register_keras_serializable(package="tf_dlthesis_bench")
class _FloorBN(keras.layers.BatchNormalization):
    """Keras BN inference plus one more read of the input: the cost floor of any per-example statistic.

    The per-example spatial mean shifts the offset by ``shift * mean`` (``shift``
    a variable, so nothing is folded away), and normalization and affine stay
    one multiply-add with a per-(example, channel) offset.
    """

    def build(self, input_shape):
        super().build(input_shape)
        self.shift = tf.Variable(0.1, trainable=False)

    def call(self, inputs, training=None, mask=None):
        axes = [a for a in range(1, len(inputs.shape)) if a != len(inputs.shape) - 1]
        inv = tf.math.rsqrt(self.moving_variance + self.epsilon) * self.gamma
        offset = self.beta - self.moving_mean * inv
        if axes:
            offset = offset - self.shift * tf.reduce_mean(inputs, axes, keepdims=True)
        return inputs * inv + offset


def _floor_model(base):
    """``base`` with every Keras BN replaced by `_FloorBN` (same weights)."""
    def clone(layer):
        if isinstance(layer, keras.layers.BatchNormalization):
            return _FloorBN.from_config(layer.get_config())
        return type(layer).from_config(layer.get_config())

    floor = keras.models.clone_model(base, clone_function=clone)
    floor.set_weights(base.get_weights())
    return floor


def _inference_ratios(rows, label, name, kwargs, size, batch, channels, iters, repeats):
    """Inference alpha = 0.1 and the floor, both / Keras BN inference, jit off and on."""
    rng = np.random.default_rng(1)
    x = tf.constant(rng.uniform(size=(batch, size, size, channels)).astype("float32"))
    base = models.build(name, (size, size, channels), 10, norm="batch", seed=0, **kwargs)
    patched = patch_model(base, 0.1)
    floor = _floor_model(base)
    for jit in (False, True):
        inf = {"keras_bn": tf.function(lambda v: base(v, training=False), jit_compile=jit),
               "alpha=0.1": tf.function(lambda v: patched(v, training=False), jit_compile=jit),
               "floor": tf.function(lambda v: floor(v, training=False), jit_compile=jit)}
        t = _interleaved(inf, (x,), iters, repeats)
        for k in ("alpha=0.1", "floor"):
            rows.append((f"inference {k} {label} (jit={jit})", t[k], t["keras_bn"], "<= 1.10x" if k != "floor"
                         else "(floor)"))
        print(f"inference {label} jit={jit!s:5} Keras BN {1e3 * t['keras_bn']:.2f} ms, alpha=0.1 "
              f"{1e3 * t['alpha=0.1']:.2f} ms -> {t['alpha=0.1'] / t['keras_bn']:.3f}x, floor "
              f"{1e3 * t['floor']:.2f} ms -> {t['floor'] / t['keras_bn']:.3f}x", flush=True)


def _three_conv_net(lib, norm, input_shape, classes):
    """The tf_keras peer's net, built with `lib` (`keras` or `tf_keras`) and seeded initializers.

    conv 32 -> (norm, ReLU, conv 32) -> (norm, ReLU, conv 64) -> global pool -> dense: the
    same net and initial weights in both libraries, so ours and the peer are timed on one net.
    """
    init = lambda: lib.initializers.GlorotUniform(seed=0)  # noqa: E731
    inp = lib.Input(input_shape)
    h = lib.layers.Conv2D(32, 3, padding="same", use_bias=False, kernel_initializer=init())(inp)
    for filters in (32, 64):
        h = norm()(h)
        h = lib.layers.ReLU()(h)
        h = lib.layers.Conv2D(filters, 3, padding="same", use_bias=False, kernel_initializer=init())(h)
    h = lib.layers.GlobalAveragePooling2D()(h)
    return lib.Model(inp, lib.layers.Dense(classes, kernel_initializer=init())(h))


def _tfk_step(model):
    import tf_keras

    opt = tf_keras.optimizers.SGD(0.01)
    loss_fn = tf_keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    return sgd_train_step(model, opt, loss_fn)


def _peer_part(rows, x, y, iters, repeats):
    """Ghost BN (B' = 16) / BN train steps on the 3-conv net: ours (Keras 3) and tf_keras's, interleaved.

    Returns the median seconds per step by contender, or None without tf_keras.
    """
    try:
        import tf_keras
    except ImportError:
        print("tf_keras not installed: peer ratio skipped")
        return None
    from tf_dlthesis.normalization import GhostBatchNormalization

    shape, classes = tuple(x.shape[1:]), 10
    fns = {"keras_bn": _step_fn(_three_conv_net(keras, keras.layers.BatchNormalization, shape, classes), False),
           "ghost:16": _step_fn(_three_conv_net(keras, lambda: GhostBatchNormalization(16), shape, classes), False),
           "tfk_bn": _tfk_step(_three_conv_net(tf_keras, tf_keras.layers.BatchNormalization, shape, classes)),
           "tfk_ghost16": _tfk_step(_three_conv_net(
               tf_keras, lambda: tf_keras.layers.BatchNormalization(virtual_batch_size=16), shape, classes))}
    t = _interleaved(fns, (x, y), iters, repeats)
    print(f"3-conv net, jit=False: ours ghost:16 / Keras BN {t['ghost:16'] / t['keras_bn']:.3f}x; peer tf_keras "
          f"Ghost BN (virtual_batch_size=16) / tf_keras BN {t['tfk_ghost16'] / t['tfk_bn']:.3f}x")
    rows.append(("train step ghost:16, 3-conv net (the peer's net, jit=False)", t["ghost:16"], t["keras_bn"],
                 "(beside the peer)"))
    rows.append(("peer: tf_keras virtual_batch_size=16 train step, 3-conv net", t["tfk_ghost16"], t["tfk_bn"],
                  "(peer)"))
    return t


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--quick", action="store_true", default=True, help="small sizes (default, ~1 min on 2 CPUs)")
    group.add_argument("--medium", action="store_true", help="ResNet-6 width 0.5, 32x32, batch 128 (~6 min on 2 CPUs)")
    group.add_argument("--full", action="store_true", help="ResNet-18 width, CIFAR-size inputs (GPU)")
    parser.add_argument("--inference", action="store_true", help="only the inference ratios (part 2)")
    args = parser.parse_args(argv)
    full = args.full
    if full:
        size, batch, repeats, iters, name, kwargs = 32, 128, 5, 10, "preact_resnet18", {}
    elif args.medium:
        size, batch, repeats, iters, name, kwargs = 32, 128, 5, 2, "preact_resnet6", {"width_multiplier": 0.5}
    else:
        size, batch, repeats, iters, name, kwargs = 16, 64, 5, 3, "preact_resnet6", {"width_multiplier": 0.25}
    rng = np.random.default_rng(0)
    x = tf.constant(rng.uniform(size=(batch, size, size, 3)).astype("float32"))
    y = tf.constant(rng.integers(0, 10, batch))
    print(f"device: {tf.config.list_logical_devices()[-1].device_type}; model {name} {kwargs}, batch {batch}, "
          f"input {size}x{size}x3; medians of {repeats} interleaved repeats")
    rows = []
    if args.inference:
        _inference_part(rows, name, kwargs, size, batch, repeats)
        _print_rows(rows)
        return
    norms = {"keras_bn": "batch", "ew_batch": "ew_batch", "ghost:16": "ghost:16", "batch_group:8:16": "batch_group:8:16"}
    for jit in (False, True):
        fns = {k: _step_fn(models.build(name, (size, size, 3), 10, norm=n, seed=0, **kwargs), jit)
               for k, n in norms.items()}
        t = _interleaved(fns, (x, y), iters, repeats)
        for k in norms:
            if k == "keras_bn":
                continue
            rows.append((f"train step {k} (jit={jit})", t[k], t["keras_bn"], "<= 1.10x"))
            print(f"train step jit={jit!s:5} {k:18} {1e3 * t[k]:8.2f} ms vs Keras BN {1e3 * t['keras_bn']:8.2f} ms "
                  f"-> {t[k] / t['keras_bn']:.3f}x")
    _peer_part(rows, x, y, iters, repeats)

    _inference_part(rows, name, kwargs, size, batch, repeats)
    base = models.build(name, (size, size, 3), 10, norm="batch", seed=0, **kwargs)

    alphas = np.linspace(0, 0.2, 11)
    data = (rng.uniform(size=(256, size, size, 3)).astype("float32"), rng.integers(0, 10, 256))
    sweeps, repatch = [], []
    for _ in range(3 if not full else 5):
        t0 = time.perf_counter()
        sweep_example_weight(base, data, alphas)
        sweeps.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        for a in alphas:  # the naive way: a fresh patched model (and compiled function) per alpha
            m = patch_model(base, float(a))
            m.predict(data[0], batch_size=256, verbose=0)
        repatch.append(time.perf_counter() - t0)
    ts, tr = statistics.median(sweeps), statistics.median(repatch)
    rows.append(("sweep 11 alphas vs re-patch per alpha", ts, tr, ">= 5x faster"))
    print(f"sweep_example_weight 11 alphas {ts:.2f} s vs re-patching per alpha {tr:.2f} s -> {tr / ts:.1f}x faster")

    _print_rows(rows)


def _inference_part(rows, name, kwargs, size, batch, repeats):
    _inference_ratios(rows, "ResNet-18 32x32 b128", "preact_resnet18", {}, 32, 128, 3, 2, repeats)
    _inference_ratios(rows, f"{name} {size}x{size} b{batch}", name, kwargs, size, batch, 3, 20, repeats)
    _inference_ratios(rows, "digits CNN 8x8 b256", "cnn", {}, 8, 256, 1, 40, repeats)


def _print_rows(rows):
    print("\n| benchmark | ours | peer | ratio | goal |\n|---|---|---|---|---|")
    for label, ours, peer, goal in rows:
        unit = "s" if "sweep" in label else "ms"
        scale = 1.0 if unit == "s" else 1e3
        ratio = peer / ours if "sweep" in label else ours / peer
        print(f"| {label} | {scale * ours:.2f} {unit} | {scale * peer:.2f} {unit} | {ratio:.2f}x | {goal} |")


if __name__ == "__main__":
    main()
