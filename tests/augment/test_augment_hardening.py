"""Issue 15 (hardening): bad inputs to the mixing API fail with one clear error, and
`MixedExample` follows Keras 3's image-preprocessing layer contract."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from tf_dlthesis.augment import MixedExample, mix_batch, mix_dataset, mix_pair


def _batch(n=8, h=6, w=6, k=4, seed=0):
    rng = np.random.default_rng(seed)
    return rng.uniform(size=(n, h, w, 1)).astype(np.float32), (np.arange(n) % k).astype(np.int64)


# ---------------------------------------------------------------- silently wrong before
def test_mix_pair_rejects_empty_images():
    with pytest.raises(ValueError, match="x1.*non-empty|non-empty.*x1"):
        mix_pair(np.zeros((0, 0, 1)), [1.0, 0.0], np.zeros((0, 0, 1)), [0.0, 1.0], "mixup", seed=0)
    with pytest.raises(ValueError, match="images"):
        mix_batch(np.zeros((4, 0, 5, 1)), np.eye(4), "mixup", seed=0)


def test_negative_soft_labels_are_rejected():
    x = np.zeros((4, 4, 1), np.float32)
    with pytest.raises(ValueError, match=r"`y1` must be non-negative.*-0\.5"):
        mix_pair(x, [1.5, -0.5], x + 1, [0.0, 1.0], "mixup", seed=0)
    with pytest.raises(ValueError, match="`labels` must be non-negative"):
        mix_batch(np.zeros((2, 4, 4, 1)), [[1.0, 0.0], [-0.2, 1.2]], "mixup", seed=0)


def test_sparse_labels_out_of_range_name_the_values():
    x, _ = _batch(4)
    with pytest.raises(ValueError, match=r"`labels` out of range.*\[-1, 12\]"):
        mix_batch(x, np.array([0, 12, -1, 3]), "mixup", seed=0, num_classes=10)


def test_mix_dataset_checks_label_specs_up_front_and_values_at_iteration():
    x, y = _batch(6)
    onehot = tf.data.Dataset.from_tensor_slices((x, np.eye(3, dtype=np.float32)[y % 3]))
    with pytest.raises(ValueError, match="`labels` have 3 classes but num_classes=4"):
        mix_dataset(onehot, "mixup", seed=0, num_classes=4)
    wide = tf.data.Dataset.from_tensor_slices((x, y[:, None, None]))
    with pytest.raises(ValueError, match="`labels` must have rank 0"):
        mix_dataset(wide, "mixup", seed=0, num_classes=4)
    bad = tf.data.Dataset.from_tensor_slices((x, np.array([0, 1, 2, 9, 0, 1])))
    out = mix_dataset(bad, "mixup", seed=0, num_classes=4, jit_compile=False)  # values: unknowable here
    with pytest.raises(tf.errors.InvalidArgumentError, match=r"`labels` must be in \[0, 3\] \(num_classes=4\)"):
        list(out)


def test_check_numerics_names_the_tensor():
    x, y = _batch(4)
    x_nan = x.copy()
    x_nan[1, 2, 3, 0] = np.nan
    with pytest.raises(tf.errors.InvalidArgumentError, match="`images` has NaN"):
        mix_batch(x_nan, y, "mixup", seed=0, num_classes=4, check_numerics=True)
    with pytest.raises(tf.errors.InvalidArgumentError, match="`y2` has NaN"):
        mix_pair(x[0], [1.0, 0.0], x[1], [np.nan, 1.0], "mixup", seed=0, check_numerics=True)
    with pytest.raises(tf.errors.InvalidArgumentError, match="`images` has NaN"):
        MixedExample("mixup", seed=0, num_classes=4, check_numerics=True)({"images": x_nan, "labels": y})
    ds = tf.data.Dataset.from_tensor_slices((x_nan, y))
    with pytest.raises(tf.errors.InvalidArgumentError, match="`images` has NaN"):
        list(mix_dataset(ds, "mixup", seed=0, num_classes=4, check_numerics=True, jit_compile=False))
    # off by default: NaN passes through (documented)
    out, _ = mix_batch(x_nan, y, "mixup", seed=0, num_classes=4)
    assert np.isnan(out.numpy()).any()
    with pytest.raises(TypeError, match="check_numerics"):
        mix_batch(x, y, "mixup", seed=0, num_classes=4, check_numerics="yes")


# ---------------------------------------------------------------- Keras preprocessing-layer contract
def test_layer_contract_methods_match_the_mixup_formula():
    """mixup with reverse pairing on 2 images: x = lam x1 + (1 - lam) x2, y likewise (Eq. 2.3)."""
    x = np.stack([np.full((3, 3, 1), 0.2), np.full((3, 3, 1), 0.9)]).astype(np.float32)
    y = np.array([0, 2])
    layer = MixedExample("mixup", seed=0, num_classes=3, pairing="reverse")
    data = {"images": x, "labels": y}
    t = layer.get_random_transformation(data, training=True, seed=tf.constant([4, 5], tf.int64))
    np.testing.assert_array_equal(t["partner"].numpy(), [1, 0])
    lam = t["plan"].plan.label.numpy()
    assert lam.shape == (2,) and np.all((lam > 0) & (lam < 1))
    images = layer.transform_images(x, t).numpy()
    labels = layer.transform_labels(y, t).numpy()
    for b in range(2):
        np.testing.assert_allclose(images[b], lam[b] * x[b] + (1 - lam[b]) * x[1 - b], rtol=1e-6)
        want = np.zeros(3)
        want[y[b]] += lam[b]
        want[y[1 - b]] += 1 - lam[b]
        np.testing.assert_allclose(labels[b], want, rtol=1e-6)
    assert layer.get_random_transformation(data, training=False) is None
    np.testing.assert_array_equal(layer.transform_images(x, None, training=False), x)


def test_layer_composes_with_pipeline_and_dataset_map(tmp_path):
    x, y = _batch(8)
    mixer = MixedExample("vertical_concat", seed=0, num_classes=4)
    pipeline = keras.layers.Pipeline([keras.layers.RandomFlip("horizontal", seed=1), mixer])
    ds = tf.data.Dataset.from_tensor_slices({"images": x, "labels": y}).batch(4)
    for mapped in (ds.map(pipeline), ds.map(mixer)):
        batches = list(mapped)
        assert len(batches) == 2
        for batch in batches:
            assert batch["images"].shape == (4, 6, 6, 1) and batch["labels"].shape == (4, 4)
            np.testing.assert_allclose(batch["labels"].numpy().sum(1), 1.0, atol=1e-6)
            assert batch["images"].dtype == tf.float32
    # eager call of the pipeline, and its serialization round trip
    out = pipeline({"images": x, "labels": y})
    assert out["labels"].shape == (8, 4)
    restored = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(pipeline))
    assert isinstance(restored.layers[1], MixedExample)
    assert restored.layers[1].get_config()["method"] == "vertical_concat"


def test_layer_in_a_pipeline_mixes_whole_rows_of_the_batch():
    """Vertical concat after a flip: each output row equals a row of some (flipped) input."""
    x, y = _batch(4, h=5, w=3)
    pipeline = keras.layers.Pipeline([MixedExample("vertical_concat", seed=2, num_classes=4)])
    out = pipeline({"images": x, "labels": y})["images"].numpy()
    rows = {tuple(r.ravel()) for img in x for r in img}
    assert all(tuple(r.ravel()) in rows for img in out for r in img)


def test_layer_errors_name_the_argument():
    x, y = _batch(4)
    layer = MixedExample("mixup", seed=0, num_classes=4)
    with pytest.raises(ValueError, match="batch of at least 2 `images`"):
        layer({"images": x[:1], "labels": y[:1]})
    with pytest.raises(ValueError, match="`images` and `labels` disagree"):
        layer({"images": x, "labels": y[:3]})
    with pytest.raises(ValueError, match=r"`labels` out of range.*\[7\]"):
        layer({"images": x, "labels": np.array([0, 1, 7, 2])})
    with pytest.raises(TypeError, match="dict with keys 'images' and 'labels'"):
        layer(x)
    with pytest.raises(TypeError, match="check_numerics"):
        MixedExample("mixup", check_numerics=1)


# ---------------------------------------------------------------- Figure 2.2
def test_figure_2_2_every_panel_shows_both_images():
    """At seed 0 every method's panel (label weight aimed at FIGURE_LAM = 0.4) differs from x1 and x2."""
    import matplotlib
    matplotlib.use("Agg")
    from tf_dlthesis.experiments import chapter2, registry

    assert chapter2.FIGURE_LAM == 0.4
    fig = registry.get("fig2.2")("quick", None, None).figures[0][1]
    axes = [ax for ax in fig.axes if ax.get_title()]
    arrays = [np.asarray(ax.get_images()[0].get_array(), np.float64) for ax in axes]
    x1, x2 = arrays[:2]
    assert np.abs(x1 - x2).mean() > 0.05
    for ax, panel in zip(axes[2:], arrays[2:]):
        title = ax.get_title().replace("\n", " ")
        weight = float(title.split("=")[-1])
        assert 0.25 <= weight <= 0.8, title
        assert np.abs(panel - x1).mean() > 0.01, title
        assert np.abs(panel - x2).mean() > 0.01, title
