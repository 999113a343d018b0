"""Standard augmentation and seeded, resumable input pipelines."""

from __future__ import annotations

import numpy as np
import tensorflow as tf

from tf_dlthesis._checks import check_bool, check_int
from tf_dlthesis._seeds import as_seed
from tf_dlthesis.data._arrays import as_arrays, check_class_indices, check_real_labels, unit_images, widen_ml_floats


def _plain(fn):
    """`fn` for `Dataset.map` without AutoGraph's source conversion.

    The pipeline's functions branch only on Python values, so conversion changes no
    op; it cost ~0.5 s of parsing per fresh process (a variability run's worker
    traces its stream once), about half as much as tracing the model's train step.
    """
    return tf.autograph.experimental.do_not_convert(fn)


def _check_pad(pad):
    return check_int("pad", pad, 0)


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
        TypeError: a `flip` that is not a bool.
    """
    pad = _check_pad(pad)
    flip = check_bool("flip", flip)
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
    """Number of batches `training_dataset` yields per epoch.

    Raises:
        ValueError: `num_examples` < 0 or `batch_size` < 1.
        TypeError: sizes that are not ints, or a `drop_remainder` that is not a bool.
    """
    num_examples = check_int("num_examples", num_examples, 0)
    batch_size = check_int("batch_size", batch_size, 1)
    drop_remainder = check_bool("drop_remainder", drop_remainder)
    return num_examples // batch_size if drop_remainder else -(-num_examples // batch_size)


class EpochSeeds(tuple):
    """One seed per epoch, for `training_dataset`'s `shuffle_seed` / `augment_seed`.

    Example: `EpochSeeds([7, 7, 7, 9, 9])` keeps seed 7 for epochs 0-2 and switches
    to 9 from epoch 3 (the onset experiment of Thesis Fig. 5.2).

    Raises:
        TypeError: a seed that is not an int.
        ValueError: an empty sequence or a negative seed.
    """

    def __new__(cls, seeds):
        values = tuple(seeds)
        if not values:
            raise ValueError(f"`EpochSeeds` needs a non-empty sequence of ints >= 0. Received: {seeds!r}")
        return super().__new__(cls, [check_int(f"seeds[{i}]", v, 0, why="EpochSeeds holds one seed per epoch")
                                     for i, v in enumerate(values)])


def _epoch_seed_table(name, seed, epochs):
    """An int / None / shape-[2] seed -> ([2] seed, False); `EpochSeeds` -> ((E, 2) table, True)."""
    if isinstance(seed, EpochSeeds):
        if epochs is None or len(seed) < epochs:
            raise ValueError(f"`{name}` has {len(seed)} per-epoch seeds; it needs `epochs` set and one seed "
                             f"per epoch. Received: epochs={epochs}")
        values = tf.constant(list(seed), tf.int64)
        return tf.stack([values, tf.zeros_like(values)], axis=1), True
    return as_seed(seed, name), False


def epoch_permutation(num_examples: int, shuffle_seed, epoch: int, part: int | None = None) -> np.ndarray:
    """The order in which `training_dataset` visits the examples in `epoch`.

    `part` selects one of the two passes of an epoch in pair-mode mixing (0 or 1).

    Example:

    >>> from tf_dlthesis import data
    >>> sorted(data.epoch_permutation(5, 0, 0).tolist())
    [0, 1, 2, 3, 4]

    Args:
        num_examples: N, the training set's size.
        shuffle_seed: `training_dataset`'s `shuffle_seed` (an int, a shape-[2] seed or
            `EpochSeeds`, whose entry `epoch` is used).
        epoch: the epoch (an int >= 0).
        part: None, or the pass (0 or 1) of pair-mode mixing.

    Raises:
        ValueError: a negative size or epoch, a `part` other than None, 0 or 1, or
            `EpochSeeds` without a seed for `epoch`.
        TypeError: sizes, epochs or seeds that are not ints.
    """
    num_examples = check_int("num_examples", num_examples, 0)
    epoch = check_int("epoch", epoch, 0)
    if part is not None and (isinstance(part, (bool, np.bool_)) or not isinstance(part, (int, np.integer))
                             or part not in (0, 1)):
        raise ValueError(f"`part` must be None, 0 or 1 (the pass of pair-mode mixing). Received: part={part!r}")
    if isinstance(shuffle_seed, EpochSeeds):
        if epoch >= len(shuffle_seed):
            raise ValueError(f"`shuffle_seed` has {len(shuffle_seed)} per-epoch seeds, none for this epoch. "
                             f"Received: epoch={epoch}")
        shuffle_seed = shuffle_seed[epoch]  # as `training_dataset` uses it: [seed, 0], folded with the epoch
    return _permutation(num_examples, as_seed(shuffle_seed, "shuffle_seed"), tf.constant(epoch, tf.int64),
                        None if part is None else tf.constant(part, tf.int64)).numpy()


def _permutation(n, seed, epoch, part=None):
    s = tf.random.experimental.stateless_fold_in(seed, epoch)
    if part is not None:
        s = tf.random.experimental.stateless_fold_in(s, part)
    return tf.argsort(tf.random.stateless_uniform([n], s))


def epoch_pairs(num_examples: int, shuffle_seed, epoch: int) -> np.ndarray:
    """The `(pairs, 2)` example indices that pair-mode mixing mixes in `epoch`.

    The training set is read twice per epoch (the authors' way of keeping N mixed
    examples per epoch, Thesis Sec. 2.4.1); each pass is a fresh permutation whose
    consecutive examples are paired, so within a pass every example is in exactly
    one pair (with an odd N one example sits out of each pass).
    """
    n = check_int("num_examples", num_examples, 0)
    half = n // 2
    passes = [epoch_permutation(n, shuffle_seed, epoch, part)[: 2 * half].reshape(half, 2) for part in (0, 1)]
    return np.concatenate(passes)


def training_dataset(
    x,
    y,
    *,
    batch_size: int,
    shuffle_seed,
    augment_seed=None,
    epochs: int | None = None,
    start_epoch: int = 0,
    pad: int = 4,
    flip: bool = False,
    drop_remainder: bool = False,
    mix=None,
) -> tf.data.Dataset:
    """A batched training stream over in-memory arrays, reproducible bit for bit.

    Epoch `e` visits the examples in the order of a stateless permutation seeded by
    `(shuffle_seed, e)`; batch `i` of epoch `e` is augmented (when `augment_seed` is
    given) with a seed derived from `(augment_seed, e, i)`. Nothing depends on
    iteration history, so the stream is identical for any `num_parallel_calls`,
    under op determinism, and when restarted at `start_epoch`. The shuffle and
    augmentation seeds are separate sources (thesis Sec. 5.2); either may also be
    `EpochSeeds`, one seed per epoch (the nondeterminism protocol's onset
    experiment switches seeds at a given epoch).

    With `mix` (an `augment.MixStage`), mixed-example augmentation runs after the
    standard augmentation, inside the same pipeline:

    * pair mode (the thesis's): each epoch reads the training set twice, each pass
      in a fresh order (`epoch_pairs`); consecutive examples of a pass are paired,
      so every example is paired exactly once per pass, the pairings change every
      epoch, and an epoch yields N mixed examples (2 x floor(N / 2)).
    * batch mode: each batch is mixed with a permutation of itself.

    Labels are then soft `(B, num_classes)`.

    Use with `model.fit(ds, epochs=E, steps_per_epoch=steps_per_epoch_of(N, B, drop_remainder=..., mix=mix))`
    (pair mode drops an odd example per pass, so an epoch can have fewer batches than ceil(N / B)).

    Example:

    >>> from tf_dlthesis import augment, data
    >>> x, y = data.load_arrays("digits", "train")
    >>> stage = augment.MixStage("vh_mixup", num_classes=10, seed=2)
    >>> ds = data.training_dataset(x, y, batch_size=128, shuffle_seed=0, augment_seed=1, pad=1, epochs=3, mix=stage)

    Args:
        x: images (N, H, W, C) in [0, 1]; integer (uint8) images are scaled by 1/255
            and grey (N, H, W) images get a channel axis, as `as_arrays` does; (N, D)
            feature vectors stream without augmentation.
        y: sparse labels (N,) (whole numbers >= 0) or one-hot / soft labels (N, K).
        batch_size: examples per batch.
        shuffle_seed: seed of the per-epoch permutations (int, None for fresh
            entropy, or `EpochSeeds` with one int per epoch).
        augment_seed: seed of `standard_augment` (int or `EpochSeeds`); `None`
            disables augmentation.
        epochs: number of epochs to yield; `None` repeats forever.
        start_epoch: first epoch to yield (to resume), at most `epochs`.
        pad, flip: `standard_augment` settings.
        drop_remainder: drop each epoch's last partial batch.
        mix: an `augment.MixStage` (or any object with `mode` and `pairs` /
            `batch` methods of the same signature), or None.

    Returns:
        A `tf.data.Dataset` of `(images, labels)` batches.

    Raises:
        ValueError: bad sizes, seeds or lengths; a `start_epoch` outside [0, epochs]; a
            `batch_size` larger than an epoch with `drop_remainder` (no full batch); images
            of another rank, NaN or infinite images, or `augment_seed` with feature
            vectors; labels that are not class indices (negative, fractional) or of
            another rank.
        TypeError: a `mix` object without the stage interface; sizes or epochs that are
            not ints; `flip` / `drop_remainder` that are not bools; images or labels that
            are not real numbers.
    """
    check_int("batch_size", batch_size, 1)
    check_int("epochs", epochs, 0, allow_none=True)
    check_int("start_epoch", start_epoch, 0)
    drop_remainder = check_bool("drop_remainder", drop_remainder)
    flip = check_bool("flip", flip)
    if epochs is not None and start_epoch > epochs:
        raise ValueError(f"`start_epoch` must be an int in [0, epochs]. Received: start_epoch={start_epoch!r}, "
                         f"epochs={epochs!r}")
    if mix is not None and getattr(mix, "mode", None) not in ("pair", "batch"):
        raise TypeError(f"`mix` must be an augment.MixStage (mode 'pair' or 'batch'). Received: mix={mix!r}")
    x = np.asarray(x)
    y = np.asarray(y)
    if x.ndim == 3:  # grey (N, H, W), as keras.datasets loads them: a channel axis, as `as_arrays` adds
        x = x[..., None]
    if x.ndim not in (2, 4):
        raise ValueError(f"`x` must have shape (N, H, W, C) or (N, H, W) (or (N, D) feature vectors). "
                         f"Received: x of shape {x.shape}")
    if x.ndim == 2 and augment_seed is not None:
        raise ValueError(f"`augment_seed` pads and crops images; (N, D) feature vectors cannot be augmented: "
                         f"pass augment_seed=None. Received: x of shape {x.shape}, augment_seed={augment_seed!r}")
    if y.ndim == 0 or len(x) != len(y):
        raise ValueError(f"`x` and `y` must have the same length. Received {len(x)} and "
                         f"{len(y) if y.ndim else 'a scalar'}")
    n = len(x)
    if n == 0:
        raise ValueError("`x` is empty: a training stream needs at least one example.")
    _check_training_labels(widen_ml_floats(y))
    x = unit_images(x)  # uint8 images (as keras.datasets loads them) in [0, 1], as `as_arrays` gives them
    if np.issubdtype(x.dtype, np.floating) and not np.isfinite(x).all():
        raise ValueError(f"Images must be finite. Received: {int(np.size(x) - np.isfinite(x).sum())} NaN or "
                         f"infinite values in x of shape {x.shape}")
    if mix is not None and mix.mode == "pair" and n < 2:
        raise ValueError(f"Pair-mode mixing needs at least 2 examples. Received {n}")
    per_epoch = 2 * (n // 2) if mix is not None and mix.mode == "pair" else n  # (pairs of) examples per epoch
    if drop_remainder and batch_size > per_epoch:
        raise ValueError(f"`batch_size` is larger than the {per_epoch} examples an epoch yields, so with "
                         f"`drop_remainder` no batch would be made. Received: batch_size={batch_size}, "
                         f"{n} examples")
    xs, ys = tf.constant(x), tf.constant(y)
    shuffle_table, shuffle_per_epoch = _epoch_seed_table("shuffle_seed", shuffle_seed, epochs)
    augment_table, augment_per_epoch = (None, False) if augment_seed is None else _epoch_seed_table(
        "augment_seed", augment_seed, epochs)

    def seed_at(table, per_epoch, e):
        return tf.gather(table, e) if per_epoch else table

    def augment(images, e, i, part):
        if augment_table is None:
            return images
        s = tf.random.experimental.stateless_fold_in(seed_at(augment_table, augment_per_epoch, e), e)
        s = tf.random.experimental.stateless_fold_in(s, i)
        if part is not None:
            s = tf.random.experimental.stateless_fold_in(s, part)
        return standard_augment(images, seed=s, pad=pad, flip=flip)

    pair_mode = mix is not None and mix.mode == "pair"

    def epoch(e):
        seed = seed_at(shuffle_table, shuffle_per_epoch, e)
        if pair_mode:
            half = n // 2
            passes = [tf.reshape(_permutation(n, seed, e, tf.constant(p, tf.int64))[: 2 * half], [half, 2])
                      for p in (0, 1)]
            items = tf.data.Dataset.from_tensor_slices(tf.concat(passes, 0))
        else:
            items = tf.data.Dataset.from_tensor_slices(_permutation(n, seed, e))
        batches = items.batch(batch_size, drop_remainder=drop_remainder)
        return batches.enumerate().map(_plain(lambda i, idx: (e, i, idx)))

    def fetch(e, i, idx):
        if pair_mode:
            first, second = idx[:, 0], idx[:, 1]
            x1 = augment(tf.gather(xs, first), e, i, 0)
            x2 = augment(tf.gather(xs, second), e, i, 1)
            return mix.pairs(x1, tf.gather(ys, first), x2, tf.gather(ys, second), e, i)
        images, labels = augment(tf.gather(xs, idx), e, i, None), tf.gather(ys, idx)
        if mix is not None:
            return mix.batch(images, labels, e, i)
        return images, labels

    epochs_ds = tf.data.Dataset.counter(start_epoch) if epochs is None else tf.data.Dataset.range(start_epoch, epochs)
    return epochs_ds.flat_map(_plain(epoch)).map(_plain(fetch), num_parallel_calls=tf.data.AUTOTUNE,
                                                 deterministic=True).prefetch(2)


def _check_training_labels(y):
    """Sparse (N,) class indices (whole numbers >= 0) or one-hot / soft (N, K) labels, as `as_arrays` reads them."""
    if y.ndim not in (1, 2):
        raise ValueError(f"Labels must be sparse (N,) or one-hot (N, K). Received: y of shape {y.shape}")
    if y.ndim == 1:
        check_class_indices(y)
    else:
        check_real_labels(y)


def steps_per_epoch_of(num_examples: int, batch_size: int, *, drop_remainder: bool = False, mix=None) -> int:
    """Batches per epoch of `training_dataset` with these settings (pair mode: 2 x floor(N / 2) examples)."""
    n = check_int("num_examples", num_examples, 0)
    if mix is not None and getattr(mix, "mode", None) == "pair":
        n = 2 * (n // 2)
    return steps_per_epoch(n, batch_size, drop_remainder)


def non_iid_batches(dataset, *, batch_size: int = 128, classes_per_batch: int = 4, seed: int, num_batches: int | None = None,
                    augment_seed=None, pad: int = 4, flip: bool = True) -> tf.data.Dataset:
    """Non-i.i.d. minibatches: each batch holds a few random classes (Table 4.1).

    Following Batch Renormalization and thesis Sec. 4.4.4, each batch of
    `batch_size` examples is made of `classes_per_batch` classes drawn uniformly
    *with replacement*, each contributing `batch_size // classes_per_batch`
    examples drawn without replacement from that class (a class smaller than that
    gives each of its examples once and draws the rest with replacement). The
    examples of a batch come in random order (the thesis describes a minibatch's
    classes, not an order; a class-grouped layout would make every small contiguous
    ghost batch single-class). Batch `b` depends only on
    `(seed, b)`; with `augment_seed`, its images are augmented as
    `training_dataset` augments (`standard_augment`) with a seed that depends
    only on `(augment_seed, b)`.

    Args:
        dataset: any form `as_arrays` accepts: `(x, y)` arrays, a dict, or a
            `tf.data.Dataset` of `(image, label)`, batched or not (uint8 images
            are scaled to [0, 1]).
        batch_size: examples per batch (thesis: 128).
        classes_per_batch: classes per batch (thesis: 4); must divide `batch_size`.
        seed: sampling seed.
        num_batches: batches to yield; default one epoch's worth (N // batch_size).
        augment_seed: seed of the pad-and-crop (+ flip) augmentation of each
            batch, or None for none.
        pad, flip: the augmentation's settings (as `standard_augment`).

    Returns:
        A `tf.data.Dataset` of `(images (B, ...), labels (B,))`.

    Raises:
        ValueError: if `classes_per_batch` does not divide `batch_size`, sizes are not
            positive, or the examples are not usable (as `as_arrays`: lengths differ,
            labels are not whole numbers >= 0, ...).
        TypeError: images or labels that are not real numbers; sizes that are not ints; a
            `flip` that is not a bool.
    """
    check_int("batch_size", batch_size, 1)
    check_int("classes_per_batch", classes_per_batch, 1)
    flip = check_bool("flip", flip)
    if batch_size % classes_per_batch:
        raise ValueError(
            f"`classes_per_batch` must divide `batch_size`. Received: batch_size={batch_size}, "
            f"classes_per_batch={classes_per_batch}"
        )
    check_int("num_batches", num_batches, 1, allow_none=True)
    x, y = as_arrays(dataset)   # the checks every evaluating function makes (lengths, labels, dtypes)
    per_class = batch_size // classes_per_batch
    classes = np.unique(y)
    order = np.argsort(y, kind="stable")
    counts = np.array([np.sum(y == c) for c in classes])
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    width = max(int(counts.max()), per_class)  # key columns: the largest class's count when it fills a quota
    if num_batches is None:
        num_batches = max(1, len(y) // batch_size)
    xs_t, ys_t = tf.constant(x), tf.constant(y)
    order_t, counts_t, starts_t = tf.constant(order), tf.constant(counts), tf.constant(starts)
    base = as_seed(seed)
    augment_base = None if augment_seed is None else as_seed(augment_seed)

    def make(b):
        s_cls, s_ex, s_order = tf.unstack(
            tf.random.experimental.stateless_split(tf.random.experimental.stateless_fold_in(base, b), 3))
        chosen = tf.random.stateless_uniform([classes_per_batch], s_cls, 0, len(classes), dtype=tf.int32)
        cnt = tf.gather(counts_t, chosen)  # (k,)
        keys = tf.random.stateless_uniform([classes_per_batch, width], s_ex)
        valid = tf.range(width)[None] < tf.cast(cnt[:, None], tf.int32)
        keys = tf.where(valid, keys, 2.0 + keys)  # invalid positions sort last
        pos = tf.cast(tf.argsort(keys, axis=1)[:, :per_class], tf.int64)  # distinct positions of the class first
        # a class smaller than its quota: the positions past its end are drawn with replacement
        extra = tf.random.stateless_uniform([classes_per_batch, per_class],
                                            tf.random.experimental.stateless_fold_in(s_ex, 1))
        extra = tf.minimum(tf.cast(extra * tf.cast(cnt[:, None], tf.float32), tf.int64), cnt[:, None] - 1)
        pos = tf.where(pos < cnt[:, None], pos, extra)
        idx = tf.gather(order_t, tf.gather(starts_t, chosen)[:, None] + pos)
        idx = tf.reshape(idx, [-1])
        # A minibatch is a set: its examples come in random order, not grouped by class (with a
        # grouped layout every contiguous ghost batch of <= batch_size / classes_per_batch examples,
        # Batch Group Norm's pairs included, would hold a single class).
        idx = tf.gather(idx, tf.argsort(tf.random.stateless_uniform([batch_size], s_order)))
        images = tf.gather(xs_t, idx)
        if augment_base is not None:
            images = standard_augment(images, seed=tf.random.experimental.stateless_fold_in(augment_base, b),
                                      pad=pad, flip=flip)
        return images, tf.gather(ys_t, idx)

    return tf.data.Dataset.range(num_batches).map(_plain(make), num_parallel_calls=tf.data.AUTOTUNE,
                                                  deterministic=True)
