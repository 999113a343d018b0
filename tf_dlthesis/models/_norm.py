"""The `norm=` argument of `models.build`: strings or callables -> layer factories."""

from __future__ import annotations

import difflib
import functools
import inspect

import keras

_FACTORIES: dict = {}
#: How Python ("unexpected keyword") and Keras layers ("Unrecognized keyword ...") refuse an unknown keyword.
_UNKNOWN_KEYWORD = ("unexpected keyword", "not recognized", "Unrecognized keyword")
# Packages that register further kinds when imported (chapter 4's layers). They are
# imported the first time an unknown kind is asked for, so `models` needs no import
# of the higher-level package and `norm="ghost:16"` still works in a fresh process.
_PLUGINS = ["tf_dlthesis.normalization"]


def _load_plugins():
    import importlib

    while _PLUGINS:
        module = _PLUGINS.pop(0)
        try:
            importlib.import_module(module)
        except ModuleNotFoundError as err:
            if err.name != module:
                raise


def register_norm(kind: str, factory) -> None:
    """Registers a normalization kind usable as `norm="kind:arg1:arg2"` in `build`.

    Args:
        kind: the name before the first colon, e.g. `"ghost"`.
        factory: `factory(channels, *int_args, name=..., **layer_kwargs) -> keras.layers.Layer`;
            the integer arguments are parsed from the string (`"ghost:16"` calls
            `factory(C, 16, name=...)`) and keyword arguments are the layer's own
            options (`norm_factory("ghost:16", momentum=0.9)` calls
            `factory(C, 16, name=..., momentum=0.9)`).

    Raises:
        TypeError: if `factory` is not callable.
        ValueError: if `kind` is empty or contains a colon.
    """
    if not isinstance(kind, str) or not kind or ":" in kind:
        raise ValueError(f"`kind` must be a non-empty name without ':'. Received: kind={kind!r}")
    if not callable(factory):
        raise TypeError(f"`factory` must be callable. Received: factory={factory!r}")
    _FACTORIES[kind] = factory


def _batch(channels, *, name, **kwargs):
    return keras.layers.BatchNormalization(name=name, **kwargs)


def _group(channels, groups, *, name, **kwargs):
    if channels % groups:
        raise ValueError(f"norm='group:{groups}' needs groups dividing the channels; layer {name!r} has {channels} channels.")
    return keras.layers.GroupNormalization(groups=groups, name=name, **kwargs)


register_norm("batch", _batch)
register_norm("group", _group)


def _check_reserved(norm, passed, layer_kwargs):
    """`name` (and `channels`) are set per layer by the factory; a layer option may not set them too."""
    clash = sorted(set(layer_kwargs) & set(passed))
    if clash:
        raise ValueError(
            f"`norm_kwargs` may not set {', '.join(repr(c) for c in clash)}: `build` gives every normalization "
            f"layer its own name (and channel count). Received: norm={norm!r}, norm_kwargs={layer_kwargs!r}"
        )


