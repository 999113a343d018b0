"""Standard augmentation and seeded, resumable input pipelines."""

from __future__ import annotations

import numpy as np
import tensorflow as tf


def as_seed(seed) -> tf.Tensor:
    """Turns an int or a shape-[2] int tensor/sequence into a stateless-op seed.

    Raises:
        TypeError/ValueError: anything else (None, floats, wrong shape).
    """
    if seed is None:
        raise TypeError("A seed is required (an int or a shape-[2] int tensor). Received: seed=None")
    if isinstance(seed, (int, np.integer)) and not isinstance(seed, bool):
        return tf.constant([int(seed), 0], dtype=tf.int64)
    seed = tf.convert_to_tensor(seed)
    if not seed.dtype.is_integer:
        raise TypeError(f"`seed` must be an int or an integer tensor. Received dtype {seed.dtype.name}")
    if seed.shape.rank != 1 or (seed.shape[0] is not None and seed.shape[0] != 2):
        raise ValueError(f"`seed` must have shape [2]. Received shape {seed.shape}")
    return tf.cast(seed, tf.int64)


def _check_pad(pad):
    if isinstance(pad, bool) or not isinstance(pad, (int, np.integer)) or pad < 0:
        raise ValueError(f"`pad` must be an int >= 0. Received: pad={pad!r}")
    return int(pad)


def standard_augment(image, *, seed, pad: int = 4, flip: bool = True):
    """Pad-and-random-crop plus random horizontal flip, stateless.

    The standard CIFAR augmentation the thesis uses before mixing (Sec. 2.4):
    zero-pad by `pad` pixels on each side, crop back to the original size at a
    uniformly random offset, and mirror left-right with probability 1/2. Works on
    one image (H, W, C) or a batch (B, H, W, C), where each image gets its own crop
    and flip; the same seed always gives the same result.

    Example:

    >>> import tensorflow as tf
    >>> from tf_dlthesis import data
    >>> out = data.standard_augment(tf.zeros((32, 32, 3)), seed=7)
    >>> tuple(out.shape)
    (32, 32, 3)

    Args:
        image: float tensor (H, W, C) or (B, H, W, C).
        seed: an int or a shape-[2] int tensor.
        pad: padding in pixels (0 disables cropping).
        flip: whether to flip (off for digits, whose classes are not mirror-symmetric).

    Returns:
        A tensor of the input's shape and dtype.

    Raises:
        ValueError: wrong rank or negative pad.
    """
    pad = _check_pad(pad)
    image = tf.convert_to_tensor(image)
    if image.shape.rank not in (3, 4):
        raise ValueError(f"`image` must have rank 3 (H, W, C) or 4 (B, H, W, C). Received shape {image.shape}")
    seed = as_seed(seed)
    single = image.shape.rank == 3
    batch = image[None] if single else image
    b, h, w = tf.shape(batch)[0], tf.shape(batch)[1], tf.shape(batch)[2]
    crop_seed, flip_seed = tf.unstack(tf.random.experimental.stateless_split(seed, 2))
    if pad > 0:
        padded = tf.pad(batch, [[0, 0], [pad, pad], [pad, pad], [0, 0]])
        offsets = tf.random.stateless_uniform([b, 2], crop_seed, minval=0, maxval=2 * pad + 1, dtype=tf.int32)
        rows = offsets[:, :1] + tf.range(h)[None]  # (B, H)
        cols = offsets[:, 1:] + tf.range(w)[None]  # (B, W)
        batch = tf.gather(padded, rows, axis=1, batch_dims=1)
        batch = tf.gather(batch, cols, axis=2, batch_dims=1)
    if flip:
        mirror = tf.random.stateless_uniform([b], flip_seed) < 0.5
        batch = tf.where(mirror[:, None, None, None], tf.reverse(batch, axis=[2]), batch)
    return batch[0] if single else batch


def steps_per_epoch(num_examples: int, batch_size: int, drop_remainder: bool = False) -> int:
    """Number of batches `training_dataset` yields per epoch."""
    return num_examples // batch_size if drop_remainder else -(-num_examples // batch_size)


