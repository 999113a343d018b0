"""Audit 67 of Chapter 2's mixing methods and the on-device layer: regression tests.

Each test failed before its fix: `MixedExample` lost its seed position through
`model.save` / `load_model` (the reloaded layer repeated the draws already made);
`sample_beta` gave NaN lambdas for tiny concentrations (float32 below ~5e-38, float16
below ~1e-4); `mix_pair` refused compatible static shapes such as (8, 7, 3) and
(None, None, 3); `plot_methods` failed with a ZeroDivisionError for `columns=0` and
read a single method name as a list of one-letter names.
"""

import os

import keras
import numpy as np
import pytest
import tensorflow as tf

from tf_dlthesis.augment import MixedExample, mix_batch, mix_pair, plot_methods, sample_beta


def _images(b=4, h=6, w=5, c=3, seed=0):
    return np.random.default_rng(seed).random((b, h, w, c)).astype(np.float32)


def _mixing_model(seed):
    images, labels = keras.Input((6, 5, 3), name="images"), keras.Input((), dtype="int32", name="labels")
    out = MixedExample("vh_mixup", seed=seed, num_classes=4)({"images": images, "labels": labels})
    return keras.Model([images, labels], out)


# ------------------------------------------------------------- layer: seed through saving
@pytest.mark.parametrize("how", ["keras", "weights"])
def test_saved_layer_continues_its_seed_stream(tmp_path, how):
    x, y = _images(), np.arange(4)
    model = _mixing_model(seed=5)
    first = model([x, y], training=True)["images"].numpy()
    model([x, y], training=True)                     # two draws made before saving
    if how == "keras":
        model.save(os.path.join(tmp_path, "m.keras"))
        loaded = keras.models.load_model(os.path.join(tmp_path, "m.keras"))
    else:
        model.save_weights(os.path.join(tmp_path, "m.weights.h5"))
        loaded = _mixing_model(seed=5)
        loaded.load_weights(os.path.join(tmp_path, "m.weights.h5"))
    after = model([x, y], training=True)["images"].numpy()
    reloaded = loaded([x, y], training=True)["images"].numpy()
    np.testing.assert_array_equal(reloaded, after)   # the third draw, not the first again
    assert not np.array_equal(reloaded, first)


def test_layer_saved_without_seed_position_still_loads(tmp_path, monkeypatch):
    # A file written before the position was saved (no extra entry) loads; the stream
    # then starts from `seed`, as it did.
    monkeypatch.setattr(MixedExample, "save_own_variables", keras.layers.Layer.save_own_variables)
    x, y = _images(), np.arange(4)
    model = _mixing_model(seed=5)
    first = model([x, y], training=True)["images"].numpy()
    model.save(os.path.join(tmp_path, "old.keras"))
    monkeypatch.undo()
    loaded = keras.models.load_model(os.path.join(tmp_path, "old.keras"))
    np.testing.assert_array_equal(loaded([x, y], training=True)["images"].numpy(), first)


# ------------------------------------------------------------- sample_beta: tiny concentrations
@pytest.mark.parametrize("alpha", [1e-38, 1e-40, 1e-300])
def test_sample_beta_tiny_alpha_is_bernoulli_not_nan(alpha):
    # Beta(a, a) -> Bernoulli(1/2) on {0, 1} as a -> 0 (mean a / (a + a) = 1/2).
    s = sample_beta(tf.constant([4, 5], tf.int64), [20000], alpha).numpy()
    assert not np.isnan(s).any()
    assert set(np.unique(s)) <= {0.0, 1.0}
    assert abs(s.mean() - 0.5) < 0.02


def test_sample_beta_tiny_asymmetric_keeps_the_mean():
    # Beta(a, b) with a, b -> 0 at a fixed ratio: P(1) = a / (a + b) = 1/11.
    s = sample_beta(tf.constant([4, 5], tf.int64), [40000], 1e-40, 1e-39).numpy()
    assert not np.isnan(s).any() and abs(s.mean() - 1.0 / 11.0) < 0.01


