"""Model zoo: linear, MLP, one-conv net, small CNN, ResNets, VGG-11, ShuffleNetV2 and the MNIST 2-conv net."""

from __future__ import annotations

import difflib
import inspect

import keras
import numpy as np

from tf_dlthesis._checks import check_int
from tf_dlthesis._seeds import check_int_seed
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
#: VGG configurations (Simonyan & Zisserman 2015, Table 1): conv widths, "M" = 2x2 max-pool.
VGG_CONFIGS = {11: (64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M")}
#: ShuffleNetV2 (Ma et al. 2018, Table 5): width -> (stem, stage 2, 3, 4, final 1x1 conv) channels.
SHUFFLENET_V2_WIDTHS = {0.5: (24, 48, 96, 192, 1024), 1.0: (24, 116, 232, 464, 1024),
                        1.5: (24, 176, 352, 704, 1024), 2.0: (24, 244, 488, 976, 2048)}
#: ShuffleNetV2 units per stage (the first of each stage downsamples).
SHUFFLENET_V2_REPEATS = (4, 8, 4)
#: Every model takes (H, W, C) images: its layers are channels-last whatever `keras.config.image_data_format()`
#: says (a global "channels_first" would read (H, W, C) as (C, H, W) and normalize the wrong axis).
_CHANNELS_LAST = "channels_last"
MODEL_NAMES = (("linear", "mlp", "conv1", "cnn") + tuple(f"preact_resnet{n}" for n in RESNET_BLOCKS)
               + tuple(f"resnet{n}" for n in RESNET_BLOCKS) + ("vgg11", "shufflenet_v2_0.5", "mnist_2conv"))


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


def _is_int(value):
    return not isinstance(value, (bool, np.bool_)) and isinstance(value, (int, np.integer))


def _check_count(name, value):
    """A layer width / unit count: an int >= 1, returned as a Python int (Keras's Dense refuses NumPy ints)."""
    return check_int(name, value, 1)


def _check_counts(name, values, length=None):
    """A sequence of widths (ints >= 1), non-empty (or of exactly `length` entries)."""
    if isinstance(values, (str, bytes)) or not hasattr(values, "__iter__"):
        raise ValueError(f"`{name}` must be a sequence of ints >= 1. Received: {name}={values!r}")
    values = tuple(values)
    if (length is None and not values) or (length is not None and len(values) != length):
        need = "at least one entry" if length is None else f"{length} entries"
        raise ValueError(f"`{name}` needs {need} of ints >= 1. Received: {name}={values!r}")
    if not all(_is_int(v) and v >= 1 for v in values):
        raise ValueError(f"`{name}` must be a sequence of ints >= 1. Received: {name}={values!r}")
    return tuple(int(v) for v in values)


def _check_rate(name, value):
    """A dropout rate: a real number in [0, 1) (rate 1 zeroes every activation)."""
    if (isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, float, np.integer, np.floating))
            or not 0 <= value < 1):
        raise ValueError(f"`{name}` must be a dropout rate in [0, 1). Received: {name}={value!r}")
    return value


def _conv(x, filters, kernel, seeds, name, strides=1):
    return keras.layers.Conv2D(
        filters, kernel, strides=strides, padding="same", use_bias=False, kernel_initializer=seeds.he(),
        data_format=_CHANNELS_LAST, name=name
    )(x)


def _norm_act(x, make_norm, name):
    layer = make_norm(x.shape[-1], f"{name}_norm")
    if layer is not None:
        x = layer(x)
    return keras.layers.ReLU(name=f"{name}_relu")(x)


def _head_dtype():
    """The logits layer's dtype: float32 under a mixed policy (Keras's mixed-precision guidance: the output
    layer computes in float32, so softmax / cross-entropy see float32 logits); else the global policy's."""
    policy = keras.config.dtype_policy()
    return "float32" if policy.compute_dtype != policy.variable_dtype else None


def _dense_head(x, num_classes, seeds, name="logits"):
    return keras.layers.Dense(num_classes, kernel_initializer=seeds.glorot(), dtype=_head_dtype(), name=name)(x)


