"""Precise BN: moving statistics recomputed exactly from data (thesis App. A.3).

`update_bn_statistics` is the Keras counterpart of fvcore's ``update_bn_stats``
(Wu & Johnson, "Rethinking 'Batch' in BatchNorm", 2021): it runs the model's
training-mode forward pass over some batches with every weight frozen and
replaces each BN-family layer's moving mean and variance by the exact
average of the per-batch statistics that layer normalized with, instead of
an exponential moving average over changing weights. `PreciseBN` does it at
the end of chosen epochs of `fit`.
"""

from __future__ import annotations

import functools
import itertools
import numbers

import keras
import numpy as np
import tensorflow as tf

from tf_dlthesis._checks import check_int

from ._base import ExampleGroupNormalization

__all__ = ["update_bn_statistics", "PreciseBN", "bn_layers"]

_RENORM_STATE = ("renorm_mean", "renorm_stddev")


def _is_bn(layer) -> bool:
    return isinstance(layer, (keras.layers.BatchNormalization, ExampleGroupNormalization))


def bn_layers(model) -> list:
    """The BN-family layers of ``model`` whose moving statistics training updates.

    Keras `BatchNormalization` and every layer of this package, built and
    trainable (a frozen BN runs in inference mode even in a training-mode
    pass, as Keras documents, so its statistics are left alone) and tracking
    moving statistics, nested models included, each once.
    """
    from .patching import _walk

    return [layer for layer in ([model] if _is_bn(model) else []) + list(_walk(model))  # `_walk`: each once
            if _is_bn(layer) and layer.built and layer.trainable and getattr(layer, "moving_statistics", True)]


def _check_steps(steps):
    return check_int("steps", steps, 1, allow_none=True)


def _inputs_of(batch):
    """The model input of one batch: ``x`` of ``(x, y[, sample_weight])``, else the batch itself."""
    if isinstance(batch, (tuple, list)):
        if not batch:
            raise ValueError("`data` yielded an empty batch tuple.")
        return batch[0]
    return batch


def _length(part):
    """The number of examples of one entry of ``(x, y[, sample_weight])``, or ``None`` when it has none."""
    shape = getattr(part, "shape", None)
    if shape is not None:
        return int(shape[0]) if len(shape) > 0 and shape[0] is not None else None
    return len(part) if isinstance(part, (list, tuple)) else None


def _xy_inputs(data):
    """``x`` when ``data`` is ``(x[, y[, sample_weight]])`` arrays, else ``None`` (a sequence of batches).

    The rule: a tuple or list of at most 3 entries whose first entry is an
    array is ``(x[, y[, sample_weight]])``, as in Keras ``fit``, and its
    entries must agree in length; any other tuple or list is a sequence of
    batches.
    """
    if not (isinstance(data, (tuple, list)) and 0 < len(data) <= 3 and hasattr(data[0], "shape")):
        return None
    lengths = [_length(part) for part in data]
    if any(n is not None and n != lengths[0] for n in lengths[1:]):
        raise ValueError(
            "`data` is read as (x, y[, sample_weight]) arrays (a tuple or list of at most 3 entries starting with "
            "an array), but its entries differ in length. To pass 2 or 3 batches, pass iter(batches) or a "
            f"tf.data.Dataset. Received: data with entry lengths {lengths}")
    return data[0]


def _check_batched(dataset, model):
    """Raise a ValueError for a dataset of single examples (rank one below the model's one input)."""
    inputs = getattr(model, "inputs", None)
    spec = dataset.element_spec
    if isinstance(spec, (tuple, list)) and spec:
        spec = spec[0]
    if not inputs or len(inputs) != 1 or not isinstance(spec, tf.TensorSpec) or spec.shape.rank is None:
        return
    rank = len(inputs[0].shape)
    if spec.shape.rank == rank - 1:
        raise ValueError(f"`data` is a dataset of single examples (inputs of shape {spec.shape}) but the model "
                         f"takes batches of shape {tuple(inputs[0].shape)}: batch it first, e.g. "
                         "`data.batch(128)`.")