@pytest.mark.parametrize("dtype", [tf.float16, tf.bfloat16])
def test_sample_beta_half_precision_small_alpha_is_not_nan(dtype):
    a = 1e-5                      # var of Beta(a, a) = 1 / (4 (2a + 1)) ~ 0.25
    s = sample_beta(tf.constant([1, 2], tf.int64), [20000], a, dtype=dtype)
    assert s.dtype == dtype
    s = s.numpy().astype(np.float64)
    assert not np.isnan(s).any() and s.min() >= 0.0 and s.max() <= 1.0
    assert abs(s.var() - 0.25 / (2 * a + 1)) < 0.01


def test_sample_beta_rejects_integer_dtype():
    with pytest.raises(TypeError, match=r"`dtype` must be a floating dtype.*Received: dtype=int32"):
        sample_beta(0, [3], 0.4, dtype=tf.int32)


def test_mixup_with_tiny_alpha_takes_one_image_whole():
    x, y = _images(), np.arange(4)
    xm, ym = mix_batch(x, y, "mixup", seed=2, num_classes=4, alpha=1e-40)
    xm, ym = xm.numpy(), ym.numpy()
    assert np.isfinite(xm).all() and np.isfinite(ym).all()
    # lambda in {0, 1}: every label is one-hot and every image one of the inputs.
    assert set(np.unique(ym)) <= {0.0, 1.0}
    for b in range(4):
        assert any(np.array_equal(xm[b], x[k]) for k in range(4))
        np.testing.assert_array_equal(xm[b], x[int(np.argmax(ym[b]))])


# ------------------------------------------------------------- mix_pair: compatible shapes
def test_mix_pair_accepts_compatible_static_shapes():
    x = _images(2, 8, 7, 3)
    f = tf.function(lambda a, b: mix_pair(a, [1.0, 0.0], b, [0.0, 1.0], "mixup", seed=1),
                    input_signature=[tf.TensorSpec((8, 7, 3)), tf.TensorSpec((None, None, 3))])
    image, label = f(x[0], x[1])
    lam = float(label[0])
    assert abs(float(label[1]) - (1.0 - lam)) < 1e-6
    np.testing.assert_allclose(image, lam * x[0] + (1.0 - lam) * x[1], atol=1e-6)   # Eq. 2.3


def test_mix_pair_traced_shape_mismatch_is_a_named_error():
    f = tf.function(lambda a, b: mix_pair(a, [1.0, 0.0], b, [0.0, 1.0], "mixup", seed=1),
                    input_signature=[tf.TensorSpec((None, None, 3)), tf.TensorSpec((None, None, 3))])
    with pytest.raises(tf.errors.InvalidArgumentError, match="x1 and x2 must have the same shape"):
        f(_images(1, 8, 7, 3)[0], _images(1, 1, 7, 3)[0])    # (1, 7, 3) would broadcast
    with pytest.raises(ValueError, match=r"x1 and x2 must have the same shape"):
        mix_pair(_images(1)[0], [1.0, 0.0], _images(1, 5)[0], [0.0, 1.0], "mixup", seed=1)


# ------------------------------------------------------------- plot_methods arguments
def test_plot_methods_checks_columns_and_takes_one_name():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    x = _images(2, 6, 6, 1)
    with pytest.raises(ValueError, match=r"`columns` must be an int >= 1.*Received: columns=0"):
        plot_methods(x[0], x[1], ["mixup"], columns=0)
    with pytest.raises(TypeError, match=r"`columns`.*Received: columns=2.5"):
        plot_methods(x[0], x[1], ["mixup"], columns=2.5)
    fig = plot_methods(x[0], x[1], "vertical_concat", columns=3)
    titles = [ax.get_title() for ax in fig.axes]
    assert titles[:2] == ["x1", "x2"] and titles[2].startswith("Vert. Concat.")
    plt.close(fig)
