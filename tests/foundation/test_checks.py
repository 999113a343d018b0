"""The shared argument checks (`tf_dlthesis._checks`) and the callers that moved onto them.

Before, each subpackage wrote its own bool / int checks: seven of the bool checks refused NumPy bools
that the others accepted, and two int helpers raised `ValueError` for a string where the rest raised
`TypeError`.
"""

import json
import re

import numpy as np
import pytest

from tf_dlthesis import augment, data, experiments, models, normalization, recipes, robustness, variability
from tf_dlthesis._checks import check_bool, check_int
from tf_dlthesis.experiments import stats


@pytest.mark.parametrize("value, expected", [(True, True), (False, False), (np.bool_(True), True),
                                             (np.bool_(False), False)])
def test_check_bool_gives_a_python_bool(value, expected):
    out = check_bool("flag", value)
    assert out is expected  # a Python bool, so configs stay JSON-able


@pytest.mark.parametrize("value", ["False", 0, 1, 1.0, None, np.int64(1), [True]])
def test_check_bool_refuses_everything_else(value):
    with pytest.raises(TypeError, match=r"^`flag` must be a bool\. Received: flag="):
        check_bool("flag", value)


def test_check_bool_allow_none():
    assert check_bool("flag", None, allow_none=True) is None
    with pytest.raises(TypeError, match=r"`flag` must be a bool or None\. Received: flag='yes'"):
        check_bool("flag", "yes", allow_none=True)


@pytest.mark.parametrize("value", [3, np.int64(3), np.uint8(3), np.int32(3)])
def test_check_int_gives_a_python_int(value):
    out = check_int("n", value, 1)
    assert out == 3 and type(out) is int


@pytest.mark.parametrize("value", [True, np.bool_(True), 3.0, "3", None, [3], np.float32(3)])
def test_check_int_refuses_non_integers_with_a_type_error(value):
    with pytest.raises(TypeError, match=r"^`n` must be an int >= 1\. Received: n="):
        check_int("n", value, 1)


def test_check_int_range_and_none():
    with pytest.raises(ValueError, match=r"`n` must be an int >= 2\. Received: n=1$"):
        check_int("n", 1, 2)
    with pytest.raises(ValueError, match=r"`n` must be an int >= 0 or None\. Received: n=-1"):
        check_int("n", -1, 0, allow_none=True)
    assert check_int("n", None, 0, allow_none=True) is None
    assert check_int("n", -5) == -5  # no minimum
    with pytest.raises(TypeError, match=r"`n` must be an int\. Received: n=None"):
        check_int("n", None)


def test_check_int_why_is_added_to_both_messages():
    with pytest.raises(ValueError, match=r"^`runs` must be an int >= 2 \(a standard deviation needs two runs\)\. "
                                         r"Received: runs=1$"):
        check_int("runs", 1, 2, why="a standard deviation needs two runs")
    with pytest.raises(TypeError, match=r"^`n` must be an int or None \(a reason\)\. Received: n='1'$"):
        check_int("n", "1", allow_none=True, why="a reason")

# --- callers: NumPy bools are accepted everywhere now, and stored as Python bools ------------------

def test_norm_layers_take_numpy_bools_and_serialize_them():
    from tf_dlthesis.normalization import GhostBatchNormalization

    layer = GhostBatchNormalization(ghost_batch_size=4, renorm=np.bool_(True), moving_statistics=np.bool_(True),
                                    synchronized=np.bool_(False))
    config = layer.get_config()
    assert config["renorm"] is True and config["moving_statistics"] is True and config["synchronized"] is False
    json.dumps(config)  # np.bool_ is not JSON-serializable
    with pytest.raises(TypeError, match=r"`renorm` must be a bool. Received: renorm='True'"):
        GhostBatchNormalization(ghost_batch_size=4, renorm="True")
    with pytest.raises(TypeError, match=r"`ghost_batch_size` must be an int >= 1 or None. Received: ghost_batch_size=2.0"):
        GhostBatchNormalization(ghost_batch_size=2.0)
    with pytest.raises(ValueError, match=r"`ghost_batch_size` must be an int >= 1 or None. Received: ghost_batch_size=0"):
        GhostBatchNormalization(ghost_batch_size=0)


def test_runtime_configure_takes_numpy_bools():
    from tf_dlthesis import runtime

    import tensorflow as tf

    before, tf_jit = runtime.configure(), tf.config.optimizer.get_jit()
    try:
        settings = runtime.configure(deterministic=np.bool_(False), jit=np.bool_(False))
        assert settings["deterministic"] is False and settings["jit"] is False
        with pytest.raises(TypeError, match=r"`jit` must be a bool or None. Received: jit='auto'"):
            runtime.configure(jit="auto")
    finally:
        # configure(jit=None) keeps the current choice: the default (None: XLA on GPU) is restored by hand, or
        # every later test of this worker would run with jit=False
        runtime.configure(deterministic=before["deterministic"], jit=before["jit"])
        runtime._STATE["jit"] = before["jit"]
        tf.config.optimizer.set_jit(tf_jit)