def _linear(inputs, num_classes, make_norm, seeds):
    return _dense_head(keras.layers.Flatten(data_format=_CHANNELS_LAST, name="flatten")(inputs), num_classes, seeds)


def _mlp(inputs, num_classes, make_norm, seeds, hidden=256, dropout=0.0):
    hidden = _check_count("hidden", hidden)
    _check_rate("dropout", dropout)
    x = keras.layers.Flatten(data_format=_CHANNELS_LAST, name="flatten")(inputs)
    x = keras.layers.Dense(hidden, kernel_initializer=seeds.he(), name="hidden")(x)
    x = _norm_act(x, make_norm, "hidden")
    if dropout:
        x = keras.layers.Dropout(dropout, seed=seeds(), name="dropout")(x)
    return _dense_head(x, num_classes, seeds)


def _conv1(inputs, num_classes, make_norm, seeds, filters=64):
    filters = _check_count("filters", filters)
    x = keras.layers.Conv2D(filters, 3, padding="same", kernel_initializer=seeds.he(), data_format=_CHANNELS_LAST,
                            name="conv")(inputs)
    x = _norm_act(x, make_norm, "conv")
    return _dense_head(keras.layers.Flatten(data_format=_CHANNELS_LAST, name="flatten")(x), num_classes, seeds)


def _cnn(inputs, num_classes, make_norm, seeds, filters=(32, 64), dropout=0.0):
    filters = _check_counts("filters", filters)
    _check_rate("dropout", dropout)
    x = inputs
    for s, f in enumerate(filters, start=1):
        for j in (1, 2):
            x = _conv(x, f, 3, seeds, f"block{s}_conv{j}")
            x = _norm_act(x, make_norm, f"block{s}_conv{j}")
        if s < len(filters) and min(x.shape[1], x.shape[2]) >= 4:
            x = keras.layers.MaxPooling2D(2, data_format=_CHANNELS_LAST, name=f"block{s}_pool")(x)
    x = keras.layers.GlobalAveragePooling2D(data_format=_CHANNELS_LAST, name="pool")(x)
    if dropout:
        x = keras.layers.Dropout(dropout, seed=seeds(), name="dropout")(x)
    return _dense_head(x, num_classes, seeds)


def _preact_resnet(inputs, num_classes, make_norm, seeds, depth, widths=None, width_multiplier=1.0):
    blocks = RESNET_BLOCKS[depth]
    widths = _check_counts("widths", widths) if widths is not None else RESNET_WIDTHS[: len(blocks)]
    if len(widths) != len(blocks):
        raise ValueError(f"`widths` needs one entry per stage ({len(blocks)} for ResNet-{depth}). Received: widths={widths}")
    _check_multiplier(width_multiplier)  # validation only: the arithmetic below keeps the value as given
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
    x = keras.layers.GlobalAveragePooling2D(data_format=_CHANNELS_LAST, name="pool")(x)
    return _dense_head(x, num_classes, seeds)


def _check_multiplier(width_multiplier):
    if (isinstance(width_multiplier, (bool, np.bool_))
            or not isinstance(width_multiplier, (int, float, np.integer, np.floating))
            or not 0 < width_multiplier < float("inf")):
        raise ValueError(f"`width_multiplier` must be a finite number > 0. Received: width_multiplier={width_multiplier!r}")
    return float(width_multiplier)


def _scaled(width, multiplier, even=False):
    w = max(1, int(round(width * multiplier)))
    return w + (w % 2) if even else w