def norm_factory(norm, **layer_kwargs):
    """Resolves a `norm=` value into `make(channels, name) -> Layer | None`.

    Accepted: `"none"`/`None` (no normalization), `"batch"`, `"group:G"`, any kind
    registered with `register_norm` (chapter 4 registers `"ghost:B"`,
    `"batch_group:G:B"`, ...), or a callable returning a layer, called as
    `norm(channels=..., name=..., **layer_kwargs)` with the keywords it accepts
    (a Keras layer class, e.g. `keras.layers.LayerNormalization`, gets `name=`
    and `layer_kwargs`, and `channels=` only if its constructor names it).
    `layer_kwargs` may not set `name` or `channels`, nor an option the string
    already sets (`groups` of `"group:4"`).

    Example:

    >>> make = norm_factory("batch", momentum=0.9)
    >>> make(16, "bn").momentum
    0.9

    Args:
        norm: the kind string, None, or a callable.
        **layer_kwargs: options of the layer itself (e.g. `momentum=0.9`,
            `epsilon=1e-5`), passed to every layer the factory makes.

    Raises:
        ValueError: unknown kind (with suggestions), malformed arguments, or
            keyword arguments with `norm="none"`.
        TypeError: anything other than a string, None or a callable (a layer
            instance too: every position needs its own layer), or a keyword the
            layer does not take.
    """
    if norm is None or norm == "none":
        if layer_kwargs:
            raise ValueError(f"norm='none' takes no layer options. Received: {sorted(layer_kwargs)}")
        return lambda channels, name: None
    if isinstance(norm, keras.layers.Layer):
        raise TypeError(
            f"`norm` must be a layer class or a function that makes a new layer, not a layer instance: every "
            f"normalization position needs its own layer. Pass e.g. norm=keras.layers.LayerNormalization "
            f"(with options in norm_kwargs). Received: norm={norm!r}"
        )
    if callable(norm):
        params = inspect.signature(norm).parameters
        # functools.partial flattens nested partials, so `.func` is the class or function itself
        target = norm.func if isinstance(norm, functools.partial) else norm
        if isinstance(target, type) and issubclass(target, keras.layers.Layer):
            # A Keras layer class (or a partial of one): its **kwargs go to `Layer.__init__`, which takes
            # `name` but not `channels`.
            takes = {"name"} | ({"channels"} if "channels" in params else set())
        else:
            takes = {k for k in ("channels", "name") if k in params} or (
                {"channels", "name"} if any(p.kind == p.VAR_KEYWORD for p in params.values()) else set()
            )
        _check_reserved(norm, takes, layer_kwargs)

        def make(channels, name):
            kwargs = {"channels": channels, "name": name}
            try:
                layer = norm(**{k: v for k, v in kwargs.items() if k in takes}, **layer_kwargs)
            except (TypeError, ValueError) as err:  # a norm_kwargs keyword the callable (Keras layer) does not take
                if layer_kwargs and any(text in str(err) for text in _UNKNOWN_KEYWORD):
                    raise TypeError(f"norm={norm!r} does not take {sorted(layer_kwargs)} (`norm_kwargs`): "
                                    f"{err}") from None
                raise
            if not isinstance(layer, keras.layers.Layer):
                raise TypeError(f"The `norm` callable must return a keras Layer. Received: {layer!r}")
            return layer

        return make
    if not isinstance(norm, str):
        raise TypeError(f"`norm` must be a string, None or a callable returning a layer. Received: norm={norm!r}")
    kind, *args = norm.split(":")
    if kind not in _FACTORIES:
        _load_plugins()
    if kind not in _FACTORIES:
        close = difflib.get_close_matches(kind, list(_FACTORIES) + ["none"], n=3)
        hint = f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""
        raise ValueError(
            f"Unknown norm kind {kind!r}. Expected one of {sorted(_FACTORIES) + ['none']} "
            f"(with ':'-separated integer arguments, e.g. 'group:32'). Received: norm={norm!r}.{hint}"
        )
    # Plain ASCII digits only: int() would also take " 4", "+4", "1_6" or non-Latin digits.
    if not all(a.isascii() and a.isdigit() for a in args):
        raise ValueError(f"norm arguments must be integers written with digits 0-9, e.g. 'ghost:16'. "
                         f"Received: norm={norm!r}")
    int_args = [int(a) for a in args]
    if any(a <= 0 for a in int_args):
        raise ValueError(f"norm arguments must be positive integers. Received: norm={norm!r}")
    factory = _FACTORIES[kind]
    try:
        inspect.signature(factory).bind(1, *int_args, name="x")
    except TypeError:
        raise ValueError(f"Wrong number of arguments for norm kind {kind!r}. Received: norm={norm!r}") from None
    _check_reserved(norm, {"name", "channels"}, layer_kwargs)
    try:  # keywords that would collide with the arguments parsed from the string (e.g. `groups` of "group:4")
        inspect.signature(factory).bind(1, *int_args, name="x", **layer_kwargs)
    except TypeError as err:
        if "multiple values" in str(err):
            raise ValueError(
                f"norm={norm!r} already sets this option from its ':'-separated arguments ({err}); remove it "
                f"from `norm_kwargs`. Received: norm_kwargs={layer_kwargs!r}"
            ) from None
    def make(channels, name):
        try:
            return factory(channels, *int_args, name=name, **layer_kwargs)
        except (TypeError, ValueError) as err:  # Keras layers raise ValueError("Unrecognized keyword ...")
            if any(text in str(err) for text in _UNKNOWN_KEYWORD):
                raise TypeError(f"norm={norm!r} does not take {sorted(layer_kwargs)}: {err}") from None
            raise

    return make
