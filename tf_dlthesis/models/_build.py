"""Model zoo: linear, MLP, one-conv net, small CNN and pre-activation ResNets."""

from __future__ import annotations

import difflib

import keras
import numpy as np

from tf_dlthesis.models._norm import norm_factory

# N -> residual blocks per stage. N counts weighted layers: stem + 2 per block + classifier.
RESNET_BLOCKS = {
    6: (1, 1),
    8: (1, 1, 1),
    10: (1, 1, 1, 1),
    14: (2, 2, 2),
    18: (2, 2, 2, 2),
}
RESNET_WIDTHS = (64, 128, 256, 512)
MODEL_NAMES = ("linear", "mlp", "conv1", "cnn") + tuple(f"preact_resnet{n}" for n in RESNET_BLOCKS)


class _Seeds:
    """Hands out a distinct, reproducible seed per initializer/random layer."""

    def __init__(self, seed):
        self.seed = seed
        self.count = 0

    def __call__(self):
        if self.seed is None:
            return None
        self.count += 1
        return int(np.random.SeedSequence([self.seed, self.count]).generate_state(1)[0] % (2**31 - 1))

    def he(self):
        return keras.initializers.HeNormal(seed=self())

    def glorot(self):
        return keras.initializers.GlorotUniform(seed=self())


def _conv(x, filters, kernel, seeds, name, strides=1):
    return keras.layers.Conv2D(
        filters, kernel, strides=strides, padding="same", use_bias=False, kernel_initializer=seeds.he(), name=name
    )(x)


def _norm_act(x, make_norm, name):
    layer = make_norm(x.shape[-1], f"{name}_norm")
    if layer is not None:
        x = layer(x)
    return keras.layers.ReLU(name=f"{name}_relu")(x)


def _dense_head(x, num_classes, seeds, name="logits"):
    return keras.layers.Dense(num_classes, kernel_initializer=seeds.glorot(), name=name)(x)


def _linear(inputs, num_classes, make_norm, seeds):
    return _dense_head(keras.layers.Flatten(name="flatten")(inputs), num_classes, seeds)


def _mlp(inputs, num_classes, make_norm, seeds, hidden=256, dropout=0.0):
    x = keras.layers.Flatten(name="flatten")(inputs)
    x = keras.layers.Dense(hidden, kernel_initializer=seeds.he(), name="hidden")(x)
    x = _norm_act(x, make_norm, "hidden")
    if dropout:
        x = keras.layers.Dropout(dropout, seed=seeds(), name="dropout")(x)
    return _dense_head(x, num_classes, seeds)


def _conv1(inputs, num_classes, make_norm, seeds, filters=64):
    x = keras.layers.Conv2D(filters, 3, padding="same", kernel_initializer=seeds.he(), name="conv")(inputs)
    x = _norm_act(x, make_norm, "conv")
    return _dense_head(keras.layers.Flatten(name="flatten")(x), num_classes, seeds)


def _cnn(inputs, num_classes, make_norm, seeds, filters=(32, 64), dropout=0.0):
    x = inputs
    for s, f in enumerate(filters, start=1):
        for j in (1, 2):
            x = _conv(x, f, 3, seeds, f"block{s}_conv{j}")
            x = _norm_act(x, make_norm, f"block{s}_conv{j}")
        if s < len(filters) and min(x.shape[1], x.shape[2]) >= 4:
            x = keras.layers.MaxPooling2D(2, name=f"block{s}_pool")(x)
    x = keras.layers.GlobalAveragePooling2D(name="pool")(x)
    if dropout:
        x = keras.layers.Dropout(dropout, seed=seeds(), name="dropout")(x)
    return _dense_head(x, num_classes, seeds)


def _preact_resnet(inputs, num_classes, make_norm, seeds, depth, widths=None, width_multiplier=1.0):
    blocks = RESNET_BLOCKS[depth]
    widths = tuple(widths) if widths is not None else RESNET_WIDTHS[: len(blocks)]
    if len(widths) != len(blocks):
        raise ValueError(f"`widths` needs one entry per stage ({len(blocks)} for ResNet-{depth}). Received: widths={widths}")
    if not width_multiplier > 0:
        raise ValueError(f"`width_multiplier` must be > 0. Received: width_multiplier={width_multiplier}")
    widths = [max(1, int(round(w * width_multiplier))) for w in widths]
    x = _conv(inputs, widths[0], 3, seeds, "stem_conv")
    for s, (n, w) in enumerate(zip(blocks, widths), start=1):
        for b in range(1, n + 1):
            name = f"stage{s}_block{b}"
            stride = 2 if (s > 1 and b == 1) else 1
            act = _norm_act(x, make_norm, f"{name}_pre")
            shortcut = x
            if stride != 1 or x.shape[-1] != w:
                shortcut = _conv(act, w, 1, seeds, f"{name}_shortcut", strides=stride)
            y = _conv(act, w, 3, seeds, f"{name}_conv1", strides=stride)
            y = _norm_act(y, make_norm, f"{name}_mid")
            y = _conv(y, w, 3, seeds, f"{name}_conv2")
            x = keras.layers.Add(name=f"{name}_add")([shortcut, y])
    x = _norm_act(x, make_norm, "final")
    x = keras.layers.GlobalAveragePooling2D(name="pool")(x)
    return _dense_head(x, num_classes, seeds)


