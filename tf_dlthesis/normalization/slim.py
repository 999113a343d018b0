"""Inference example weighing for TF-Slim models and frozen GraphDefs (thesis Sec. 4.3.1).

Needs the ``[slim]`` extra (``tf-slim``, ``tf-keras``); importing
`tf_dlthesis.normalization` alone never imports them.

* `install_legacy_layers_shim()` - on TF >= 2.16 ``slim.batch_norm`` fails with
  ``No module named 'tf_keras.legacy_tf_layers'`` (the module ships as
  ``tf_keras.src.legacy_tf_layers``); the shim aliases it. It runs on import.
* `batch_norm(...)` - drop-in for ``slim.batch_norm`` (also as
  ``normalizer_fn`` inside ``slim.arg_scope([slim.batch_norm], ...)``: it shares
  that function's arg-scope key) with TF-Slim's variable names, so stock
  checkpoints restore, plus ``example_weight`` (alpha, Eq. 4.3) used when
  ``is_training=False``.
* `example_weighted(alpha)` - context manager that routes every
  ``slim.batch_norm`` call (``tf_slim.batch_norm``, ``tf_slim.layers.batch_norm``
  and ``tf_slim.layers.layers.batch_norm``) to `batch_norm` with that alpha, for
  nets that call it directly (e.g. ``resnet_v2``).
* `patch_graph_def(graph_def, example_weight)` - rewrites every inference
  ``FusedBatchNorm``/``V2``/``V3`` node of a frozen graph into Eq. 4.3.

Reference:
    Thesis Sec. 4.3.1; https://arxiv.org/abs/1906.03548.
"""

from __future__ import annotations

import contextlib
import functools
import importlib
import sys

import numpy as np
import tensorflow as tf

from ._base import check_example_weight
from ._core import normalize_inference

__all__ = ["install_legacy_layers_shim", "batch_norm", "example_weighted", "patch_graph_def"]

_LEGACY = ("base", "convolutional", "core", "normalization", "pooling", "variable_scope_shim", "migration_utils")


def install_legacy_layers_shim() -> None:
    """Aliases ``tf_keras.legacy_tf_layers`` to ``tf_keras.src.legacy_tf_layers``.

    TensorFlow's ``tensorflow.python.layers.normalization`` lazily imports
    ``tf_keras.legacy_tf_layers.normalization``, which tf_keras >= 2.16 moved
    under ``src``; TF-Slim's ``batch_norm`` then fails. Also restores
    ``tensorflow.python.framework.ops.Tensor`` (an alias of `tf.Tensor` that
    recent TF dropped), which TF-Slim's fused path reads: without it
    ``slim.batch_norm`` on rank-2 inputs (``slim.fully_connected``), or with
    ``updates_collections=None``, fails with ``AttributeError: ... has no
    attribute 'Tensor'``. Idempotent.

    Raises:
        ImportError: tf_keras is not installed (``pip install tf_dlthesis[slim]``).
    """
    framework_ops = importlib.import_module("tensorflow.python.framework.ops")
    if not hasattr(framework_ops, "Tensor"):  # tf_slim.layers.utils.constant_value reads ops.Tensor
        framework_ops.Tensor = tf.Tensor
    try:
        importlib.import_module("tf_keras.legacy_tf_layers")
        return
    except ImportError:
        pass
    try:
        src = importlib.import_module("tf_keras.src.legacy_tf_layers")
    except ImportError as err:  # pragma: no cover - depends on the install
        raise ImportError("tf_dlthesis.normalization.slim needs tf-keras: pip install 'tf_dlthesis[slim]'") from err
    sys.modules["tf_keras.legacy_tf_layers"] = src
    for name in _LEGACY:
        try:
            sys.modules[f"tf_keras.legacy_tf_layers.{name}"] = importlib.import_module(
                f"tf_keras.src.legacy_tf_layers.{name}")
        except ImportError:
            continue


install_legacy_layers_shim()

import tf_slim  # noqa: E402  (after the shim)
from tf_slim.layers import layers as _slim_layers  # noqa: E402
from tf_slim.ops import arg_scope as _arg_scope  # noqa: E402

_STOCK_BATCH_NORM = _slim_layers.batch_norm


