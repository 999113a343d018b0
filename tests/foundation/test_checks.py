"""The shared argument checks (`tf_dlthesis._checks`) and the callers that moved onto them.

Before, each subpackage wrote its own bool / int checks: seven of the bool checks refused NumPy bools
that the others accepted, and two int helpers raised `ValueError` for a string where the rest raised
`TypeError`.
"""

import json

import numpy as np
import pytest

from tf_dlthesis._checks import check_bool, check_int


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

    before = runtime.configure()
    try:
        settings = runtime.configure(deterministic=np.bool_(False), jit=np.bool_(False))
        assert settings["deterministic"] is False and settings["jit"] is False
        with pytest.raises(TypeError, match=r"`jit` must be a bool or None. Received: jit='auto'"):
            runtime.configure(jit="auto")
    finally:
        runtime.configure(deterministic=before["deterministic"], jit=before["jit"])


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
