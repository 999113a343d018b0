"""Process-wide runtime settings: seeds, op determinism and XLA.

`configure` is the one place that touches process-global state. Everything else in
the library takes explicit seeds, so two runs with the same seeds and
`deterministic=True` produce bit-identical weights on CPU (and on GPU, where every
op used has a deterministic kernel).

What `configure(deterministic=True)` sets:

* `tf.config.experimental.enable_op_determinism()` - deterministic kernels for
  every TF op (ops without one raise instead of running nondeterministically); this
  also forces `tf.data` to run stateful random ops serially.
* environment `TF_DETERMINISTIC_OPS=1` and `TF_CUDNN_DETERMINISTIC=1` (read by
  older TF builds and by subprocesses started afterwards).
* `XLA_FLAGS += --xla_gpu_deterministic_ops=true` - XLA's GPU backend otherwise
  uses atomics in reductions and scatters. XLA reads its flags when the first XLA
  computation is compiled, so call `configure` before building or compiling models.

`jit` chooses whether the library's own training loops compile with XLA
(`model.compile(jit_compile=...)`): `True` or `False` forces it (and is also applied
to TF's auto-clustering, `tf.config.optimizer.set_jit`); `None` picks XLA when a GPU
is visible and not on CPU, where compiling small models costs more than it saves.
(Keras's own default, `"auto"`, picks XLA even on CPU.)

XLA and op determinism do not mix in `Model.fit`: Keras 3 (TensorFlow backend)
turns `compile(jit_compile=True)` off whenever op determinism is on, with only a
warning ("Model doesn't support `jit_compile=True`"; `keras.src.trainers.trainer.
model_supports_jit`). `jit_compile()` therefore answers `False` under op
determinism, and `configure(deterministic=True, jit=True)` warns: deterministic
training runs without XLA. The library's own `tf.function(jit_compile=True)` cores
(the mixing stage, `MixedExample`) are not affected.

Reference: Thesis Ch. 5, Sec. 5.2 (sources of nondeterminism); arXiv:2103.04514.
"""

from __future__ import annotations

import functools
import os
import random
import warnings

import numpy as np
import tensorflow as tf

# TF exports `enable_op_determinism` but neither its inverse nor the query; both live here.
from tensorflow.python.framework import config as _tf_config

from tf_dlthesis._checks import check_bool

_XLA_DETERMINISTIC_FLAG = "--xla_gpu_deterministic_ops=true"
_STATE: dict = {"seed": None, "deterministic": False, "jit": None}
_MAX_SEED = 2**32 - 1


def configure(seed: int | None = None, deterministic: bool = False, jit: bool | None = None) -> dict:
    """Sets seeds, op determinism and XLA for this process.

    Safe to call more than once; a later call with `deterministic=False` turns op
    determinism off again.

    Example:

    >>> from tf_dlthesis import runtime
    >>> settings = runtime.configure(seed=0, deterministic=True)
    >>> settings["deterministic"]
    True

    Args:
        seed: Seeds Python's `random`, NumPy's legacy global RNG, TF's and Keras's
            global seeds (`keras.utils.set_random_seed`) and TF's global generator
            (`tf.random.get_global_generator()`, reset in place). `None` leaves
            them alone.
        deterministic: Enables TF op determinism and the XLA GPU flag above.
        jit: `True`/`False` forces XLA for the library's training loops and TF
            auto-clustering; `None` keeps the current choice.

    Returns:
        A dict of what is now in force: `seed`, `deterministic`, `jit` (the
        choice), `fit_jit` (whether the library's `Model.fit` calls use XLA:
        `jit_compile()`), `xla_flags`, `tf_deterministic_ops`.

    Raises:
        TypeError: if `seed` is not an int, or the flags are not bools.
        ValueError: if `seed` is negative or above 2**32 - 1 (NumPy's seed range).
    """
    if seed is not None:
        if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
            raise TypeError(f"`seed` must be an int or None. Received: seed={seed!r}")
        if not 0 <= seed <= _MAX_SEED:
            # NumPy's global seed is a uint32: checked here, before any generator is reseeded.
            raise ValueError(f"`seed` must be an int in [0, 2**32 - 1]. Received: seed={seed}")
    deterministic = check_bool("deterministic", deterministic)
    jit = check_bool("jit", jit, allow_none=True)

    if seed is not None:
        import keras

        keras.utils.set_random_seed(int(seed))
        random.seed(int(seed))
        # `set_random_seed` sets TF's global *seed* (op seeds) only; the global `tf.random.Generator` keeps
        # its state. Reset in place, so functions that captured it draw the reseeded stream too.
        try:
            tf.random.get_global_generator().reset_from_seed(int(seed))
        except RuntimeError:  # op determinism is on and no global generator exists yet: create a seeded one
            tf.random.set_global_generator(tf.random.Generator.from_seed(int(seed)))
        _STATE["seed"] = int(seed)

    flags = os.environ.get("XLA_FLAGS", "").split()
    if deterministic:
        tf.config.experimental.enable_op_determinism()
        os.environ["TF_DETERMINISTIC_OPS"] = "1"
        os.environ["TF_CUDNN_DETERMINISTIC"] = "1"
        if _XLA_DETERMINISTIC_FLAG not in flags:
            flags.append(_XLA_DETERMINISTIC_FLAG)
    else:
        _tf_config.disable_op_determinism()
        os.environ.pop("TF_DETERMINISTIC_OPS", None)
        os.environ.pop("TF_CUDNN_DETERMINISTIC", None)
        flags = [f for f in flags if f != _XLA_DETERMINISTIC_FLAG]
    if flags:
        os.environ["XLA_FLAGS"] = " ".join(flags)
    else:
        os.environ.pop("XLA_FLAGS", None)
    _STATE["deterministic"] = deterministic

    if jit is not None:
        tf.config.optimizer.set_jit("autoclustering" if jit else False)
        _STATE["jit"] = jit
    if deterministic and _STATE["jit"]:
        warnings.warn("configure(deterministic=True, jit=True): Keras 3 compiles no model with XLA while op "
                      "determinism is on (`compile(jit_compile=True)` falls back to `False`), so `Model.fit` "
                      "runs without XLA; `runtime.jit_compile()` returns False.", UserWarning, stacklevel=2)

    return {
        "seed": _STATE["seed"],
        "deterministic": _STATE["deterministic"],
        "jit": _STATE["jit"],
        "fit_jit": jit_compile(),
        "xla_flags": os.environ.get("XLA_FLAGS", ""),
        "tf_deterministic_ops": os.environ.get("TF_DETERMINISTIC_OPS", "0") == "1",
    }