def test_mixing_layer_and_options_take_numpy_bools():
    from tf_dlthesis.augment import MixedExample
    from tf_dlthesis.augment.mix import pop_check_numerics

    layer = MixedExample("mixup", seed=0, num_classes=3, check_numerics=np.bool_(True))
    assert layer.get_config()["check_numerics"] is True
    assert pop_check_numerics({"check_numerics": np.bool_(True)}) is True
    with pytest.raises(TypeError, match=r"`check_numerics` must be a bool. Received: check_numerics=1"):
        MixedExample("mixup", seed=0, num_classes=3, check_numerics=1)


def test_language_model_spec_stores_python_numbers():
    from tf_dlthesis.variability.language_model import LanguageModelSpec

    plain = LanguageModelSpec(epochs=2, snapshots=2, variable_bptt=False)
    numpy = LanguageModelSpec(epochs=np.int64(2), snapshots=np.int32(2), variable_bptt=np.bool_(False))
    # one store key for equal settings (NumPy scalars used to be kept, and refused as the bool)
    assert json.dumps(numpy.to_config(), sort_keys=True) == json.dumps(plain.to_config(), sort_keys=True)
    with pytest.raises(TypeError, match=r"`epochs` must be an int >= 1. Received: epochs=2.0"):
        LanguageModelSpec(epochs=2.0)
    with pytest.raises(ValueError, match=r"`snapshots` must be an int >= 1 or None. Received: snapshots=0"):
        LanguageModelSpec(snapshots=0)


def test_seed_plan_and_train_spec_use_the_shared_checks():
    from tf_dlthesis.experiments import TrainSpec
    from tf_dlthesis.variability.seed_plan import SeedPlan

    assert SeedPlan(deterministic_ops=np.bool_(True)).deterministic_ops is True
    with pytest.raises(TypeError, match=r"`deterministic_ops` must be a bool. Received: deterministic_ops='yes'"):
        SeedPlan(deterministic_ops="yes")
    with pytest.raises(TypeError, match=r"`epochs` must be an int >= 1. Received: epochs='3'"):
        TrainSpec(dataset="digits", model="cnn", epochs="3")
    with pytest.raises(ValueError, match=r"`epochs` must be an int >= 1. Received: epochs=0"):
        TrainSpec(dataset="digits", model="cnn", epochs=0)
    assert TrainSpec(dataset="digits", model="cnn", flip=np.bool_(False)).flip is False


# --- callers: the inline int checks that raised a ValueError for a float, a string or a bool -------

# (entry point, call taking the int argument, the argument's name in messages, an int out of range)
INT_ENTRY_POINTS = [
    pytest.param(lambda v: variability.SnapshotEnsemble(cycles=v), "cycles", 0, id="variability.SnapshotEnsemble"),
    pytest.param(lambda v: variability.CyclicCosineSchedule(0.1, total_steps=v), "total_steps", 0,
                 id="variability.CyclicCosineSchedule"),
    pytest.param(lambda v: variability.bootstrap_sd([0.1, 0.2, 0.4], num_samples=v), "num_samples", 1,
                 id="variability.bootstrap_sd"),
    pytest.param(lambda v: variability.tta_views("flip", pad=v), "pad", -1, id="variability.tta_views"),
    pytest.param(lambda v: variability.WeightNoise(stddev=0.01, seed=v), "seed", -1, id="variability.WeightNoise"),
    pytest.param(lambda v: augment.MixedExample("mixup", num_classes=v), "num_classes", 0,
                 id="augment.MixedExample"),
    pytest.param(lambda v: robustness.logit_statistics(None, None, bins=v), "bins", 0,
                 id="robustness.logit_statistics"),
    pytest.param(lambda v: normalization.PreciseBN(batch_size=v), "batch_size", 0, id="normalization.PreciseBN"),
    pytest.param(lambda v: normalization.ExampleWeightedGroupNormalization(groups=v), "groups", 0,
                 id="normalization.ExampleWeightedGroupNormalization"),
    pytest.param(lambda v: models.build("cnn", (8, 8, 1), num_classes=v), "num_classes", 1, id="models.build"),
    pytest.param(lambda v: data.EpochSeeds([3, v]), "seeds[1]", -1, id="data.EpochSeeds"),
    pytest.param(lambda v: data.non_iid_batches(None, batch_size=v, seed=0), "batch_size", 0, id="data.non_iid_batches"),
    pytest.param(lambda v: experiments.register("T.int", title="t", chapter="T", workers=v), "workers", 0,
                 id="experiments.register"),
    pytest.param(lambda v: stats.proportion([[1, 0, 1, 1], [1, 1, 0, 1]], n_boot=v), "n_boot", 1,
                 id="experiments.stats.proportion"),
    pytest.param(lambda v: recipes.WarmupCosine(0.1, total_steps=v), "total_steps", 0, id="recipes.WarmupCosine"),
]


@pytest.mark.parametrize("call, name, out_of_range", INT_ENTRY_POINTS)
@pytest.mark.parametrize("wrong_kind", [2.0, "2", True], ids=["float", "str", "bool"])
def test_int_arguments_refuse_a_wrong_kind_with_a_type_error(call, name, out_of_range, wrong_kind):
    # before: a ValueError for all three kinds (each caller re-implemented the check inline)
    named, shown = re.escape(f"`{name}`"), re.escape(f"Received: {name}=")
    with pytest.raises(TypeError, match=rf"{named} must be an int.*{shown}{re.escape(repr(wrong_kind))}"):
        call(wrong_kind)
    with pytest.raises(ValueError, match=rf"{named}.*{shown}{out_of_range}"):
        call(out_of_range)
