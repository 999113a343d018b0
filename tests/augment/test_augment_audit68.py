"""Audit 68 of Chapter 2's mixing: regression tests.

Each test failed before its fix: `sample_beta` used tensor seeds as given, so a scalar
integer tensor (which `as_seed` and `mix_batch` read as [s, 0]) crashed in a TF kernel,
a float tensor failed with an unrelated message, and an int32 tensor drew other samples
than the same seed as a list or int64; `mix_dataset` silently dropped the other keys of
dict elements; `plot_methods` reported a bad `seed` as "[seed, 0]" and listed None as
accepted while refusing it.
"""

import matplotlib

matplotlib.use("Agg")

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import tensorflow as tf  # noqa: E402

from tf_dlthesis.augment import mix_dataset, plot_methods, sample_beta  # noqa: E402


# ------------------------------------------------------------- sample_beta: tensor seeds
@pytest.mark.parametrize("alpha", [0.4, 1.0, 2.0])
def test_sample_beta_scalar_tensor_seed_is_s_zero(alpha):
    # The library's seed vocabulary: a scalar integer tensor s means [s, 0] (as for mix_batch).
    got = sample_beta(tf.constant(3), [6], alpha).numpy()
    np.testing.assert_array_equal(got, sample_beta(3, [6], alpha).numpy())


@pytest.mark.parametrize("alpha", [0.4, 2.0])
def test_sample_beta_same_seed_values_give_the_same_samples_for_any_integer_dtype(alpha):
    ref = sample_beta([1, 2], [6], alpha).numpy()
    for dtype in (tf.int32, tf.int64, tf.uint8):
        np.testing.assert_array_equal(sample_beta(tf.constant([1, 2], dtype), [6], alpha).numpy(), ref)

    @tf.function
    def traced(seed):
        return sample_beta(seed, [6], alpha)

    # Traced, int32 and int64 seeds agree too (graph vs eager may differ by float rounding).
    np.testing.assert_array_equal(traced(tf.constant([1, 2], tf.int32)).numpy(),
                                  traced(tf.constant([1, 2], tf.int64)).numpy())


def test_sample_beta_refuses_bad_tensor_seeds_naming_them():
    with pytest.raises(TypeError, match="seed.*integer"):
        sample_beta(tf.constant([1.0, 2.0]), [3], 0.5)
    with pytest.raises(ValueError, match="seed.*shape"):
        sample_beta(tf.constant([1, 2, 3]), [3], 0.5)


# ------------------------------------------------------------- mix_dataset: dict extras
def _dict_data(n=8):
    rng = np.random.default_rng(0)
    x = rng.random((n, 4, 4, 1)).astype(np.float32)
    return {"images": x, "labels": np.arange(n) % 3, "weight": np.arange(n, dtype=np.float32)}


def test_batch_mode_passes_other_dict_keys_through():
    d = _dict_data()
    ds = tf.data.Dataset.from_tensor_slices(d).batch(4)
    out = list(mix_dataset(ds, "mixup", seed=0, mode="batch", num_classes=3))
    assert sorted(out[0]) == ["images", "labels", "weight"]
    np.testing.assert_array_equal(np.concatenate([o["weight"].numpy() for o in out]), d["weight"])
    assert out[0]["labels"].shape == (4, 3)


def test_pair_mode_refuses_other_dict_keys_by_name():
    ds = tf.data.Dataset.from_tensor_slices(_dict_data())
    with pytest.raises(ValueError, match=r"extra keys \['weight'\]"):
        mix_dataset(ds, "mixup", seed=0, num_classes=3)


# ------------------------------------------------------------- plot_methods: seed
def test_plot_methods_checks_seed_and_names_the_value():
    a = np.random.default_rng(0).random((4, 4, 1)).astype(np.float32)
    b = a[::-1].copy()
    with pytest.raises(ValueError, match=r"Received: seed=-1$"):
        plot_methods(a, b, ["mixup"], seed=-1)
    with pytest.raises(TypeError, match=r"Received: seed=2\.5$"):
        plot_methods(a, b, ["mixup"], seed=2.5)
    fig = plot_methods(a, b, ["mixup"], seed=None)          # fresh seed, as elsewhere
    assert len(fig.axes) >= 3
    t1 = plot_methods(a, b, ["mixup"], seed=np.int64(3)).axes[2].get_title()
    t2 = plot_methods(a, b, ["mixup"], seed=3).axes[2].get_title()
    assert t1 == t2


def test_batch_mode_refuses_static_batches_of_one():
    # mix_batch refuses a batch of 1; mix_dataset mixed every example with itself (no mixing).
    d = _dict_data(4)
    ds = tf.data.Dataset.from_tensor_slices((d["images"], d["labels"])).batch(1, drop_remainder=True)
    with pytest.raises(ValueError, match=r"at least 2 examples.*\(1, 4, 4, 1\)"):
        mix_dataset(ds, "mixup", seed=0, mode="batch", num_classes=3)
    ok = tf.data.Dataset.from_tensor_slices((d["images"], d["labels"])).batch(1)   # batch dim None: accepted
    assert len(list(mix_dataset(ok, "mixup", seed=0, mode="batch", num_classes=3))) == 4


# ------------------------------------------------------------- MixedExample: training=False
def test_layer_inference_passthrough_returns_tensors_like_keras_mixup():
    import keras

    from tf_dlthesis.augment import MixedExample

    x = np.random.default_rng(0).random((2, 4, 4, 3))          # float64 NumPy
    y = np.eye(2)
    data = {"images": x, "labels": y, "id": np.arange(2)}
    out = MixedExample("mixup", seed=0)(data, training=False)
    ref = keras.layers.MixUp()({"images": x, "labels": y}, training=False)
    for key in ("images", "labels"):
        assert tf.is_tensor(out[key]) and out[key].dtype == ref[key].dtype == tf.float32
        np.testing.assert_array_equal(out[key].numpy(), ref[key].numpy())
    assert out["id"] is data["id"]                               # other keys untouched
    sparse = MixedExample("mixup", seed=0, num_classes=2)(
        {"images": (x * 255).astype(np.uint8), "labels": np.arange(2)}, training=False)
    assert sparse["images"].dtype == tf.uint8 and sparse["labels"].dtype == tf.int64


@pytest.mark.parametrize("make", [
    lambda x, y: ({"img": x}, y),                         # Keras-style dict features
    lambda x, y: (x, (y, y)),                             # nested labels
])
def test_nested_elements_are_a_named_type_error(make):
    # These failed with AttributeError: 'dict' / 'tuple' object has no attribute 'dtype'.
    d = _dict_data(4)
    ds = tf.data.Dataset.from_tensor_slices(make(d["images"], d["labels"]))
    with pytest.raises(TypeError, match="dense tensors"):
        mix_dataset(ds, "mixup", seed=0, num_classes=3)


def test_ragged_images_are_a_named_type_error():
    ragged = tf.ragged.constant([[[[0.0]], [[1.0]]], [[[0.5]]]], ragged_rank=1)   # images of 2 and 1 rows
    ds = tf.data.Dataset.from_tensor_slices((ragged, tf.constant([0, 1])))
    with pytest.raises(TypeError, match="images of structure RaggedTensorSpec"):
        mix_dataset(ds, "mixup", seed=0, num_classes=2)