def _batches(data, batch_size, model=None):
    """Iterates over the input batches of ``data`` (see `update_bn_statistics`)."""
    if isinstance(data, tf.data.Dataset):
        _check_batched(data, model)
        for batch in data:
            yield _inputs_of(batch)
        return
    x = _xy_inputs(data)
    if x is not None:
        data = x  # (x, y) arrays: the inputs
    if isinstance(data, (np.ndarray, tf.Tensor)) or (hasattr(data, "shape") and hasattr(data, "__getitem__")):
        n = int(data.shape[0])
        if n == 0:
            raise ValueError(f"`data` is empty. Received: data of shape {tuple(data.shape)}")
        for i in range(0, n, batch_size):
            yield data[i:i + batch_size]
        return
    if isinstance(data, dict):
        raise TypeError("`data` as a dict of arrays is not supported: pass a batched tf.data.Dataset of dicts. "
                        f"Received: data with keys {sorted(data)}")
    try:
        iterator = iter(data)
    except TypeError:
        raise TypeError("`data` must be a tf.data.Dataset, an array (or (x, y) arrays) or an iterable of "
                        f"batches. Received: data={type(data).__name__}") from None
    for batch in iterator:
        yield _inputs_of(batch)


def _forward_and_accumulate(model, layers, sums, x, weight):
    """One training-mode forward pass; adds each layer's batch statistics (momentum 0) x ``weight`` to ``sums``."""
    model(x, training=True)
    for layer, (mean_sum, var_sum) in zip(layers, sums):
        mean_sum.assign_add(weight * tf.cast(layer.moving_mean.value, tf.float64))
        var_sum.assign_add(weight * tf.cast(layer.moving_variance.value, tf.float64))
    return tf.constant(0)


def _examples_in(x) -> int:
    """The number of examples of one input batch (its first tensor's leading dimension)."""
    shape = getattr(tf.nest.flatten(x)[0], "shape", None)
    if shape is None or len(shape) == 0 or shape[0] is None:
        raise ValueError("average='examples' needs batches whose inputs have a known leading (batch) dimension. "
                         f"Received: a batch of shape {shape}")
    return int(shape[0])


