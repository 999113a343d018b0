"""Retroactive inference example weighing for trained Keras models (thesis Sec. 4.3.1).

`patch_model` swaps every `BatchNormalization` (and `GroupNormalization`) of a
Sequential / Functional model, nested ones included, for the example-weighted
layer with the same weights; `set_example_weight` changes alpha in place
(a variable: no retracing); `sweep_example_weight` produces the Fig. 4.1/4.2/4.4
curves (accuracy and cross-entropy per alpha). Alpha acts only on layers with
moving statistics (`_takes_example_weight`): a Keras `GroupNormalization` has
none, so it stays plain Group Normalization (alpha fixed at 1).
"""

from __future__ import annotations

import functools
from collections.abc import Iterable

import keras
import numpy as np
import tensorflow as tf

from tf_dlthesis._checks import check_int
from tf_dlthesis.data._arrays import check_labels, read_labelled

from ._base import ExampleGroupNormalization, check_example_weight
from .example_weighted_batch_normalization import ExampleWeightedBatchNormalization
from .example_weighted_group_normalization import ExampleWeightedGroupNormalization

__all__ = ["patch_model", "set_example_weight", "sweep_example_weight", "normalization_layers"]


def _is_functional(model) -> bool:
    return any(c.__name__ == "Functional" for c in type(model).__mro__)


def _children(layer):
    if isinstance(layer, keras.Sequential) or _is_functional(layer):
        return list(layer.layers)
    return list(layer._flatten_layers(include_self=False, recursive=False))


def _walk(layer, _seen=None):
    """Every layer below ``layer``, depth first, each once (a sub-model shared by two nested models too)."""
    seen = set() if _seen is None else _seen
    for child in _children(layer):
        if id(child) not in seen:
            seen.add(id(child))
            yield child
            yield from _walk(child, seen)


def normalization_layers(model) -> list[ExampleGroupNormalization]:
    """All of this package's normalization layers in ``model`` (nested models included), each once.

    Alpha acts only on those with moving statistics (`_takes_example_weight`).
    """
    return [layer for layer in _walk(model) if isinstance(layer, ExampleGroupNormalization)]


def _stock_norm_layers(model) -> list:
    """Keras's own BN / GN layers in ``model`` (nested ones included), which alpha cannot reach unpatched."""
    stock = (keras.layers.BatchNormalization, keras.layers.GroupNormalization)
    return [layer for layer in _walk(model) if isinstance(layer, stock)
            and not isinstance(layer, ExampleGroupNormalization)]


def _takes_example_weight(layer) -> bool:
    """Whether alpha acts on ``layer`` (a Keras BN, or one of this package's layers with moving statistics).

    Eq. 4.3 blends the example's statistics with moving statistics; a layer
    without them (a Keras `GroupNormalization`, or
    ``ExampleWeightedGroupNormalization(moving_statistics=False)``) always
    normalizes by the example's own statistics (alpha = 1).
    """
    if isinstance(layer, ExampleGroupNormalization):
        return layer.moving_statistics
    return isinstance(layer, keras.layers.BatchNormalization)


def _convert(layer, alpha: float):
    """The example-weighted replacement for one layer, or ``None``.

    A layer without moving statistics keeps alpha = 1: a Keras GN becomes
    ``ExampleWeightedGroupNormalization(moving_statistics=False)``, plain GN
    with the same weights and outputs (invented moving statistics would
    change its output at alpha < 1).
    """
    if isinstance(layer, ExampleGroupNormalization):
        config = layer.get_config()
        config["example_weight"] = alpha if layer.moving_statistics else 1.0
        return type(layer).from_config(config)
    if isinstance(layer, keras.layers.BatchNormalization):
        # every Keras BN argument carries over (renorm and synchronized included)
        return ExampleWeightedBatchNormalization(example_weight=alpha, **layer.get_config())
    if isinstance(layer, keras.layers.GroupNormalization):
        config = layer.get_config()
        new = {k: config[k] for k in ("name", "dtype", "trainable", "groups", "axis", "epsilon", "center", "scale",
                                      "beta_initializer", "gamma_initializer", "beta_regularizer",
                                      "gamma_regularizer", "beta_constraint", "gamma_constraint") if k in config}
        return ExampleWeightedGroupNormalization(example_weight=1.0, moving_statistics=False, **new)
    return None


