"""Audit 68 of the foundation layer: input pipelines (`data._pipeline`)."""

import numpy as np
import pytest
import tensorflow as tf

from tf_dlthesis import data


def _images(n=10, size=6, channels=None):
    shape = (n, size, size) if channels is None else (n, size, size, channels)
    return np.random.default_rng(0).random(shape).astype(np.float32)


def test_training_dataset_gives_grey_nhw_images_a_channel_axis_before_augmenting():
    # (N, H, W) arrays, as keras.datasets returns them: each image must be cropped on its own, as the
    # (N, H, W, 1) form is, not the whole (B, H, W) batch taken for one (H, W, C) image.
    x, y = _images(), np.arange(10) % 3
    kwargs = dict(batch_size=4, shuffle_seed=0, augment_seed=1, pad=1, epochs=1)
    grey = [b[0].numpy() for b in data.training_dataset(x, y, **kwargs)]
    chan = [b[0].numpy() for b in data.training_dataset(x[..., None], y, **kwargs)]
    assert [g.shape for g in grey] == [c.shape for c in chan] == [(4, 6, 6, 1), (4, 6, 6, 1), (2, 6, 6, 1)]
    for g, c in zip(grey, chan):
        np.testing.assert_array_equal(g, c)


@pytest.mark.parametrize("shape", [(10, 6, 6, 1, 1), (10,)])
def test_training_dataset_refuses_images_of_an_unusable_rank(shape):
    with pytest.raises(ValueError, match=r"`x` must have shape \(N, H, W, C\).*Received: x of shape"):
        data.training_dataset(np.zeros(shape, np.float32), np.zeros(10, np.int64), batch_size=4, shuffle_seed=0)


def test_training_dataset_refuses_augmenting_feature_vectors():
    with pytest.raises(ValueError, match="augment_seed"):
        data.training_dataset(np.zeros((10, 5), np.float32), np.zeros(10, np.int64), batch_size=4,
                              shuffle_seed=0, augment_seed=1)
    ds = data.training_dataset(np.zeros((10, 5), np.float32), np.zeros(10, np.int64), batch_size=4, shuffle_seed=0)
    assert tuple(ds.element_spec[0].shape) == (None, 5)


@pytest.mark.parametrize("labels, error, match", [
    (-(np.arange(10) % 3), ValueError, "Labels must be >= 0"),
    (np.arange(10) % 3 + 0.5, ValueError, "whole numbers"),
    ((np.arange(10) % 3).astype(str), TypeError, "real numbers"),
    (np.zeros((10, 2, 2)), ValueError, r"Labels must be sparse \(N,\) or one-hot"),
])
def test_training_dataset_refuses_labels_that_are_not_class_indices(labels, error, match):
    # They used to stream through unchanged (negative / fractional / string labels, the failure left to fit)
    with pytest.raises(error, match=match):
        data.training_dataset(_images(channels=1), labels, batch_size=4, shuffle_seed=0)


def test_training_dataset_still_takes_one_hot_and_soft_labels():
    y = np.eye(3, dtype=np.float32)[np.arange(10) % 3] * 0.9 + 0.1 / 3
    ds = data.training_dataset(_images(channels=1), y, batch_size=4, shuffle_seed=0, epochs=1)
    assert next(iter(ds))[1].shape == (4, 3)


def test_training_dataset_refuses_non_finite_images():
    x = _images(channels=1)
    x[3, 0, 0, 0] = np.nan
    with pytest.raises(ValueError, match="finite"):
        data.training_dataset(x, np.arange(10) % 3, batch_size=4, shuffle_seed=0)


def test_flip_and_drop_remainder_must_be_bools():
    # flip="no" is truthy: it used to flip; drop_remainder="False" was TF's "Expected bool" naming no argument
    x, y = _images(channels=1), np.arange(10) % 3
    with pytest.raises(TypeError, match="`flip` must be a bool. Received: flip='no'"):
        data.standard_augment(tf.zeros((2, 4, 4, 1)), seed=0, flip="no")
    with pytest.raises(TypeError, match="`flip` must be a bool"):
        data.training_dataset(x, y, batch_size=4, shuffle_seed=0, augment_seed=0, flip="no")
    with pytest.raises(TypeError, match="`drop_remainder` must be a bool"):
        data.training_dataset(x, y, batch_size=4, shuffle_seed=0, drop_remainder="False")
    with pytest.raises(TypeError, match="`flip` must be a bool"):
        data.non_iid_batches((x, y), batch_size=4, classes_per_batch=2, seed=0, augment_seed=0, flip=1)
    # NumPy bools pass
    data.standard_augment(tf.zeros((2, 4, 4, 1)), seed=0, flip=np.bool_(False))


@pytest.mark.parametrize("fn", [data.steps_per_epoch, data.steps_per_epoch_of])
def test_steps_per_epoch_refuses_bad_sizes(fn):
    with pytest.raises(ValueError, match="`batch_size` must be an int >= 1. Received: batch_size=0"):
        fn(10, 0)
    with pytest.raises(ValueError, match="`num_examples` must be an int >= 0"):
        fn(-10, 4)
    with pytest.raises(TypeError, match="`batch_size` must be an int"):
        fn(10, 4.0)
    assert fn(10, 4) == 3 and fn(10, 4, drop_remainder=True) == 2 and fn(0, 4) == 0