def update_bn_statistics(model: keras.Model, data, steps: int | None = None, *, batch_size: int = 32,
                         average: str = "batches") -> int:
    """Recomputes every BN-family layer's moving mean and variance exactly from ``data`` (Precise BN).

    Runs ``model(x, training=True)`` on each batch of ``data`` (up to
    ``steps`` batches), so every BN layer normalizes with its batch
    statistics exactly as in training (ghost batches, channel groups, masks
    and Batch Renormalization's correction included, dropout active), while
    no weight changes: nothing is differentiated, and the renorm statistics
    are restored after each batch. Each layer's moving mean and moving
    variance become the plain average over the batches of the mean and
    (biased) variance it normalized with, as fvcore's ``update_bn_stats``;
    the thesis (App. A.3) approximated this by extra epochs at learning
    rate 0, which folds the statistics into an exponential moving average
    instead. A renormalized layer's ``moving_stddev`` becomes
    ``sqrt(variance + epsilon)``.

    Layers covered: Keras `BatchNormalization` and this package's four
    layers, nested models included, when built and trainable (a frozen BN
    runs in inference mode, so it has no batch statistics to average). A
    layer called several times in one forward pass (a shared layer, e.g. in a
    Siamese net) contributes the statistics of its last call on each batch,
    as with fvcore, not an average over its calls.

    ``average="examples"`` weighs each batch by its number of examples
    instead (Izmailov et al.'s ``bn_update`` for SWA, which
    `variability.recompute_batch_norm_statistics` uses): it differs from the
    plain average only when the batches differ in size (a short last batch).

    Example:

    >>> model.fit(train_ds_augmented, epochs=30)
    >>> update_bn_statistics(model, train_ds_plain.batch(128), steps=200)

    Args:
        model: A built Keras model (any kind: Sequential, Functional,
            subclassed).
        data: A batched `tf.data.Dataset` (elements ``x`` or ``(x, y, ...)``),
            an array or tensor of inputs (or an ``(x,)``, ``(x, y)`` or
            ``(x, y, sample_weight)`` tuple or list of equally long arrays),
            split into batches of ``batch_size``, or any other iterable of
            batches (each ``x`` or ``(x, y, ...)``, used as it is). A tuple
            or list of at most 3 entries starting with an array is always
            read as ``(x, y[, sample_weight])``; pass 2 or 3 batches as
            ``iter(batches)``. Labels are never used. Inputs reach the model
            as given, as in Keras ``fit`` (uint8 images are not scaled: pass
            the images the model was trained on). A dataset of single examples
            is refused (batch it first).
        steps: Number of batches to use; ``None`` = all of ``data``. An
            iterator passed as ``data`` is advanced by exactly ``steps``
            batches.
        batch_size: Batch size for array ``data``.
        average: ``"batches"`` (each batch counts once, as fvcore) or
            ``"examples"`` (each batch counts by its size).

    Returns:
        The number of batches averaged.

    Raises:
        TypeError: ``model`` is not a Keras model / layer or ``data`` has an
            unusable type.
        ValueError: no BN-family layer to update, bad ``steps`` /
            ``batch_size`` / ``average``, ``data`` yields no batch, or
            ``(x, y[, w])`` entries of different lengths.

    Reference:
        Thesis App. A.3; Wu & Johnson 2021 (https://arxiv.org/abs/2105.07576);
        https://arxiv.org/abs/1906.03548.
    """
    if not isinstance(model, keras.layers.Layer):
        raise TypeError(f"`model` must be a Keras model. Received: model={type(model).__name__}")
    steps = _check_steps(steps)
    check_int("batch_size", batch_size, 1)
    if average not in ("batches", "examples"):
        raise ValueError(f"`average` must be 'batches' or 'examples'. Received: average={average!r}")
    if not model.built:
        raise ValueError(f"`model` must be built (call it on data first); '{model.name}' is not built.")
    layers = bn_layers(model)
    if not layers:
        raise ValueError(f"Model '{model.name}' has no trainable, built BatchNormalization-family layer whose "
                         "statistics could be updated.")
    saved = [{w.name: np.asarray(w.numpy()) for w in layer.non_trainable_weights} for layer in layers]
    settings = [(layer.momentum, getattr(layer, "moving_update", None)) for layer in layers]
    sums = [(tf.Variable(tf.zeros(layer.moving_mean.shape, tf.float64), trainable=False),
             tf.Variable(tf.zeros(layer.moving_variance.shape, tf.float64), trainable=False)) for layer in layers]
    renorm = [(layer, [getattr(layer, n) for n in _RENORM_STATE]) for layer in layers if getattr(layer, "renorm", False)]
    count, total = 0, 0.0
    done = False
    try:
        for layer in layers:
            layer.momentum = 0.0  # the moving statistics then hold the last batch's statistics exactly
            if isinstance(layer, ExampleGroupNormalization):
                layer.moving_update = "averaged"
        # a partial (not a closure): one tf.function per call, not counted as a retrace of one function
        step = tf.function(functools.partial(_forward_and_accumulate, model, layers, sums), autograph=False)
        # islice: a shared iterator loses no batch beyond the ``steps`` used
        for x in itertools.islice(_batches(data, int(batch_size), model), steps):
            weight = float(_examples_in(x)) if average == "examples" else 1.0
            step(x, tf.constant(weight, tf.float64))
            count, total = count + 1, total + weight
            for layer, variables in renorm:  # renorm's (r, d) must see the trained statistics every batch
                for v in variables:
                    v.assign(saved[layers.index(layer)][v.name])
        if count == 0:
            raise ValueError("`data` yielded no batches: nothing to average.")
        done = True
    finally:
        for layer, (momentum, moving_update) in zip(layers, settings):
            layer.momentum = momentum
            if moving_update is not None:
                layer.moving_update = moving_update
        if not done:
            for layer, values in zip(layers, saved):
                for w in layer.non_trainable_weights:
                    w.assign(values[w.name])
    for layer, values, (mean_sum, var_sum) in zip(layers, saved, sums):
        for w in layer.non_trainable_weights:  # back to the trained state, then the averages
            w.assign(values[w.name])
        mean = (mean_sum / total).numpy()
        variance = np.maximum((var_sum / total).numpy(), 0.0)
        layer.moving_mean.assign(mean.astype(np.float32))
        layer.moving_variance.assign(variance.astype(np.float32))
        if getattr(layer, "renorm", False):
            layer.moving_stddev.assign(np.sqrt(variance + layer.epsilon).astype(np.float32))
    return count


