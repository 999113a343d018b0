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


def test_a_constant_rate_recipe_needs_no_length():
    from tf_dlthesis import recipes

    recipe = recipes.get("constant")
    recipe.optimizer(10, learning_rate=3e-3)  # raised "has no default length: pass `epochs`"
    schedule = recipe.schedule(10, learning_rate=3e-3)
    assert [float(schedule(t)) for t in (0, 5, 10_000)] == pytest.approx([3e-3] * 3)
    with pytest.raises(ValueError, match="no default length"):  # a recipe whose milestones need the length
        recipes.Recipe(name="x", reference="r", schedule_kind="epochs", learning_rate=0.1, values=(0.1, 0.01),
                       milestones=(5,)).schedule(10)
