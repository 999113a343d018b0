"""Linear centered kernel alignment (CKA) between representations (Thesis Fig. 5.1).

Linear CKA (Kornblith et al., 2019) of two representations X (N, d1) and Y (N, d2)
of the same N examples, with columns centred:

    CKA(X, Y) = ||Y^T X||_F^2 / (||X^T X||_F ||Y^T Y||_F)

This feature-space form costs O(N d^2); the equivalent Gram-matrix form
tr(K H L H) / sqrt(tr(K H K H) tr(L H L H)) with K = X X^T costs O(N^2 d) and
O(N^2) memory. For the average over many models (`mean_pairwise_cka`) the Gram
form is vectorized instead: each model's centred, normalised Gram matrix is one
unit vector and every pair's CKA is one entry of their Gram product.

Reference: Thesis Ch. 5, Sec. 5.3.1-5.3.2 and Fig. 5.1; arXiv:2103.04514;
Kornblith et al., "Similarity of Neural Network Representations Revisited",
arXiv:1905.00414.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from tf_dlthesis._checks import check_int
from tf_dlthesis.data._arrays import as_images
from tf_dlthesis.variability.metrics import real_array


def _as_features(x, name: str) -> np.ndarray:
    arr = real_array(x, name, "(N, ...)")
    if arr.ndim < 2:
        raise ValueError(f"`{name}` must have shape (N, ...) with one row per example. Received: shape={arr.shape}")
    if arr.shape[0] < 2:
        raise ValueError(f"CKA needs at least 2 examples. Received: `{name}` of shape {arr.shape}")
    arr = arr.reshape(arr.shape[0], -1)
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"`{name}` contains NaN or infinite values.")
    return arr


def _check_not_constant(arr: np.ndarray, name: str) -> None:
    """Refuses identical rows before centring (a float64 constant need not centre to exact zeros)."""
    if np.all(arr == arr[:1]):
        raise ValueError(f"CKA is undefined for a constant representation (all examples map to the same point). "
                         f"Received: `{name}` with {arr.shape[0]} identical rows")


#: Centred features whose largest magnitude lies outside [2^-100, 2^100] are rescaled
#: by a power of two first: CKA's sums of fourth powers would overflow (1e200 -> nan) or
#: underflow to a "constant representation" (1e-200). CKA is scale invariant and a
#: power-of-two scaling is exact, so values in range are computed exactly as before.
_SAFE_EXPONENT = 100


def _safe_scale(centred: np.ndarray) -> np.ndarray:
    """`centred` times an exact power of two when its magnitude is outside the safe range."""
    peak = float(np.max(np.abs(centred))) if centred.size else 0.0
    if peak == 0.0:
        return centred
    exponent = np.frexp(peak)[1]
    if -_SAFE_EXPONENT <= exponent <= _SAFE_EXPONENT:
        return centred
    return np.ldexp(centred, -int(exponent))


def linear_cka(x, y) -> float:
    """Linear CKA between two representations of the same examples.

    Example:

    >>> import numpy as np
    >>> x = np.random.default_rng(0).normal(size=(100, 8))
    >>> round(linear_cka(x, 3.0 * x), 6)
    1.0

    Args:
        x: (N, ...) activations of model A (flattened per example).
        y: (N, ...) activations of model B for the same N examples.

    Returns:
        CKA in [0, 1] (float64 arithmetic).

    Raises:
        ValueError: if the example counts differ, N < 2, or a representation is
            constant (CKA undefined).
    """
    a = _as_features(x, "x")
    b = _as_features(y, "y")
    if a.shape[0] != b.shape[0]:
        raise ValueError(f"`x` and `y` must hold the same examples. Received: N={a.shape[0]} and N={b.shape[0]}")
    _check_not_constant(a, "x")
    _check_not_constant(b, "y")
    a = _safe_scale(a - a.mean(axis=0, keepdims=True))
    b = _safe_scale(b - b.mean(axis=0, keepdims=True))
    cross = np.sum((b.T @ a) ** 2)
    norm_a = np.linalg.norm(a.T @ a)
    norm_b = np.linalg.norm(b.T @ b)
    if norm_a == 0 or norm_b == 0:
        raise ValueError("CKA is undefined for a constant representation (all examples map to the same point).")
    # CKA lies in [0, 1]; rounding can step past 1 by an ulp (x and y equal up to rotation and scale)
    return float(min(cross / (norm_a * norm_b), 1.0))


def _unit_centred_gram(features: np.ndarray) -> np.ndarray:
    f = _safe_scale(features - features.mean(axis=0, keepdims=True))
    gram = f @ f.T
    norm = np.linalg.norm(gram)
    if norm == 0:
        raise ValueError("CKA is undefined for a constant representation (all examples map to the same point).")
    return (gram / norm).ravel()


def cka_matrix(representations: Sequence) -> np.ndarray:
    """CKA between every pair of R representations of the same N examples.

    Args:
        representations: R arrays of shape (N, ...) (feature widths may differ).

    Returns:
        (R, R) symmetric matrix with entries in [0, 1] and ones on the diagonal.
    """
    reps = [_as_features(r, f"representations[{i}]") for i, r in enumerate(representations)]
    if len(reps) < 2:
        raise ValueError(f"`representations` must hold at least 2 models. Received: {len(reps)}")
    n = {r.shape[0] for r in reps}
    if len(n) != 1:
        raise ValueError(f"All representations must hold the same examples. Received example counts: {sorted(n)}")
    for i, r in enumerate(reps):
        _check_not_constant(r, f"representations[{i}]")
    grams = np.stack([_unit_centred_gram(r) for r in reps])  # (R, N*N) unit vectors
    # entries lie in [0, 1] (inner products of unit PSD matrices); rounding can step past by an ulp
    return np.clip(grams @ grams.T, 0.0, 1.0)


def mean_pairwise_cka(representations: Sequence) -> float:
    """Mean CKA over all R(R-1)/2 pairs of models (one layer of Fig. 5.1)."""
    mat = cka_matrix(representations)
    iu = np.triu_indices(mat.shape[0], k=1)
    return float(mat[iu].mean())


def _layer_names(layers) -> list:
    """`layers` as a non-empty list of names; a single string is refused (it would be read letter by letter)."""
    if isinstance(layers, str):
        raise TypeError(f"`layers` must be a list of layer names, not a string. Received: layers={layers!r}")
    names = list(layers)
    if not names:
        raise ValueError(f"`layers` must name at least one layer (None: every layer with weights). "
                         f"Received: layers={layers!r}")
    return names


def layer_activations(model, images, layers: Sequence[str] | None = None, *, batch_size: int = 256) -> dict:
    """Activations of named layers of a Keras functional model, flattened per example.

    Args:
        model: A built functional/sequential `keras.Model`.
        images: (N, H, W, C) images (integer ones scaled by 1/255, grey (N, H, W)
            ones given a channel axis, as everywhere in the library), or an `(x, y)`
            pair or `tf.data` dataset whose images are used (`data.as_arrays`). For a
            model with one integer input (token ids) an integer array, used as given.
        layers: Layer names; `None` takes every layer with weights.
        batch_size: Prediction batch size.

    Returns:
        Dict layer name -> (N, D) float64 array.

    Raises:
        TypeError: `layers` given as one string instead of a list of names, or a
            `batch_size` that is not an int.
        ValueError: an empty `layers`, a name the model does not have, or
            `batch_size` < 1.
    """
    import keras

    if layers is None:
        layers = [l.name for l in model.layers if l.weights]
    names = _layer_names(layers)
    batch_size = check_int("batch_size", batch_size, 1)
    known = {l.name for l in model.layers}
    unknown = [n for n in names if n not in known]
    if unknown:
        raise ValueError(f"Unknown layer names {unknown}; the model has {sorted(known)}")
    from tf_dlthesis import runtime

    forward = runtime.inference_function(keras.Model(model.inputs, [model.get_layer(n).output for n in names]))
    images = _token_ids(model, images) if _takes_ints(model) else as_images(images)
    chunks = [forward(images[i:i + batch_size]) for i in range(0, len(images), batch_size)]
    chunks = [c if isinstance(c, (list, tuple)) else [c] for c in chunks]  # one layer: Keras returns a tensor
    return {n: np.concatenate([np.asarray(c[j], dtype=np.float64) for c in chunks]).reshape(len(images), -1)
            for j, n in enumerate(names)}


def _takes_ints(model) -> bool:
    """Whether the model has one integer input (token ids, e.g. a language model), which is no image."""
    inputs = getattr(model, "inputs", None) or []
    if len(inputs) != 1:
        return False
    try:
        return bool(np.issubdtype(np.dtype(str(inputs[0].dtype)), np.integer))
    except TypeError:
        return False


def _token_ids(model, ids) -> np.ndarray:
    """`ids` for a model with an integer input, as given (never scaled by 1/255 like images)."""
    ids = np.asarray(ids)
    if ids.ndim < 1 or len(ids) == 0 or not np.issubdtype(ids.dtype, np.integer):
        raise ValueError(f"A model with an integer input ({model.inputs[0].dtype}) takes a non-empty integer array "
                         f"(e.g. token ids). Received: an array of shape {ids.shape} and dtype {ids.dtype}")
    return ids


def layer_cka(models: Sequence, images, layers: Sequence[str] | None = None, *, batch_size: int = 256) -> dict:
    """Mean pairwise linear CKA per layer across R models (Thesis Fig. 5.1).

    The R models must share an architecture (the same layer names), e.g. the R
    runs of one nondeterminism source.

    Args:
        models: R >= 2 Keras models.
        images: (N, H, W, C) probe images (the thesis uses test images), in any
            form `layer_activations` takes.
        layers: Layer names (default: every layer with weights).
        batch_size: Prediction batch size.

    Returns:
        Dict layer name -> mean pairwise CKA.
    """
    models = list(models)
    if len(models) < 2:
        raise ValueError(f"`models` must hold at least 2 models. Received: {len(models)}")
    if layers is None:
        layers = [l.name for l in models[0].layers if l.weights]
    layers = _layer_names(layers)
    acts = [layer_activations(m, images, layers, batch_size=batch_size) for m in models]
    return {name: mean_pairwise_cka([a[name] for a in acts]) for name in layers}