def _batch_norm(inputs, decay=0.999, center=True, scale=False, epsilon=0.001, activation_fn=None,
                is_training=True, data_format="NHWC", example_weight=0.0, scope=None, **kwargs):
    if not isinstance(example_weight, (tf.Tensor, tf.Variable)):  # NumPy numbers and strings are checked too
        example_weight = check_example_weight(example_weight)
    common = dict(decay=decay, center=center, scale=scale, epsilon=epsilon, data_format=data_format,
                  scope=scope, **kwargs)
    if is_training is True or (isinstance(example_weight, float) and example_weight == 0.0):
        return _STOCK_BATCH_NORM(inputs, activation_fn=activation_fn, is_training=is_training, **common)
    if is_training is not False:
        raise ValueError("example weighing (example_weight > 0) needs a Python bool `is_training`; "
                         f"Received: is_training={is_training!r}")
    # Let the stock op create (or reuse) its variables with TF-Slim's names and
    # capture them with a custom getter (collections miss reused variables:
    # TF-Slim's fused path adds a variable to them only when creating it);
    # its own output is unused.
    found = {}

    def capture(getter, name, *args, **kwargs):
        variable = getter(name, *args, **kwargs)
        found.setdefault(name.rsplit("/", 1)[-1], variable)
        return variable

    outputs_collections = common.pop("outputs_collections", None)  # for the example-weighted output, below
    with tf.compat.v1.variable_scope(tf.compat.v1.get_variable_scope(), custom_getter=capture,
                                     auxiliary_name_scope=False):
        _STOCK_BATCH_NORM(inputs, activation_fn=None, is_training=False, **common)

    def get(name):
        return tf.cast(found[name], tf.float32) if name in found else None

    x = tf.cast(inputs, tf.float32)
    rank = x.shape.rank
    axis = 1 if data_format.startswith("NC") else rank - 1
    channels = x.shape[axis]
    moving_mean, moving_variance = get("moving_mean"), get("moving_variance")
    if moving_mean is None:
        raise ValueError("Could not find TF-Slim's batch-norm moving statistics.")
    with tf.compat.v1.name_scope("example_weighted_bn"):
        y = normalize_inference(x, get("gamma"), get("beta"), moving_mean, moving_variance, axis=axis,
                                groups=channels, epsilon=epsilon, example_weight=example_weight)
        y = tf.cast(y, inputs.dtype)
    if activation_fn is not None:
        y = activation_fn(y)
    if outputs_collections:  # under the stock op's alias, its variable scope (".../BatchNorm")
        scope = found["moving_mean"].op.name.rsplit("/", 1)[0]
        y = tf_slim.utils.collect_named_outputs(outputs_collections, scope, y)
    return y


# Share slim.batch_norm's arg-scope key, so `arg_scope([slim.batch_norm], ...)`
# (e.g. resnet_arg_scope's is_training / decay / epsilon) configures this too.
_batch_norm._key_op = _arg_scope.arg_scope_func_key(_STOCK_BATCH_NORM)
batch_norm = _arg_scope.add_arg_scope(_batch_norm)
batch_norm.__doc__ = """TF-Slim ``batch_norm`` with inference example weighing (Eq. 4.3).

    Same variables (``<scope>/BatchNorm/{beta,gamma,moving_mean,moving_variance}``),
    arguments and arg-scope key as ``slim.batch_norm``; training and
    ``example_weight=0`` call the stock op unchanged. With ``is_training=False``
    and ``example_weight`` alpha > 0 (a float or a scalar tensor, e.g. a
    placeholder to sweep alpha without rebuilding), each example's own
    per-channel mean and ``E[x^2]`` are blended with the moving statistics
    (``m_{x^2} = moving_variance + moving_mean^2``).

    Example:

    >>> with slim.arg_scope([slim.conv2d], normalizer_fn=batch_norm,
    ...                     normalizer_params={"is_training": False, "example_weight": 0.1}):
    ...     net = slim.conv2d(images, 64, 3)

    Raises:
        ValueError: alpha outside [0, 1], or a tensor ``is_training`` with alpha > 0.
    """


