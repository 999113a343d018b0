"""One conversion from "a dataset" (arrays, tuples or `tf.data`) to NumPy arrays."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import tensorflow as tf

from tf_dlthesis._checks import check_int

# Keys accepted for dict-structured examples: tfds's non-supervised form and the
# `{"images", "labels"}` dict that `augment.MixedExample` takes and returns.
_DICT_KEYS = (("image", "label"), ("images", "labels"))


def _check_max_examples(max_examples):
    return check_int("max_examples", max_examples, 1, allow_none=True)


def _pair_from_mapping(mapping, what):
    for image_key, label_key in _DICT_KEYS:
        if image_key in mapping and label_key in mapping:
            return mapping[image_key], mapping[label_key]
    raise TypeError(
        f"{what} is a dict, so it must have the keys ('image', 'label') or ('images', 'labels'). "
        f"Received keys: {sorted(mapping)}"
    )


def _dataset_to_numpy(dataset: tf.data.Dataset, max_examples):
    spec = dataset.element_spec
    if isinstance(spec, Mapping):
        image_spec, label_spec = _pair_from_mapping(spec, "Each dataset element")
        dataset = dataset.map(lambda e: _pair_from_mapping(e, "Each dataset element"))
    elif isinstance(spec, tuple) and len(spec) >= 2:
        image_spec, label_spec = spec[0], spec[1]
        if len(spec) > 2:  # (image, label, sample_weight): keep the first two
            dataset = dataset.map(lambda *e: (e[0], e[1]))
    else:
        raise TypeError(
            "`dataset` elements must be (image, label) tuples (or dicts with 'image' and 'label'). "
            f"Received: element_spec={spec}"
        )
    if not isinstance(image_spec, tf.TensorSpec) or not isinstance(label_spec, tf.TensorSpec):
        raise TypeError(f"`dataset` images and labels must be dense tensors. Received: element_spec={spec}")
    rank = image_spec.shape.rank
    if rank not in (3, 4):
        raise ValueError(
            "`dataset` images must have rank 3 (H, W, C; an unbatched dataset) or 4 (B, H, W, C; "
            f"a batched one). Received: element_spec={spec}"
        )
    if rank == 3:  # unbatched
        if max_examples is not None:
            dataset = dataset.take(max_examples)
        dataset = dataset.batch(512)
    xs, ys, n = [], [], 0
    for xb, yb in dataset.as_numpy_iterator():
        xs.append(xb)
        ys.append(yb)
        n += len(xb)
        if max_examples is not None and n >= max_examples:
            break
    if not xs:
        raise ValueError(f"`dataset` is empty: it yielded no (image, label) examples. Received: dataset={dataset!r}")
    try:
        return np.concatenate(xs), np.concatenate(ys)
    except ValueError as err:
        raise ValueError(
            f"`dataset` batches could not be stacked into one array (images of different sizes?): {err}. "
            f"Received: element_spec={spec}"
        ) from None


def _check_real_images(x: np.ndarray) -> None:
    if not (np.issubdtype(x.dtype, np.number) or x.dtype == bool) or np.issubdtype(x.dtype, np.complexfloating):
        raise TypeError(f"Images must be real numbers. Received: images of dtype {x.dtype}")


def unit_images(x: np.ndarray) -> np.ndarray:
    """Images in [0, 1]: integer (8-bit) images scaled by 1/255, bool ones as 0/1, floats unchanged.

    Raises:
        TypeError: non-numeric or complex images.
        ValueError: integer images outside [0, 255].
    """
    _check_real_images(x)
    if np.issubdtype(x.dtype, np.integer):
        low, high = x.min(), x.max()
        if low < 0 or high > 255:
            raise ValueError(
                f"Integer images must hold 8-bit pixel values in [0, 255] (they are scaled by 1/255 to [0, 1]); "
                f"rescale others to float32 in [0, 1] first. Received: images of dtype {x.dtype} with values in "
                f"[{low}, {high}]"
            )
        return x.astype(np.float32) / np.float32(255.0)
    if x.dtype == bool:
        return x.astype(np.float32)
    return x


def as_arrays(dataset, max_examples: int | None = None):
    """Turns any dataset that an evaluation function accepts into NumPy arrays.

    This is the one conversion behind every function that evaluates a model on
    "a dataset". It accepts:

    - an `(x, y)` tuple or list of arrays (NumPy, tensors or nested lists);
    - a dict with keys `"image"`/`"label"` (or `"images"`/`"labels"`);
    - a `tf.data.Dataset` of `(image, label)` (extra tuple entries such as sample
      weights are ignored) or of such dicts, batched or unbatched (decided by the
      image rank: 4 is batched, 3 unbatched).

    Integer images (e.g. uint8; values must lie in [0, 255]) are scaled by 1/255; bool images become 0/1; float images are passed
    through as float32 (they are assumed to be in [0, 1], as everywhere in this
    library). Grey `(N, H, W)` arrays, as `keras.datasets` loaders return them,
    get a channel axis; `(N, D)` feature vectors pass through. One-hot (or soft) `(N, K)` labels become their argmax;
    `(N, 1)` column labels (as `keras.datasets.cifar10` returns them) are flattened.

    Example:

    >>> import numpy as np
    >>> from tf_dlthesis import data
    >>> x = np.zeros((3, 8, 8), np.uint8)
    >>> x, y = data.as_arrays((x, np.eye(10)[[1, 2, 3]]))
    >>> x.shape, x.dtype, y.tolist()
    ((3, 8, 8, 1), dtype('float32'), [1, 2, 3])

    Args:
        dataset: the examples, in one of the forms above.
        max_examples: keep only the first `max_examples` examples (a dataset is
            read no further than needed). None keeps all.

    Returns:
        `(x, y)`: float32 images (N, H, W, C) and int64 sparse labels (N,).

    Raises:
        TypeError: `dataset` is none of the accepted forms, its elements are not
            `(image, label)` pairs, or images or labels are not real numbers
            (strings, complex).
        ValueError: images and labels differ in length, a dataset or array is empty,
            images or labels have an unusable rank, labels are not whole numbers >= 0
            (or are too large to be class indices), integer images hold values
            outside [0, 255], or `max_examples` is not a positive int.
    """
    max_examples = _check_max_examples(max_examples)
    if isinstance(dataset, tf.data.Dataset):
        x, y = _dataset_to_numpy(dataset, max_examples)
    elif isinstance(dataset, Mapping):
        x, y = _pair_from_mapping(dataset, "`dataset`")
    elif isinstance(dataset, (tuple, list)):
        if len(dataset) != 2:
            raise TypeError(
                f"`dataset` given as a {type(dataset).__name__} must be (x, y): two entries. "
                f"Received a {type(dataset).__name__} of length {len(dataset)}"
            )
        x, y = dataset
    else:
        raise TypeError(
            "`dataset` must be an (x, y) tuple of arrays, a dict with 'image' and 'label', or a "
            f"tf.data.Dataset of (image, label). Received: dataset of type {type(dataset).__name__}"
        )
    try:
        x, y = np.asarray(x), np.asarray(y)
    except (ValueError, TypeError) as err:
        raise TypeError(f"`dataset`'s images and labels must convert to NumPy arrays: {err}") from None
    if x.ndim == 0 or y.ndim == 0:
        raise ValueError(
            f"`dataset`'s images and labels must have a leading example axis. "
            f"Received: images of shape {x.shape}, labels of shape {y.shape}"
        )
    if len(x) != len(y):
        raise ValueError(f"Images and labels differ in length. Received: {len(x)} images, {len(y)} labels")
    if len(x) == 0:
        raise ValueError("`dataset` is empty: it holds no examples. Received: 0 images, 0 labels")
    if x.ndim == 3:
        x = x[..., None]
    if x.ndim not in (2, 4):
        raise ValueError(
            f"Images must have shape (N, H, W, C) or (N, H, W) (or (N, D) feature vectors). "
            f"Received: images of shape {x.shape}"
        )
    _check_real_images(x)
    if max_examples is not None:
        x, y = x[:max_examples], y[:max_examples]
    x = unit_images(x).astype(np.float32, copy=False)
    if y.ndim == 2 and y.shape[1] == 0:
        raise ValueError(f"One-hot labels need at least one column (class). Received: labels of shape {y.shape}")
    if y.ndim == 2 and y.shape[1] == 1:
        y = y[:, 0]
    elif y.ndim == 2:
        y = y.argmax(-1)
    elif y.ndim != 1:
        raise ValueError(
            f"Labels must be sparse (N,) or one-hot (N, K). Received: labels of shape {y.shape}"
        )
    if not np.issubdtype(y.dtype, np.number) or np.issubdtype(y.dtype, np.complexfloating):
        raise TypeError(f"Labels must be real numbers. Received: labels of dtype {y.dtype}")
    if np.issubdtype(y.dtype, np.floating):
        whole = np.isfinite(y) & (np.mod(y, 1, where=np.isfinite(y), out=np.ones_like(y)) == 0)
        if not np.all(whole):
            raise ValueError(f"Sparse labels must be whole numbers. Received: labels such as {y[~whole][:3]}")
    if y.min() < 0:
        raise ValueError(f"Labels must be >= 0. Received: a label of {y.min()}")
    if y.max() > np.iinfo(np.int64).max // 2:  # class ids this large are corrupt data; int64 would wrap them
        raise ValueError(f"Labels must be class indices. Received: a label of {y.max()}")
    return x, y.astype(np.int64)
