"""MixedExample at inference: BC+ / VH-BC+ models see per-image centred images (audit 69).

A model trained on BC+ mixtures (per-image zero-mean outputs, Thesis Sec. 2.3.2) was
evaluated on raw images: `MixedExample(..., training=False)` passed the images through,
while `MixStage.test_transform` centres them. Expected values are computed by hand with
NumPy (each image's mean over H, W and C subtracted).
"""

import keras
import numpy as np
import pytest
import tensorflow as tf

from tf_dlthesis.augment import MixedExample, MixStage


def _batch(b=3, h=4, w=5, c=3, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.random((b, h, w, c)).astype(np.float32) * np.arange(1, b + 1, dtype=np.float32)[:, None, None, None]
    return x, np.eye(4, dtype=np.float32)[np.arange(b) % 4]


def _centred(x):
    x64 = np.asarray(x, np.float64)
    return x64 - x64.mean(axis=(1, 2, 3), keepdims=True)


@pytest.mark.parametrize("method", ["bc_plus", "vh_bc_plus", ["bc_plus", "vh_bc_plus"]])
def test_centring_methods_centre_images_at_inference_labels_unchanged(method):
    x, y = _batch()
    layer = MixedExample(method, seed=0)
    assert layer.centers_images
    out = layer({"images": x, "labels": y, "id": np.arange(3)}, training=False)
    np.testing.assert_allclose(out["images"].numpy(), _centred(x), atol=1e-6)
    np.testing.assert_allclose(out["images"].numpy().mean(axis=(1, 2, 3)), 0.0, atol=1e-6)
    np.testing.assert_array_equal(out["labels"].numpy(), y)
    assert out["images"].dtype == tf.float32
    # The Keras contract's inference path gives the same images.
    np.testing.assert_allclose(layer.transform_images(x, None, training=False).numpy(), _centred(x),
                               atol=1e-6)


def test_same_centring_as_the_tf_data_stage():
    x, _ = _batch(4, 6, 6, 3, seed=1)
    layer_out = MixedExample("bc_plus", seed=0)({"images": x, "labels": np.eye(4)}, training=False)
    stage_out = MixStage("bc_plus", num_classes=4, seed=0).test_transform(x)
    np.testing.assert_array_equal(layer_out["images"].numpy(), stage_out.numpy())


def test_uint8_sparse_and_batch_of_one_at_inference():
    x = np.array([[[[0, 10], [20, 30]], [[40, 50], [60, 255]]]], np.uint8)     # (1, 2, 2, 2)
    y = np.array([2])
    out = MixedExample("bc_plus", seed=0, num_classes=3)({"images": x, "labels": y}, training=False)
    # By hand: the mean of the 8 values is 465 / 8 = 58.125.
    np.testing.assert_allclose(out["images"].numpy(), x.astype(np.float64) - 58.125, atol=1e-5)
    assert out["images"].dtype == tf.float32                     # as the mixed training output
    assert out["labels"].dtype == tf.int64
    np.testing.assert_array_equal(out["labels"].numpy(), y)      # sparse labels unchanged


@pytest.mark.parametrize("method", ["mixup", "vh_mixup", ["mixup", "bc_plus"]])
def test_other_methods_pass_images_through_at_inference(method):
    # Lists mixing centred and uncentred methods are not centred, as in MixStage.
    x, y = _batch()
    layer = MixedExample(method, seed=0)
    assert not layer.centers_images
    out = layer({"images": x, "labels": y}, training=False)
    np.testing.assert_array_equal(out["images"].numpy(), x)
    np.testing.assert_array_equal(out["labels"].numpy(), y)
    np.testing.assert_array_equal(layer.transform_images(x, None, training=False), x)


def test_mixed_precision_and_compiled_inference_with_unknown_batch():
    x, y = _batch(2, 4, 4, 3)
    layer = MixedExample("vh_bc_plus", seed=0, dtype="mixed_float16")
    out = layer({"images": x, "labels": y}, training=False)
    assert out["images"].dtype == tf.float16 and out["labels"].dtype == tf.float16
    np.testing.assert_allclose(out["images"].numpy(), _centred(x), atol=2e-3)

    layer32 = MixedExample("bc_plus", seed=0)
    fn = tf.function(lambda im, lab: layer32({"images": im, "labels": lab}, training=False)["images"],
                     jit_compile=True,
                     input_signature=[tf.TensorSpec([None, 4, 4, 3]), tf.TensorSpec([None, 4])])
    np.testing.assert_allclose(fn(x, y).numpy(), _centred(x), atol=1e-6)


def test_model_evaluates_on_centred_images_and_survives_save_load(tmp_path):
    x, y = _batch(3, 4, 4, 3)
    images = keras.Input((4, 4, 3), name="images")
    labels = keras.Input((4,), name="labels")
    mixed = MixedExample("bc_plus", seed=0, name="mixer")({"images": images, "labels": labels})
    model = keras.Model([images, labels], mixed["images"])
    np.testing.assert_allclose(model.predict([x, y], verbose=0), _centred(x), atol=1e-6)
    path = tmp_path / "m.keras"
    model.save(path)
    loaded = keras.models.load_model(path)
    np.testing.assert_allclose(loaded.predict([x, y], verbose=0), _centred(x), atol=1e-6)
    # get_config / from_config keep the behaviour.
    clone = MixedExample.from_config(model.get_layer("mixer").get_config())
    assert clone.centers_images
    np.testing.assert_allclose(clone({"images": x, "labels": y}, training=False)["images"].numpy(),
                               _centred(x), atol=1e-6)


def test_bad_rank_at_inference_is_a_value_error():
    with pytest.raises(ValueError, match="rank 4"):
        MixedExample("bc_plus", seed=0)({"images": np.zeros((4, 4, 3), np.float32),
                                         "labels": np.eye(4)}, training=False)
