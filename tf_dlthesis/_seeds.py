"""One meaning of `seed` for the whole library.

Every public function that draws random numbers takes `seed=` and turns it into a
stateless-op seed here:

* an int >= 0 (or NumPy integer) -> `[seed, 0]`;
* a shape-[2] integer tensor / sequence -> used as is (already a stateless seed);
  a scalar integer tensor `s` -> `[s, 0]`;
* `None` -> fresh entropy, drawn once per call: the result is random and not
  reproducible, as with Keras's `seed=None`. Eagerly the entropy comes from the
  operating system; while tracing (`tf.function`, `tf.data` maps, XLA) an in-graph
  generator (seeded once from the operating system) draws it at every execution,
  every epoch of a `tf.data` pipeline included, since a seed drawn at trace time
  would be frozen into the graph and every call would draw the same numbers. Under
  op determinism (which refuses OS entropy) a generator seeded from TF's global
  seed draws it instead: reproducible, still fresh at every execution and epoch,
  and made anew by each `tf.random.set_seed` / `keras.utils.set_random_seed`, as
  Keras's own `seed=None` layers behave there.

Anything else (bools, floats, negative ints, wrong shapes) raises a `TypeError` /
`ValueError` that names the argument.
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf
from tensorflow.python.eager import context as _tf_context  # no public getter of the global seed
from tensorflow.python.framework import config as _tf_config  # no public getter (as in runtime.py)

from tf_dlthesis._checks import check_int


def fresh_seed() -> int:
    """A random int seed in [0, 2**31 - 1) from OS entropy (for `seed=None`)."""
    return int(np.random.default_rng().integers(0, 2**31 - 1))


_ENTROPY = []  # the one generator of traced `seed=None` draws, made on first use (as Keras's global seed generator)
_SEEDED = []  # under op determinism: (the global seed's state object, the seed, the generator seeded from it)


def _traced_entropy() -> tf.random.Generator | None:
    """The generator that traced `seed=None` draws come from (OS entropy, made once, eagerly).

    Its state is a variable, so it advances across executions of a graph *and* across
    iterators of a `tf.data` pipeline (every epoch). A stateful `tf.random.uniform`
    restarts its kernel with each new `tf.data` iterator, and once a global seed is set
    (`keras.utils.set_random_seed`) its op seed comes from the global seed and TF's op
    counter: every epoch then drew the same "fresh" numbers, and which numbers depended on
    the random ops built before. `None` inside a TF1-style graph (no eager context).
    """
    with tf.init_scope():
        if not tf.executing_eagerly():  # a TF1-style graph: no eager variable to keep the state in
            return None
        if _tf_config.is_op_determinism_enabled():
            return _seeded_entropy()
        if not _ENTROPY:  # on the CPU: `tf.data` maps (CPU only) read it too, and a seed is two int64s
            with tf.device("/CPU:0"):
                _ENTROPY.append(tf.random.Generator.from_non_deterministic_state())
    return _ENTROPY[0]


def _seeded_entropy() -> tf.random.Generator | None:
    """Under op determinism: a generator seeded from TF's global seed; `None` without one.

    Made anew whenever the global seed is set (`tf.random.set_seed` gives TF's eager
    context a new seed state object each time, even for the same seed), so a script
    that sets the seed and then runs draws the same numbers in any process, whatever
    ran before it. Before, TF's stateful op seeds drew the entropy: they restart with
    each `tf.data` iterator, so every epoch drew the same "fresh" crops and mixes
    (Keras's own `seed=None` layers draw new ones every epoch there).
    """
    ctx = _tf_context.context()
    seed = getattr(ctx, "_seed", None)
    if seed is None:
        return None
    state = getattr(ctx, "_rng", None)  # a new object at each set_seed
    if not _SEEDED or _SEEDED[0][0] is not state or _SEEDED[0][1] != seed:
        with tf.device("/CPU:0"):
            _SEEDED[:] = [(state, seed, tf.random.Generator.from_seed(int(seed), alg="philox"))]
    return _SEEDED[0][2]


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
            entropy = _traced_entropy()
            if entropy is not None:
                return entropy.uniform([2], 0, np.iinfo(np.int64).max, dtype=tf.int64)
            try:  # a TF1 graph, or op determinism without a global seed (TF refuses: the error below)
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