def _resnet(inputs, num_classes, make_norm, seeds, depth, widths=None, width_multiplier=1.0):
    """Post-activation ResNet (He et al. 2016a): conv-norm-ReLU-conv-norm, add, ReLU."""
    blocks = RESNET_BLOCKS[depth]
    widths = _check_counts("widths", widths) if widths is not None else RESNET_WIDTHS[: len(blocks)]
    if len(widths) != len(blocks):
        raise ValueError(f"`widths` needs one entry per stage ({len(blocks)} for ResNet-{depth}). Received: widths={widths}")
    multiplier = _check_multiplier(width_multiplier)
    widths = [_scaled(w, multiplier) for w in widths]
    x = _conv(inputs, widths[0], 3, seeds, "stem_conv")
    x = _norm_act(x, make_norm, "stem")
    for s, (n, w) in enumerate(zip(blocks, widths), start=1):
        for b in range(1, n + 1):
            name = f"stage{s}_block{b}"
            stride = 2 if (s > 1 and b == 1) else 1
            shortcut = x
            if stride != 1 or x.shape[-1] != w:
                shortcut = _conv(x, w, 1, seeds, f"{name}_shortcut", strides=stride)
                layer = make_norm(w, f"{name}_shortcut_norm")
                shortcut = layer(shortcut) if layer is not None else shortcut
            y = _conv(x, w, 3, seeds, f"{name}_conv1", strides=stride)
            y = _norm_act(y, make_norm, f"{name}_conv1")
            y = _conv(y, w, 3, seeds, f"{name}_conv2")
            layer = make_norm(w, f"{name}_conv2_norm")
            y = layer(y) if layer is not None else y
            x = keras.layers.Add(name=f"{name}_add")([shortcut, y])
            x = keras.layers.ReLU(name=f"{name}_relu")(x)
    x = keras.layers.GlobalAveragePooling2D(data_format=_CHANNELS_LAST, name="pool")(x)
    return _dense_head(x, num_classes, seeds)


def _vgg(inputs, num_classes, make_norm, seeds, depth=11, width_multiplier=1.0):
    """CIFAR VGG: 3x3 convs (with bias) + norm + ReLU, 2x2 max-pools, one linear classifier."""
    if not _is_int(depth) or depth not in VGG_CONFIGS:
        raise ValueError(f"`depth` must be one of {sorted(VGG_CONFIGS)} for VGG. Received: depth={depth!r}")
    multiplier = _check_multiplier(width_multiplier)
    x = inputs
    conv_index, stage = 0, 1
    for item in VGG_CONFIGS[depth]:
        if item == "M":
            if min(x.shape[1], x.shape[2]) >= 2:  # small inputs (8x8, 28x28) run out of pixels before 5 pools
                x = keras.layers.MaxPooling2D(2, data_format=_CHANNELS_LAST, name=f"pool{stage}")(x)
            stage += 1
            continue
        conv_index += 1
        name = f"conv{conv_index}"
        x = keras.layers.Conv2D(_scaled(item, multiplier), 3, padding="same", kernel_initializer=seeds.he(),
                                data_format=_CHANNELS_LAST, name=name)(x)
        x = _norm_act(x, make_norm, name)
    # 1x1 at 32x32 input: the same as flattening
    x = keras.layers.GlobalAveragePooling2D(data_format=_CHANNELS_LAST, name="pool")(x)
    return _dense_head(x, num_classes, seeds)


def _shuffle_unit(x, out_channels, stride, make_norm, seeds, name):
    """One ShuffleNetV2 unit (Ma et al. 2018, Fig. 3c basic / 3d downsampling)."""
    from tf_dlthesis.models._shuffle_layers import ChannelShuffle, ChannelSplit

    def pointwise(t, channels, label, act=True):
        t = keras.layers.Conv2D(channels, 1, use_bias=False, kernel_initializer=seeds.he(), data_format=_CHANNELS_LAST,
                                name=f"{name}_{label}")(t)
        if act:
            return _norm_act(t, make_norm, f"{name}_{label}")
        layer = make_norm(channels, f"{name}_{label}_norm")
        return layer(t) if layer is not None else t

    def depthwise(t, label):
        t = keras.layers.DepthwiseConv2D(3, strides=stride, padding="same", use_bias=False,
                                         depthwise_initializer=seeds.he(), data_format=_CHANNELS_LAST,
                                         name=f"{name}_{label}")(t)
        layer = make_norm(t.shape[-1], f"{name}_{label}_norm")
        return layer(t) if layer is not None else t

    half = out_channels // 2
    if stride == 1:
        left, right = ChannelSplit(name=f"{name}_split")(x)
    else:
        left = depthwise(x, "left_dw")
        left = pointwise(left, half, "left_pw")
        right = x
    right = pointwise(right, half, "pw1")
    right = depthwise(right, "dw")
    right = pointwise(right, half, "pw2")
    x = keras.layers.Concatenate(name=f"{name}_concat")([left, right])
    return ChannelShuffle(2, name=f"{name}_shuffle")(x)


