"""Dataset names, metadata and loading (digits embedded; everything else via tfds)."""

from __future__ import annotations

import dataclasses
import difflib
import functools

import numpy as np
import tensorflow as tf

DIGITS = "digits"
# tfds image-classification datasets the thesis uses, with their known metadata, so
# `info` answers without downloading. Any other tfds name is accepted too.
_KNOWN_TFDS = {
    "cifar10": (10, (32, 32, 3), {"train": 50_000, "test": 10_000}),
    "cifar100": (100, (32, 32, 3), {"train": 50_000, "test": 10_000}),
    "svhn_cropped": (10, (32, 32, 3), {"train": 73_257, "test": 26_032, "extra": 531_131}),
    "mnist": (10, (28, 28, 1), {"train": 60_000, "test": 10_000}),
    "caltech101": (102, (None, None, 3), {"train": 3_060, "test": 6_084}),
    "oxford_flowers102": (102, (None, None, 3), {"train": 1_020, "validation": 1_020, "test": 6_149}),
    "caltech_birds2011": (200, (None, None, 3), {"train": 5_994, "test": 5_794}),
}
# Thesis validation protocol (Sec. 2.4, 4.4): CIFAR-100 holds out 10k of its 50k training images.
THESIS_VALIDATION_SPLITS = {
    "cifar100": ("train[:40000]", "train[40000:]"),
    "cifar10": ("train[:45000]", "train[45000:]"),
}


@dataclasses.dataclass(frozen=True)
class DatasetInfo:
    """What a model needs to know about a dataset.

    Attributes:
        name: the dataset name as given to `load`.
        num_classes: number of labels.
        image_shape: (H, W, C) of the images `load` yields (None for variable sizes).
        splits: split name -> number of examples.
    """

    name: str
    num_classes: int
    image_shape: tuple
    splits: dict


def _check_name(name) -> str:
    if not isinstance(name, str) or not name:
        raise TypeError(f"`name` must be a dataset name string. Received: name={name!r}")
    return name


def _check_image_size(image_size):
    if image_size is None:
        return None
    if isinstance(image_size, bool) or not isinstance(image_size, (int, np.integer)) or image_size < 1:
        raise ValueError(f"`image_size` must be a positive int or None. Received: image_size={image_size!r}")
    return int(image_size)


@functools.lru_cache(maxsize=None)
def _digits_arrays():
    """All 1,797 digits as (x float32 (N, 8, 8, 1) in [0, 1], y int64) and the fixed split.

    The split is stratified and involves no RNG: within each class (in the order
    scikit-learn ships the examples), every fifth example is a test example. That
    gives 360 test / 1,437 train examples on every machine and library version.
    """
    from sklearn.datasets import load_digits

    bunch = load_digits()
    x = (bunch.images.astype(np.float32) / 16.0)[..., None]
    y = bunch.target.astype(np.int64)
    is_test = np.zeros(len(y), dtype=bool)
    for c in range(10):
        idx = np.flatnonzero(y == c)
        is_test[idx[::5]] = True
    return x, y, is_test


def _tfds_builder_names():
    import tensorflow_datasets as tfds

    try:
        return list(tfds.list_builders())
    except Exception:  # pragma: no cover - listing never needs the network, but be safe
        return list(_KNOWN_TFDS)


def info(name: str, *, image_size: int | None = None, data_dir: str | None = None) -> DatasetInfo:
    """Metadata of a dataset: number of classes, image shape and split sizes.

    Example:

    >>> from tf_dlthesis import data
    >>> data.info("digits").num_classes
    10

    Args:
        name: `"digits"` or a tfds image-classification dataset name.
        image_size: the size `load(..., image_size=...)` would resize to.
        data_dir: tfds data directory (used for names not built in).

    Returns:
        A `DatasetInfo`.

    Raises:
        ValueError: for an unknown dataset name.
    """
    name = _check_name(name)
    image_size = _check_image_size(image_size)
    if name == DIGITS:
        _, y, is_test = _digits_arrays()
        shape = (8, 8, 1) if image_size is None else (image_size, image_size, 3)
        return DatasetInfo(name, 10, shape, {"train": int((~is_test).sum()), "test": int(is_test.sum())})
    if name in _KNOWN_TFDS:
        k, shape, splits = _KNOWN_TFDS[name]
    else:
        _check_tfds_name(name)
        import tensorflow_datasets as tfds

        builder = tfds.builder(name, data_dir=data_dir)
        feature = builder.info.features["label"]
        k = feature.num_classes
        shape = tuple(builder.info.features["image"].shape)
        splits = {s: v.num_examples for s, v in builder.info.splits.items()}
    if image_size is not None:
        shape = (image_size, image_size, shape[-1] if shape[-1] == 3 else 3)
    return DatasetInfo(name, k, tuple(shape), dict(splits))


def _check_tfds_name(name):
    if name in _KNOWN_TFDS:
        return
    names = _tfds_builder_names()
    if name.split(":")[0] not in names:
        close = difflib.get_close_matches(name, [DIGITS, *names], n=3)
        hint = f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""
        raise ValueError(
            f"Unknown dataset name. Expected 'digits' or a tensorflow-datasets image "
            f"classification name such as 'cifar10'. Received: name={name!r}.{hint}"
        )


def _resize(images, image_size):
    """Resizes (..., H, W, C) images to image_size x image_size and tiles grey to RGB."""
    if image_size is None:
        return images
    images = tf.image.resize(images, (image_size, image_size), method="bilinear")
    if images.shape[-1] == 1:
        images = tf.repeat(images, 3, axis=-1)
    return tf.clip_by_value(images, 0.0, 1.0)