def machine() -> dict:
    """What, beyond the seeds, decides this process's floating-point results.

    Op determinism makes a run bit-reproducible on one machine, not across
    machines: TensorFlow's CPU kernels (oneDNN's and Eigen's) choose their
    instructions and blocking from the CPU's instruction sets and cache sizes (and
    the thread count), so the same seeds on another CPU give results that differ
    in the last bits, and training amplifies that into a different model (seen
    here: one ShuffleNetV2 run, same seeds, data order and one thread, disagreed on
    6.2% of test predictions between two 2-core machines). The protocol stamps every run with `machine()["id"]` and
    judges a bit change only against an unperturbed control from the same machine;
    `experiments.train` records it in each run's `info["machine"]`.

    Returns:
        `{"id", "cpu", "isa", "cache", "cores", "gpus", "tensorflow", "onednn"}`:
        `id` is a short hash of the rest; `isa` the CPU's vector-extension flags.
    """
    import hashlib
    import platform

    cpu, flags, cache = platform.processor() or platform.machine(), [], ""
    try:
        with open("/proc/cpuinfo") as fh:
            info = fh.read()
    except OSError:
        info = ""
    for line in info.splitlines():
        name, _, value = line.partition(":")
        name, value = name.strip(), value.strip()
        if name == "model name" and value:
            cpu = value
        elif name in ("flags", "Features") and not flags:
            flags = sorted(f for f in value.split() if f.startswith(("avx", "fma", "sse", "amx", "sve", "asimd")))
        elif name == "cache size" and not cache:
            cache = value
    gpus = []
    for device in tf.config.list_physical_devices("GPU"):
        try:
            gpus.append(tf.config.experimental.get_device_details(device).get("device_name", device.name))
        except (RuntimeError, ValueError):
            gpus.append(device.name)
    out = {"cpu": cpu, "isa": " ".join(flags), "cache": cache, "cores": usable_cores(), "gpus": gpus,
           "tensorflow": tf.__version__, "onednn": os.environ.get("TF_ENABLE_ONEDNN_OPTS", "default")}
    out["id"] = hashlib.sha256(repr(sorted(out.items())).encode()).hexdigest()[:12]
    return out


def usable_cores() -> int:
    """The CPU cores this process may run on: its affinity mask, not the host's count.

    In a container or under `taskset` the two differ (a 2-core share of a 64-core
    host is 2 here, 64 for `os.cpu_count()`). TensorFlow sizes its default thread
    pools from the same mask, so this is the count that decides its kernels'
    blocking, and the one `machine()`, `reproduce(jobs="auto")` and the
    variability protocols' default worker counts use. Falls back to
    `os.cpu_count()` where the platform has no affinity call (macOS, Windows).

    Example:
        >>> runtime.usable_cores()
        2
    """
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


def jit_compile() -> bool:
    """The `jit_compile` value the library's own `compile` calls use.

    Until `configure(jit=...)` forces a choice: `True` when a GPU is visible,
    else `False`. Always `False` while op determinism is on: Keras 3 would turn
    `jit_compile=True` off anyway (module docstring).
    """
    if is_deterministic():
        return False
    if _STATE["jit"] is None:
        return bool(tf.config.list_physical_devices("GPU"))
    return _STATE["jit"]


def is_deterministic() -> bool:
    """Whether TF op determinism is on (by `configure` or a direct TF call)."""
    return bool(_tf_config.is_op_determinism_enabled())


def _inference(model, inputs):
    return model(inputs, training=False)


def inference_function(model):
    """`model`'s inference forward pass as one `tf.function`, cached on the model.

    A `functools.partial`, not a closure: TF's retracing detector keys closures by
    their code object, so evaluating many models (one trace each) would otherwise
    warn about retracing of a single function. Keras's `model.predict` builds such a
    closure per model.
    """
    fn = getattr(model, "_tf_dlthesis_predict", None)
    if fn is None:
        fn = tf.function(functools.partial(_inference, model), reduce_retracing=True, autograph=False)
        try:
            object.__setattr__(model, "_tf_dlthesis_predict", fn)
        except (AttributeError, TypeError):
            pass
    return fn