@contextlib.contextmanager
def example_weighted(example_weight):
    """Routes every ``slim.batch_norm`` call to `batch_norm` with ``example_weight``.

    For nets that call ``slim.batch_norm`` directly (``resnet_v2``) or build
    their arg scopes from it (``resnet_arg_scope``): build the graph inside
    the context. Restores the stock function on exit.

    Example:

    >>> with example_weighted(0.1):
    ...     logits, _ = resnet_v2.resnet_v2_50(images, 1000, is_training=False)
    """
    if not isinstance(example_weight, (tf.Tensor, tf.Variable)):
        check_example_weight(example_weight)
    fn = functools.wraps(_STOCK_BATCH_NORM)(
        lambda *args, **kwargs: batch_norm(*args, **{**kwargs, "example_weight": example_weight}))
    fn._key_op = batch_norm._key_op
    targets = [(tf_slim, "batch_norm"), (tf_slim.layers, "batch_norm"), (_slim_layers, "batch_norm")]
    saved = [getattr(mod, name) for mod, name in targets]
    try:
        for mod, name in targets:
            setattr(mod, name, fn)
        yield
    finally:
        for (mod, name), old in zip(targets, saved):
            setattr(mod, name, old)


_FUSED = ("FusedBatchNorm", "FusedBatchNormV2", "FusedBatchNormV3")
# The FusedBatchNorm/V2/V3 OpDefs' defaults: a GraphDef exported with
# strip_default_attrs=True (the usual TF1 SavedModel / MetaGraph export) omits
# every attr equal to them.
_FUSED_DEFAULTS = {"is_training": True, "epsilon": 1e-4, "data_format": b"NHWC"}
# Per data format: the axes an example's statistic reduces (its spatial axes)
# and the shape a (C,) parameter takes to broadcast against the input.
_FORMATS = {"NHWC": ([1, 2], None), "NCHW": ([2, 3], [-1, 1, 1]),
            "NDHWC": ([1, 2, 3], None), "NCDHW": ([2, 3, 4], [-1, 1, 1, 1])}


def _attr(node, key: str, field: str):
    """``node``'s attr ``key`` (its ``field``), or the op's default when absent; never inserts the key."""
    return getattr(node.attr[key], field) if key in node.attr else _FUSED_DEFAULTS[key]


def _node(graph_def, op, name, inputs, **attrs):
    node = graph_def.node.add()
    node.op = op
    node.name = name
    node.input.extend(inputs)
    for k, v in attrs.items():
        node.attr[k].CopyFrom(v)
    return name