def test_epoch_permutation_and_pairs_take_epoch_seeds_as_training_dataset_does():
    n, seeds = 7, data.EpochSeeds([5, 5, 9])
    ds = data.training_dataset(np.arange(n, dtype=np.float32)[:, None], np.zeros(n, np.int64), batch_size=n,
                               shuffle_seed=seeds, epochs=3)
    seen = [b[0].numpy()[:, 0].astype(int) for b in ds]
    for e in range(3):
        np.testing.assert_array_equal(data.epoch_permutation(n, seeds, e), seen[e])
        np.testing.assert_array_equal(data.epoch_pairs(n, seeds, e), data.epoch_pairs(n, seeds[e], e))
    with pytest.raises(ValueError, match="per-epoch seeds"):
        data.epoch_permutation(n, seeds, 3)


def test_epoch_permutation_refuses_epochs_and_parts_training_dataset_never_visits():
    with pytest.raises(ValueError, match="`epoch` must be an int >= 0. Received: epoch=-1"):
        data.epoch_permutation(5, 0, -1)
    with pytest.raises(TypeError, match="`epoch` must be an int"):
        data.epoch_permutation(5, 0, 1.5)
    with pytest.raises(ValueError, match="`part` must be None, 0 or 1"):
        data.epoch_permutation(5, 0, 0, part=2)


@pytest.mark.parametrize("split", [None, ["train", "test"], 3])
def test_a_tfds_split_that_is_not_one_split_string_is_a_type_error(split, tfds_tempdir):
    # tfds reads split=None as every split (a dict of datasets): `load` failed with "'dict' object has no
    # attribute 'map'"
    import tensorflow_datasets as tfds

    with tfds.testing.mock_data(num_examples=3):
        with pytest.raises(TypeError, match=r"`split` must be one split string of 'cifar10'.*Received: split="):
            data.load("cifar10", split)
        with pytest.raises(TypeError, match="`split` must be one split string"):
            data.load_arrays("cifar10", split)
        assert len(data.load_arrays("cifar10", "train")[0]) == 3


@pytest.mark.parametrize("name, norm, options", [
    ("cnn", "batch", {"filters": (4, 8)}),
    ("conv1", "group:4", {"filters": 8}),
    ("linear", "none", {}),
    ("mlp", "batch", {"hidden": 8}),
    ("resnet6", "ghost:2", {"width_multiplier": 0.125}),
    ("preact_resnet6", "batch_group:2:4", {"width_multiplier": 0.125}),
    ("vgg11", "batch", {"width_multiplier": 0.125}),
    ("shufflenet_v2_0.5", "batch", {"width_multiplier": 0.5, "repeats": (1, 1, 1)}),
    ("mnist_2conv", "batch", {"filters": (4, 8), "hidden": 8}),
])
def test_models_take_hwc_images_whatever_the_global_image_data_format(name, norm, options):
    # Under keras.config.set_image_data_format("channels_first") the convolutions and pools read the
    # documented (H, W, C) input as (C, H, W): (8, 8, 3) became 8 channels of 8x3 images, the norm layers
    # normalized the width axis, and vgg11 / mnist_2conv failed to build.
    import keras

    from tf_dlthesis import models

    x = np.random.default_rng(0).random((4, 8, 8, 3)).astype(np.float32)
    reference = models.build(name, (8, 8, 3), 5, norm=norm, seed=0, **options)
    before = keras.config.image_data_format()
    keras.config.set_image_data_format("channels_first")
    try:
        model = models.build(name, (8, 8, 3), 5, norm=norm, seed=0, **options)
    finally:
        keras.config.set_image_data_format(before)
    assert model.count_params() == reference.count_params()
    for training in (False, True):
        np.testing.assert_allclose(model(x, training=training), reference(x, training=training), rtol=1e-5, atol=1e-6)


def test_bfloat16_images_and_labels_are_read_as_float32():
    # A mixed_bfloat16 pipeline's tensors come out of .numpy() as ml_dtypes bfloat16, which
    # `np.issubdtype(..., np.number)` refuses: every evaluating function failed with
    # "Images must be real numbers. Received: images of dtype bfloat16".
    x = tf.random.stateless_uniform((6, 4, 4, 1), seed=[0, 1])
    y = tf.constant([0, 1, 2, 0, 1, 2])
    xb = tf.cast(x, tf.bfloat16)
    want = xb.numpy().astype(np.float32)
    for dataset in [(xb, y), tf.data.Dataset.from_tensor_slices((xb, y)).batch(4),
                    (xb, tf.cast(y, tf.bfloat16)), {"image": xb, "label": tf.one_hot(y, 3, dtype=tf.bfloat16)}]:
        xa, ya = data.as_arrays(dataset)
        assert xa.dtype == np.float32 and ya.dtype == np.int64
        np.testing.assert_array_equal(xa, want)
        np.testing.assert_array_equal(ya, y.numpy())
    images, labels = next(iter(data.training_dataset(xb.numpy(), y.numpy(), batch_size=6, shuffle_seed=0, epochs=1)))
    assert images.dtype == tf.float32
    np.testing.assert_array_equal(np.sort(images.numpy().ravel()), np.sort(want.ravel()))
    batch = next(iter(data.non_iid_batches((xb, y), batch_size=2, classes_per_batch=2, seed=0)))
    assert batch[0].dtype == tf.float32