def load_arrays(name: str, split: str = "train", *, image_size: int | None = None, data_dir: str | None = None):
    """Loads a whole split into memory as NumPy arrays.

    Args:
        name: `"digits"` or a tfds name.
        split: `"train"`, `"test"` or `"all"` for digits; any tfds split string otherwise.
        image_size: resize to image_size x image_size (grey tiled to 3 channels).
        data_dir: tfds data directory.

    Returns:
        `(x, y)`: float32 (N, H, W, C) in [0, 1] and int64 (N,).
    """
    name = _check_name(name)
    image_size = _check_image_size(image_size)
    if name == DIGITS:
        x, y, is_test = _digits_arrays()
        splits = {"train": ~is_test, "test": is_test, "all": np.ones_like(is_test)}
        if split not in splits:
            raise ValueError(f"Unknown split for 'digits'. Expected one of {sorted(splits)}. Received: split={split!r}")
        x, y = x[splits[split]], y[splits[split]]
        if image_size is not None:
            x = _resize(tf.constant(x), image_size).numpy()
        return x, y
    ds = load(name, split, data_dir=data_dir, image_size=image_size).batch(1024)
    xs, ys = [], []
    for bx, by in ds.as_numpy_iterator():
        xs.append(bx)
        ys.append(by)
    return np.concatenate(xs), np.concatenate(ys)


def load(name: str, split: str = "train", *, data_dir: str | None = None, image_size: int | None = None) -> tf.data.Dataset:
    """Loads an image-classification dataset as `(image, label)` pairs.

    Images are float32 in [0, 1] with shape (H, W, C); labels are int64 scalars.
    The dataset is unbatched and in a fixed order (shuffle it yourself, or use
    `training_dataset`).

    `"digits"` is scikit-learn's 1,797 real 8x8 handwritten digits (shipped inside
    scikit-learn, so it works offline) with a fixed stratified split of 1,437 train
    and 360 test images. Every other name goes to `tfds.load` with `data_dir`, so a
    pre-downloaded tfds directory works without network access.

    Example:

    >>> from tf_dlthesis import data
    >>> ds = data.load("digits", "test", image_size=32)
    >>> image, label = next(iter(ds))
    >>> tuple(image.shape)
    (32, 32, 3)

    Args:
        name: `"digits"` or a tfds name (`"cifar10"`, `"cifar100"`, `"svhn_cropped"`, ...).
        split: `"train"`, `"test"` (or `"all"` for digits); any tfds split string
            such as `"train[:40000]"` for tfds datasets.
        data_dir: tfds data directory.
        image_size: resize to image_size x image_size; greyscale is tiled to RGB so
            CIFAR-style models run on digits.

    Returns:
        A `tf.data.Dataset`.

    Raises:
        ValueError: unknown dataset or split.
    """
    name = _check_name(name)
    image_size = _check_image_size(image_size)
    if name == DIGITS:
        x, y = load_arrays(DIGITS, split, image_size=image_size)
        return tf.data.Dataset.from_tensor_slices((x, y))
    _check_tfds_name(name)
    import tensorflow_datasets as tfds

    try:
        ds = tfds.load(name, split=split, data_dir=data_dir, as_supervised=True, shuffle_files=False)
    except (ValueError, KeyError) as err:  # tfds raises these for bad split strings
        raise ValueError(f"Could not load split {split!r} of {name!r}: {err}") from None

    def convert(image, label):
        image = tf.image.convert_image_dtype(image, tf.float32)
        return _resize(image, image_size), tf.cast(label, tf.int64)

    return ds.map(convert, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)


def validation_splits(name: str) -> tuple[str, str]:
    """The thesis's (train, validation) split strings for a tfds dataset.

    CIFAR-100: 40k/10k (Sec. 4.4). Datasets without a thesis protocol raise.
    """
    if name not in THESIS_VALIDATION_SPLITS:
        raise ValueError(
            f"No thesis validation protocol for this dataset. Expected one of "
            f"{sorted(THESIS_VALIDATION_SPLITS)}; for per-class splits use "
            f"`per_class_split`. Received: name={name!r}"
        )
    return THESIS_VALIDATION_SPLITS[name]


def per_class_split(labels, sizes=(40, 10, 30), *, seed: int = 0):
    """Splits example indices into parts with a fixed number per class.

    The thesis's Caltech-256 protocol is 40 train / 10 validation / 30 test
    images per class (`sizes=(40, 10, 30)`). Selection is a seeded permutation
    within each class.

    Args:
        labels: int array (N,).
        sizes: examples per class for each returned part.
        seed: permutation seed.

    Returns:
        A tuple of sorted int64 index arrays, one per entry of `sizes`.

    Raises:
        ValueError: if a class has fewer than `sum(sizes)` examples or a size is < 0.
    """
    labels = np.asarray(labels)
    if labels.ndim != 1:
        raise ValueError(f"`labels` must be 1-D. Received shape {labels.shape}")
    sizes = tuple(int(s) for s in sizes)
    if any(s < 0 for s in sizes):
        raise ValueError(f"`sizes` must be >= 0. Received: sizes={sizes}")
    rng = np.random.default_rng(seed)
    parts = [[] for _ in sizes]
    for c in np.unique(labels):
        idx = np.flatnonzero(labels == c)
        if len(idx) < sum(sizes):
            raise ValueError(
                f"Class {c} has {len(idx)} examples, fewer than sum(sizes)={sum(sizes)}. Received: sizes={sizes}"
            )
        idx = rng.permutation(idx)
        start = 0
        for part, s in zip(parts, sizes):
            part.append(idx[start:start + s])
            start += s
    return tuple(np.sort(np.concatenate(p)).astype(np.int64) for p in parts)