def training_dataset(
    x,
    y,
    *,
    batch_size: int,
    shuffle_seed: int,
    augment_seed: int | None = None,
    epochs: int | None = None,
    start_epoch: int = 0,
    pad: int = 4,
    flip: bool = False,
    drop_remainder: bool = False,
) -> tf.data.Dataset:
    """A batched training stream over in-memory arrays, reproducible bit for bit.

    Epoch `e` visits the examples in the order of a stateless permutation seeded by
    `(shuffle_seed, e)`; batch `i` of epoch `e` is augmented (when `augment_seed` is
    given) with a seed derived from `(augment_seed, e, i)`. Nothing depends on
    iteration history, so the stream is identical for any `num_parallel_calls`,
    under op determinism, and when restarted at `start_epoch`. The shuffle and
    augmentation seeds are separate sources (thesis Sec. 5.2).

    Use with `model.fit(ds, epochs=E, steps_per_epoch=steps_per_epoch(N, B))`.

    Args:
        x: float32 images (N, H, W, C).
        y: labels (N,) or (N, K).
        batch_size: examples per batch.
        shuffle_seed: seed of the per-epoch permutations.
        augment_seed: seed of `standard_augment`; `None` disables augmentation.
        epochs: number of epochs to yield; `None` repeats forever.
        start_epoch: first epoch to yield (to resume).
        pad, flip: `standard_augment` settings.
        drop_remainder: drop each epoch's last partial batch.

    Returns:
        A `tf.data.Dataset` of `(images, labels)` batches.
    """
    if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
        raise ValueError(f"`batch_size` must be a positive int. Received: batch_size={batch_size!r}")
    x = np.asarray(x)
    y = np.asarray(y)
    if len(x) != len(y):
        raise ValueError(f"`x` and `y` must have the same length. Received {len(x)} and {len(y)}")
    n = len(x)
    xs, ys = tf.constant(x), tf.constant(y)
    shuffle_base = as_seed(shuffle_seed)
    augment_base = None if augment_seed is None else as_seed(augment_seed)

    def epoch(e):
        s = tf.random.experimental.stateless_fold_in(shuffle_base, e)
        perm = tf.argsort(tf.random.stateless_uniform([n], s))
        batches = tf.data.Dataset.from_tensor_slices(perm).batch(batch_size, drop_remainder=drop_remainder)
        return batches.enumerate().map(lambda i, idx: (e, i, idx))

    def fetch(e, i, idx):
        images = tf.gather(xs, idx)
        if augment_base is not None:
            s = tf.random.experimental.stateless_fold_in(tf.random.experimental.stateless_fold_in(augment_base, e), i)
            images = standard_augment(images, seed=s, pad=pad, flip=flip)
        return images, tf.gather(ys, idx)

    epochs_ds = tf.data.Dataset.counter(start_epoch) if epochs is None else tf.data.Dataset.range(start_epoch, epochs)
    return epochs_ds.flat_map(epoch).map(fetch, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True).prefetch(2)


def non_iid_batches(dataset, *, batch_size: int = 128, classes_per_batch: int = 4, seed: int, num_batches: int | None = None) -> tf.data.Dataset:
    """Non-i.i.d. minibatches: each batch holds a few random classes (Table 4.1).

    Following Batch Renormalization and thesis Sec. 4.4.4, each batch of
    `batch_size` examples is made of `classes_per_batch` classes drawn uniformly
    *with replacement*, each contributing `batch_size // classes_per_batch`
    examples drawn without replacement from that class (with replacement only if the
    class is smaller than that). Batch `b` depends only on `(seed, b)`.

    Args:
        dataset: an unbatched `(image, label)` dataset, or a tuple `(x, y)` of arrays.
        batch_size: examples per batch (thesis: 128).
        classes_per_batch: classes per batch (thesis: 4); must divide `batch_size`.
        seed: sampling seed.
        num_batches: batches to yield; default one epoch's worth (N // batch_size).

    Returns:
        A `tf.data.Dataset` of `(images (B, ...), labels (B,))`.

    Raises:
        ValueError: if `classes_per_batch` does not divide `batch_size`, or sizes are not positive.
    """
    for name, value in (("batch_size", batch_size), ("classes_per_batch", classes_per_batch)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
            raise ValueError(f"`{name}` must be a positive int. Received: {name}={value!r}")
    if batch_size % classes_per_batch:
        raise ValueError(
            f"`classes_per_batch` must divide `batch_size`. Received: batch_size={batch_size}, "
            f"classes_per_batch={classes_per_batch}"
        )
    if isinstance(dataset, tf.data.Dataset):
        xs, ys = [], []
        for bx, by in dataset.batch(4096).as_numpy_iterator():
            xs.append(bx)
            ys.append(by)
        x, y = np.concatenate(xs), np.concatenate(ys)
    else:
        x, y = (np.asarray(a) for a in dataset)
    y = y.astype(np.int64)
    per_class = batch_size // classes_per_batch
    classes = np.unique(y)
    order = np.argsort(y, kind="stable")
    counts = np.array([np.sum(y == c) for c in classes])
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    max_count = int(counts.max())
    if num_batches is None:
        num_batches = max(1, len(y) // batch_size)
    xs_t, ys_t = tf.constant(x), tf.constant(y)
    order_t, counts_t, starts_t = tf.constant(order), tf.constant(counts), tf.constant(starts)
    base = as_seed(seed)

    def make(b):
        s_cls, s_ex = tf.unstack(tf.random.experimental.stateless_split(tf.random.experimental.stateless_fold_in(base, b), 2))
        chosen = tf.random.stateless_uniform([classes_per_batch], s_cls, 0, len(classes), dtype=tf.int32)
        cnt = tf.gather(counts_t, chosen)  # (k,)
        keys = tf.random.stateless_uniform([classes_per_batch, max_count], s_ex)
        valid = tf.range(max_count)[None] < tf.cast(cnt[:, None], tf.int32)
        keys = tf.where(valid, keys, 2.0 + keys)  # invalid positions sort last
        pos = tf.argsort(keys, axis=1)[:, :per_class]  # distinct positions when the class is big enough
        pos = tf.math.floormod(tf.cast(pos, tf.int64), cnt[:, None])  # tiny classes: wrap (with replacement)
        idx = tf.gather(order_t, tf.gather(starts_t, chosen)[:, None] + pos)
        idx = tf.reshape(idx, [-1])
        return tf.gather(xs_t, idx), tf.gather(ys_t, idx)

    return tf.data.Dataset.range(num_batches).map(make, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
