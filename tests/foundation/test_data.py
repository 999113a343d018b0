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


def test_tfds_path_with_mock_data(tmp_path, tfds_tempdir):
    import tensorflow_datasets as tfds

    with tfds.testing.mock_data(num_examples=6):
        ds = data.load("cifar10", "train", data_dir=str(tmp_path))
        images = list(ds.take(6))
    assert len(images) == 6
    image, label = images[0]
    assert image.shape == (32, 32, 3) and image.dtype == tf.float32 and label.dtype == tf.int64
    assert 0.0 <= float(tf.reduce_min(image)) and float(tf.reduce_max(image)) <= 1.0


def test_a_tfds_slice_that_selects_nothing_is_a_clear_error(tmp_path, tfds_tempdir):
    import tensorflow_datasets as tfds

    class TfDlthesisTinyImages(tfds.core.GeneratorBasedBuilder):  # a prepared tfds set, built offline
        VERSION = tfds.core.Version("1.0.0")

        def _info(self):
            features = tfds.features.FeaturesDict({"image": tfds.features.Image(shape=(4, 4, 3)),
                                                   "label": tfds.features.ClassLabel(num_classes=3)})
            return tfds.core.DatasetInfo(builder=self, features=features, supervised_keys=("image", "label"))

        def _split_generators(self, dl_manager):
            return {"train": self._generate_examples(10)}

        def _generate_examples(self, n):
            for i in range(n):
                yield i, {"image": np.full((4, 4, 3), i, np.uint8), "label": i % 3}

    TfDlthesisTinyImages(data_dir=str(tmp_path)).download_and_prepare()
    name = "tf_dlthesis_tiny_images"
    # before: a dataset of cardinality -3 that failed in TF's IteratorGetNext when read
    with pytest.raises(ValueError, match=r"Split 'train\[5:2\]' of 'tf_dlthesis_tiny_images' selects no examples"):
        data.load(name, "train[5:2]", data_dir=str(tmp_path))
    with pytest.raises(ValueError, match="selects no examples"):
        data.load_arrays(name, "train[5:2]", data_dir=str(tmp_path))
    x, y = data.load_arrays(name, "train[2:5]", data_dir=str(tmp_path))
    values = np.rint(x[:, 0, 0, 0] * 255).astype(int)  # tfds stores rows in its own (hashed) order
    assert len(y) == 3 and len(set(values)) == 3 and np.array_equal(y, values % 3)


def test_validation_helpers():
    assert data.validation_splits("cifar100") == ("train[:40000]", "train[40000:]")
    # Sec. 4.4.1: SVHN's 604,388 non-test images 80 / 20; the thesis states no CIFAR-10 split
    assert data.validation_splits("svhn_cropped") == ("train[:80%]+extra[:80%]", "train[80%:]+extra[80%:]")
    with pytest.raises(ValueError, match="No thesis validation"):
        data.validation_splits("cifar10")
    with pytest.raises(TypeError, match=r"Received: name=\['cifar100'\]"):
        data.validation_splits(["cifar100"])
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
    with pytest.raises(TypeError, match="seed=1.5"):
        data.standard_augment(batch, seed=1.5)
    # seed=None means fresh OS entropy, as everywhere in the library (issue 12, item 6)
    assert data.standard_augment(batch, seed=None, pad=2, flip=False).shape == batch.shape


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
        # a class drawn once brings 32 examples without repeats (digits' classes hold ~143)
        for c in np.flatnonzero(counts == 32):
            group = images.numpy()[labels.numpy() == c].reshape(32, -1)
            assert len({row.tobytes() for row in group}) >= 31
        # the batch comes in random order: its first 32 examples are not one class
        assert len(set(labels.numpy()[:32].tolist())) > 1
    again = list(data.non_iid_batches((x, y), batch_size=128, classes_per_batch=4, seed=0, num_batches=5))
    assert all(np.array_equal(a[1], b[1]) for a, b in zip(batches, again))
    with pytest.raises(ValueError, match="divide"):
        data.non_iid_batches((x, y), batch_size=100, classes_per_batch=3, seed=0)