_BUILDERS = {"linear": _linear, "mlp": _mlp, "conv1": _conv1, "cnn": _cnn}


def build(name: str, input_shape, num_classes: int, *, norm="batch", seed: int | None = None,
          norm_kwargs: dict | None = None, **kwargs) -> keras.Model:
    """Builds an uncompiled Keras model that returns logits.

    Models:

    * `"linear"` - flatten + dense.
    * `"mlp"` - one fully connected hidden layer (`hidden=256`, optional `dropout`).
    * `"conv1"` - one hidden 3x3 conv layer (`filters=64`) + dense: the thesis's
      "2-layer" network with a convolutional hidden layer (App. B).
    * `"cnn"` - small CNN: two blocks of two 3x3 convs (`filters=(32, 64)`),
      max-pool between blocks, global average pool, dense.
    * `"preact_resnetN"`, N in 6, 8, 10, 14, 18 - pre-activation ResNet
      (He et al. 2016) with a 3x3 stem, N = 2 + 2 x (number of blocks); blocks per
      stage: 6:(1,1), 8:(1,1,1), 10:(1,1,1,1), 14:(2,2,2), 18:(2,2,2,2); widths
      64/128/256/512 (`widths=`, `width_multiplier=`).

    The normalization layer after each conv (or hidden dense layer) comes from
    `norm`. Every initializer and random layer receives its own seed derived from
    `seed`, so two builds with the same seed have identical weights (thesis Ch. 5
    needs the initialization to be a controlled source). Layer names are fixed,
    so models built twice can be compared layer by layer.

    Example:

    >>> from tf_dlthesis import models
    >>> model = models.build("cnn", (8, 8, 1), 10, seed=0)
    >>> model.output_shape
    (None, 10)

    Args:
        name: model name (see above).
        input_shape: (H, W, C).
        num_classes: number of logits.
        norm: `"batch"` (Keras BatchNormalization), `"none"`, `"group:G"`, a kind
            registered with `register_norm` (e.g. `"ghost:16"`), or a callable.
        seed: base seed; `None` lets Keras draw seeds.
        norm_kwargs: options of every normalization layer (e.g.
            `{"momentum": 0.9}`), kept for any `norm` kind.
        **kwargs: model-specific options (see above).

    Returns:
        A `keras.Model`.

    Raises:
        ValueError: unknown model or norm name, bad shapes or options.
        TypeError: bad argument types.
    """
    if not isinstance(name, str):
        raise TypeError(f"`name` must be a model name string. Received: name={name!r}")
    if name not in MODEL_NAMES:
        close = difflib.get_close_matches(name, MODEL_NAMES, n=3)
        hint = f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""
        raise ValueError(f"Unknown model name. Expected one of {list(MODEL_NAMES)}. Received: name={name!r}.{hint}")
    input_shape = tuple(input_shape)
    if len(input_shape) != 3 or any((d is not None and (not isinstance(d, (int, np.integer)) or d < 1)) for d in input_shape):
        raise ValueError(f"`input_shape` must be (H, W, C) with positive ints. Received: input_shape={input_shape}")
    if isinstance(num_classes, bool) or not isinstance(num_classes, (int, np.integer)) or num_classes < 2:
        raise ValueError(f"`num_classes` must be an int >= 2. Received: num_classes={num_classes!r}")
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0):
        raise ValueError(f"`seed` must be an int >= 0 or None. Received: seed={seed!r}")
    if norm_kwargs is not None and not isinstance(norm_kwargs, dict):
        raise TypeError(f"`norm_kwargs` must be a dict or None. Received: norm_kwargs={norm_kwargs!r}")
    make_norm = norm_factory(norm, **(norm_kwargs or {}))
    seeds = _Seeds(None if seed is None else int(seed))
    inputs = keras.Input(input_shape, name="images")
    if name.startswith("preact_resnet"):
        builder = lambda *a, **k: _preact_resnet(*a, depth=int(name[len("preact_resnet"):]), **k)  # noqa: E731
    else:
        builder = _BUILDERS[name]
    try:
        outputs = builder(inputs, int(num_classes), make_norm, seeds, **kwargs)
    except TypeError as err:
        if "unexpected keyword" in str(err):
            raise ValueError(f"Unknown option for model {name!r}: {err}") from None
        raise
    return keras.Model(inputs, outputs, name=name)
