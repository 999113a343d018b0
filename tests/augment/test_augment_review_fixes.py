"""Regression tests for the review of `augment/`: empty pair-mode batch, sparse labels
under XLA, `MixedExample`'s seed argument and `plot_methods`'s hyperparameter names."""

import matplotlib

matplotlib.use("Agg")

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import tensorflow as tf  # noqa: E402

from tf_dlthesis.augment import MixedExample, mix_batch, mix_dataset, plot_methods  # noqa: E402
from tf_dlthesis.augment.mix import labels_to_soft  # noqa: E402


# ---------------------------------------------------------------- 1. no empty pair-mode batch
def _constant_images(n, h=3, w=3, c=1):
    """Image i is constant (i + 1) / (n + 1); label i is one-hot class i (K = n)."""
    values = (np.arange(n, dtype=np.float32) + 1) / (n + 1)
    x = np.broadcast_to(values[:, None, None, None], (n, h, w, c)).copy()
    return x, np.eye(n, dtype=np.float32), values


def _check_pairs(batches, values):
    """Output j mixes inputs 2j and 2j+1 by mixup: image = lam*v[2j] + (1-lam)*v[2j+1]."""
    assert sum(len(b[0]) for b in batches) == len(values) // 2
    if not batches:
        return
    x = np.concatenate([b[0] for b in batches])
    y = np.concatenate([b[1] for b in batches])
    for j in range(len(x)):
        lam = y[j, 2 * j]
        expected = np.zeros(len(values), np.float32)
        expected[[2 * j, 2 * j + 1]] = [lam, 1.0 - lam]
        np.testing.assert_allclose(y[j], expected, atol=1e-6)
        np.testing.assert_allclose(x[j], lam * values[2 * j] + (1 - lam) * values[2 * j + 1], atol=1e-6)


