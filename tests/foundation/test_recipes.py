"""Recipes: the learning rate at the thesis's milestones equals the values the thesis states."""

import keras
import numpy as np
import pytest

from tf_dlthesis import recipes


def _lr(schedule, step):
    return float(schedule(step))


def test_ch2_cifar_schedule_at_the_thesis_milestones():
    # Sec. 2.4.1: 0.01 for 400 warm-up steps, then 0.1, /10 after 32k, 48k and 70k steps.
    s = recipes.get("ch2_cifar10_mixing").schedule(steps_per_epoch=400, epochs=200)  # exactly 80k steps
    expected = {0: 0.01, 399: 0.01, 400: 0.1, 31999: 0.1, 32000: 0.01, 47999: 0.01, 48000: 0.001,
                69999: 0.001, 70000: 1e-4, 79999: 1e-4}
    for step, lr in expected.items():
        assert _lr(s, step) == pytest.approx(lr, rel=1e-6), step
    assert recipes.get("ch2_cifar10_mixing").weight_decay == 1e-4
    assert recipes.get("ch2_cifar10_baseline").weight_decay == 5e-4
    assert recipes.get("ch2_cifar100").weight_decay == 5e-4


def test_ch2_caltech_log_linear_warmup():
    s = recipes.get("ch2_caltech_baseline").schedule(steps_per_epoch=100, epochs=300)  # 30k steps
    assert _lr(s, 0) == pytest.approx(3e-5, rel=1e-5)
    assert _lr(s, 1000) == pytest.approx(np.sqrt(3e-5 * 0.03), rel=1e-4)  # geometric midpoint
    assert _lr(s, 2000) == pytest.approx(0.03)
    assert _lr(s, 19999) == pytest.approx(0.03) and _lr(s, 20000) == pytest.approx(0.003)
    assert _lr(s, 26000) == pytest.approx(3e-4)
    m = recipes.get("ch2_caltech_mixing").schedule(steps_per_epoch=100, epochs=600)
    assert _lr(m, 44999) == pytest.approx(0.03) and _lr(m, 45000) == pytest.approx(0.003)
    assert _lr(m, 57000) == pytest.approx(3e-4)
    assert recipes.get("ch2_caltech_mixing").weight_decay == 4e-5


def test_ch3_cifar_schedule_in_epochs():
    spe = 391
    s = recipes.get("ch3_cifar").schedule(steps_per_epoch=spe)
    assert _lr(s, 0) == 0.0 and _lr(s, 5 * spe) == pytest.approx(0.1)
    assert _lr(s, int(2.5 * spe)) == pytest.approx(0.05, rel=1e-3)  # linear warm-up
    assert _lr(s, 100 * spe - 1) == pytest.approx(0.1) and _lr(s, 100 * spe) == pytest.approx(0.01)
    assert _lr(s, 150 * spe) == pytest.approx(0.001)
    opt = recipes.get("ch3_cifar").optimizer(steps_per_epoch=spe)
    assert opt.momentum == 0.9 and opt.weight_decay == pytest.approx(2e-4)


def test_ch3_svhn_and_ch5_schedules():
    spe = 100
    s = recipes.get("ch3_svhn").schedule(steps_per_epoch=spe)
    assert _lr(s, 0) == pytest.approx(0.001) and _lr(s, 5 * spe - 1) == pytest.approx(0.001)
    assert _lr(s, 5 * spe) == pytest.approx(0.01) and _lr(s, 80 * spe) == pytest.approx(0.001)
    c = recipes.get("ch5_cifar10").schedule(steps_per_epoch=98)
    assert _lr(c, 3 * 98) == pytest.approx(0.4)
    assert _lr(c, 500 * 98) == pytest.approx(0.0, abs=1e-7)
    mid = 3 * 98 + (500 * 98 - 3 * 98) // 2
    assert _lr(c, mid) == pytest.approx(0.2, rel=1e-3)
    assert recipes.get("ch5_cifar10").batch_size == 512


