import keras
import numpy as np
import pytest

from tf_dlthesis import models


@pytest.mark.parametrize("name", models.MODEL_NAMES)
def test_every_model_builds_and_is_seeded(name):
    shape = (8, 8, 1)
    a = models.build(name, shape, 10, seed=1)
    b = models.build(name, shape, 10, seed=1)
    c = models.build(name, shape, 10, seed=2)
    assert a.output_shape == (None, 10)
    wa, wb, wc = a.get_weights(), b.get_weights(), c.get_weights()
    assert all(np.array_equal(x, y) for x, y in zip(wa, wb))
    assert any(not np.array_equal(x, y) for x, y in zip(wa, wc))
    assert a(np.zeros((2, *shape), np.float32)).shape == (2, 10)


def test_resnet_depths_count_weighted_layers():
    for depth, blocks in models.RESNET_BLOCKS.items():
        model = models.build(f"preact_resnet{depth}", (8, 8, 3), 10, seed=0)
        convs = [l for l in model.layers if isinstance(l, keras.layers.Conv2D) and "shortcut" not in l.name]
        dense = [l for l in model.layers if isinstance(l, keras.layers.Dense)]
        assert len(convs) + len(dense) == depth == 2 + 2 * sum(blocks)


def test_width_multiplier_and_norm_choices():
    narrow = models.build("preact_resnet10", (8, 8, 3), 10, seed=0, width_multiplier=0.25)
    assert narrow.get_layer("stem_conv").filters == 16
    grouped = models.build("cnn", (8, 8, 1), 10, norm="group:8", seed=0)
    assert any(isinstance(l, keras.layers.GroupNormalization) for l in grouped.layers)
    plain = models.build("cnn", (8, 8, 1), 10, norm="none", seed=0)
    assert not any("norm" in l.name for l in plain.layers)
    custom = models.build("cnn", (8, 8, 1), 10, norm=lambda name: keras.layers.LayerNormalization(name=name), seed=0)
    assert any(isinstance(l, keras.layers.LayerNormalization) for l in custom.layers)


def test_register_norm_plugs_in_a_new_kind():
    made = []

    def factory(channels, groups, *, name):
        made.append((channels, groups))
        return keras.layers.GroupNormalization(groups=groups, name=name)

    models.register_norm("test_kind", factory)
    models.build("conv1", (8, 8, 1), 10, norm="test_kind:4", filters=8)
    assert made == [(8, 4)]


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"name": "resnet"}, "Unknown model name"),
        ({"name": "cnn", "norm": "batchnorm"}, "Unknown norm kind"),
        ({"name": "cnn", "norm": "group:0"}, "positive"),
        ({"name": "cnn", "norm": "group:5"}, "groups dividing"),
        ({"name": "cnn", "input_shape": (8, 8)}, "input_shape"),
        ({"name": "cnn", "num_classes": 1}, "num_classes"),
        ({"name": "cnn", "bogus": 1}, "Unknown option"),
        ({"name": "cnn", "seed": -3}, "seed"),
    ],
)
def test_bad_input_is_rejected_clearly(kwargs, match):
    kwargs = {"input_shape": (8, 8, 1), "num_classes": 10, **kwargs}
    name = kwargs.pop("name")
    with pytest.raises(ValueError, match=match):
        models.build(name, kwargs.pop("input_shape"), kwargs.pop("num_classes"), **kwargs)


def test_norm_of_wrong_type():
    with pytest.raises(TypeError, match="norm"):
        models.build("cnn", (8, 8, 1), 10, norm=3)


# ----------------------------------------------------------------------------- Table 5.6's architectures
_NEW = ("resnet6", "resnet10", "resnet14", "resnet18", "vgg11", "shufflenet_v2_0.5", "mnist_2conv")


def _conv(k, cin, cout, bias=False):
    return k * k * cin * cout + (cout if bias else 0)