def _no_weightable_layer(model, alpha) -> ValueError:
    """The error for a model where alpha acts on no layer."""
    return ValueError(
        f"Model '{model.name}' has no normalization layer that example_weight can act on: its Group Normalization "
        "layers track no moving statistics, so they always normalize by the example's own statistics "
        "(example_weight = 1). For an alpha sweep, train with ExampleWeightedGroupNormalization("
        f"moving_statistics=True) (norm='ew_group:G'). Received: example_weight={alpha}")


def _check_patchable(model) -> list:
    """The model's normalization layers; refuses containers that `clone_model` would rebuild from config.

    Only Sequential and Functional models are cloned layer by layer; any other
    layer (a subclassed model, a custom `keras.layers.Layer`, a wrapper such as
    `TimeDistributed`) is re-created from its config, so a Keras BN/GN inside it
    would silently stay unpatched.
    """
    found = []
    for layer in [model, *_walk(model)]:
        if isinstance(layer, (keras.layers.BatchNormalization, keras.layers.GroupNormalization,
                              ExampleGroupNormalization)):
            found.append(layer)
        elif not (isinstance(layer, keras.Sequential) or _is_functional(layer)):
            inner = [s.name for s in _walk(layer) if isinstance(
                s, (keras.layers.BatchNormalization, keras.layers.GroupNormalization))]
            if inner and isinstance(layer, keras.Model):
                raise ValueError(
                    f"patch_model cannot rewrite normalization layers inside the subclassed model "
                    f"'{layer.name}' ({type(layer).__name__}): only Sequential and Functional models (nested "
                    "ones included) can be patched. Build it functionally, or construct it with "
                    "tf_dlthesis.normalization layers directly.")
            if inner:
                raise ValueError(
                    f"patch_model cannot rewrite the normalization layers {inner} inside the layer '{layer.name}' "
                    f"({type(layer).__name__}): a layer that is not a Sequential or Functional model is re-created "
                    "from its config, so its inner BatchNormalization / GroupNormalization would stay unpatched. "
                    "Build that block functionally, or construct it with tf_dlthesis.normalization layers "
                    "directly.")
    return found


def patch_model(model: keras.Model, example_weight: float = 0.0) -> keras.Model:
    """Returns a copy of ``model`` whose BN (and GN) layers use inference example weighing.

    Every `keras.layers.BatchNormalization` becomes an
    `ExampleWeightedBatchNormalization`, every `keras.layers.GroupNormalization`
    an `ExampleWeightedGroupNormalization` (and this package's layers are
    re-created), with identical weights; all other layers are cloned with
    their weights, so the original model is untouched. At
    ``example_weight=0`` the outputs equal the original model's inference
    outputs. Batch Renormalization layers are patched too (their inference
    only uses the moving statistics).

    Alpha acts on the layers with moving statistics only. A Keras
    `GroupNormalization` has none: it becomes
    ``ExampleWeightedGroupNormalization(moving_statistics=False)``, plain GN
    with the same outputs at every alpha (alpha stays 1 there;
    `set_example_weight` and `sweep_example_weight` skip it). For Fig. 4.2
    style sweeps of GN, train with
    ``ExampleWeightedGroupNormalization(moving_statistics=True)``
    (``norm="ew_group:G"``), which tracks the statistics.

    Example:

    >>> patched = patch_model(keras.applications.ResNet50(weights=None), 0.1)
    >>> set_example_weight(patched, 0.05)  # no retracing

    Args:
        model: A Sequential or Functional model (nested ones allowed).
        example_weight: alpha in [0, 1] for every patched layer.

    Returns:
        The new model.

    Raises:
        TypeError: ``model`` is not a Keras Sequential/Functional model.
        ValueError: alpha outside [0, 1]; no normalization layer; alpha < 1
            but no layer with moving statistics (e.g. only Keras GN layers);
            a Keras BN/GN inside a subclassed model or inside any other
            layer that is not a Sequential/Functional model (a custom layer,
            a `TimeDistributed` wrapper).

    Reference:
        Thesis Sec. 4.3.1; https://arxiv.org/abs/1906.03548.
    """
    alpha = check_example_weight(example_weight)
    if not isinstance(model, keras.Model):
        raise TypeError(f"patch_model expects a keras.Model. Received: model={type(model).__name__}")
    if not (isinstance(model, keras.Sequential) or _is_functional(model)):
        raise ValueError(
            f"patch_model supports Sequential and Functional models; '{model.name}' is a subclassed "
            f"{type(model).__name__}. Build it functionally or use tf_dlthesis.normalization layers directly.")
    if not model.built:
        raise ValueError(f"patch_model needs a built model; '{model.name}' is not built yet.")
    found = _check_patchable(model)
    if not found:
        raise ValueError(f"Model '{model.name}' has no BatchNormalization or GroupNormalization layer to patch.")
    if alpha < 1.0 and not any(_takes_example_weight(layer) for layer in found):
        raise _no_weightable_layer(model, alpha)

    pairs = []

    def clone(layer):
        new = _convert(layer, alpha)
        if new is None:
            new = type(layer).from_config(layer.get_config())
        pairs.append((layer, new))
        return new

    patched = keras.models.clone_model(model, clone_function=clone, recursive=True)
    for old, new in pairs:
        _copy_weights(old, new)
    return patched


