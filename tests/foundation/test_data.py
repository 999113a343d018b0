import numpy as np
import pytest
import tensorflow as tf

from tf_dlthesis import data


def test_digits_split_is_fixed_stratified_and_scaled():
    x, y = data.load_arrays("digits", "train")
    xt, yt = data.load_arrays("digits", "test")
    assert x.shape[1:] == (8, 8, 1) and x.dtype == np.float32 and y.dtype == np.int64
    assert len(x) + len(xt) == 1797
    assert 0.0 <= x.min() and x.max() == 1.0
    # every class keeps ~20% of its examples in the test split
    frac = np.bincount(yt, minlength=10) / (np.bincount(yt, minlength=10) + np.bincount(y, minlength=10))
    assert np.all(np.abs(frac - 0.2) < 0.01)
    info = data.info("digits")
    assert info.num_classes == 10 and info.splits == {"train": len(x), "test": len(xt)}


def test_digits_resized_to_cifar_shape():
    ds = data.load("digits", "test", image_size=32)
    image, label = next(iter(ds))
    assert image.shape == (32, 32, 3) and label.dtype == tf.int64
    assert np.allclose(image[..., 0], image[..., 2])
    assert data.info("digits", image_size=32).image_shape == (32, 32, 3)


@pytest.mark.parametrize("name", ["cifr10", "digitz"])
def test_unknown_dataset_names_suggest(name):
    with pytest.raises(ValueError, match="Did you mean"):
        data.load(name)


def test_bad_split_and_image_size():
    with pytest.raises(ValueError, match="split='validation'"):
        data.load("digits", "validation")
    with pytest.raises(ValueError, match="image_size"):
        data.load("digits", image_size=0)


def test_tfds_path_with_mock_data(tmp_path):
    import tensorflow_datasets as tfds

    with tfds.testing.mock_data(num_examples=6):
        ds = data.load("cifar10", "train", data_dir=str(tmp_path))
        images = list(ds.take(6))
    assert len(images) == 6
    image, label = images[0]
    assert image.shape == (32, 32, 3) and image.dtype == tf.float32 and label.dtype == tf.int64
    assert 0.0 <= float(tf.reduce_min(image)) and float(tf.reduce_max(image)) <= 1.0


def test_validation_helpers():
    assert data.validation_splits("cifar100") == ("train[:40000]", "train[40000:]")
    labels = np.repeat(np.arange(3), 90)
    train, val, test = data.per_class_split(labels, (40, 10, 30), seed=0)
    for part, size in ((train, 40), (val, 10), (test, 30)):
        assert np.all(np.bincount(labels[part]) == size)
    assert len(set(train) | set(val) | set(test)) == 240
    with pytest.raises(ValueError, match="fewer than"):
        data.per_class_split(labels, (80, 20, 30))
    with pytest.raises(ValueError, match="No thesis validation"):
        data.validation_splits("mnist")


def test_standard_augment_is_a_shifted_window_and_seeded():
    image = tf.reshape(tf.range(1, 8 * 8 + 1, dtype=tf.float32), (8, 8, 1))
    padded = np.pad(image.numpy()[..., 0], 2)
    seen = set()
    for s in range(20):
        out = data.standard_augment(image, seed=s, pad=2, flip=True).numpy()[..., 0]
        match = [
            (i, j, f)
            for i in range(5)
            for j in range(5)
            for f in (False, True)
            if np.array_equal(out, np.fliplr(padded[i : i + 8, j : j + 8]) if f else padded[i : i + 8, j : j + 8])
        ]
        assert match, "output is not a (flipped) crop of the padded image"
        seen.add(match[0])
        again = data.standard_augment(image, seed=s, pad=2, flip=True).numpy()[..., 0]
        assert np.array_equal(out, again)
    assert len(seen) > 5
    assert np.array_equal(data.standard_augment(image, seed=0, pad=0, flip=False), image)


def test_standard_augment_batched_images_get_their_own_crops():
    one = tf.random.stateless_uniform((8, 8, 1), seed=[0, 1])
    batch = tf.stack([one] * 16)
    out = data.standard_augment(batch, seed=3, pad=2, flip=False).numpy()
    assert out.shape == batch.shape
    distinct = {o.tobytes() for o in out}
    assert len(distinct) > 4  # identical inputs, different per-example crops
    with pytest.raises(ValueError, match="rank"):
        data.standard_augment(tf.zeros((8, 8)), seed=0)
    with pytest.raises(ValueError, match="pad"):
        data.standard_augment(batch, seed=0, pad=-1)
    with pytest.raises(TypeError, match="seed"):
        data.standard_augment(batch, seed=None)


def _collect(ds):
    return [(a.numpy(), b.numpy()) for a, b in ds]


def test_training_dataset_is_resumable_and_epoch_shuffled():
    x = np.arange(10, dtype=np.float32).reshape(10, 1, 1, 1) * np.ones((1, 4, 4, 1), np.float32)
    y = np.arange(10)
    full = _collect(data.training_dataset(x, y, batch_size=4, shuffle_seed=1, augment_seed=2, epochs=2, pad=1))
    resumed = _collect(data.training_dataset(x, y, batch_size=4, shuffle_seed=1, augment_seed=2, epochs=2, start_epoch=1, pad=1))
    assert len(full) == 6 and len(resumed) == 3
    for (a, b), (c, d) in zip(full[3:], resumed):
        assert np.array_equal(a, c) and np.array_equal(b, d)
    epoch0 = np.concatenate([b for _, b in full[:3]])
    epoch1 = np.concatenate([b for _, b in full[3:]])
    assert sorted(epoch0) == list(range(10)) and sorted(epoch1) == list(range(10))
    assert not np.array_equal(epoch0, epoch1)


def test_non_iid_batches_hold_four_classes_of_32():
    x, y = data.load_arrays("digits")
    batches = list(data.non_iid_batches((x, y), batch_size=128, classes_per_batch=4, seed=0, num_batches=5))
    for images, labels in batches:
        assert images.shape == (128, 8, 8, 1)
        counts = np.bincount(labels.numpy(), minlength=10)
        assert np.all(counts % 32 == 0) and counts.sum() == 128
        # each group of 32 is one class and (class big enough) has no repeated example
        for g in range(4):
            group = images.numpy()[32 * g : 32 * (g + 1)].reshape(32, -1)
            assert len(set(labels.numpy()[32 * g : 32 * (g + 1)])) == 1
            assert len({row.tobytes() for row in group}) >= 31
    again = list(data.non_iid_batches((x, y), batch_size=128, classes_per_batch=4, seed=0, num_batches=5))
    assert all(np.array_equal(a[1], b[1]) for a, b in zip(batches, again))
    with pytest.raises(ValueError, match="divide"):
        data.non_iid_batches((x, y), batch_size=100, classes_per_batch=3, seed=0)
