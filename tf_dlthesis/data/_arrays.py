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


def _is_batched(image_shape, label_spec, spec) -> bool:
    """Whether a dataset's elements are batches, from the image and label ranks together.

    Unbatched: images (H, W, C), (H, W) or (D,) with a scalar label (or a one-hot /
    soft (K,) label). Batched: the same with a leading example axis, which images and
    labels share. Rank-1 labels are the one ambiguous case (batched sparse labels, or
    one unbatched one-hot label): rank-4 images, or a leading axis unknown in either,
    make it a batch; leading axes of different sizes make it one example; where they
    are equal, integer labels are a batch's sparse ones and float labels one example's
    one-hot label.
    """
    label_shape = label_spec.shape
    image_rank, label_rank = image_shape.rank, label_shape.rank
    if image_rank is None or label_rank is None or label_rank > 2 or not 1 <= image_rank <= 4:
        raise ValueError(
            "`dataset` elements must be (image, label) with images of shape (H, W, C), (H, W) or (D,) and "
            "sparse or one-hot labels, optionally batched (a leading example axis). "
            f"Received: element_spec={spec}"
        )
    if label_rank == 0:
        batched = False
    elif label_rank == 2:
        batched = True
    else:  # (B,) sparse labels of a batch, or the (K,) one-hot label of one example
        if image_rank == 4 or image_shape[0] is None or label_shape[0] is None:
            batched = True
        else:
            batched = image_shape[0] == label_shape[0] and label_spec.dtype.is_integer
    if (batched and image_rank < 2) or (not batched and image_rank > 3):
        raise ValueError(
            f"`dataset` images of rank {image_rank} do not fit its labels of rank {label_rank}: "
            f"images must be (H, W, C), (H, W) or (D,), batched or not. Received: element_spec={spec}"
        )
    if batched and label_rank == 2 and None not in (image_shape[0], label_shape[0]) \
            and image_shape[0] != label_shape[0]:
        raise ValueError(f"`dataset` batches hold {image_shape[0]} images but {label_shape[0]} labels. "
                         f"Received: element_spec={spec}")
    return batched


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
    if not _is_batched(image_spec.shape, label_spec, spec):
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


def widen_ml_floats(a: np.ndarray) -> np.ndarray:
    """`a` as float32 if its dtype is a float NumPy does not count as a number (bfloat16, float8), else `a`.

    Tensors of those dtypes (mixed_bfloat16 pipelines) come out of `.numpy()` as `ml_dtypes` arrays,
    whose dtype `np.issubdtype(..., np.number)` refuses.
    """
    if a.dtype.kind == "V":
        try:
            floating = tf.as_dtype(a.dtype).is_floating
        except TypeError:
            floating = False
        if floating:
            return a.astype(np.float32)
    return a


def _check_real_images(x: np.ndarray) -> None:
    if not (np.issubdtype(x.dtype, np.number) or x.dtype == bool) or np.issubdtype(x.dtype, np.complexfloating):
        raise TypeError(f"Images must be real numbers. Received: images of dtype {x.dtype}")