def _copy_weights(old, new) -> None:
    """Copies weights by name (a GN has fewer, a renorm BN more weights than the new layer)."""
    if not old.weights:
        return
    old_by_name = {w.name: w for w in old.weights}
    new_by_name = {w.name: w for w in new.weights}
    unique = len(old_by_name) == len(old.weights) and len(new_by_name) == len(new.weights)
    if unique and (set(old_by_name) <= set(new_by_name) or set(new_by_name) <= set(old_by_name)):
        for name in set(old_by_name) & set(new_by_name):
            new_by_name[name].assign(old_by_name[name])
    else:
        new.set_weights(old.get_weights())


def set_example_weight(model: keras.Model, example_weight: float) -> int:
    """Sets alpha of every example-weighted layer of ``model`` in place.

    Alpha lives in a variable, so compiled functions (``predict``,
    ``tf.function``, XLA) keep running without retracing. Layers without
    moving statistics (plain Group Normalization, alpha fixed at 1) are
    skipped.

    Args:
        model: A model containing this package's normalization layers (e.g.
            the result of `patch_model`), or one such layer.
        example_weight: alpha in [0, 1].

    Returns:
        The number of layers changed.

    Raises:
        ValueError: alpha outside [0, 1]; no such layer in ``model``, or none
            with moving statistics; alpha < 1 for a single layer without them.
    """
    alpha = check_example_weight(example_weight)
    if isinstance(model, ExampleGroupNormalization):
        layers = [model]
    else:
        layers = normalization_layers(model)
        if not layers:
            raise ValueError(f"Model '{model.name}' has no example-weighted normalization layer; call patch_model "
                             "first.")
        layers = [layer for layer in layers if _takes_example_weight(layer)]
        if not layers:
            raise _no_weightable_layer(model, alpha)
    for layer in layers:
        layer.check_alpha(alpha)
    for layer in layers:
        layer.example_weight_variable.assign(alpha)
    return len(layers)


def _check_pair_lengths(dataset) -> None:
    """A one-line error naming ``dataset`` when an ``(x, y)`` pair's lengths differ (before any conversion)."""
    if isinstance(dataset, (tuple, list)) and len(dataset) == 2:
        lengths = []
        for part in dataset:
            shape = getattr(part, "shape", None)
            if shape is not None and len(shape) > 0 and shape[0] is not None:
                lengths.append(int(shape[0]))
            elif isinstance(part, (list, tuple)):
                lengths.append(len(part))
            else:
                return
        if lengths[0] != lengths[1]:
            raise ValueError(f"`dataset` images and labels differ in length. Received: dataset=(x with "
                             f"{lengths[0]} examples, y with {lengths[1]} labels)")


def _sweep_batch(model, from_logits, x, y):
    out = tf.cast(model(x, training=False), tf.float32)
    ce = keras.losses.sparse_categorical_crossentropy(y, out, from_logits=from_logits)
    return tf.equal(tf.argmax(out, axis=-1), y), ce


def _sweep_step(model, from_logits: bool):
    """One compiled sweep step per (model, from_logits), cached on the model.

    A `functools.partial` of a module-level function, not a closure: TF's
    retracing detector keys on the Python code object, so closures made by
    repeated calls (one per model) would count as retraces of one function.
    """
    cache = getattr(model, "_tf_dlthesis_sweep_steps", None)
    if cache is None:
        cache = {}
        try:
            object.__setattr__(model, "_tf_dlthesis_sweep_steps", cache)
        except (AttributeError, TypeError):
            pass
    if from_logits not in cache:
        cache[from_logits] = tf.function(functools.partial(_sweep_batch, model, from_logits), autograph=False)
    return cache[from_logits]


