"""One meaning of `seed` for the whole library.

Every public function that draws random numbers takes `seed=` and turns it into a
stateless-op seed here:

* an int >= 0 (or NumPy integer) -> `[seed, 0]`;
* a shape-[2] integer tensor / sequence -> used as is (already a stateless seed);
  a scalar integer tensor `s` -> `[s, 0]`;
* `None` -> fresh entropy, drawn once per call: the result is random and not
  reproducible, as with Keras's `seed=None`. Eagerly the entropy comes from the
  operating system; while tracing (`tf.function`, `tf.data` maps, XLA) an in-graph
  op draws it at every execution, since a seed drawn at trace time would be frozen
  into the graph and every call would draw the same numbers.

Anything else (bools, floats, negative ints, wrong shapes) raises a `TypeError` /
`ValueError` that names the argument.
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf

from tf_dlthesis._checks import check_int


def fresh_seed() -> int:
    """A random int seed in [0, 2**31 - 1) from OS entropy (for `seed=None`)."""
    return int(np.random.default_rng().integers(0, 2**31 - 1))


def check_int_seed(seed, name: str = "seed", *, allow_none: bool = True):
    """Validates a Python-int seed (`None` passes through when allowed).

    Returns:
        The seed as an `int`, or `None`.

    Raises:
        TypeError: not an int (bools and floats included).
        ValueError: a negative int.
    """
    return check_int(name, seed, 0, allow_none=allow_none)


def as_seed(seed, name: str = "seed") -> tf.Tensor:
    """A shape-[2] int64 stateless seed from an int, a pair, an integer tensor or `None`.

    Example:

    >>> as_seed(3).numpy().tolist()
    [3, 0]

    Args:
        seed: int >= 0, shape-[2] integer tensor/sequence, or `None` (fresh entropy
            per call, also per execution of a traced graph).
        name: the argument's name, for error messages.

    Returns:
        An int64 tensor of shape [2].

    Raises:
        TypeError: bools, floats, non-integer tensors.
        ValueError: negative ints or ints >= 2**63, tensors of another shape.
        RuntimeError: `None` while tracing under op determinism with no global seed.
    """
    if seed is None:
        if not tf.executing_eagerly():
            try:
                return tf.random.uniform([2], 0, np.iinfo(np.int64).max, dtype=tf.int64)
            except RuntimeError as error:  # op determinism without a global seed
                raise RuntimeError(
                    f"`{name}=None` inside a traced graph (tf.function, tf.data map) draws fresh entropy at "
                    "every execution with a stateful random op, which op determinism refuses unless a global "
                    f"seed is set (`tf.random.set_seed`). Pass an int `{name}` for reproducible numbers."
                ) from error
        return tf.constant([fresh_seed(), fresh_seed()], tf.int64)
    if isinstance(seed, bool):
        raise TypeError(f"`{name}` must be an int, a shape-[2] integer tensor or None. Received: {name}={seed!r}")
    if isinstance(seed, (int, np.integer)):
        if seed >= 2**63:
            raise ValueError(f"`{name}` must be < 2**63 (an int64). Received: {name}={seed}")
        return tf.constant([check_int_seed(seed, name), 0], tf.int64)
    if isinstance(seed, float):
        raise TypeError(f"`{name}` must be an int, a shape-[2] integer tensor or None. Received: {name}={seed!r}")
    try:
        seed = tf.convert_to_tensor(seed)
    except (TypeError, ValueError):
        raise TypeError(f"`{name}` must be an int, a shape-[2] integer tensor or None. Received: {name}={seed!r}") from None
    if not seed.dtype.is_integer:
        raise TypeError(f"`{name}` must be integer-valued. Received dtype {seed.dtype.name} for {name}={seed!r}")
    if seed.shape.rank == 0:  # a scalar integer tensor, e.g. a step counter
        return tf.stack([tf.cast(seed, tf.int64), tf.constant(0, tf.int64)])
    if seed.shape.rank is not None and seed.shape.as_list() != [2] and not (
        seed.shape.rank == 1 and seed.shape[0] is None
    ):
        raise ValueError(f"`{name}` must be an int or have shape [2]. Received shape {seed.shape} for {name}.")
    return tf.cast(seed, tf.int64)