def unit_images(x: np.ndarray) -> np.ndarray:
    """Images in [0, 1]: integer (8-bit) images scaled by 1/255, bool ones as 0/1, floats unchanged.

    Raises:
        TypeError: non-numeric or complex images.
        ValueError: integer images outside [0, 255].
    """
    x = widen_ml_floats(x)  # bfloat16 / float8 -> float32
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
      weights are ignored) or of such dicts, batched or unbatched (decided from the
      image and label ranks together; where an element could be either a full batch
      of grey images with sparse labels or one image with a one-hot label, integer
      labels make it a batch and float labels one example).

    Integer images (e.g. uint8; values must lie in [0, 255]) are scaled by 1/255; bool images become 0/1; float images (float16, bfloat16, float64) are passed
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
            outside [0, 255], images are not finite (NaN, inf), or `max_examples` is not
            a positive int.
    """
    x, y, _ = read_labelled(dataset, max_examples)
    return x, y


def read_labelled(dataset, max_examples: int | None = None):
    """`as_arrays`, also returning the width of one-hot / soft labels (None for sparse ones)."""
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
    x, y = widen_ml_floats(x), widen_ml_floats(y)  # bfloat16 (e.g. a mixed_bfloat16 pipeline) -> float32
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
    if not np.isfinite(x).all():
        raise ValueError(f"Images must be finite. Received: {int(np.size(x) - np.isfinite(x).sum())} NaN or infinite "
                         f"values in images of shape {x.shape}")
    width = None
    if y.ndim == 2 and y.shape[1] == 0:
        raise ValueError(f"One-hot labels need at least one column (class). Received: labels of shape {y.shape}")
    if y.ndim == 2 and y.shape[1] == 1:
        y = y[:, 0]
    elif y.ndim == 2:
        width = int(y.shape[1])
        y = y.argmax(-1)
    elif y.ndim != 1:
        raise ValueError(
            f"Labels must be sparse (N,) or one-hot (N, K). Received: labels of shape {y.shape}"
        )
    check_class_indices(y)
    if y.max() > np.iinfo(np.int64).max // 2:  # class ids this large are corrupt data; int64 would wrap them
        raise ValueError(f"Labels must be class indices. Received: a label of {y.max()}")
    return x, y.astype(np.int64), width


def check_real_labels(y: np.ndarray) -> None:
    """Labels of a real dtype (not strings, objects or complex numbers)."""
    if not np.issubdtype(y.dtype, np.number) or np.issubdtype(y.dtype, np.complexfloating):
        raise TypeError(f"Labels must be real numbers. Received: labels of dtype {y.dtype}")


def check_class_indices(y: np.ndarray) -> None:
    """Sparse labels (a non-empty NumPy array): real, whole numbers >= 0."""
    check_real_labels(y)
    if np.issubdtype(y.dtype, np.floating):
        whole = np.isfinite(y) & (np.mod(y, 1, where=np.isfinite(y), out=np.ones_like(y)) == 0)
        if not np.all(whole):
            raise ValueError(f"Sparse labels must be whole numbers. Received: labels such as {y[~whole][:3]}")
    if y.min() < 0:
        raise ValueError(f"Labels must be >= 0. Received: a label of {y.min()}")


def check_labels(y, num_classes: int, width: int | None = None, what: str = "`dataset`") -> None:
    """Raise a ValueError if labels do not fit `num_classes` logits.

    Args:
        y: sparse int labels, as `as_arrays` returns them.
        num_classes: the model's number of logits.
        width: the number of columns of one-hot / soft labels before `as_arrays`
            took their argmax (None: the labels were sparse).
        what: how the error names the data.
    """
    if width is not None and width != num_classes:
        raise ValueError(f"{what} has one-hot (or soft) labels of {width} columns for a model with {num_classes} "
                         f"logits: they must have {num_classes}.")
    bad = np.unique(y[(y < 0) | (y >= num_classes)])
    if bad.size:
        raise ValueError(f"{what} has labels outside [0, {num_classes - 1}] for a model with {num_classes} logits. "
                         f"Received out-of-range labels: {bad[:10].tolist()}")


def _is_pair(value) -> bool:
    """An `(x, y)` tuple or list: two entries with a shape, of equal length and different ranks."""
    if not isinstance(value, (tuple, list)) or len(value) != 2:
        return False
    x, y = value
    if not (hasattr(x, "shape") and hasattr(y, "shape")) or len(x.shape) == 0 or len(y.shape) == 0:
        return False
    return x.shape[0] == y.shape[0] and len(x.shape) != len(y.shape)


def as_images(images, name: str = "images", *, ranks=(2, 3, 4)) -> np.ndarray:
    """Images as `as_arrays` reads them, from an array or from the images of any dataset form it accepts.

    An array (N, H, W, C), grey (N, H, W) or (N, D) goes through the same
    conversion as `as_arrays`' images (integer images scaled by 1/255, a channel
    axis for grey ones, finite values); an `(x, y)` pair, a dict or a `tf.data`
    dataset gives its images. `ranks`: the array ranks accepted (`(4,)`: colour
    images only, where a single (H, W, C) image could pass for grey ones).

    Raises:
        TypeError / ValueError: as `as_arrays`, naming `name`.
    """
    if isinstance(images, (tf.data.Dataset, Mapping)) or _is_pair(images):
        return as_arrays(images)[0]
    try:
        x = np.asarray(images)
    except (ValueError, TypeError) as err:
        raise TypeError(f"`{name}` must be an array of images (N, H, W, C), an (x, y) pair or a tf.data "
                        f"dataset: {err}. Received: {name} of type {type(images).__name__}") from None
    if x.dtype == object:
        raise TypeError(f"`{name}` must be an array of images (N, H, W, C), an (x, y) pair or a tf.data dataset. "
                        f"Received: {name} of type {type(images).__name__}")
    if x.ndim not in ranks:
        shapes = {4: "(N, H, W, C)", 3: "(N, H, W)", 2: "(N, D)"}
        raise ValueError(f"`{name}` must have shape {' or '.join(shapes[r] for r in sorted(ranks, reverse=True))}. "
                         f"Received: shape={x.shape}")
    if x.shape[0] == 0:
        raise ValueError(f"`{name}` is an empty batch (N = 0): there is nothing to predict. Received: shape={x.shape}")
    return as_arrays((x, np.zeros(len(x), np.int64)))[0]