def _shufflenet_v2(inputs, num_classes, make_norm, seeds, width=0.5, width_multiplier=1.0,
                   repeats=SHUFFLENET_V2_REPEATS):
    """CIFAR ShuffleNetV2: 3x3 stride-1 stem, no max-pool, three stages, 1x1 conv, pool, linear."""
    if isinstance(width, (bool, np.bool_)) or not isinstance(width, (int, float, np.integer, np.floating)) \
            or width not in SHUFFLENET_V2_WIDTHS:
        raise ValueError(f"`width` must be one of {sorted(SHUFFLENET_V2_WIDTHS)} (ShuffleNetV2's widths). "
                         f"Received: width={width!r}")
    multiplier = _check_multiplier(width_multiplier)
    sequence = hasattr(repeats, "__iter__") and not isinstance(repeats, (str, bytes))
    repeats = tuple(repeats) if sequence else repeats
    if not sequence or len(repeats) != 3 or not all(_is_int(r) and r >= 1 for r in repeats):
        raise ValueError(f"`repeats` must be three ints >= 1 (units per stage). Received: repeats={repeats!r}")
    stem, *stages, final = SHUFFLENET_V2_WIDTHS[width]
    x = _conv(inputs, _scaled(stem, multiplier), 3, seeds, "stem_conv")
    x = _norm_act(x, make_norm, "stem")
    for s, (channels, repeats) in enumerate(zip(stages, repeats), start=2):
        channels = _scaled(channels, multiplier, even=True)
        for u in range(1, repeats + 1):
            x = _shuffle_unit(x, channels, 2 if u == 1 else 1, make_norm, seeds, f"stage{s}_unit{u}")
    x = _conv(x, _scaled(final, multiplier), 1, seeds, "final_conv")
    x = _norm_act(x, make_norm, "final")
    x = keras.layers.GlobalAveragePooling2D(data_format=_CHANNELS_LAST, name="pool")(x)
    return _dense_head(x, num_classes, seeds)


def _mnist_2conv(inputs, num_classes, make_norm, seeds, filters=(32, 64), hidden=128, dropout=(0.25, 0.5)):
    """PyTorch's MNIST example net: two 3x3 valid convs, max-pool, dropout, dense, dropout, dense."""
    for arg, value in (("filters", filters), ("dropout", dropout)):
        if isinstance(value, (str, bytes)) or not hasattr(value, "__iter__") or len(tuple(value)) != 2:
            raise ValueError(f"`filters` and `dropout` need two entries each. Received: {arg}={value!r}")
    filters, dropout = _check_counts("filters", filters, 2), tuple(dropout)
    _check_rate("dropout", dropout[0])
    _check_rate("dropout", dropout[1])
    hidden = _check_count("hidden", hidden)
    if inputs.shape[1] is not None and inputs.shape[2] is not None and min(inputs.shape[1], inputs.shape[2]) < 6:
        raise ValueError(f"'mnist_2conv' needs images of at least 6x6 (two unpadded 3x3 convs, then a 2x2 "
                         f"max-pool). Received: input_shape={tuple(inputs.shape[1:])}")
    x = inputs
    for i, f in enumerate(filters, start=1):
        x = keras.layers.Conv2D(f, 3, padding="valid", kernel_initializer=seeds.he(), data_format=_CHANNELS_LAST,
                                name=f"conv{i}")(x)
        x = _norm_act(x, make_norm, f"conv{i}")
    x = keras.layers.MaxPooling2D(2, data_format=_CHANNELS_LAST, name="pool")(x)
    if dropout[0]:
        x = keras.layers.Dropout(dropout[0], seed=seeds(), name="dropout1")(x)
    x = keras.layers.Flatten(data_format=_CHANNELS_LAST, name="flatten")(x)
    x = keras.layers.Dense(hidden, kernel_initializer=seeds.he(), name="hidden")(x)
    x = _norm_act(x, make_norm, "hidden")
    if dropout[1]:
        x = keras.layers.Dropout(dropout[1], seed=seeds(), name="dropout2")(x)
    return _dense_head(x, num_classes, seeds)


