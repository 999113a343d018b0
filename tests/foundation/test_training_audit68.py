"""Stop-68 fixes in `experiments.training` (each test fails on the code before the fix)."""

import pytest

from tf_dlthesis.experiments import TrainSpec


def _spec(**kw):
    return TrainSpec(dataset="digits", model="linear", epochs=20, **kw)


@pytest.mark.parametrize("swa", ["swa", {"mode": "swa"}, {"mode": "swa", "swa_lr": 0.01}])
def test_replace_epochs_derives_a_derived_swa_start_again(swa):
    spec = _spec(swa=swa)
    assert spec.swa["start_epoch"] == 15  # 75% of 20 (Izmailov et al.'s default here)
    longer = spec.replace(epochs=40)
    assert longer.swa["start_epoch"] == 30  # was 15: 75% of the old length
    assert longer == _spec(swa=swa).replace(epochs=40) == TrainSpec(dataset="digits", model="linear", epochs=40, swa=swa)
    assert longer.swa.get("swa_lr") == spec.swa.get("swa_lr")
    shorter = spec.replace(epochs=8)  # the old start (15) would be out of range: it used to raise
    assert shorter.swa["start_epoch"] == 6


def test_replace_epochs_keeps_a_given_swa_start():
    spec = _spec(swa={"mode": "swa", "start_epoch": 10})
    assert spec.replace(epochs=40).swa["start_epoch"] == 10
    with pytest.raises(ValueError, match="start_epoch"):
        spec.replace(epochs=8)  # a given start must lie inside the run


def test_replace_other_fields_keeps_the_swa_settings_and_the_key():
    spec = _spec(swa="aswa")
    other = spec.replace(batch_size=64)
    assert other.swa == spec.swa and other.replace(batch_size=spec.batch_size).key() == spec.key()
    assert spec.replace(epochs=20).key() == spec.key()  # same length: same store key