@keras.saving.register_keras_serializable(package="tf_dlthesis")
class PreciseBN(keras.callbacks.Callback):
    """Keras callback: `update_bn_statistics` at the end of chosen epochs of `fit`.

    Example:

    >>> cb = PreciseBN(x_train_without_augmentation, epochs="last", steps=100, batch_size=128)
    >>> model.fit(train_ds, epochs=30, callbacks=[cb])

    Args:
        data: What `update_bn_statistics` accepts (e.g. non-augmented
            training images, or a batched dataset). Required by the time
            `fit` starts (``None`` is allowed only so that a configuration,
            which cannot hold data, rebuilds the callback).
        epochs: When to recompute: ``"last"`` (default: after the final
            epoch of `fit`, or, when `fit` stops early, e.g. by
            `EarlyStopping`, at the end of training after the last epoch
            that ran), ``"all"`` (after every epoch), an int ``k``
            (after every k-th epoch) or a collection of 1-based epoch
            numbers (as Keras prints them).
        steps: Batches per recomputation (``None``: all of ``data``).
        batch_size: Batch size for array ``data``.

    Raises:
        ValueError / TypeError: bad ``epochs``, ``steps`` or ``batch_size``;
            ``data`` still ``None`` when `fit` starts.

    Note: `EarlyStopping(restore_best_weights=True)` restores the weights
    (moving statistics included) when training ends; list `PreciseBN` after
    it in ``callbacks`` so that the statistics are recomputed for the
    restored weights rather than overwritten.

    Reference:
        Thesis App. A.3; https://arxiv.org/abs/1906.03548.
    """

    def __init__(self, data=None, epochs="last", steps: int | None = None, batch_size: int = 32):
        super().__init__()
        if isinstance(epochs, str):
            if epochs not in ("last", "all"):
                raise ValueError(f"`epochs` must be 'last', 'all', a positive int or a collection of epoch "
                                 f"numbers. Received: epochs={epochs!r}")
        elif isinstance(epochs, numbers.Integral) and not isinstance(epochs, bool):
            if epochs < 1:
                raise ValueError(f"`epochs` as an int must be >= 1 (every k-th epoch). Received: epochs={epochs}")
            epochs = int(epochs)
        else:
            try:
                epochs = sorted({int(e) for e in epochs})
            except (TypeError, ValueError):
                raise TypeError(f"`epochs` must be 'last', 'all', a positive int or a collection of epoch numbers. "
                                f"Received: epochs={epochs!r}") from None
            if not epochs or epochs[0] < 1:
                raise ValueError(f"`epochs` numbers are 1-based and the collection non-empty. Received: epochs={epochs}")
        self.data = data
        self.epochs = epochs
        self.steps = _check_steps(steps)
        self.batch_size = check_int("batch_size", batch_size, 1)
        self.updated_epochs: list = []
        self._total_epochs = None
        self._pending = None  # the last epoch trained, when its statistics were not recomputed

    def on_train_begin(self, logs=None):
        if self.data is None:
            raise ValueError("PreciseBN needs `data` (the images to recompute the statistics from). Received: "
                             "data=None")
        self._total_epochs = (self.params or {}).get("epochs")
        self._pending = None

    def _due(self, epoch_number: int) -> bool:
        if self.epochs == "all":
            return True
        if self.epochs == "last":
            return self._total_epochs is not None and epoch_number == self._total_epochs
        if isinstance(self.epochs, int):
            return epoch_number % self.epochs == 0
        return epoch_number in self.epochs

    def _update(self, epoch_number: int) -> None:
        update_bn_statistics(self.model, self.data, self.steps, batch_size=self.batch_size)
        self.updated_epochs.append(epoch_number)
        self._pending = None

    def on_epoch_end(self, epoch, logs=None):
        self._pending = epoch + 1
        if self._due(epoch + 1):
            self._update(epoch + 1)

    def on_train_end(self, logs=None):
        # "last" when fit stopped before params["epochs"] (EarlyStopping, stop_training)
        if self.epochs == "last" and self._pending is not None:
            self._update(self._pending)

    def get_config(self):
        return {"epochs": self.epochs, "steps": self.steps, "batch_size": self.batch_size}

    @classmethod
    def from_config(cls, config):
        """Rebuilds the callback from `get_config` (without ``data``: set ``callback.data`` before `fit`)."""
        return cls(**config)