def _hand_count(name, shape, norm, classes=10):
    """(trainable, non-trainable) parameters from the architecture's definition, layer by layer."""
    h, _, cin = shape
    bn = 2 if norm == "batch" else 0  # gamma + beta, and as many moving statistics
    t = 0
    normed = []  # channel counts of every normalization layer

    def conv(k, a, b, bias=False, norm=True):
        nonlocal t
        t += _conv(k, a, b, bias)
        if norm:
            normed.append(b)

    if name.startswith("resnet") or name.startswith("preact_resnet"):
        pre = name.startswith("preact")
        depth = int(name.rsplit("resnet", 1)[1])
        widths = (64, 128, 256, 512)[: len(models.RESNET_BLOCKS[depth])]
        conv(3, cin, 64, norm=not pre)
        c = 64
        for s, (n, w) in enumerate(zip(models.RESNET_BLOCKS[depth], widths)):
            for b in range(n):
                if pre:
                    normed.append(c)
                if c != w or (s > 0 and b == 0):
                    conv(1, c, w, norm=not pre)
                conv(3, c, w)
                conv(3, w, w, norm=not pre)
                c = w
        if pre:
            normed.append(c)
        t += c * classes + classes
    elif name == "vgg11":
        c = cin
        for w in (64, 128, 256, 256, 512, 512, 512, 512):
            conv(3, c, w, bias=True)
            c = w
        t += 512 * classes + classes
    elif name == "shufflenet_v2_0.5":
        conv(3, cin, 24)
        c = 24
        for w, repeats in zip((48, 96, 192), (4, 8, 4)):
            half = w // 2
            t += 9 * c                      # left: depthwise 3x3, stride 2
            normed.append(c)
            conv(1, c, half)                # left: pointwise
            conv(1, c, half)                # right: pointwise, depthwise, pointwise
            t += 9 * half
            normed.append(half)
            conv(1, half, half)
            for _ in range(repeats - 1):    # basic units on half of the channels
                conv(1, half, half)
                t += 9 * half
                normed.append(half)
                conv(1, half, half)
            c = w
        conv(1, 192, 1024)
        t += 1024 * classes + classes
    elif name == "mnist_2conv":
        conv(3, cin, 32, bias=True)
        conv(3, 32, 64, bias=True)
        flat = ((h - 4) // 2) ** 2 * 64
        t += flat * 128 + 128
        normed.append(128)
        t += 128 * classes + classes
    return t + bn * sum(normed), bn * sum(normed)


def _docstring_counts():
    """{model: (trainable with BN, non-trainable with BN, trainable without norm)} from `models.build`'s table."""
    out = {}
    for line in models.build.__doc__.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 3 and cells[0] in models.MODEL_NAMES:
            with_bn = cells[1].replace(",", "").replace("(", "").replace(")", "").replace("+", "").split()
            out[cells[0]] = (int(with_bn[0]), int(with_bn[1]), int(cells[2].replace(",", "").split()[0]))
    return out


def _count(model):
    return (sum(int(np.prod(w.shape)) for w in model.trainable_weights),
            sum(int(np.prod(w.shape)) for w in model.non_trainable_weights))


@pytest.mark.parametrize("name", _NEW + ("preact_resnet6", "preact_resnet14", "preact_resnet18"))
def test_parameter_counts_match_the_definition_and_the_docstring(name):
    doc = _docstring_counts()[name]
    for norm in ("batch", "none"):
        model = models.build(name, (32, 32, 3), 10, norm=norm, seed=0)
        hand = _hand_count(name, (32, 32, 3), norm)
        assert _count(model) == hand, (name, norm)
        assert (hand[0], hand[1]) == ((doc[0], doc[1]) if norm == "batch" else (doc[2], 0))
    if name == "mnist_2conv":  # PyTorch's MNIST example net: 1,199,882 parameters on MNIST
        assert _count(models.build(name, (28, 28, 1), 10, norm="none", seed=0)) == (1_199_882, 0)


@pytest.mark.parametrize("name, shape", [(n, s) for n in _NEW for s in ((28, 28, 1), (32, 32, 3))
                                         if n != "shufflenet_v2_0.5"]
                         + [("shufflenet_v2_0.5", (28, 28, 1)),  # ~10 s of graph tracing per build on 2 cores
                            pytest.param("shufflenet_v2_0.5", (32, 32, 3), marks=pytest.mark.slow)])
def test_table_5_6_models_build_for_mnist_and_cifar_shapes_and_train_a_step(name, shape):
    kwargs = {} if name in ("mnist_2conv", "shufflenet_v2_0.5") else {"width_multiplier": 0.125}
    model = models.build(name, shape, 10, seed=0, **kwargs)
    assert model.output_shape == (None, 10)
    model.compile(optimizer=keras.optimizers.SGD(0.01), loss=keras.losses.SparseCategoricalCrossentropy(True))
    x = np.random.default_rng(0).random((4, *shape), dtype=np.float32)
    before = [np.array(w) for w in model.trainable_weights]
    history = model.fit(x, np.arange(4), batch_size=4, epochs=1, verbose=0)
    assert np.isfinite(history.history["loss"][0])
    assert all(not np.array_equal(b, np.array(w)) for b, w in zip(before, model.trainable_weights)
               if "gamma" not in w.name and "beta" not in w.name) or name == "mnist_2conv"
    again = models.build(name, shape, 10, seed=0, **kwargs)
    assert all(np.array_equal(a, b) for a, b in zip(before, [np.array(w) for w in again.trainable_weights]))


def test_shufflenet_channel_ops_and_small_inputs():
    from tf_dlthesis.models._shuffle_layers import ChannelShuffle, ChannelSplit

    x = np.arange(6, dtype=np.float32).reshape(1, 1, 1, 6)
    assert ChannelShuffle(2)(x).numpy().ravel().tolist() == [0, 3, 1, 4, 2, 5]
    a, b = ChannelSplit()(x)
    assert a.numpy().ravel().tolist() == [0, 1, 2] and b.numpy().ravel().tolist() == [3, 4, 5]
    with pytest.raises(ValueError, match="groups"):
        ChannelShuffle(0)
    # 8x8 digits: VGG-11 stops pooling at 1x1; every model still maps to 10 logits
    vgg = models.build("vgg11", (8, 8, 1), 10, seed=0, width_multiplier=0.125)
    assert len([l for l in vgg.layers if isinstance(l, keras.layers.MaxPooling2D)]) == 3
    with pytest.raises(ValueError, match="width_multiplier"):
        models.build("vgg11", (8, 8, 1), 10, width_multiplier=0)
    with pytest.raises(ValueError, match="filters"):
        models.build("mnist_2conv", (28, 28, 1), 10, filters=(8,))


# ----------------------------------------------------------------------------- options and shapes (probe)
@pytest.mark.parametrize(
    "name, input_shape, kwargs, match",
    [
        ("preact_resnet6", (8, 8, 1), {"width_multiplier": True}, "width_multiplier=True"),
        ("preact_resnet6", (8, 8, 1), {"width_multiplier": "0.5"}, "width_multiplier='0.5'"),
        ("preact_resnet6", (8, 8, 1), {"width_multiplier": float("inf")}, "width_multiplier=inf"),
        ("resnet6", (8, 8, 1), {"width_multiplier": float("inf")}, "width_multiplier=inf"),
        ("preact_resnet6", (8, 8, 1), {"widths": (0, 4)}, r"widths=\(0, 4\)"),
        ("preact_resnet6", (8, 8, 1), {"widths": 4}, "widths=4"),
        ("resnet6", (8, 8, 1), {"widths": 4}, "widths=4"),
        ("preact_resnet6", (8, 8, 1), {"depth": 8}, "depth=8"),
        ("resnet18", (8, 8, 1), {"depth": 6}, "depth=6"),
        ("vgg11", (8, 8, 1), {"depth": 16}, "depth=16"),
        ("shufflenet_v2_0.5", (8, 8, 1), {"width": 0.7}, "width=0.7"),
        ("shufflenet_v2_0.5", (8, 8, 1), {"width": True}, "width=True"),  # was the 1.0x net (True == 1.0)
        ("shufflenet_v2_0.5", (8, 8, 1), {"width": [1]}, r"width=\[1\]"),  # was "unhashable type"
        ("vgg11", (8, 8, 1), {"depth": [11]}, r"depth=\[11\]"),
        ("vgg11", (8, 8, 1), {"depth": 11.0}, r"depth=11.0"),
        ("shufflenet_v2_0.5", (8, 8, 1), {"repeats": 2}, "repeats=2"),
        ("cnn", (8, 8, 1), {"filters": 16}, "filters=16"),
        ("cnn", (8, 8, 1), {"filters": ()}, r"filters=\(\)"),
        ("mlp", (8, 8, 1), {"hidden": 0}, "hidden=0"),
        ("mlp", (8, 8, 1), {"dropout": 1.0}, "dropout=1.0"),
        ("mlp", (8, 8, 1), {"dropout": "0.5"}, "dropout='0.5'"),
        ("cnn", (8, 8, 1), {"dropout": 2}, "dropout=2"),
        ("mnist_2conv", (28, 28, 1), {"dropout": 0.3}, "dropout=0.3"),
        ("mnist_2conv", (28, 28, 1), {"dropout": (1.5, 0.0)}, "dropout=1.5"),
        ("mnist_2conv", (5, 5, 1), {}, r"at least 6x6.*input_shape=\(5, 5, 1\)"),
        ("cnn", (None, None, 1), {}, r"fixed image size.*input_shape=\(None, None, 1\)"),
        ("vgg11", (None, None, 3), {}, "fixed image size"),
        ("linear", (None, 8, 1), {}, "fixed image size"),
        ("preact_resnet6", (8, 8, None), {}, "number of channels"),
        ("cnn", (True, 8, 1), {}, r"input_shape=\(True, 8, 1\)"),
        ("cnn", 8, {}, "input_shape=8"),
    ],
)
def test_bad_model_options_and_shapes_are_one_clear_error(name, input_shape, kwargs, match):
    # before: TypeError / OverflowError / KeyError / a deep Keras error, or silently a different
    # model (widths=(0, 4) -> 1 channel, filters=() -> no conv, dropout=1.0 -> all-zero logits)
    with pytest.raises(ValueError, match=match):
        models.build(name, input_shape, 10, **kwargs)


@pytest.mark.parametrize("name, kwargs, error, match", [
    ("conv1", {"filters": (4,)}, TypeError, r"`filters` must be an int >= 1\. Received: filters=\(4,\)"),
    ("mlp", {"hidden": 8.0}, TypeError, r"`hidden` must be an int >= 1\. Received: hidden=8\.0"),
    ("mlp", {"hidden": 0}, ValueError, r"`hidden` must be an int >= 1\. Received: hidden=0"),
    ("cnn", {"seed": 1.0}, TypeError, r"`seed` must be an int >= 0 or None\. Received: seed=1\.0"),
    ("cnn", {"seed": -1}, ValueError, r"`seed` must be an int >= 0 or None\. Received: seed=-1"),
])
def test_int_options_are_a_type_error_for_another_kind_and_a_value_error_out_of_range(name, kwargs, error, match):
    # before: a ValueError for a float or a tuple as well
    with pytest.raises(error, match=match):
        models.build(name, (8, 8, 1), 10, **kwargs)


def test_variable_image_size_still_builds_the_fully_convolutional_models():
    for name in ("preact_resnet6", "resnet6", "shufflenet_v2_0.5"):
        model = models.build(name, (None, None, 1), 10, seed=0, width_multiplier=0.25)
        assert model(np.zeros((1, 12, 12, 1), np.float32)).shape == (1, 10)
    small = models.build("mnist_2conv", (6, 6, 1), 10, seed=0)
    assert small.output_shape == (None, 10)
    # numpy numbers are options too
    narrow = models.build("resnet6", (8, 8, 1), 10, seed=0, width_multiplier=np.float32(0.25))
    assert narrow.get_layer("stem_conv").filters == 16


def test_norm_can_be_a_keras_layer_class():
    # before: "Unrecognized keyword arguments passed to BatchNormalization: {'channels': 32}"
    a = models.build("cnn", (8, 8, 1), 10, norm=keras.layers.BatchNormalization, seed=0,
                     norm_kwargs={"momentum": 0.9})
    b = models.build("cnn", (8, 8, 1), 10, norm="batch", seed=0, norm_kwargs={"momentum": 0.9})
    assert [l.name for l in a.layers] == [l.name for l in b.layers]
    assert a.get_layer("block1_conv1_norm").momentum == 0.9
    x = np.random.default_rng(0).random((2, 8, 8, 1)).astype(np.float32)
    np.testing.assert_array_equal(a(x, training=True).numpy(), b(x, training=True).numpy())
    ln = models.build("cnn", (8, 8, 1), 10, norm=keras.layers.LayerNormalization, seed=0)
    assert isinstance(ln.get_layer("block1_conv1_norm"), keras.layers.LayerNormalization)


def test_a_norm_option_the_layer_does_not_take_is_a_type_error_naming_the_norm():
    # before: Keras's "Unrecognized keyword arguments passed to BatchNormalization", a ValueError
    # naming neither `norm` nor `norm_kwargs`
    for norm in ("batch", "ghost:4", "group:2"):
        with pytest.raises(TypeError, match=rf"norm='{norm}' does not take \['bogus'\]"):
            models.build("cnn", (8, 8, 1), 10, norm=norm, norm_kwargs={"bogus": 1})


def test_norm_layer_instance_and_reserved_norm_kwargs_are_clear_errors():
    # before: "missing a required argument: 'inputs'" / "got multiple values for keyword argument"
    with pytest.raises(TypeError, match="not a layer instance"):
        models.build("cnn", (8, 8, 1), 10, norm=keras.layers.BatchNormalization())
    with pytest.raises(ValueError, match="may not set 'name'"):
        models.build("cnn", (8, 8, 1), 10, norm_kwargs={"name": "bn"})
    with pytest.raises(ValueError, match="may not set 'name'"):
        models.build("cnn", (8, 8, 1), 10, norm=keras.layers.LayerNormalization, norm_kwargs={"name": "ln"})
    with pytest.raises(ValueError, match=r"norm='group:2' already sets.*groups"):
        models.build("cnn", (8, 8, 1), 10, norm="group:2", norm_kwargs={"groups": 4})


@pytest.mark.parametrize("norm", ["group: 4", "group:+4", "group:1_6", "ghost:\u0661\u0666", "group:4.0", "group:"])
def test_norm_string_arguments_must_be_plain_digits(norm):
    # before: int() accepted " 4", "+4", "1_6" and Arabic-Indic digits
    with pytest.raises(ValueError, match="norm arguments must be integers"):
        models.norm_factory(norm)
    assert models.norm_factory("group:4")(8, "n").groups == 4