def test_non_iid_batches_draw_with_replacement_from_classes_smaller_than_their_quota():
    # 4 classes of 10 examples, 16 per class: the largest class cannot fill a quota (it crashed in tf.gather)
    x = np.arange(40, dtype=np.float32).reshape(40, 1, 1, 1)
    y = np.repeat(np.arange(4), 10)
    for images, labels in data.non_iid_batches((x, y), batch_size=32, classes_per_batch=2, seed=0, num_batches=4):
        index, labels = images.numpy().reshape(-1).astype(int), labels.numpy()
        assert len(index) == 32 and np.array_equal(y[index], labels)
        counts = np.bincount(labels, minlength=4)
        assert np.all(counts % 16 == 0) and counts.sum() == 32
        for c in np.flatnonzero(counts):  # each draw of a class holds every one of its examples
            assert np.all(np.bincount(index[labels == c] - 10 * c, minlength=10) >= counts[c] // 16)


def test_non_iid_batches_are_unchanged_where_every_class_fills_its_quota():
    """Pinned batches (examples encode their index): the with-replacement fix changed no batch here."""
    y = np.array([0] * 4 + [1] * 5 + [2] * 6)
    x = np.arange(15, dtype=np.float32).reshape(15, 1, 1, 1)
    expected = {(8, 2): [[13, 7, 10, 11, 8, 5, 14, 4], [1, 2, 11, 3, 12, 10, 0, 13], [7, 14, 8, 10, 4, 12, 13, 6]],
                (12, 3): [[13, 7, 10, 11, 14, 13, 8, 10, 5, 9, 14, 4], [5, 1, 2, 11, 3, 12, 10, 0, 4, 6, 7, 13],
                          [7, 7, 14, 8, 6, 10, 4, 8, 12, 13, 4, 6]]}
    for (batch, k), batches in expected.items():
        got = [b[0].numpy().reshape(-1).astype(int).tolist()
               for b in data.non_iid_batches((x, y), batch_size=batch, classes_per_batch=k, seed=3, num_batches=3)]
        assert got == batches, (batch, k)


@pytest.mark.parametrize("start_epoch, error, message", [
    (-1, ValueError, "`start_epoch` must be an int >= 0. Received: start_epoch=-1"),
    (3, ValueError, "`start_epoch` must be an int in \\[0, epochs\\]. Received: start_epoch=3, epochs=2"),
    (1.5, TypeError, "`start_epoch` must be an int >= 0. Received: start_epoch=1.5"),
    (True, TypeError, "`start_epoch` must be an int >= 0. Received: start_epoch=True"),
])
def test_training_dataset_rejects_a_start_epoch_outside_the_run(start_epoch, error, message):
    x, y = np.zeros((10, 2, 2, 1), np.float32), np.arange(10)
    with pytest.raises(error, match=message):
        data.training_dataset(x, y, batch_size=4, shuffle_seed=0, epochs=2, start_epoch=start_epoch)
    assert len(list(data.training_dataset(x, y, batch_size=4, shuffle_seed=0, epochs=2, start_epoch=2))) == 0


def test_training_dataset_refuses_a_batch_no_epoch_can_fill():
    x, y = np.zeros((11, 2, 2, 1), np.float32), np.arange(11)

    class Pairs:  # a pair-mode stage: an epoch yields 2 x floor(11 / 2) = 10 mixed examples
        mode = "pair"

        def pairs(self, x1, y1, x2, y2, epoch, index):
            return x1, y1

    with pytest.raises(ValueError, match="the 11 examples an epoch yields.*batch_size=12, 11 examples"):
        data.training_dataset(x, y, batch_size=12, shuffle_seed=0, drop_remainder=True)
    with pytest.raises(ValueError, match="the 10 examples an epoch yields.*batch_size=11, 11 examples"):
        data.training_dataset(x, y, batch_size=11, shuffle_seed=0, drop_remainder=True, mix=Pairs())
    assert [len(b) for b, _ in data.training_dataset(x, y, batch_size=12, shuffle_seed=0, epochs=1)] == [11]
    assert [len(b) for b, _ in data.training_dataset(x, y, batch_size=10, shuffle_seed=0, epochs=1,
                                                       drop_remainder=True, mix=Pairs())] == [10]


# --------------------------------------------------------------------------------------
# Real 28x28 sets through keras.datasets (Fashion-MNIST, MNIST), offline.

import gzip  # noqa: E402
import json  # noqa: E402
import re  # noqa: E402
import os  # noqa: E402
import shutil  # noqa: E402
import struct  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import textwrap  # noqa: E402

from tf_dlthesis.data import _registry  # noqa: E402

IDX_FILES = (
    "train-images-idx3-ubyte.gz",
    "train-labels-idx1-ubyte.gz",
    "t10k-images-idx3-ubyte.gz",
    "t10k-labels-idx1-ubyte.gz",
)


def _write_idx(path, array):
    """The IDX format by hand: magic 2049 (labels) / 2051 (images), big-endian dims, gzipped."""
    array = np.asarray(array, np.uint8)
    magic = {1: 2049, 3: 2051}[array.ndim]
    with gzip.open(path, "wb") as f:
        f.write(struct.pack(">I", magic) + struct.pack(f">{array.ndim}I", *array.shape) + array.tobytes())


def _tiny_idx_set(folder, seed):
    """Writes 5 train / 3 test random 28x28 images; returns the arrays written."""
    rng = np.random.default_rng(seed)
    arrays = {
        "train-images-idx3-ubyte.gz": rng.integers(0, 256, (5, 28, 28), dtype=np.uint8),
        "train-labels-idx1-ubyte.gz": rng.integers(0, 10, 5, dtype=np.uint8),
        "t10k-images-idx3-ubyte.gz": rng.integers(0, 256, (3, 28, 28), dtype=np.uint8),
        "t10k-labels-idx1-ubyte.gz": rng.integers(0, 10, 3, dtype=np.uint8),
    }
    os.makedirs(folder, exist_ok=True)
    for name, array in arrays.items():
        _write_idx(os.path.join(folder, name), array)
    return [arrays[n] for n in IDX_FILES]


def _run_isolated(script, tmp_path, *args):
    """Runs `script` in a fresh Python whose Keras cache is an empty temporary folder.

    Keras reads KERAS_HOME once, at import, so the only public way to point
    `keras.datasets` at another cache is a process started with it set. HOME is
    moved too, so nothing can reach the real ~/.keras.
    """
    env = dict(os.environ, KERAS_HOME=str(tmp_path / "keras_home"), HOME=str(tmp_path / "home"),
               TF_CPP_MIN_LOG_LEVEL="2")
    os.makedirs(tmp_path / "home", exist_ok=True)
    proc = subprocess.run([sys.executable, "-c", textwrap.dedent(script), *map(str, args)],
                          capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


_FASHION_FROM_FILES = """
    import json, sys
    import numpy as np
    from tf_dlthesis import data
    from tf_dlthesis.data import _registry

    data_dir, debian_dir, out = sys.argv[1:]
    (x, y), (xt, yt) = data.load_arrays("fashion_mnist", "train", data_dir=data_dir), \\
        data.load_arrays("fashion_mnist", "test", data_dir=data_dir)
    again = data.load_arrays("fashion_mnist", "train", data_dir=data_dir)[0]
    sliced = [(a.numpy(), int(b)) for a, b in data.load("fashion_mnist", "train[1:3]", data_dir=data_dir)]
    resized = next(iter(data.load("fashion_mnist", "test", data_dir=data_dir, image_size=32)))[0]
    # files with other contents than Fashion-MNIST's are read directly: Keras's shared cache stays clean
    import os
    from keras.src.backend import config
    cache = os.path.join(config.keras_home(), "datasets", "fashion-mnist")
    clean = not os.path.isdir(cache) or not os.listdir(cache)
    # With data_dir=None the Debian package's files come first (its lookup pointed at a
    # second tiny set here, taken for the original set: its contents' hashes stand in for
    # Fashion-MNIST's), going through Keras's cache.
    _registry._debian_package_files = lambda package: {
        f: f"{debian_dir}/{f}" for f in %r} if package == "dataset-fashion-mnist" else {}
    _registry._FASHION_CONTENT_SHA256 = {f: _registry._content_sha256(f"{debian_dir}/{f}", 0, 0) for f in %r}
    dx, dy = data.load_arrays("fashion_mnist", "train")
    np.savez(out, x=x, y=y, xt=xt, yt=yt, sx=np.stack([s[0] for s in sliced]), sy=[s[1] for s in sliced],
             dx=dx, dy=dy)
    print(json.dumps({"cached_is_shared": bool(np.shares_memory(again, x)),
                      "writeable": bool(x.flags.writeable or y.flags.writeable),
                      "dtypes": [str(x.dtype), str(y.dtype)], "resized": list(resized.shape), "clean": clean}))
""" % (IDX_FILES, IDX_FILES)


def test_fashion_mnist_from_idx_files_the_test_writes(tmp_path):
    images, labels, test_images, test_labels = _tiny_idx_set(tmp_path / "idx", seed=0)
    debian_images, debian_labels, _, _ = _tiny_idx_set(tmp_path / "debian", seed=1)
    result = _run_isolated(_FASHION_FROM_FILES, tmp_path, tmp_path / "idx", tmp_path / "debian", tmp_path / "out.npz")
    out = np.load(tmp_path / "out.npz")
    assert out["x"].shape == (5, 28, 28, 1) and result["dtypes"] == ["float32", "int64"]
    np.testing.assert_array_equal(out["x"][..., 0], images.astype(np.float32) / np.float32(255))
    np.testing.assert_array_equal(out["y"], labels)
    np.testing.assert_array_equal(out["xt"][..., 0], test_images.astype(np.float32) / np.float32(255))
    np.testing.assert_array_equal(out["yt"], test_labels)
    np.testing.assert_array_equal(out["sx"][..., 0], images[1:3].astype(np.float32) / np.float32(255))
    np.testing.assert_array_equal(out["sy"], labels[1:3])
    assert result["resized"] == [32, 32, 3]
    # cached in-process, immutable
    assert result["cached_is_shared"] and not result["writeable"]
    # a stand-in set never enters Keras's shared cache (keras.datasets.fashion_mnist.load_data() once returned it)
    assert result["clean"]
    # data_dir=None: the (stand-in) Debian files, through Keras's cache
    np.testing.assert_array_equal(out["dx"][..., 0], debian_images.astype(np.float32) / np.float32(255))
    np.testing.assert_array_equal(out["dy"], debian_labels)
    cached = tmp_path / "keras_home" / "datasets" / "fashion-mnist"
    for name in IDX_FILES:  # Keras's cache now holds exactly the last source's files
        assert (cached / name).read_bytes() == (tmp_path / "debian" / name).read_bytes()
    assert not (tmp_path / "home" / ".keras").exists()


def test_other_files_left_in_keras_cache_are_not_taken_for_fashion_mnist(tmp_path, monkeypatch):
    # once: without the Debian package, a stand-in set another program left in Keras's cache was
    # returned as Fashion-MNIST (20 images while `info` said 60,000)
    _tiny_idx_set(tmp_path / "cache" / "datasets" / "fashion-mnist", seed=0)
    monkeypatch.setattr(_registry, "_debian_package_files", lambda package: {})
    monkeypatch.setattr(_registry, "_keras_cache_dir", lambda: str(tmp_path / "cache"))
    with pytest.raises(data.DatasetNotFoundError, match="apt-get install dataset-fashion-mnist"):
        data.load_arrays("fashion_mnist", "train")


def test_fashion_mnist_without_files_is_one_clear_error(tmp_path, monkeypatch):
    monkeypatch.setattr(_registry, "_debian_package_files", lambda package: {})
    monkeypatch.setattr(_registry, "_keras_cache_dir", lambda: str(tmp_path / "empty_keras_cache"))
    with pytest.raises(data.DatasetNotFoundError) as caught:
        data.load("fashion_mnist")
    message = str(caught.value)
    assert isinstance(caught.value, FileNotFoundError)
    assert "apt-get install dataset-fashion-mnist" in message and "data_dir" in message
    assert all(name in message for name in IDX_FILES)
    assert "name='fashion_mnist', data_dir=None" in message
    # a data_dir without the files names it and the files it lacks
    _tiny_idx_set(tmp_path / "partial", seed=0)
    os.remove(tmp_path / "partial" / "t10k-labels-idx1-ubyte.gz")
    with pytest.raises(data.DatasetNotFoundError, match="lacks t10k-labels-idx1-ubyte.gz") as caught:
        data.load_arrays("fashion_mnist", data_dir=str(tmp_path / "partial"))
    assert f"data_dir={str(tmp_path / 'partial')!r}" in str(caught.value)
    with pytest.raises(data.DatasetNotFoundError, match="not a folder"):
        data.load("fashion_mnist", data_dir=str(tmp_path / "missing"))
    with pytest.raises(data.DatasetNotFoundError, match="mnist.npz"):
        data.load("mnist", data_dir=str(tmp_path / "empty_keras_cache"))


def test_fashion_mnist_rejects_files_that_are_not_idx(tmp_path):
    _tiny_idx_set(tmp_path, seed=0)
    with gzip.open(tmp_path / "train-labels-idx1-ubyte.gz", "wb") as f:
        f.write(b"not an idx file")
    with pytest.raises(ValueError, match="train-labels-idx1-ubyte.gz is not a gzipped IDX"):
        data.load("fashion_mnist", data_dir=str(tmp_path))
    _write_idx(tmp_path / "train-labels-idx1-ubyte.gz", np.zeros(4))  # 4 labels for 5 images
    with pytest.raises(ValueError, match="one label per image"):
        data.load("fashion_mnist", data_dir=tmp_path)
    with pytest.raises(TypeError, match="data_dir=3"):
        data.load("fashion_mnist", data_dir=3)


def test_mnist_from_idx_files_and_npz(tmp_path):
    images, labels, test_images, test_labels = _tiny_idx_set(tmp_path / "idx", seed=2)
    x, y = data.load_arrays("mnist", "train", data_dir=str(tmp_path / "idx"))
    np.testing.assert_array_equal(x[..., 0], images.astype(np.float32) / np.float32(255))
    np.testing.assert_array_equal(y, labels)
    xt, yt = data.load_arrays("mnist", "test[-2:]", data_dir=str(tmp_path / "idx"))
    np.testing.assert_array_equal(yt, test_labels[-2:])
    assert x.dtype == np.float32 and y.dtype == np.int64 and not x.flags.writeable
    assert len(data.load_arrays("mnist", "train[:40%]", data_dir=str(tmp_path / "idx"))[1]) == 2  # round(0.4 * 5)
    # an mnist.npz other than Keras's own file (Keras would re-download it) is read directly
    os.makedirs(tmp_path / "npz")
    np.savez(tmp_path / "npz" / "mnist.npz", x_train=images, y_train=labels, x_test=test_images, y_test=test_labels)
    ds = data.load("mnist", "test", data_dir=str(tmp_path / "npz"))
    got = [(a.numpy(), int(b)) for a, b in ds]
    np.testing.assert_array_equal(np.stack([g[0] for g in got])[..., 0], test_images / np.float32(255))
    assert [g[1] for g in got] == test_labels.tolist()


def test_one_data_dir_holds_both_sets_in_subfolders_and_holds_says_which(tmp_path):
    """MNIST's and Fashion-MNIST's IDX files share names: `data_dir/<name>/` lets one folder hold both."""
    shared = tmp_path / "shared"
    images, labels, _, test_labels = _tiny_idx_set(shared / "mnist", seed=3)
    x, y = data.load_arrays("mnist", "train", data_dir=str(shared))
    np.testing.assert_array_equal(x[..., 0], images.astype(np.float32) / np.float32(255))
    np.testing.assert_array_equal(y, labels)
    assert data.holds("mnist", shared) and not data.holds("fashion_mnist", shared)
    # the fashion_mnist/ subfolder is missing: the error says where it looked (before any cache is touched)
    with pytest.raises(data.DatasetNotFoundError, match="holds none of the files") as caught:
        data.load_arrays("fashion_mnist", data_dir=str(shared))
    assert "subfolder fashion_mnist/" in str(caught.value)
    _tiny_idx_set(shared / "fashion_mnist", seed=4)
    assert data.holds("fashion_mnist", shared)
    # files directly in the folder serve either name; an empty or missing folder holds nothing
    _tiny_idx_set(tmp_path / "flat", seed=5)
    assert data.holds("mnist", tmp_path / "flat") and data.holds("fashion_mnist", str(tmp_path / "flat"))
    (tmp_path / "empty").mkdir()
    assert not any(data.holds(n, tmp_path / d) for n in ("mnist", "fashion_mnist", "digits", "cifar10")
                   for d in ("empty", "missing"))
    np.savez(tmp_path / "empty" / "mnist.npz", x_train=images)
    assert data.holds("mnist", tmp_path / "empty") and not data.holds("fashion_mnist", tmp_path / "empty")
    (tmp_path / "empty" / "cifar10").mkdir()  # a prepared tfds copy lives in data_dir/<name>/
    assert data.holds("cifar10", tmp_path / "empty") and not data.holds("digits", tmp_path / "flat")
    assert not data.holds("mnist", None)
    with pytest.raises(TypeError, match="data_dir=3"):
        data.holds("mnist", 3)
    with pytest.raises(TypeError, match="`name` must be a dataset name string"):
        data.holds(None, tmp_path)


def test_mnist_and_fashion_mnist_files_are_not_read_as_each_other(tmp_path):
    """The original sets' first ten labels tell them apart: files of one read as the other are refused."""
    rng = np.random.default_rng(6)
    first = {"mnist": ([5, 0, 4, 1, 9, 2, 1, 3, 1, 4], [7, 2, 1, 0, 4, 1, 4, 9, 5, 9]),
             "fashion_mnist": ([9, 0, 0, 3, 0, 2, 7, 2, 5, 5], [9, 2, 1, 1, 6, 1, 4, 6, 5, 7])}
    folder = tmp_path / "fashion_files"
    os.makedirs(folder)
    train, test = (np.array(v + [0], np.uint8) for v in first["fashion_mnist"])
    for name, array in zip(IDX_FILES, (rng.integers(0, 256, (11, 28, 28)), train,
                                       rng.integers(0, 256, (11, 28, 28)), test)):
        _write_idx(folder / name, array)
    with pytest.raises(ValueError, match=r"The files read as 'mnist' are 'fashion_mnist''s: the first ten labels"):
        data.load_arrays("mnist", data_dir=str(folder))
    with pytest.raises(ValueError, match=r"data_dir/mnist/ and data_dir/fashion_mnist/"):
        _registry._check_not_the_other_set("fashion_mnist", np.array(first["mnist"][0]),
                                           np.array(first["mnist"][1]), "a", "b")
    # their own labels, or labels matching only one split's start, pass
    _registry._check_not_the_other_set("fashion_mnist", train, test, "a", "b")
    _registry._check_not_the_other_set("mnist", train, test[::-1], "a", "b")


def test_keras_dataset_info_and_bad_splits(tmp_path):
    for name in ("fashion_mnist", "mnist"):
        info = data.info(name)
        assert (info.num_classes, info.image_shape, info.splits) == (10, (28, 28, 1), {"train": 60_000, "test": 10_000})
        assert data.info(name, image_size=32).image_shape == (32, 32, 3)
    for split in ("validation", "train[:x]", "train+test"):
        with pytest.raises(ValueError, match=re.escape(f"split={split!r}")):
            data.load("fashion_mnist", split, data_dir=str(tmp_path))
    assert len(data.load_arrays("digits", "train[:10]")[1]) == 10


def test_debian_package_lookup_reads_the_file_list():
    files = _registry._debian_package_files("dataset-fashion-mnist")
    if shutil.which("dpkg-query") is None and not os.path.exists("/var/lib/dpkg/info/dataset-fashion-mnist.list"):
        assert files == {}
    assert _registry._debian_package_files("no-such-package-tf-dlthesis") == {}
    for name, path in files.items():
        assert os.path.isabs(path) and os.path.basename(path) == name and os.path.isfile(path)


_REAL_FASHION = """
    import json
    import numpy as np
    from tf_dlthesis import data

    x, y = data.load_arrays("fashion_mnist", "train")
    xt, yt = data.load_arrays("fashion_mnist", "test")
    print(json.dumps({"shapes": [list(x.shape), list(xt.shape)], "classes": sorted(set(y.tolist()) | set(yt.tolist())),
                      "range": [float(min(x.min(), xt.min())), float(max(x.max(), xt.max()))],
                      "dtypes": [str(x.dtype), str(y.dtype)], "per_class": np.bincount(y).tolist()}))
"""


@pytest.mark.skipif(
    not all(n in _registry._debian_package_files("dataset-fashion-mnist") for n in IDX_FILES),
    reason="the Debian package dataset-fashion-mnist is not installed (apt-get install dataset-fashion-mnist)",
)
def test_real_fashion_mnist_from_the_debian_package(tmp_path):
    result = _run_isolated(_REAL_FASHION, tmp_path)
    assert result["shapes"] == [[60_000, 28, 28, 1], [10_000, 28, 28, 1]]
    assert result["classes"] == list(range(10)) and result["per_class"] == [6000] * 10
    assert result["range"] == [0.0, 1.0] and result["dtypes"] == ["float32", "int64"]


# --------------------------------------------------------------------------------------
# tfds: a dataset that is not prepared is one clear error, never a download.


def test_tfds_dataset_not_prepared_is_one_clear_error(tmp_path, tfds_tempdir):
    with pytest.raises(data.DatasetNotFoundError) as caught:
        data.load("cifar10", "train", data_dir=str(tmp_path))
    message = str(caught.value)
    assert "'cifar10'" in message and str(tmp_path) in message
    assert "tfds build cifar10" in message and "data_dir" in message


def test_an_unprepared_tfds_dataset_leaves_no_temporary_folder(tmp_path, tfds_tempdir):
    """tfds makes an empty `tmp*tfds` folder per builder of an unprepared dataset and never removes
    it; the library removes the empty ones it made, and nothing else."""
    kept = [tfds_tempdir / "tmpearliertfds", tfds_tempdir / "unrelated"]  # there before the call
    for folder in kept:
        folder.mkdir()
    for _ in range(2):
        with pytest.raises(data.DatasetNotFoundError):
            data.load("cifar10", "train", data_dir=str(tmp_path / "tfds"))
    assert sorted(tfds_tempdir.iterdir()) == sorted(kept)


def test_the_tfds_temporary_folder_cleanup_takes_the_folder_name_literally(tmp_path, monkeypatch):
    """A temporary folder whose name holds glob characters (`[1]`) is still cleaned."""
    import tempfile

    folder = tmp_path / "temp[1]"
    folder.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(folder))
    with pytest.raises(data.DatasetNotFoundError):
        data.load("cifar10", "train", data_dir=str(tmp_path / "tfds"))
    assert list(folder.iterdir()) == []


def test_tfds_missing_module_is_a_clear_import_error(monkeypatch):
    import tensorflow_datasets as tfds

    def builder(*args, **kwargs):
        raise ModuleNotFoundError("No module named 'importlib_resources'", name="importlib_resources")

    monkeypatch.setattr(tfds, "builder", builder)
    with pytest.raises(ImportError, match="pip install importlib-resources") as caught:
        data.load("cifar10")
    assert not isinstance(caught.value, ModuleNotFoundError)


def test_a_tfds_that_cannot_be_imported_is_one_clear_error_and_typos_still_get_their_hint(monkeypatch):
    # TensorFlow 2.16 / 2.17 cap protobuf below 5, and tensorflow-metadata 1.21 (which a fresh install picks)
    # needs protobuf 5: tensorflow-datasets then fails inside its lazy imports, with an ImportError on first
    # use and an AttributeError (`no attribute 'builder'`) after that; tfds 4.9.0-4.9.1 under protobuf 4.25 fail
    # with a TypeError. All three are simulated here.
    import sys
    import types

    class Broken(types.ModuleType):
        def __getattr__(self, attr):
            raise ImportError("cannot import name 'runtime_version' from 'google.protobuf'")

    class Protobuf(types.ModuleType):  # tfds 4.9.0-4.9.1's generated code under protobuf 4.25
        def __getattr__(self, attr):
            raise TypeError("Descriptors cannot be created directly.")

    for broken in (Broken("tensorflow_datasets"), types.ModuleType("tensorflow_datasets"),
                   Protobuf("tensorflow_datasets")):
        monkeypatch.setitem(sys.modules, "tensorflow_datasets", broken)
        with pytest.raises(ImportError, match=r"tensorflow-metadata<1\.21") as caught:
            data.load("cifar10")
        assert not isinstance(caught.value, ModuleNotFoundError)
        with pytest.raises(ImportError, match="'nosuchset'"):
            data.load("nosuchset")
        with pytest.raises(ValueError, match="Did you mean 'cifar10'.*other names were not checked"):
            data.load("cifr10")
        x, _ = data.load_arrays("digits", "train[:4]")  # the datasets that never need tfds still load
        assert x.shape[0] == 4


# --------------------------------------------------------------------------------------
# as_arrays: the one conversion of "a dataset" to (x float32 [0, 1], y int64).


def _expected():
    x = np.arange(4 * 2 * 2 * 1, dtype=np.uint8).reshape(4, 2, 2, 1) * 10
    y = np.array([3, 0, 2, 1])
    return x, y


@pytest.mark.parametrize(
    "form",
    ["tuple", "list", "onehot", "column_labels", "grey", "dict", "float", "tensors",
     "unbatched", "batched", "batched_onehot", "triples", "dict_dataset"],
)
def test_as_arrays_accepts_every_form(form):
    x, y = _expected()
    want_x = x.astype(np.float32) / np.float32(255)
    onehot = np.eye(5, dtype=np.float32)[y]
    ds = tf.data.Dataset.from_tensor_slices
    given = {
        "tuple": lambda: (x, y),
        "list": lambda: [x.tolist(), y.tolist()],
        "onehot": lambda: (x, onehot),
        "column_labels": lambda: (x, y[:, None]),
        "grey": lambda: (x[..., 0], y),
        "dict": lambda: {"image": x, "label": y},
        "float": lambda: (want_x.astype(np.float64), y.astype(np.float32)),
        "tensors": lambda: (tf.constant(x), tf.constant(y)),
        "unbatched": lambda: ds((x, y)),
        "batched": lambda: ds((x, y)).batch(3),
        "batched_onehot": lambda: ds((x, onehot)).batch(3),
        "triples": lambda: ds((x, y, np.ones(4))).batch(2),
        "dict_dataset": lambda: ds({"images": x, "labels": y}),
    }[form]()
    got_x, got_y = data.as_arrays(given)
    assert got_x.dtype == np.float32 and got_y.dtype == np.int64
    np.testing.assert_array_equal(got_x, want_x)
    np.testing.assert_array_equal(got_y, y)
    short_x, short_y = data.as_arrays(given, max_examples=3)
    np.testing.assert_array_equal(short_x, want_x[:3])
    np.testing.assert_array_equal(short_y, y[:3])


@pytest.mark.parametrize("form", ["grey_batched", "grey_batched_full", "grey_unbatched", "features_batched",
                                  "features_unbatched", "onehot_unbatched_square"])
def test_as_arrays_reads_grey_and_feature_datasets_like_their_arrays(form):
    # a batched dataset of grey (B, H, W) images once came back as B "images" of (H, W, B) with made-up labels
    x = np.arange(6 * 3 * 3, dtype=np.uint8).reshape(6, 3, 3) * 4
    y = np.array([2, 0, 1, 2, 1, 0])
    ds = tf.data.Dataset.from_tensor_slices
    flat = x.reshape(6, 9)
    given, want = {
        "grey_batched": (ds((x, y)).batch(4), x[..., None]),
        "grey_batched_full": (ds((x, y)).batch(3, drop_remainder=True), x[..., None]),  # known batch size 3 = H
        "grey_unbatched": (ds((x, y)), x[..., None]),
        "features_batched": (ds((flat, y)).batch(4), flat),
        "features_unbatched": (ds((flat, y)), flat),
        # one (3, 3, 1) image per element with a one-hot label of 3 classes: leading axes 3 and 3, as a
        # full batch of 3 grey images with sparse labels would have; float labels make it one example each
        "onehot_unbatched_square": (ds((x[..., None], np.eye(3, dtype=np.float32)[y])), x[..., None]),
    }[form]
    got_x, got_y = data.as_arrays(given)
    np.testing.assert_array_equal(got_x, want.astype(np.float32) / np.float32(255))
    np.testing.assert_array_equal(got_y, y)


def test_read_labelled_reports_the_one_hot_width_and_check_labels_uses_it():
    from tf_dlthesis.data._arrays import check_labels, read_labelled

    x = np.zeros((3, 2, 2, 1), np.float32)
    assert read_labelled((x, np.array([0, 1, 2])))[2] is None
    _, y, width = read_labelled(tf.data.Dataset.from_tensor_slices((x, np.eye(7)[[0, 1, 6]])).batch(2))
    assert width == 7 and y.tolist() == [0, 1, 6]
    check_labels(y, 7, width)
    with pytest.raises(ValueError, match="7 columns for a model with 10 logits"):
        check_labels(y, 10, width)
    with pytest.raises(ValueError, match=r"outside \[0, 4\].*\[6\]"):
        check_labels(y, 5)


def test_as_images_reads_arrays_pairs_and_datasets_alike():
    from tf_dlthesis.data._arrays import as_images

    x = (np.arange(4 * 2 * 2) % 256).astype(np.uint8).reshape(4, 2, 2)
    want = x[..., None].astype(np.float32) / np.float32(255)
    y = np.arange(4)
    for given in (x, x[..., None], (x, y), [x, y], {"image": x, "label": y},
                  tf.data.Dataset.from_tensor_slices((x, y)).batch(3)):
        np.testing.assert_array_equal(as_images(given), want)
    floats = np.random.default_rng(0).random((2, 2, 2, 1))
    np.testing.assert_array_equal(as_images(floats), floats.astype(np.float32))
    with pytest.raises(TypeError, match="`images` must be an array"):
        as_images([np.zeros((2, 2)), "a"])
    with pytest.raises(ValueError, match=r"shape=\(3,\)"):
        as_images(np.zeros(3))
    with pytest.raises(ValueError, match="finite"):
        as_images(np.full((1, 2, 2, 1), np.nan))
    with pytest.raises(ValueError, match="empty batch"):
        as_images(np.zeros((0, 2, 2, 1)))
    # where only colour batches are meant, one (H, W, C) image does not pass for H grey images
    with pytest.raises(ValueError, match=r"must have shape \(N, H, W, C\)\. Received: shape=\(2, 2, 1\)"):
        as_images(np.zeros((2, 2, 1)), ranks=(4,))


def test_as_arrays_reads_a_dataset_no_further_than_needed():
    x, y = _expected()
    endless = tf.data.Dataset.from_tensor_slices((x, y)).repeat()
    got_x, got_y = data.as_arrays(endless, max_examples=6)
    np.testing.assert_array_equal(got_y, np.concatenate([y, y])[:6])
    got_x, got_y = data.as_arrays(endless.batch(4), max_examples=6)
    assert len(got_x) == 6


@pytest.mark.parametrize(
    "given, error, pattern",
    [
        (None, TypeError, "type NoneType"),
        ("digits", TypeError, "type str"),
        (np.zeros((4, 2, 2, 1)), TypeError, "type ndarray"),
        ((np.zeros((4, 2, 2, 1)),) * 3, TypeError, "tuple of length 3"),
        ({"x": 1, "y": 2}, TypeError, r"Received keys: \['x', 'y'\]"),
        (tf.data.Dataset.from_tensor_slices(np.zeros((4, 2, 2, 1))), TypeError, "element_spec="),
        ((np.zeros((4, 2, 2, 1)), np.zeros(3)), ValueError, "4 images, 3 labels"),
        ((np.zeros((0, 2, 2, 1)), np.zeros(0)), ValueError, "empty"),
        (tf.data.Dataset.from_tensor_slices((np.zeros((4, 2, 2, 1)), np.zeros(4))).take(0), ValueError, "empty"),
        (tf.data.Dataset.from_tensor_slices((np.zeros((4, 2, 2, 1, 1)), np.zeros(4))), ValueError, "element_spec="),
        (tf.data.Dataset.from_tensor_slices((np.zeros((4, 2, 2, 1)), np.zeros((4, 2, 2, 2)))), ValueError,
         "element_spec="),
        (tf.data.Dataset.from_tensor_slices((np.zeros((4, 3, 2, 2, 1)), np.zeros((4, 2, 5)))), ValueError,
         "hold 3 images but 2 labels"),
        ((np.full((4, 2, 2, 1), np.nan), np.zeros(4)), ValueError, "16 NaN or infinite"),
        ((np.array([[0.5], [np.inf]]), np.zeros(2)), ValueError, "1 NaN or infinite"),
        ((np.zeros((4,)), np.zeros(4)), ValueError, r"images of shape \(4,\)"),
        ((np.zeros((4, 2, 2, 1, 1)), np.zeros(4)), ValueError, r"images of shape \(4, 2, 2, 1, 1\)"),
        ((np.zeros((4, 2, 2, 1)), np.zeros((4, 2, 2))), ValueError, r"labels of shape \(4, 2, 2\)"),
        ((np.zeros((4, 2, 2, 1)), np.array([0, 1, -1, 2])), ValueError, "label of -1"),
        ((np.zeros((4, 2, 2, 1)), np.array([0, 1.5, 1, 2])), ValueError, "whole numbers"),
        ((np.zeros((4, 2, 2, 1), dtype=str), np.zeros(4)), TypeError, "dtype <U1"),
    ],
)
def test_as_arrays_rejects_bad_input(given, error, pattern):
    with pytest.raises(error, match=pattern):
        data.as_arrays(given)


@pytest.mark.parametrize("max_examples, error", [(0, ValueError), (-1, ValueError), (2.5, TypeError),
                                                 (True, TypeError), ("3", TypeError)])
def test_as_arrays_rejects_bad_max_examples(max_examples, error):
    x, y = _expected()
    with pytest.raises(error, match=f"max_examples={max_examples!r}"):
        data.as_arrays((x, y), max_examples=max_examples)


def test_as_arrays_passes_feature_vectors_through():
    x, y = data.as_arrays((np.full((3, 5), 255, np.uint8), [0, 1, 2]))
    assert x.shape == (3, 5) and np.all(x == 1.0) and y.tolist() == [0, 1, 2]


# --------------------------------------------------------------------------------------
# Probe: empty slices, corrupt (Fashion-)MNIST files, and as_arrays edge values.


@pytest.mark.parametrize("split", ["train[5:2]", "train[:0]", "train[2000:]", "test[:-100%]", "all[0%:0%]"])
def test_a_split_slice_selecting_no_examples_is_an_error(split):
    # before: a silently empty dataset (0 examples)
    with pytest.raises(ValueError, match=re.escape(f"Received: split={split!r}")) as caught:
        data.load_arrays("digits", split)
    assert "selects no examples" in str(caught.value)
    with pytest.raises(ValueError, match="selects no examples"):
        data.load("digits", split)


def test_empty_slices_of_keras_datasets_are_errors_and_full_slices_still_work(tmp_path):
    _tiny_idx_set(tmp_path, seed=3)
    with pytest.raises(ValueError, match=r"the 'train' split has 5, and the slice resolves to rows \[5:2\]"):
        data.load_arrays("mnist", "train[5:2]", data_dir=tmp_path)
    with pytest.raises(ValueError, match="selects no examples"):
        data.load("mnist", "test[3:]", data_dir=tmp_path)
    # an absolute bound beyond the split: an error, as in tensorflow-datasets (before: clamped to 5)
    with pytest.raises(ValueError, match=r"bound beyond the 'train' split's 5 examples \(it would be clamped to 5\)"):
        data.load_arrays("mnist", "train[:9]", data_dir=tmp_path)
    with pytest.raises(ValueError, match=r"Received: split='train\[-2000:\]'"):
        data.load_arrays("digits", "train[-2000:]")
    assert len(data.load_arrays("mnist", "train[:5]", data_dir=tmp_path)[1]) == 5
    assert len(data.load_arrays("digits", "train[-3:]")[1]) == 3


def test_mnist_files_with_out_of_range_labels_or_foreign_npz_arrays_are_rejected(tmp_path):
    images, labels, test_images, test_labels = _tiny_idx_set(tmp_path / "idx", seed=4)
    bad = labels.copy()
    bad[2] = 200
    _write_idx(tmp_path / "idx" / "train-labels-idx1-ubyte.gz", bad)
    # before: label 200 of a 10-class set passed through
    with pytest.raises(ValueError, match=r"train-labels-idx1-ubyte.gz has labels outside \[0, 9\].*\[200\]"):
        data.load_arrays("mnist", "train", data_dir=tmp_path / "idx")

    def npz(folder, **arrays):
        os.makedirs(tmp_path / folder)
        base = dict(x_train=images, y_train=labels, x_test=test_images, y_test=test_labels)
        np.savez(tmp_path / folder / "mnist.npz", **{**base, **arrays})
        return tmp_path / folder

    # before: 4 labels for 5 images, 32x32 float images scaled by 1/255, and label -3 all loaded
    with pytest.raises(ValueError, match=r"\(y_train\) must hold one integer label per image"):
        data.load_arrays("mnist", "train", data_dir=npz("count", y_train=labels[:4]))
    with pytest.raises(ValueError, match=r"\(x_train\) must hold mnist's uint8 28x28 images.*float64"):
        data.load_arrays("mnist", "train", data_dir=npz("shape", x_train=np.zeros((5, 32, 32))))
    with pytest.raises(ValueError, match=r"\(y_test\) has labels outside \[0, 9\].*\[-3\]"):
        data.load_arrays("mnist", "test", data_dir=npz("negative", y_test=np.array([0, 1, -3])))
    os.makedirs(tmp_path / "garbage")
    (tmp_path / "garbage" / "mnist.npz").write_bytes(b"not a zip archive")
    # before: NumPy's "This file contains pickled (object) data ..."
    with pytest.raises(ValueError, match="is not a NumPy .npz archive"):
        data.load_arrays("mnist", "train", data_dir=tmp_path / "garbage")


_FASHION_CORRUPT = """
    import gzip, json, os, sys
    from tf_dlthesis import data

    out = {}
    for folder in sys.argv[1:]:
        try:
            data.load_arrays("fashion_mnist", "test", data_dir=folder)
            out[os.path.basename(folder)] = "loaded"
        except Exception as err:
            out[os.path.basename(folder)] = f"{type(err).__name__}: {err}"
    print(json.dumps(out))
"""


def test_fashion_mnist_with_truncated_or_foreign_files_names_the_file(tmp_path):
    # Keras's loader reshapes whatever bytes it finds; before: "cannot reshape array of size
    # ... into shape (3,28,28)" / a bare EOFError / labels outside 0..9 loaded.
    folders = {}
    for case in ("truncated", "stream", "labels", "trailing"):
        folders[case] = tmp_path / case
        _tiny_idx_set(folders[case], seed=5)
    images = folders["truncated"] / "t10k-images-idx3-ubyte.gz"
    with gzip.open(images, "rb") as f:
        body = f.read()
    with gzip.open(images, "wb") as f:
        f.write(body[:-100])  # header promises 3 images
    stream = folders["stream"] / "t10k-images-idx3-ubyte.gz"
    stream.write_bytes(stream.read_bytes()[:-40])  # the gzip stream itself ends early
    _write_idx(folders["labels"] / "t10k-labels-idx1-ubyte.gz", np.array([1, 12, 3]))
    trailing = folders["trailing"] / "t10k-images-idx3-ubyte.gz"
    with gzip.open(trailing, "rb") as f:
        body = f.read()
    with gzip.open(trailing, "wb") as f:
        f.write(body + bytes(16))  # before: Keras's "cannot reshape array of size 2368 into shape (3,28,28)"
    result = _run_isolated(_FASHION_CORRUPT, tmp_path, *folders.values())
    assert result["truncated"].startswith("ValueError: ") and "t10k-images-idx3-ubyte.gz is truncated" in result["truncated"]
    assert result["stream"].startswith("ValueError: ") and "t10k-images-idx3-ubyte.gz is not a gzipped IDX" in result["stream"]
    assert result["labels"].startswith("ValueError: ") and "t10k-labels-idx1-ubyte.gz has labels outside [0, 9]" in result["labels"]
    assert result["trailing"].startswith("ValueError: ") and "t10k-images-idx3-ubyte.gz holds 16 bytes beyond" in result["trailing"]
    # the MNIST files, read here rather than by Keras, loaded with the extra bytes ignored
    with pytest.raises(ValueError, match="holds 16 bytes beyond"):
        data.load_arrays("mnist", "test", data_dir=folders["trailing"])


def test_load_arrays_of_variable_size_tfds_images_asks_for_image_size(tmp_path, tfds_tempdir):
    import tensorflow_datasets as tfds

    with tfds.testing.mock_data(num_examples=4):
        # before: "Cannot add tensor to the batch: number of elements does not match" from TF
        with pytest.raises(ValueError, match="images of different sizes.*image_size="):
            data.load_arrays("oxford_flowers102", "test", data_dir=str(tmp_path))
        x, y = data.load_arrays("oxford_flowers102", "test", data_dir=str(tmp_path), image_size=8)
    assert x.shape == (4, 8, 8, 3) and y.dtype == np.int64


def test_info_checks_data_dir_and_per_class_split_checks_its_input(tfds_tempdir):
    with pytest.raises(TypeError, match="data_dir=3"):
        data.info("digits", data_dir=3)
    # a registered tfds name that is not image classification (before: KeyError: 'image')
    with pytest.raises(ValueError, match=r"'imdb_reviews' is not a tensorflow-datasets image-classification"):
        data.info("imdb_reviews")
    # and `load` says the same, before telling the user to prepare a set it cannot use
    with pytest.raises(ValueError, match=r"'imdb_reviews' is not a tensorflow-datasets image-classification"):
        data.load("imdb_reviews", "train", data_dir=str(tfds_tempdir))
    # a tfds set that is not prepared: its classes and shape are known, its split sizes are not (as in tfds)
    beans = data.info("beans", data_dir=str(tfds_tempdir))
    assert (beans.num_classes, beans.image_shape, beans.splits) == (3, (500, 500, 3), {})
    with pytest.raises(data.DatasetNotFoundError, match="no prepared copy of 'beans'"):
        data.load("beans", "train", data_dir=str(tfds_tempdir))
    labels = np.repeat(np.arange(2), 4)
    # before: "need at least one array to concatenate", "'int' object is not iterable", 1.7 read as 1
    with pytest.raises(ValueError, match="`labels` is empty"):
        data.per_class_split([], (1,))
    # before: NumPy's "expected non-negative integer" / "SeedSequence expects int", naming no argument
    with pytest.raises(ValueError, match="`seed` must be an int >= 0 or None\. Received: seed=-1"):
        data.per_class_split(labels, (1, 1), seed=-1)
    with pytest.raises(TypeError, match="Received: seed='a'"):
        data.per_class_split(labels, (1, 1), seed="a")
    assert len(data.per_class_split(labels, (1, 1), seed=None)[0]) == 2  # None: fresh entropy
    with pytest.raises(ValueError, match="sizes=2"):
        data.per_class_split(labels, 2)
    with pytest.raises(ValueError, match=r"sizes=\(1.7,\)"):
        data.per_class_split(labels, (1.7,))
    whole = data.per_class_split(labels, (2.0, 1))
    assert [len(p) for p in whole] == [4, 2]


@pytest.mark.parametrize(
    "given, error, pattern",
    [
        # before: silently wrapped to a negative int64 label past the ">= 0" check
        ((np.zeros((2, 2, 2, 1)), np.array([0, 2**63 + 5], np.uint64)), ValueError, "class indices"),
        ((np.zeros((2, 2, 2, 1)), np.array([0.0, 1e20])), ValueError, "class indices"),
        # before: the imaginary part silently dropped
        ((np.zeros((2, 2, 2, 1)), np.array([0j, 1j])), TypeError, "complex128"),
        ((np.zeros((2, 2, 2, 1), complex), np.array([0, 1])), TypeError, "complex128"),
        # before: 1000 / 255 = 3.9 and -5 / 255 passed as "[0, 1]" images
        ((np.full((2, 2, 2), 1000, np.uint16), np.array([0, 1])), ValueError, r"uint16 with values in \[1000, 1000\]"),
        ((np.full((2, 2, 2), -5, np.int32), np.array([0, 1])), ValueError, r"\[-5, -5\]"),
        # before: NumPy's "attempt to get argmax of an empty sequence"
        ((np.zeros((2, 2, 2, 1)), np.zeros((2, 0))), ValueError, r"labels of shape \(2, 0\)"),
    ],
)
def test_as_arrays_rejects_values_it_would_silently_corrupt(given, error, pattern):
    with pytest.raises(error, match=pattern):
        data.as_arrays(given)


def test_as_arrays_still_takes_8_bit_integers_of_any_integer_dtype():
    x, y = data.as_arrays((np.array([[[0, 255]]], np.int64), np.array([np.uint64(3)])))
    assert x.dtype == np.float32 and x.ravel().tolist() == [0.0, 1.0] and y.tolist() == [3]


@pytest.mark.parametrize("split", ["train[:150%]", "test[-101%:]", "all[200%:300%]"])
def test_percent_slice_bounds_beyond_the_split_are_errors(split):
    # before: silently clamped to the whole split (a typo read as "all of it")
    with pytest.raises(ValueError, match=r"must lie in \[-100%, 100%\]"):
        data.load_arrays("digits", split)
    assert len(data.load_arrays("digits", "train[:100%]")[1]) == 1433
    assert len(data.load_arrays("digits", "train[-100%:]")[1]) == 1433


def _digits_xy():
    return data.load_arrays("digits", "train")


@pytest.mark.parametrize("bad, match", [
    (lambda x, y: (x, y + 0.5), "whole numbers"),            # were truncated to int silently
    (lambda x, y: (x, y - 3), ">= 0"),                       # a label -1 was yielded
    (lambda x, y: (x[:600], y[:500]), "differ in length"),   # was accepted
    (lambda x, y: (x[:100], y[:500]), "differ in length"),   # failed mid-iteration in TF
])
def test_non_iid_batches_check_their_examples_as_as_arrays_does(bad, match):
    x, y = _digits_xy()
    with pytest.raises(ValueError, match=match):
        data.non_iid_batches(bad(x, y), batch_size=32, classes_per_batch=4, seed=0)


@pytest.mark.parametrize("num_batches, error", [(0, ValueError), (-1, ValueError), (2.5, TypeError),
                                                (True, TypeError)])
def test_non_iid_batches_num_batches_must_be_a_positive_int(num_batches, error):
    x, y = _digits_xy()
    with pytest.raises(error, match="num_batches"):
        data.non_iid_batches((x, y), batch_size=32, classes_per_batch=4, seed=0, num_batches=num_batches)


def test_uint8_images_are_scaled_to_unit_range_in_both_pipelines():
    x, y = _digits_xy()
    raw = np.round(x[:256] * 255).astype(np.uint8)   # digits are k / 16: not all exactly 8-bit, so compare to raw / 255
    want = raw.astype(np.float32) / np.float32(255.0)
    # training_dataset used to stream the 0..255 values unchanged
    batch, _ = next(iter(data.training_dataset(raw, y[:256], batch_size=256, shuffle_seed=0, epochs=1)))
    got = np.sort(batch.numpy().reshape(256, -1), axis=0)
    np.testing.assert_array_equal(got, np.sort(want.reshape(256, -1), axis=0))
    # non_iid_batches too
    xb, yb = next(iter(data.non_iid_batches((raw, y[:256]), batch_size=32, classes_per_batch=4, seed=0)))
    assert xb.dtype == tf.float32 and float(tf.reduce_max(xb)) <= 1.0
    for image, label in zip(xb.numpy(), yb.numpy()):
        assert any(np.array_equal(image, w) for w in want[y[:256] == label])
    # float images pass through unchanged (bit for bit)
    fb, _ = next(iter(data.training_dataset(x[:64], y[:64], batch_size=64, shuffle_seed=0, epochs=1)))
    assert fb.dtype == tf.float32 and set(np.unique(fb.numpy())) <= set(np.unique(x[:64]))
    with pytest.raises(TypeError, match="real numbers"):
        data.training_dataset(raw.astype(complex), y[:256], batch_size=32, shuffle_seed=0)


def test_a_store_refuses_to_read_back_a_run_trained_on_other_files(tmp_path):
    # the store keys a run by its spec and seeds: another data_dir's files once read the first files' run back
    from tf_dlthesis.experiments import ResultsStore, TrainSpec, train
    from tf_dlthesis.experiments import training

    _tiny_idx_set(tmp_path / "a", seed=0)
    _tiny_idx_set(tmp_path / "b", seed=1)
    spec = TrainSpec(dataset="mnist", model="linear", epochs=1, batch_size=4)
    store = ResultsStore(tmp_path / "store.sqlite")
    with training.data_dir(tmp_path / "a"):
        first = train(spec, 0, store=store)[0]
        assert first.info["data_files"] == _registry.source_fingerprint("mnist", tmp_path / "a")
        assert train(spec, 0, store=store)[0].from_store  # the same files: read back
    with training.data_dir(tmp_path / "b"), pytest.raises(ValueError, match="trained on other mnist files"):
        train(spec, 0, store=store)
    assert _registry.source_fingerprint("mnist", tmp_path / "a") != _registry.source_fingerprint("mnist", tmp_path / "b")
    # a copy compressed differently holds the same data: the same fingerprint
    os.makedirs(tmp_path / "c")
    for name in IDX_FILES:
        with gzip.open(tmp_path / "a" / name) as src, gzip.open(tmp_path / "c" / name, "wb", compresslevel=1) as dst:
            dst.write(src.read())
    assert _registry.source_fingerprint("mnist", tmp_path / "c") == _registry.source_fingerprint("mnist", tmp_path / "a")
    assert _registry.source_fingerprint("digits") == "sklearn-digits"
    assert _registry.source_fingerprint("mnist", tmp_path / "nowhere") is None


def test_keras_home_naming_a_file_is_a_clear_error(tmp_path):
    _tiny_idx_set(tmp_path / "idx", seed=0)
    (tmp_path / "khfile").write_text("not a folder")
    script = ("import sys\nfrom tf_dlthesis import data\n"
              "try:\n    data.load_arrays('fashion_mnist', 'train', data_dir=sys.argv[1])\n"
              "except ValueError as e:\n    print('ERR', e)\n")
    # the Debian package's (original) files go through Keras's cache; stand the tiny set in for them
    script = script.replace("from tf_dlthesis import data\n", "from tf_dlthesis import data\nfrom tf_dlthesis.data "
                            "import _registry\n_registry._original_fashion = lambda files: True\n")
    env = dict(os.environ, KERAS_HOME=str(tmp_path / "khfile"), TF_CPP_MIN_LOG_LEVEL="3")
    out = subprocess.run([sys.executable, "-c", script, str(tmp_path / "idx")], capture_output=True, text=True,
                         env=env, timeout=300).stdout  # once: NotADirectoryError from inside Keras
    assert "ERR Keras's cache folder" in out and "KERAS_HOME" in out, out
