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
