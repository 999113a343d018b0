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