def test_shorter_runs_scale_every_milestone():
    s = recipes.get("ch3_cifar").schedule(steps_per_epoch=10, epochs=20)  # a tenth of 200 epochs
    assert _lr(s, 5) == pytest.approx(0.1)      # warm-up 0.5 epochs
    assert _lr(s, 99) == pytest.approx(0.1) and _lr(s, 100) == pytest.approx(0.01)
    assert _lr(s, 150) == pytest.approx(0.001)
    scaled = recipes.get("ch3_cifar").schedule(steps_per_epoch=10, epochs=20, learning_rate=0.05)
    assert _lr(scaled, 100) == pytest.approx(0.005)


def test_schedules_serialize_and_errors_are_clear():
    for name in recipes.names():
        s = recipes.get(name).schedule(steps_per_epoch=50, epochs=20)
        back = keras.optimizers.schedules.deserialize(keras.optimizers.schedules.serialize(s))
        assert type(back) is type(s) and back.get_config() == s.get_config()
        assert recipes.get(name).reference
    with pytest.raises(ValueError, match="ch3_cifar"):
        recipes.get("ch3_cifr")
    with pytest.raises(TypeError, match="name"):
        recipes.get(3)
    with pytest.raises(ValueError, match="epochs"):
        recipes.get("cosine").schedule(steps_per_epoch=10)
    with pytest.raises(ValueError, match="steps_per_epoch"):
        recipes.get("ch3_cifar").schedule(steps_per_epoch=0)
    with pytest.raises(ValueError, match="boundaries"):
        recipes.WarmupPiecewiseConstant(0, 0.1, [10, 5], [0.1, 0.01, 0.001])
    with pytest.raises(ValueError, match="warmup"):
        recipes.WarmupPiecewiseConstant(5, 0.1, [10], [0.1, 0.01], warmup="cubic")


@pytest.mark.parametrize("name", ["ch2_cifar10_baseline", "ch2_cifar10_mixing", "ch2_cifar100", "ch4_cifar100"])
@pytest.mark.parametrize("epochs", [None, 204, 205])  # 391 steps per epoch: 79,764 / 80,155 steps, thesis 80,000
def test_a_thesis_length_cifar_run_keeps_the_thesis_step_milestones(name, epochs):
    # Sec. 2.4.1 at CIFAR's 391 steps per epoch (batch 128): 0.01 until step 400, then 0.1, /10 at 32k, 48k, 70k
    # (whole epochs never add up to 80k steps; scaling by 80,155 / 80,000 had moved them to 401, 32062, ...)
    s = recipes.get(name).schedule(steps_per_epoch=391, epochs=epochs)
    expected = {399: 0.01, 400: 0.1, 31999: 0.1, 32000: 0.01, 47999: 0.01, 48000: 0.001, 69999: 0.001, 70000: 1e-4}
    for step, lr in expected.items():
        assert _lr(s, step) == pytest.approx(lr, rel=1e-6), step


@pytest.mark.parametrize("steps_per_epoch", [160, 157])  # Caltech-256's 10,240 / 64, and one that does not divide
def test_a_thesis_length_caltech_run_keeps_the_thesis_step_milestones(steps_per_epoch):
    # Sec. 2.4.1: log-linear warm-up over 2,000 steps to 0.03; /10 at 20k, 26k (baseline) or 45k, 57k (mixing)
    for name, (first, second), total in (("ch2_caltech_baseline", (20000, 26000), 30000),
                                         ("ch2_caltech_mixing", (45000, 57000), 60000)):
        for epochs in (None, total // steps_per_epoch, -(-total // steps_per_epoch)):
            s = recipes.get(name).schedule(steps_per_epoch=steps_per_epoch, epochs=epochs)
            assert _lr(s, 1999) < 0.03 and _lr(s, 2000) == pytest.approx(0.03)
            assert _lr(s, first - 1) == pytest.approx(0.03) and _lr(s, first) == pytest.approx(0.003)
            assert _lr(s, second - 1) == pytest.approx(0.003) and _lr(s, second) == pytest.approx(3e-4)


def test_a_step_recipe_run_of_another_length_still_scales_its_milestones():
    s = recipes.get("ch2_cifar10_baseline").schedule(steps_per_epoch=391, epochs=100)  # 39,100 steps: 0.48875 x
    assert s.warmup_steps == round(400 * 0.48875)
    assert s.boundaries == [round(m * 0.48875) for m in (32000, 48000, 70000)]