def sweep_example_weight(
    model: keras.Model,
    dataset,
    alphas: Iterable[float],
    *,
    from_logits: bool = True,
    batch_size: int = 256,
    per_example: bool = False,
) -> dict[str, np.ndarray]:
    """Accuracy and cross-entropy of ``model`` for each inference example weight alpha.

    The model is patched once (if any of its BN / GN layers is Keras's own, not
    yet example-weighted: a model mixing both once swept only this package's); alpha
    is then changed in place, so one compiled inference function serves the
    whole sweep. The model's alpha is restored afterwards.

    Args:
        model: A Keras model with BN/GN layers (or already patched).
        dataset: anything `data.as_arrays` accepts: ``(x, y)`` arrays or a
            ``tf.data.Dataset`` of ``(images, labels)`` (batched or not; sparse
            or one-hot labels).
        alphas: Values in [0, 1].
        from_logits: Whether the model outputs logits (else probabilities).
        batch_size: Examples per forward pass.
        per_example: Also return ``"correct"``, the (A, N) per-example
            correctness, for paired comparisons between alphas.

    Returns:
        ``{"alpha": (A,), "accuracy": (A,), "cross_entropy": (A,)}`` (and
        ``"correct"`` with ``per_example=True``).

    Raises:
        ValueError / TypeError: bad alphas (or not an iterable), batch size
            or dataset (empty, mismatched lengths, wrong structure, labels that
            do not fit the model's logits); not a Keras model; a model
            with no layer that alpha would change (e.g. only Group
            Normalization layers, which track no moving statistics).

    Reference:
        Thesis Figures 4.1, 4.2, 4.4 and A.2-A.4.
    """
    if isinstance(alphas, (str, bytes)) or not isinstance(alphas, Iterable):
        raise TypeError(f"`alphas` must be an iterable of floats in [0, 1] (e.g. [0.0, 0.1]). "
                        f"Received: alphas={alphas!r}")
    alphas = [check_example_weight(a) for a in alphas]
    if not alphas:
        raise ValueError("`alphas` must contain at least one value in [0, 1]. Received: alphas=[]")
    check_int("batch_size", batch_size, 1)
    if not isinstance(model, keras.Model):
        raise TypeError(f"`model` must be a Keras model. Received: model of type {type(model).__name__}")
    _check_pair_lengths(dataset)
    try:
        x_all, y_all, width = read_labelled(dataset)
    except ValueError as err:
        raise ValueError(f"`dataset`: {err}") from None
    check_labels(y_all, int(model(x_all[:1], training=False).shape[-1]), width)
    if not normalization_layers(model) or _stock_norm_layers(model):  # every BN / GN layer example-weighted
        model = patch_model(model, 0.0)
        if not normalization_layers(model):  # nothing to sweep: every alpha would report the same numbers
            raise ValueError(f"Model '{model.name}' has no example-weighted normalization layer after patching, so "
                             "alpha would change nothing.")
    layers = [layer for layer in normalization_layers(model) if _takes_example_weight(layer)]
    if not layers:  # e.g. plain GN only: every alpha would report the same numbers
        raise _no_weightable_layer(model, alphas[0])
    for layer in layers:
        for alpha in alphas:
            layer.check_alpha(alpha)
    previous = [layer.example_weight for layer in layers]
    step = _sweep_step(model, bool(from_logits))
    n = len(y_all)
    size = min(int(batch_size), n)

    acc, ces, correct_rows = [], [], []
    try:
        for alpha in alphas:
            for layer in layers:
                layer.example_weight_variable.assign(alpha)
            correct, ce = [], []
            for i in range(0, n, size):
                xb, yb = x_all[i:i + size], y_all[i:i + size]
                short = size - len(yb)
                if short:  # pad the last batch: one traced shape (inference is per example)
                    xb = np.concatenate([xb, np.repeat(xb[-1:], short, axis=0)])
                    yb = np.concatenate([yb, np.repeat(yb[-1:], short, axis=0)])
                c, e = step(tf.constant(xb), tf.constant(yb))
                correct.append(c.numpy()[:size - short])
                ce.append(e.numpy()[:size - short])
            correct, ce = np.concatenate(correct), np.concatenate(ce)
            acc.append(correct.mean())
            ces.append(ce.astype(np.float64).mean())
            correct_rows.append(correct)
    finally:
        for layer, value in zip(layers, previous):
            layer.example_weight_variable.assign(value)
    out = {"alpha": np.asarray(alphas), "accuracy": np.asarray(acc), "cross_entropy": np.asarray(ces)}
    if per_example:
        out["correct"] = np.stack(correct_rows)
    return out
