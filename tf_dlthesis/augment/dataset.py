"""`mix_dataset`: mixed-example augmentation as a `tf.data` stage (Thesis Sec. 2.4.1)."""

from __future__ import annotations

import numbers

import tensorflow as tf

from tf_dlthesis._checks import check_int
from tf_dlthesis.augment.mix import _images, _out_dtype
from tf_dlthesis.augment.stage import MODES as _MODES
from tf_dlthesis.augment.stage import MixStage

#: Pair mode, `pairs_per_call=None`: mix about this many input bytes per map call
#: (at most `_AUTO_MAX_PAIRS` pairs), so the fixed cost of a call is amortized.
_AUTO_CHUNK_BYTES = 32 << 20
_AUTO_MAX_PAIRS = 1024


def _as_int32(value):
    return tf.cast(tf.convert_to_tensor(value), tf.int32)


def _split_element(element):
    if isinstance(element, dict) and "images" in element and "labels" in element:
        return element["images"], element["labels"], True
    if isinstance(element, (tuple, list)) and len(element) == 2:
        return element[0], element[1], False
    raise TypeError("mix_dataset expects elements (image, label) or {'images': ..., "
                    f"'labels': ...}}. Received element structure: {element!r}")


def mix_dataset(dataset, method, *, seed, mode="pair", num_classes=None, epoch=0,
                batch_size=None, pairs_per_call=None, pairing="permute",
                num_parallel_calls=tf.data.AUTOTUNE, jit_compile=True, **params):
    """Adds mixed-example augmentation to a `tf.data` pipeline.

    Place it after standard augmentation (crop/flip): the thesis found the order
    matters by more than 1% on CIFAR-10 (Sec. 2.4.1).

    `mode="pair"` follows the thesis: consecutive examples of the (shuffled) stream are
    paired and each example is used once, so a stream of N examples yields floor(N / 2)
    mixed examples (a trailing unpaired example is dropped). The authors kept the
    epoch length by reading the training set twice per epoch, with a fresh shuffle
    each time: `data.training_dataset(..., mix=MixStage(...))` does exactly that in
    one call (each example paired once per pass, new pairings every epoch), so prefer
    it for training. Pairs are mixed vectorized, `pairs_per_call` pairs per
    XLA-compiled map call (the input is batched in parallel, order preserved).

    `mode="batch"` takes an already batched dataset and mixes each batch with a
    permutation of itself (`mix_batch`); the epoch length is unchanged.

    Randomness is stateless: the seed of call i is derived from (seed, epoch, i), so the
    output is bit-identical for any `num_parallel_calls`, under
    `tf.config.experimental.enable_op_determinism()`, and when a pipeline is rebuilt
    for epoch e and resumed (e.g. with `.skip(k)`). Pass a different `epoch` (an int, or
    a scalar `tf.Variable` a callback increments) for each epoch, or feed a repeated
    stream (the call index then keeps growing).

    Example:

    >>> ds = tf_dlthesis.data.load("digits").shuffle(1433, seed=0)
    >>> ds = mix_dataset(ds, "vh_mixup", seed=0, num_classes=10).batch(128)

    Args:
        dataset: pair mode: unbatched elements (image (H, W, C), label); batch mode:
            batched elements (images (B, H, W, C), labels). Labels sparse int (with
            `num_classes`) or one-hot/soft float. Dict elements {"images", "labels"}
            are accepted and returned as dicts; in batch mode other keys (e.g.
            sample weights) pass through unchanged, as in `MixedExample`, while pair
            mode refuses them (an output mixes two elements).
        method: a name in `METHODS` or a list (each pair draws one).
        seed: int or shape-[2] integer tensor.
        mode: "pair" or "batch".
        num_classes: number of classes for sparse labels.
        epoch: int or scalar integer tensor/variable folded into the seed.
        batch_size: pair mode only: emit batches of this many mixed examples directly
            (faster than `.batch()` afterwards); None emits unbatched examples.
        pairs_per_call: pair mode: pairs mixed per map call. None (default): about
            32 MiB of input per call, at most 1024 pairs (1024 for 32x32x3 images), 64
            if the image shape is not static. With `batch_size` it is rounded down to
            a multiple of `batch_size` (at least `batch_size`) and each call's output
            is split into batches. Larger calls amortize the per-call cost; the
            pairing, the epoch length and the output distribution do not depend on it.
        pairing: batch mode: "permute" or "reverse".
        num_parallel_calls: passed to `Dataset.map` (order is always deterministic).
        jit_compile: run the mixing core XLA-compiled (default; several times faster on
            CPU for mask methods). XLA's Philox stream differs from TF's, so outputs
            differ from `jit_compile=False` (and from eager `mix_batch`), but each is
            deterministic for a given seed.
        **params: method hyperparameters, as in `mix_batch` (including
            `check_numerics=True`: NaN/Inf images or labels fail with an error naming them).

    Returns:
        A `tf.data.Dataset` of (images, soft labels).

    Raises:
        ValueError: unknown method/mode, bad hyperparameters or sizes, element shapes of
            the wrong rank, batch mode on batches of a static size of 1, sparse labels
            without `num_classes`, soft labels whose width is not `num_classes` (all
            checked here, from `dataset.element_spec`).
            Label *values* cannot be checked without reading the dataset: a sparse
            label outside [0, num_classes - 1] fails when the dataset is iterated, with
            a `tf.errors.InvalidArgumentError` whose message reads "`labels` must be
            in [0, K-1] (num_classes=K)".
        TypeError: element structure other than (image, label) or a dict, or images /
            labels that are not dense tensors (nested structures, ragged or sparse).
        ValueError: pair mode on dict elements with keys other than "images" and "labels".

    Reference:
        Thesis Sec. 2.3-2.4.1; https://arxiv.org/abs/1805.11272
    """
    if "preserve_length" in params:
        raise TypeError("`preserve_length` was removed: on a multi-epoch stream it repeated the whole stream "
                        "with the same pairings. Pair mode now reads its input once (N in, N // 2 out); for the "
                        "thesis's epoch length use `data.training_dataset(..., mix=augment.MixStage(...))`, which "
                        "reads the training set twice per epoch with fresh pairings. "
                        f"Received: preserve_length={params['preserve_length']!r}")
    if mode not in _MODES:
        raise ValueError(f"`mode` must be one of {_MODES}. Received: mode={mode!r}")
    if not isinstance(dataset, tf.data.Dataset):
        raise TypeError(f"`dataset` must be a tf.data.Dataset. Received: {type(dataset).__name__}")
    stage = MixStage(method, mode=mode, num_classes=num_classes, seed=seed, pairing=pairing,
                     jit_compile=jit_compile, **params)
    x_spec, y_spec, as_dict = _split_element(dataset.element_spec)
    for what, spec in (("images", x_spec), ("labels", y_spec)):
        if not isinstance(spec, tf.TensorSpec):   # a nested dict / tuple, a ragged or sparse tensor
            raise TypeError(f"mix_dataset expects elements (image, label) or {{'images': ..., 'labels': ...}} whose "
                            f"images and labels are dense tensors. Received {what} of structure {spec!r} in the "
                            f"element structure {dataset.element_spec!r}")
    extra = sorted((k for k in dataset.element_spec if k not in ("images", "labels")), key=str) if as_dict else []
    if extra and mode == "pair":
        # Each output mixes two input elements: a per-example entry (sample weight, id,
        # ...) has no one value for it, and dropping it silently would lose it.
        raise ValueError(f"mode='pair' mixes two elements into one, so dict elements may hold only 'images' and "
                         f"'labels'. Received extra keys {extra}; drop them first (e.g. `ds.map(lambda d: "
                         f"{{'images': d['images'], 'labels': d['labels']}})`), or mix batches with mode='batch', "
                         f"which passes other keys through.")
    if not (x_spec.dtype.is_floating or x_spec.dtype.is_integer) or x_spec.dtype == tf.bool:
        raise TypeError(f"The dataset's `images` must be float or integer (e.g. uint8). Received: "
                        f"images of dtype {x_spec.dtype.name}.")
    if not (y_spec.dtype.is_floating or y_spec.dtype.is_integer) or y_spec.dtype == tf.bool:
        raise TypeError(f"The dataset's `labels` must be integer (sparse) or float (one-hot/soft). "
                        f"Received: labels of dtype {y_spec.dtype.name}.")
    if not (tf.is_tensor(epoch) or isinstance(epoch, tf.Variable)):
        if isinstance(epoch, bool) or not isinstance(epoch, numbers.Integral):
            raise TypeError(f"`epoch` must be an int >= 0 or a scalar integer tensor / variable. "
                            f"Received: epoch={epoch!r}")
        if epoch < 0:
            raise ValueError(f"`epoch` must be >= 0. Received: epoch={epoch}")
    rank = 3 if mode == "pair" else 4
    if x_spec.shape.rank != rank:
        raise ValueError(f"mode={mode!r} expects {'unbatched (H, W, C)' if rank == 3 else 'batched (B, H, W, C)'} "
                         f"images; the dataset's images have shape {x_spec.shape}.")
    if mode == "batch" and x_spec.shape[0] is not None and x_spec.shape[0] < 2:
        # As `mix_batch`: a batch of one would be mixed with itself, i.e. not mixed at all.
        raise ValueError(f"mode='batch' mixes each batch with a permutation of itself, so it needs batches of at "
                         f"least 2 examples to pair. Received: the dataset's images have shape {x_spec.shape} "
                         f"(batch it with `.batch(B)`, B >= 2, or use mode='pair' on unbatched examples).")
    batch_size = check_int("batch_size", batch_size, 1, allow_none=True)
    pairs_per_call = check_int("pairs_per_call", pairs_per_call, 1, allow_none=True)
    if y_spec.dtype.is_integer and num_classes is None:
        raise ValueError("Sparse integer labels need `num_classes=` to be one-hot encoded. "
                         "Received: num_classes=None")
    label_rank = rank - 3
    if y_spec.dtype.is_integer and y_spec.shape.rank not in (None, label_rank):
        raise ValueError(f"Sparse integer `labels` must have rank {label_rank} in mode={mode!r}. Received: "
                         f"the dataset's labels have shape {y_spec.shape}.")
    if y_spec.dtype.is_floating:
        if y_spec.shape.rank not in (None, label_rank + 1):
            raise ValueError(f"One-hot/soft `labels` must have rank {label_rank + 1} in mode={mode!r}. "
                             f"Received: the dataset's labels have shape {y_spec.shape}.")
        width = y_spec.shape[-1] if y_spec.shape.rank else None
        if num_classes is not None and width is not None and width != num_classes:
            raise ValueError(f"The dataset's one-hot/soft `labels` have {width} classes but "
                             f"num_classes={num_classes}. Received: labels shape {y_spec.shape}.")

    def pack(x, y, element):
        if not as_dict:
            return x, y
        out = dict(element)           # batch mode: other keys pass through, as in `MixedExample`
        out.update(images=x, labels=y)
        return out

    if mode == "batch":
        def mix_one_batch(index, element):
            x, y, _ = _split_element(element)
            x = _images(x, 4, "images")
            xm, ym = stage.batch(x, y, _as_int32(epoch), _as_int32(index))
            return pack(tf.cast(xm, _out_dtype(x)), ym, element)
        return dataset.enumerate().map(mix_one_batch, num_parallel_calls=num_parallel_calls,
                                       deterministic=True)

    chunk = _pairs_per_call(pairs_per_call, batch_size, x_spec)
    length = dataset.cardinality()
    stream = dataset

    def mix_chunk(index, element):
        x, y, _ = _split_element(element)
        x = _images(x, 4, "images")
        xm, ym = stage.interleaved(x, y, _as_int32(epoch), _as_int32(index))
        return pack(tf.cast(xm, _out_dtype(x)), ym, {})

    def has_pair(index, element):
        return tf.shape(_split_element(element)[0])[0] >= 2

    # Pair mode reads two input examples per output, so batching the input stream is
    # half its cost: the batch copies run in parallel (order stays deterministic).
    # A trailing chunk of one example (N % (2 * chunk) == 1) holds no pair: it is
    # skipped, so no empty batch is emitted (call indices are taken before the skip).
    out = stream.batch(2 * chunk, num_parallel_calls=num_parallel_calls,
                       deterministic=True).enumerate().filter(has_pair).map(
        mix_chunk, num_parallel_calls=num_parallel_calls, deterministic=True)
    known = int(length) if int(length) >= 0 else None
    pairs = None if known is None else known // 2
    if batch_size is None:
        out = out.unbatch()
    elif chunk > batch_size:
        # Calls mix a multiple of batch_size pairs: split their output into batches
        # (only the last batch of the stream can be partial, as with `.batch()`).
        out = out.rebatch(batch_size)
    if pairs is not None:
        n_out = pairs if batch_size is None else -(-pairs // batch_size)
        out = out.apply(tf.data.experimental.assert_cardinality(n_out))
    return out


def _pairs_per_call(pairs_per_call, batch_size, x_spec):
    """Pairs mixed per map call: a multiple of `batch_size` when one is given."""
    if pairs_per_call is None:
        shape = x_spec.shape
        if shape.is_fully_defined():
            pair_bytes = 2 * shape.num_elements() * max(x_spec.dtype.size, 4)
            pairs_per_call = max(1, min(_AUTO_MAX_PAIRS, _AUTO_CHUNK_BYTES // pair_bytes))
        else:
            pairs_per_call = 64
    if batch_size is None:
        return pairs_per_call
    return batch_size * max(1, pairs_per_call // batch_size)