#: Models whose layers all work on any image size (convolutions and a global average pool).
_ANY_SIZE = ("preact_resnet", "resnet", "shufflenet_v2")

_BUILDERS = {"linear": _linear, "mlp": _mlp, "conv1": _conv1, "cnn": _cnn, "vgg11": _vgg,
             "shufflenet_v2_0.5": _shufflenet_v2, "mnist_2conv": _mnist_2conv}


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
    * `"resnetN"`, N in 6, 8, 10, 14, 18 - the original (post-activation) ResNet
      of He et al. 2016a (Thesis [35], the ResNets of Ch. 5: "a 14-layer ResNet
      model [35]", Table 5.6's 6- and 18-layer variants): 3x3 stem + norm + ReLU,
      basic blocks conv-norm-ReLU-conv-norm, added to the shortcut (1x1 conv +
      norm where the shape changes), ReLU; the same depths, stages and widths
      as `"preact_resnetN"`. `"resnet18"` is the common CIFAR ResNet-18.
    * `"vgg11"` - VGG-11 (Simonyan & Zisserman 2015, configuration A; Thesis
      [98], Table 5.6) in its CIFAR form: eight 3x3 convs (with bias; widths
      64, M, 128, M, 256, 256, M, 512, 512, M, 512, 512, M; M = 2x2 max-pool),
      each followed by norm + ReLU, then one linear classifier on the 512
      features (no 4096-wide layers). Pools are skipped once the map is 1x1
      (inputs smaller than 32x32); a global average pool (a no-op at 32x32)
      feeds the classifier. `width_multiplier=` scales every conv.
    * `"shufflenet_v2_0.5"` - ShuffleNetV2 at 0.5x width (Ma et al. 2018, Table
      5; Thesis [70], Table 5.6's "ShuffleNetv2-50%") in its CIFAR form: a 3x3
      stride-1 stem of 24 channels (no max-pool), stages of 4, 8, 4 units with
      48, 96, 192 channels (the first unit of each stage downsamples, Fig. 3d;
      the others split the channels, Fig. 3c), channel shuffle after each unit,
      a 1x1 conv to 1024 channels, global average pool, linear. Every conv
      without bias and followed by norm. `width_multiplier=` scales every width;
      `repeats=` (default (4, 8, 4)) sets the units per stage.
    * `"mnist_2conv"` - the MNIST baseline of Thesis Sec. 5.6 ("two convolution
      and fully-connected layers", 99.14%): read as PyTorch's MNIST example net
      (the thesis states no more): 3x3 valid convs of 32 and 64 filters, each
      + norm + ReLU, 2x2 max-pool, dropout 0.25, dense 128 + norm + ReLU,
      dropout 0.5, linear (`filters=`, `hidden=`, `dropout=`). Use
      `norm="none"` for the example's exact net.

    Parameter counts for 32x32x3 inputs and 10 classes, as trainable (+
    non-trainable moving statistics) with `norm="batch"`, and with `norm="none"`:

    | model | norm="batch" | norm="none" |
    |---|---|---|
    | resnet6 | 307,274 (+1,152) | 306,122 |
    | resnet10 | 4,903,242 (+5,760) | 4,897,482 |
    | resnet14 | 2,777,674 (+4,480) | 2,773,194 |
    | resnet18 | 11,173,962 (+9,600) | 11,164,362 |
    | preact_resnet6 | 307,018 (+896) | 306,122 |
    | preact_resnet10 | 4,901,450 (+3,968) | 4,897,482 |
    | preact_resnet14 | 2,776,906 (+3,712) | 2,773,194 |
    | preact_resnet18 | 11,172,170 (+7,808) | 11,164,362 |
    | vgg11 | 9,231,114 (+5,504) | 9,225,610 |
    | shufflenet_v2_0.5 | 352,042 (+7,952) | 344,090 |
    | mnist_2conv | 1,626,890 (+448) | 1,626,442 (1,199,882 at 28x28x1) |

    (ResNet-10 has four stages, ResNet-14 three, so the 10-layer net is the
    larger one.)

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
        input_shape: (H, W, C). H and W may be None (any image size) only for
            the `preact_resnetN`, `resnetN` and `shufflenet_v2_0.5` models. Every
            model is channels-last, whatever `keras.config.image_data_format()` says.
        num_classes: number of logits.
        norm: `"batch"` (Keras BatchNormalization), `"none"`, `"group:G"`, a kind
            registered with `register_norm` (e.g. `"ghost:16"`), or a callable
            (a Keras layer class such as `keras.layers.LayerNormalization` works).
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
    if isinstance(input_shape, (str, bytes)) or not hasattr(input_shape, "__iter__"):
        raise ValueError(f"`input_shape` must be (H, W, C) with positive ints. Received: input_shape={input_shape!r}")
    input_shape = tuple(input_shape)
    if len(input_shape) != 3 or any((d is not None and (not _is_int(d) or d < 1)) for d in input_shape):
        raise ValueError(f"`input_shape` must be (H, W, C) with positive ints. Received: input_shape={input_shape}")
    if input_shape[2] is None:
        raise ValueError(f"`input_shape` must give the number of channels C (the first layer's weights depend on "
                         f"it). Received: input_shape={input_shape}")
    if None in input_shape[:2] and not name.startswith(_ANY_SIZE):
        raise ValueError(f"Model {name!r} needs a fixed image size: `input_shape` must give H and W (its "
                         f"flattening or pooling depends on them; only the preact_resnetN, resnetN and "
                         f"shufflenet_v2_0.5 models take H, W = None). Received: input_shape={input_shape}")
    check_int("num_classes", num_classes, 2)
    check_int_seed(seed)
    if norm_kwargs is not None and not isinstance(norm_kwargs, dict):
        raise TypeError(f"`norm_kwargs` must be a dict or None. Received: norm_kwargs={norm_kwargs!r}")
    make_norm = norm_factory(norm, **(norm_kwargs or {}))
    seeds = _Seeds(None if seed is None else int(seed))
    inputs = keras.Input(input_shape, name="images")
    if name.startswith(("preact_resnet", "resnet")) and "depth" in kwargs:
        raise ValueError(f"The depth of {name!r} is part of its name (e.g. 'preact_resnet8', 'resnet18'); it takes "
                         f"no `depth` option. Received: depth={kwargs['depth']!r}")
    if name.startswith("preact_resnet"):
        builder, fixed = _preact_resnet, {"depth": int(name[len("preact_resnet"):])}
    elif name.startswith("resnet"):
        builder, fixed = _resnet, {"depth": int(name[len("resnet"):])}
    else:
        builder, fixed = _BUILDERS[name], {}
    _check_options(name, builder, fixed, kwargs)
    outputs = builder(inputs, int(num_classes), make_norm, seeds, **fixed, **kwargs)
    return keras.Model(inputs, outputs, name=name)


def _check_options(name, builder, fixed, kwargs):
    """Refuses model options the builder does not take, before building.

    Checked against the builder's signature rather than by catching a TypeError
    from the call: a TypeError from inside (a `norm` callable refusing a
    `norm_kwargs` keyword) is not an unknown model option.
    """
    options = [p for p in list(inspect.signature(builder).parameters)[4:] if p not in fixed]
    unknown = sorted(set(kwargs) - set(options))
    if unknown:
        raise ValueError(f"Unknown option for model {name!r}: {', '.join(repr(u) for u in unknown)}. Expected "
                         f"options: {options}. Received: {', '.join(f'{u}={kwargs[u]!r}' for u in unknown)}")