def patch_graph_def(graph_def, example_weight: float):
    """Rewrites every inference ``FusedBatchNorm*`` node of a frozen graph into Eq. 4.3.

    Each node ``n`` with ``is_training=false`` is replaced by a few standard
    ops (Mean, SquaredDifference, Rsqrt, Mul, AddV2) whose result is an
    ``Identity`` named ``n``, so every consumer of ``n:0`` stays wired. The
    moving statistics are the node's ``mean``/``variance`` inputs; the
    example's statistics reduce over its spatial axes (4-D ``NHWC``/``NCHW``
    and 5-D ``NDHWC``/``NCDHW``). Attrs left out of the GraphDef (exported
    with ``strip_default_attrs=True``) take the op's defaults:
    ``is_training=true``, ``epsilon=1e-4``, ``data_format="NHWC"``. At
    alpha = 0 the node is classical inference (the example's statistics are
    not computed, so an inf/NaN stays in its own position).

    Args:
        graph_def: A ``tf.compat.v1.GraphDef`` (frozen or not).
        example_weight: alpha in [0, 1].

    Returns:
        A new ``GraphDef``; the input is not modified.

    Raises:
        ValueError: alpha outside [0, 1]; no inference ``FusedBatchNorm*`` node
            (e.g. BN was folded into the convolutions by an inference
            optimizer, so its statistics no longer exist); a rewritten node's
            other outputs are consumed; a node's ``data_format`` is none of
            the four above, or its input is not float32.
    """
    alpha = check_example_weight(example_weight)
    if not isinstance(graph_def, tf.compat.v1.GraphDef):
        raise TypeError(f"`graph_def` must be a tf.compat.v1.GraphDef. Received: {type(graph_def).__name__}")
    targets = {n.name for n in graph_def.node if n.op in _FUSED and not _attr(n, "is_training", "b")}
    if not targets:
        raise ValueError(
            "patch_graph_def found no inference FusedBatchNorm/FusedBatchNormV2/FusedBatchNormV3 node. If batch "
            "normalization was folded into the preceding convolutions (e.g. by optimize_for_inference or TFLite "
            "conversion) its moving statistics are gone and example weighing cannot be applied: export the "
            "graph before folding.")
    for n in graph_def.node:
        for inp in n.input:
            base, _, port = inp.lstrip("^").partition(":")
            if base in targets and port not in ("", "0"):
                raise ValueError(f"Node {n.name!r} consumes output {inp!r} of a batch-norm node; only output 0 "
                                 "can be rewritten.")
    out = tf.compat.v1.GraphDef()
    out.versions.CopyFrom(graph_def.versions)
    out.library.CopyFrom(graph_def.library)
    f32 = tf.compat.v1.AttrValue(type=tf.float32.as_datatype_enum)
    keep = tf.compat.v1.AttrValue(b=True)

    def const(name, value, dtype=np.float32):
        tensor = tf.make_tensor_proto(np.asarray(value, dtype))
        return _node(out, "Const", name, [], dtype=tf.compat.v1.AttrValue(type=tensor.dtype),
                     value=tf.compat.v1.AttrValue(tensor=tensor))

    for n in graph_def.node:
        if n.name not in targets:
            out.node.add().CopyFrom(n)
            continue
        x, scale, offset, mean, var = list(n.input)[:5]
        ctrl = [i for i in n.input if i.startswith("^")]
        t = n.attr["T"] if "T" in n.attr else f32
        if t.type != tf.float32.as_datatype_enum:
            raise ValueError(f"Node {n.name!r}: only float32 inputs are supported.")
        eps = _attr(n, "epsilon", "f")
        data_format = _attr(n, "data_format", "s").decode()
        if data_format not in _FORMATS:
            raise ValueError(f"Node {n.name!r}: data_format {data_format!r} is not supported; expected one of "
                             f"{list(_FORMATS)}. Received: data_format={data_format!r}")
        reduce_axes, param_shape = _FORMATS[data_format]
        p = n.name + "/example_weighted"

        def param(name):
            if param_shape is None:
                return name
            shape = const(f"{p}/shape_{len(out.node)}", param_shape, np.int32)
            return _node(out, "Reshape", f"{p}/reshape_{len(out.node)}", [name, shape], T=f32,
                         Tshape=tf.compat.v1.AttrValue(type=tf.int32.as_datatype_enum))

        mean_r, var_r, scale_r, offset_r = param(mean), param(var), param(scale), param(offset)
        e = const(p + "/epsilon", eps)
        mul = lambda name, u, v: _node(out, "Mul", f"{p}/{name}", [u, v], T=f32)  # noqa: E731
        add = lambda name, u, v: _node(out, "AddV2", f"{p}/{name}", [u, v], T=f32)  # noqa: E731
        if alpha == 0.0:  # classical inference: no example statistics (0 * inf would be NaN)
            mu, v = mean_r, var_r
        else:
            axes = const(p + "/axes", reduce_axes, np.int32)
            mu_e = _node(out, "Mean", p + "/mu_e", [x, axes], T=f32, keep_dims=keep,
                         Tidx=tf.compat.v1.AttrValue(type=tf.int32.as_datatype_enum))
            sq = _node(out, "SquaredDifference", p + "/sq", [x, mu_e], T=f32)
            var_e = _node(out, "Mean", p + "/var_e", [sq, axes], T=f32, keep_dims=keep,
                          Tidx=tf.compat.v1.AttrValue(type=tf.int32.as_datatype_enum))
            a = const(p + "/alpha", alpha)
            b = const(p + "/one_minus_alpha", 1.0 - alpha)
            ab = const(p + "/alpha_one_minus_alpha", alpha * (1.0 - alpha))
            mu = add("mu", mul("a_mu_e", a, mu_e), mul("b_mean", b, mean_r))
            dm = _node(out, "SquaredDifference", p + "/dmean", [mu_e, mean_r], T=f32)
            v = add("var", add("var_ab", mul("a_var_e", a, var_e), mul("b_var", b, var_r)), mul("ab_dm", ab, dm))
        inv = mul("inv", _node(out, "Rsqrt", p + "/rsqrt", [add("var_eps", v, e)], T=f32), scale_r)
        off = _node(out, "Sub", p + "/offset", [offset_r, mul("mu_inv", mu, inv)], T=f32)
        y = add("y", mul("x_inv", x, inv), off)
        _node(out, "Identity", n.name, [y, *ctrl], T=f32)
    return out