# (N, batch_size, pairs_per_call): N % (2 * batch_size) == 1 with a per-call chunk of
# batch_size pairs, which used to emit a trailing (0, H, W, C) batch.
@pytest.mark.parametrize("n,batch_size,pairs_per_call", [(5, 2, 2), (9, 4, 1), (3, 1, 1), (13, 3, 3), (1, 1, 1)])
def test_pair_mode_emits_no_empty_batch(n, batch_size, pairs_per_call):
    x, y, values = _constant_images(n)
    ds = tf.data.Dataset.from_tensor_slices((x, y))
    pairs = n // 2
    expected_sizes = [batch_size] * (pairs // batch_size) + ([pairs % batch_size] if pairs % batch_size else [])
    for ppc in (pairs_per_call, None):            # chunk == batch_size, and the default chunk
        out = mix_dataset(ds, "mixup", seed=0, batch_size=batch_size, pairs_per_call=ppc)
        batches = [(bx.numpy(), by.numpy()) for bx, by in out]
        assert [len(b[0]) for b in batches] == expected_sizes
        assert int(out.cardinality()) == len(expected_sizes)
        _check_pairs(batches, values)
    # unknown cardinality: still no empty batch
    out = mix_dataset(ds.filter(lambda a, b: True), "mixup", seed=0, batch_size=batch_size,
                      pairs_per_call=pairs_per_call)
    assert [int(bx.shape[0]) for bx, _ in out] == expected_sizes


def test_pair_mode_default_chunk_of_large_images_emits_no_empty_batch():
    """128x128x4 float32: the default chunk is 32 MiB / (2 * 256 KiB) = 64 pairs = batch_size."""
    ds = tf.data.Dataset.from_tensors((tf.zeros([128, 128, 4]), tf.constant(0, tf.int64))).repeat(129)
    out = mix_dataset(ds, "mixup", seed=0, num_classes=3, batch_size=64)
    assert int(out.cardinality()) == 1
    assert [int(bx.shape[0]) for bx, _ in out] == [64]


def test_pair_mode_dict_elements_emit_no_empty_batch():
    x, y, values = _constant_images(5)
    ds = tf.data.Dataset.from_tensor_slices({"images": x, "labels": y})
    out = mix_dataset(ds, "mixup", seed=1, batch_size=2, pairs_per_call=2)
    batches = [(e["images"].numpy(), e["labels"].numpy()) for e in out]
    assert int(out.cardinality()) == 1 and [len(b[0]) for b in batches] == [2]
    _check_pairs(batches, values)


# ---------------------------------------------------------------- 2. sparse labels under XLA
def test_out_of_range_sparse_labels_are_nan_under_xla():
    f = tf.function(lambda labels: labels_to_soft(labels, 3, 1), jit_compile=True)
    soft = f(tf.constant([0, 2, 3, -1, 1])).numpy()
    np.testing.assert_array_equal(soft[[0, 1, 4]], [[1, 0, 0], [0, 0, 1], [0, 1, 0]])
    assert np.isnan(soft[[2, 3]]).all()


def test_valid_sparse_labels_are_exact_one_hot_under_xla():
    f = tf.function(lambda labels: labels_to_soft(labels, 4, 1), jit_compile=True)
    labels = np.array([3, 0, 1, 2, 2], np.int64)
    np.testing.assert_array_equal(f(tf.constant(labels)).numpy(), np.eye(4, dtype=np.float32)[labels])


def test_mixed_example_out_of_range_label_gives_nan_under_xla():
    """Reverse pairing: partners (3, 2, 1, 0); label 5 (K = 3) spoils rows 0 and 3 only."""
    x = np.zeros((4, 2, 2, 1), np.float32)
    y = np.array([0, 1, 2, 5])
    layer = MixedExample("mixup", seed=0, num_classes=3, pairing="reverse")
    out = tf.function(lambda a, b: layer({"images": a, "labels": b}), jit_compile=True)(x, y)["labels"].numpy()
    assert np.isnan(out[[0, 3]]).all()
    np.testing.assert_allclose(out[[1, 2]].sum(1), [1.0, 1.0], atol=1e-6)
    assert out[1, 0] == 0.0 and out[2, 0] == 0.0          # rows 1, 2 mix classes 1 and 2 only
    loss = tf.keras.losses.categorical_crossentropy(out, tf.zeros([4, 3]), from_logits=True)
    assert np.isnan(loss.numpy()[[0, 3]]).all()
    yb = tf.function(lambda a, b: mix_batch(a, b, "mixup", seed=[0, 1], pairing="reverse", num_classes=3),
                     jit_compile=True)(x, y)[1].numpy()
    assert np.isnan(yb[[0, 3]]).all() and np.isfinite(yb[[1, 2]]).all()


def test_out_of_range_sparse_labels_still_raise_in_eager_and_graph():
    with pytest.raises(ValueError, match=r"out of range for num_classes=3.*\[5\]"):
        labels_to_soft(tf.constant([0, 5]), 3, 1)
    f = tf.function(lambda labels: labels_to_soft(labels, 3, 1))
    with pytest.raises(tf.errors.InvalidArgumentError, match=r"must be in \[0, 2\]"):
        f(tf.constant([0, 5]))


# ---------------------------------------------------------------- 3. get_random_transformation seed
def test_get_random_transformation_int_seed_is_seed_zero_pair():
    layer = MixedExample("vh_mixup", seed=0)
    x = tf.random.stateless_uniform([8, 4, 4, 1], [0, 0])
    as_int = layer.get_random_transformation({"images": x}, seed=5)
    as_pair = layer.get_random_transformation({"images": x}, seed=tf.constant([5, 0], tf.int64))
    np.testing.assert_array_equal(as_int["partner"].numpy(), as_pair["partner"].numpy())
    np.testing.assert_array_equal(as_int["plan"].plan.weight.numpy(), as_pair["plan"].plan.weight.numpy())
    assert sorted(as_int["partner"].numpy().tolist()) == list(range(8))     # a permutation


@pytest.mark.parametrize("seed,error,match", [([1, 2, 3], ValueError, "shape"), (-1, ValueError, "seed"),
                                              (1.5, TypeError, "seed=1.5"), (True, TypeError, "seed=True"),
                                              ([1.0, 2.0], TypeError, "integer")])
def test_get_random_transformation_rejects_bad_seed(seed, error, match):
    layer = MixedExample("mixup", seed=0)
    with pytest.raises(error, match=match):
        layer.get_random_transformation({"images": np.zeros((4, 2, 2, 1), np.float32)}, seed=seed)


# ---------------------------------------------------------------- 4. plot_methods hyperparameters
def test_plot_methods_rejects_misspelled_hyperparameter():
    x = np.ones((4, 4, 1), np.float32)
    with pytest.raises(TypeError, match="alpah"):
        plot_methods(x, 0 * x, ["mixup"], alpah=0.5)
    with pytest.raises(TypeError, match="alpah"):
        plot_methods(x, 0 * x, ["mixup"], lam=0.5, alpah=0.5)


def test_plot_methods_passes_hyperparameters_to_methods_that_take_them():
    """noise_std=0 makes noisy mixup plain mixup: with x1 = 1 and x2 = 0 each panel is
    constant = the label weight of x1 (mixup ignores `noise_std`)."""
    x = np.ones((4, 4, 1), np.float32)
    fig = plot_methods(x, 0 * x, ["mixup", "noisy_mixup"], noise_std=0.0, columns=4)
    for ax in fig.axes[2:4]:
        image = np.asarray(ax.images[0].get_array())
        lam = float(ax.get_title().split("=")[-1])
        assert image.std() == 0.0
        assert abs(image.mean() - lam) <= 0.005


# --------------------------------------------------------------------- second review (2026-12-05, night)
@pytest.mark.parametrize("dtype, labels, num_classes", [(tf.uint8, [0, 100, 200, 255], 300),
                                                        (tf.int8, [0, 5, 100, 127], 200),
                                                        (tf.int16, [0, 1, 2, 3], 4), (tf.uint16, [0, 1, 2, 3], 4)])
def test_narrow_integer_labels_one_hot_the_same_traced_as_eager(dtype, labels, num_classes):
    y = tf.constant(labels, dtype)
    expected = np.eye(num_classes, dtype=np.float32)[labels]
    np.testing.assert_array_equal(labels_to_soft(y, num_classes, 1).numpy(), expected)
    # before: traced, uint8 / int8 wrapped num_classes in the range check ("must be in [0, 299]") and
    # int16 / uint16 reached tf.one_hot, which has no kernel for them
    traced = tf.function(lambda t: labels_to_soft(t, num_classes, 1))
    np.testing.assert_array_equal(traced(y).numpy(), expected)


def test_mix_dataset_takes_numpy_ints_and_mix_stage_checks_jit_compile():
    from tf_dlthesis.augment import MixStage

    ds = tf.data.Dataset.from_tensor_slices((np.zeros((8, 4, 4, 1), np.float32), np.arange(8) % 2))
    out = mix_dataset(ds, "mixup", seed=0, num_classes=2, batch_size=np.int64(2), pairs_per_call=np.int64(2))
    assert sum(1 for _ in out) == 2  # 4 pairs in batches of 2 (before: "must be a positive int")
    with pytest.raises(TypeError, match="`jit_compile` must be a bool. Received: jit_compile='no'"):
        MixStage("mixup", num_classes=2, jit_compile="no")  # before: "no" turned XLA on
