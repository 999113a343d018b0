"""The one-ULP "random bit change" instability probe (Thesis Sec. 5.4.1).

"Randomly pick a single weight in the first layer and change its value by the
smallest possible amount in a 32-bit floating point representation, i.e. an
addition or subtraction of a single bit in the least-significant digit."

Reference: Thesis Ch. 5, Sec. 5.4.1 and Table 5.3; arXiv:2103.04514.
"""

from __future__ import annotations

import dataclasses

import keras
import numpy as np

from tf_dlthesis._seeds import check_int_seed


@dataclasses.dataclass(frozen=True)
class BitChange:
    """What `bit_change` changed.

    Attributes:
        layer: Name of the layer.
        variable: Path of the changed variable (its kernel).
        index: Multi-index of the changed element.
        old: Value before.
        new: Value after (`np.nextafter(old, +-inf)` in the variable's dtype).
        direction: +1 (toward +inf) or -1 (toward -inf); a weight at the largest finite
            float always moves toward 0, to stay finite.
    """

    layer: str
    variable: str
    index: tuple
    old: float
    new: float
    direction: int

    def to_config(self) -> dict:
        return {**dataclasses.asdict(self), "index": [int(i) for i in self.index]}


def _first_weighted_layer(model):
    stack = list(getattr(model, "layers", []))
    while stack:
        layer = stack.pop(0)
        sub = getattr(layer, "layers", None)
        if sub:
            stack[:0] = list(sub)
            continue
        if layer.trainable_weights:
            return layer
    raise ValueError(f"Model {getattr(model, 'name', model)!r} has no layer with trainable weights to change.")


def _resolve_layer(model, layer):
    import keras

    if layer is None:
        return _first_weighted_layer(model)
    if isinstance(layer, keras.layers.Layer):
        return layer
    if isinstance(layer, str):
        try:
            return model.get_layer(layer)
        except ValueError as exc:
            raise ValueError(f"No layer named {layer!r} in model {model.name!r}.") from exc
    if isinstance(layer, (int, np.integer)) and not isinstance(layer, bool):
        if not -len(model.layers) <= layer < len(model.layers):
            raise ValueError(f"`layer` index {layer} out of range for a model with {len(model.layers)} layers.")
        return model.layers[int(layer)]
    raise TypeError(f"`layer` must be None, a name, an index or a keras Layer. Received: {layer!r}")


def bit_change(model, *, seed: int, layer=None) -> BitChange:
    """Moves one randomly chosen first-layer weight to the adjacent float.

    The element is drawn uniformly from the layer's first trainable variable (its
    kernel, not the bias) and the direction uniformly from {up, down}, both from
    `seed`; the model is changed in place.

    Example:

    >>> import keras
    >>> model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)])
    >>> change = bit_change(model, seed=0)
    >>> abs(change.new - change.old) > 0
    True

    Args:
        model: A built `keras.Model`.
        seed: Seed choosing the element and the direction (`None`: fresh entropy;
            the record still names the element and direction chosen).
        layer: `None` (the first layer with trainable weights), a layer name,
            index or object.

    Returns:
        A `BitChange` record.

    Raises:
        ValueError: if `seed` is negative, the model has no trainable weights
            or `layer` is unknown.
        TypeError: if `seed` is not an int, or the variable is not floating point.
    """
    seed = check_int_seed(seed)
    target = _resolve_layer(model, layer)
    if not target.trainable_weights:
        raise ValueError(f"Layer {target.name!r} has no trainable weights to change.")
    var = target.trainable_weights[0]
    values = np.array(var.numpy())
    if not (np.issubdtype(values.dtype, np.floating) or keras.backend.is_float_dtype(str(values.dtype))):
        raise TypeError(f"Variable {var.path!r} has dtype {values.dtype}; a bit change needs floating point.")
    rng = np.random.default_rng(seed)  # None: fresh entropy (the record still names the change)
    flat = int(rng.integers(values.size))
    direction = 1 if rng.integers(2) else -1
    index = np.unravel_index(flat, values.shape)
    old = values[index]
    with np.errstate(over="ignore"):
        new = np.nextafter(old, np.array(np.inf if direction > 0 else -np.inf, dtype=values.dtype))
    if not np.isfinite(new):  # the largest finite float: the adjacent finite one lies the other way
        direction = -direction
        new = np.nextafter(old, np.array(np.inf if direction > 0 else -np.inf, dtype=values.dtype))
    values[index] = new
    var.assign(values)
    return BitChange(
        layer=target.name,
        variable=var.path,
        index=tuple(int(i) for i in index),
        old=float(old),
        new=float(new),
        direction=direction,
    )
