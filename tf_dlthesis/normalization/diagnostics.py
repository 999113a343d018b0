"""The train-time output bound of Batch Normalization (thesis App. A.1/A.2, Eq. 4.2)."""

from __future__ import annotations

import numbers

import keras
import numpy as np
import tensorflow as tf

from tf_dlthesis._checks import check_int

from ._base import ExampleGroupNormalization

__all__ = ["output_bound", "measure_output_range"]


def output_bound(gamma, beta, values_per_statistic: int):
    """Per-channel train-time range of BN: ``beta -/+ |gamma| * sqrt(B - 1)``.

    App. A.1 proves ``|BN(x) - beta| <= |gamma| sqrt(B - 1)`` during training
    (tight as ``epsilon -> 0``), where ``B`` counts every value a statistic
    averages: batch size x spatial positions for BN, ghost size x spatial for
    Ghost BN. Inference with moving statistics is unbounded.

    Args:
        gamma: ``(C,)`` scale (``None`` = 1).
        beta: ``(C,)`` offset (``None`` = 0).
        values_per_statistic: ``B >= 1``.

    Returns:
        ``(lower, upper)`` arrays of shape ``(C,)``.

    Raises:
        TypeError: ``values_per_statistic`` is not an integer (a float such
            as ``2.9`` or ``32.0``, or a bool).
        ValueError: ``values_per_statistic < 1``.

    Reference:
        Thesis Eq. 4.2 and App. A.1.
    """
    if isinstance(values_per_statistic, bool) or not isinstance(values_per_statistic, numbers.Integral):
        raise TypeError(f"`values_per_statistic` must be an int >= 1 (a count of values). "
                        f"Received: values_per_statistic={values_per_statistic!r}")
    b = int(values_per_statistic)
    if b < 1:
        raise ValueError(f"`values_per_statistic` must be >= 1. Received: values_per_statistic={values_per_statistic}")
    gamma = np.ones(1) if gamma is None else np.asarray(gamma, np.float64)
    beta = np.zeros_like(gamma) if beta is None else np.asarray(beta, np.float64)
    half = np.abs(gamma) * np.sqrt(b - 1.0)
    return beta - half, beta + half


_COUNTABLE = (keras.layers.BatchNormalization, keras.layers.GroupNormalization, ExampleGroupNormalization)


def _values_per_statistic(layer, batch_size: int, spatial: int, channels: int) -> int:
    """``B`` of Eq. 4.2 for ``layer``: examples x spatial positions x channels that one statistic averages.

    BN: the batch; Ghost BN / Batch Group Norm: the ghost batch (at most the
    batch); Group Normalization (Keras's, or this package's): one example and
    the ``C / groups`` channels of its group.
    """
    if isinstance(layer, keras.layers.GroupNormalization):
        groups = channels if layer.groups == -1 else layer.groups
        return spatial * (channels // groups)
    ghost = getattr(layer, "ghost_batch_size", None) or batch_size
    groups = getattr(layer, "_groups", None) or channels
    return min(ghost, batch_size) * spatial * (channels // groups)


def measure_output_range(model: keras.Model, layer, images, *, batch_size: int) -> dict:
    """Output range of a BN-type layer in training vs inference mode vs the Eq. 4.2 bound.

    Runs ``images`` through ``model`` in batches of ``batch_size`` (a trailing
    partial batch is dropped), first in inference mode (the trained moving
    statistics), then in training mode (batch statistics; every layer's moving
    statistics are restored afterwards, so the model is unchanged), recording
    the layer's outputs. (Before 2026-12-05 the two modes alternated batch by
    batch, so each inference pass saw moving statistics that the training-mode
    passes before it had already moved.)

    Args:
        model: A built Functional/Sequential model containing ``layer``.
        layer: The layer (or its name): a Keras `BatchNormalization` or
            `GroupNormalization`, or one of this package's layers.
        images: Array of inputs, at least ``batch_size`` of them.
        batch_size: Examples per training-mode statistic.

    Returns:
        dict with ``values_per_statistic`` (B), ``train_min``/``train_max``,
        ``inference_min``/``inference_max``, ``bound_min``/``bound_max``
        (extremes over channels) and ``train_within_bound`` (per-channel check
        of every training output, with a 1e-5 relative float tolerance).

    Raises:
        TypeError: ``layer`` is not one of the layers above (e.g. a
            `LayerNormalization`), whose ``B`` it cannot count.
        TypeError: ``batch_size`` is not an int (a bool or a float such as ``2.0``).
        ValueError: ``batch_size`` outside ``[1, len(images)]``.
    """
    if isinstance(layer, str):
        layer = model.get_layer(layer)
    if not isinstance(layer, _COUNTABLE):
        raise TypeError(
            "`layer` must be a BatchNormalization-family layer (Keras BN or one of tf_dlthesis.normalization's) "
            "or a keras.layers.GroupNormalization, whose values per statistic Eq. 4.2 can count. "
            f"Received: layer={getattr(layer, 'name', layer)!r} of type {type(layer).__name__}")
    batch_size = check_int("batch_size", batch_size, 1)  # a bool or a float is a TypeError, not a batch size
    images = np.asarray(images)
    if len(images) < batch_size:
        raise ValueError(f"`batch_size` must be in [1, {len(images)}]. Received: batch_size={batch_size}")
    probe = keras.Model(model.inputs, layer.output)
    saved = [w.numpy() for w in model.non_trainable_weights]
    n = (len(images) // batch_size) * batch_size
    run_train = tf.function(lambda v: probe(v, training=True), autograph=False)
    run_infer = tf.function(lambda v: probe(v, training=False), autograph=False)
    batches = [tf.convert_to_tensor(images[i:i + batch_size]) for i in range(0, n, batch_size)]
    try:
        infer_out = [run_infer(xb).numpy() for xb in batches]  # before any training-mode call moves the statistics
        train_out = [run_train(xb).numpy() for xb in batches]
    finally:
        for w, v in zip(model.non_trainable_weights, saved):
            w.assign(v)
    train_out = np.concatenate(train_out)
    infer_out = np.concatenate(infer_out)
    axis = getattr(layer, "axis", -1)
    axis = axis[0] if isinstance(axis, (list, tuple)) else axis
    axis = axis % train_out.ndim
    spatial = int(np.prod([train_out.shape[i] for i in range(1, train_out.ndim) if i != axis]))
    per_stat = _values_per_statistic(layer, batch_size, spatial, train_out.shape[axis])
    gamma = None if getattr(layer, "gamma", None) is None else layer.gamma.numpy()
    beta = None if getattr(layer, "beta", None) is None else layer.beta.numpy()
    lo, hi = output_bound(gamma, beta, per_stat)
    moved = np.moveaxis(train_out, axis, -1).reshape(-1, train_out.shape[axis])
    tol = 1e-5 * (1.0 + np.abs(hi - lo))
    within = bool(np.all(moved >= lo - tol) and np.all(moved <= hi + tol))
    return {
        "values_per_statistic": per_stat,
        "train_min": float(train_out.min()), "train_max": float(train_out.max()),
        "inference_min": float(infer_out.min()), "inference_max": float(infer_out.max()),
        "bound_min": float(lo.min()), "bound_max": float(hi.max()),
        "train_within_bound": within,
    }
