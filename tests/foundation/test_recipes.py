"""Recipes: the learning rate at the thesis's milestones equals the values the thesis states."""

import dataclasses

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
    assert opt.momentum == 0.9 and opt.l2 == pytest.approx(2e-4) and opt.weight_decay is None  # L2, not decoupled


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


# --------------------------------------------------------------------------- weight decay as the thesis applies it
def _hand_momentum_l2(w, target, lr, momentum, l2, steps):
    """TF-Slim / PyTorch momentum SGD on 0.5 * (w - target)^2 plus L2: grad = (w - target) + l2 * w, in float64.

    target None: no loss, the decay alone.
    """
    v = 0.0
    for _ in range(steps):
        g = (0.0 if target is None else w - target) + l2 * w
        v = momentum * v + g
        w = w - lr * v
    return w


def _run(opt, w0, target, steps):
    w = keras.Variable(np.float32(w0), name="kernel")
    for _ in range(steps):
        opt.apply([keras.ops.zeros_like(w) if target is None else w - np.float32(target)], [w])
    return float(w.numpy())


@pytest.mark.parametrize("target", [None, 3.0])
def test_thesis_recipes_add_the_decay_to_the_gradient_before_momentum(target):
    """The thesis's runs decay as L2 (Secs. 2.4.1, 3.5.1 via TF-Slim; 5.3.2 via PyTorch): ~10x Keras's decoupled decay."""
    lr, m, wd, n = 0.1, 0.9, 5e-4, 200
    opt = recipes.sgd(lr, momentum=m, weight_decay=wd, weight_decay_mode="l2")
    assert isinstance(opt, recipes.CoupledSGD)
    ours = _run(opt, 1.0, target, n)
    assert ours == pytest.approx(_hand_momentum_l2(1.0, target, lr, m, wd, n), rel=1e-5, abs=1e-6)
    if target is None:  # the decay alone: the thesis's convention shrinks the weight ~10x faster than Keras's
        hand = _hand_momentum_l2(1.0, None, lr, m, wd, n)
        keras_decoupled = _run(recipes.sgd(lr, momentum=m, weight_decay=wd, weight_decay_mode="decoupled"), 1.0, None, n)
        no_decay = _run(keras.optimizers.SGD(lr, momentum=m), 1.0, None, n)
        assert no_decay == 1.0 and keras_decoupled == pytest.approx((1 - lr * wd) ** n, rel=1e-5)
        assert 9 < np.log(hand) / np.log(keras_decoupled) < 1 / (1 - m)  # -> 10x once the momentum has built up
    for name in ("ch2_cifar10_baseline", "ch2_caltech_mixing", "ch3_cifar", "ch3_svhn", "ch4_cifar100", "ch5_cifar10"):
        assert recipes.get(name).weight_decay_mode == "l2", name
        assert isinstance(recipes.get(name).optimizer(steps_per_epoch=10, epochs=5), recipes.CoupledSGD)
    assert recipes.get("cosine").weight_decay_mode == "decoupled"  # the library's default keeps Keras's decay


@pytest.mark.parametrize("mode", ["l2", "decoupled", "adam"])
def test_gamma_and_beta_are_never_decayed_by_recipe_optimizers(mode):
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2), keras.layers.BatchNormalization()])
    model.layers[1].set_weights([np.full(2, 2.0, np.float32), np.full(2, 1.0, np.float32), np.zeros(2, np.float32),
                                 np.ones(2, np.float32)])
    if mode == "adam":  # experiments.train's Adam: the same exclusion
        opt = recipes.adam(0.01, weight_decay=0.1)
    else:
        recipe = dataclasses.replace(recipes.get("ch3_cifar"), weight_decay_mode=mode)
        opt = recipe.optimizer(steps_per_epoch=1, epochs=20, weight_decay=0.1)
    variables = model.trainable_variables
    before = [v.numpy().copy() for v in variables]
    for _ in range(5):
        opt.apply([keras.ops.zeros_like(v) for v in variables], variables)
    moved = {v.path.split("/")[-1]: not np.array_equal(b, v.numpy()) for b, v in zip(before, variables)}
    assert moved == {"kernel": True, "bias": False, "gamma": False, "beta": False}, moved  # bias is 0: nothing to decay


@pytest.mark.parametrize("mode", ["l2", "decoupled", "adam"])
def test_gamma_and_beta_stay_undecayed_after_save_and_load(mode, tmp_path):
    # Keras 3 saves no weight-decay exclusions: a resumed model once decayed gamma and beta
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2), keras.layers.BatchNormalization()])
    model.layers[1].set_weights([np.full(2, 2.0, np.float32), np.full(2, 1.0, np.float32), np.zeros(2, np.float32),
                                 np.ones(2, np.float32)])
    if mode == "adam":
        opt = recipes.adam(0.01, weight_decay=0.1)
    else:
        recipe = dataclasses.replace(recipes.get("ch3_cifar"), weight_decay_mode=mode)
        opt = recipe.optimizer(steps_per_epoch=1, epochs=20, weight_decay=0.1)
    model.compile(opt, "mse")
    model.fit(np.ones((4, 3), np.float32), np.zeros((4, 2), np.float32), epochs=1, verbose=0)
    model.save(tmp_path / "m.keras")
    loaded = keras.models.load_model(tmp_path / "m.keras")
    assert type(loaded.optimizer) is type(model.optimizer) and loaded.optimizer.not_decayed == ["gamma", "beta"]
    for m in (model, loaded):  # zero gradients: momentum and decay alone move the weights
        for _ in range(3):
            m.optimizer.apply([keras.ops.zeros_like(v) for v in m.trainable_variables], m.trainable_variables)
    for a, b in zip(model.trainable_variables, loaded.trainable_variables):
        np.testing.assert_array_equal(a.numpy(), b.numpy(), err_msg=a.path)


def test_coupled_sgd_serializes_and_refuses_bad_settings():
    opt = recipes.get("ch5_cifar10").optimizer(steps_per_epoch=10, epochs=5)
    again = keras.optimizers.deserialize(keras.optimizers.serialize(opt))
    assert type(again) is recipes.CoupledSGD and again.l2 == opt.l2 == 5e-4 and again.momentum == 0.9
    assert again.get_config() == opt.get_config()
    with pytest.raises(ValueError, match=r"`l2` must be a finite number >= 0. Received: l2=-1"):
        recipes.CoupledSGD(0.1, l2=-1)
    with pytest.raises(ValueError, match="Received: weight_decay=0.1"):
        recipes.CoupledSGD(0.1, weight_decay=0.1)
    with pytest.raises(ValueError, match=r"`weight_decay` must be a finite number >= 0. Received: weight_decay=-1"):
        recipes.get("ch3_cifar").optimizer(steps_per_epoch=10, weight_decay=-1)
    with pytest.raises(ValueError, match="`weight_decay` must be a finite number >= 0. Received: weight_decay=nan"):
        recipes.adam(0.01, weight_decay=float("nan"))
    with pytest.raises(ValueError, match=r"`weight_decay_mode` must be one of \('l2', 'decoupled'\)"):
        recipes.sgd(0.1, weight_decay=1e-4, weight_decay_mode="adamw")
    with pytest.raises(ValueError, match="weight_decay_mode"):
        dataclasses.replace(recipes.get("cosine"), weight_decay_mode="L2")


@pytest.mark.parametrize("kwargs, error, message", [
    ({"boundaries": [1.7]}, TypeError, r"`boundaries` must be ints .* Received: boundaries=\[1.7\]"),
    ({"boundaries": ["5"]}, TypeError, r"Received: boundaries=\['5'\]"),
    ({"boundaries": 5}, TypeError, "`boundaries` must be a list of step counts. Received: boundaries=5"),
    ({"boundaries": [-3]}, ValueError, r"after the warm-up .* Received: boundaries=\[-3\]"),
    ({"warmup_steps": 400, "boundaries": [100]}, ValueError, r"warmup_steps=400.* Received: boundaries=\[100\]"),
    ({"boundaries": [], "values": [float("inf")]}, ValueError, "finite number > 0. Received: values=inf"),
    ({"warmup_start": float("nan")}, ValueError, "`warmup_start` must be a finite number >= 0. Received: warmup_start=nan"),
    ({"warmup_start": float("inf")}, ValueError, "Received: warmup_start=inf"),
    ({"values": None}, TypeError, "`values` must be a list of rates. Received: values=None"),
])
def test_piecewise_schedule_refuses_bad_settings(kwargs, error, message):
    args = {"warmup_steps": 0, "warmup_start": 0.0, "boundaries": [10], "values": [0.1, 0.01], **kwargs}
    with pytest.raises(error, match=message):
        recipes.WarmupPiecewiseConstant(**args)


def test_schedules_take_numpy_numbers_and_refuse_an_infinite_peak():
    s = recipes.WarmupPiecewiseConstant(np.int64(2), np.float32(0.01), [np.int64(5)], [np.int64(1), np.float64(0.5)])
    assert [float(s(t)) for t in (0, 2, 5)] == [pytest.approx(0.01), 1.0, 0.5]
    with pytest.raises(ValueError, match="`peak` must be a finite number > 0. Received: peak=inf"):
        recipes.WarmupCosine(float("inf"), total_steps=10)


# Stored runs are keyed by the recipe's *name* (TrainSpec.key), not by its numbers, so an edit
# of a registered recipe's numbers would read back runs trained with the old ones. Each recipe's
# training-affecting fields are pinned here: a change must come with a new recipe name (or the
# numbers in the spec's key), never as a silent edit.
_PINNED = {
    "cosine": "f348425197bb7d2b", "constant": "0a60b8dc28acd186",
    "ch2_cifar10_baseline": "114ac68dc7bcbbc3", "ch2_cifar10_mixing": "fd7577008cbeced5",
    "ch2_cifar100": "114ac68dc7bcbbc3", "ch2_caltech_baseline": "d816fe81ec6bb955",
    "ch2_caltech_mixing": "621f22283a39af55", "ch3_cifar": "ead66ff07eeb5947", "ch3_svhn": "08417453a54f0d5a",
    "ch5_cifar10": "66ac35231ff5ceea", "ch4_cifar100": "114ac68dc7bcbbc3",
}


def _numbers_hash(recipe):
    from tf_dlthesis.experiments.results_store import config_hash

    return config_hash({k: v for k, v in recipe.to_config().items() if k not in ("name", "reference", "assumed")})


def test_registered_recipes_keep_the_numbers_their_stored_runs_were_trained_with():
    assert set(recipes.names()) == set(_PINNED), "a recipe was added or removed: pin its numbers here"
    changed = [n for n in recipes.names() if _numbers_hash(recipes.get(n)) != _PINNED[n]]
    assert not changed, (f"recipes {changed} changed numbers under the same name: stored runs are keyed by the "
                         "name, so they would be read back as runs of the new numbers. Register a new name.")
    # the pin reads every training-affecting field: a changed decay, milestone or mode moves the hash
    base = recipes.get("ch3_cifar")
    for change in ({"weight_decay": 1e-4}, {"milestones": (100, 151)}, {"weight_decay_mode": "decoupled"},
                   {"momentum": 0.8}, {"warmup_kind": "constant"}):
        assert _numbers_hash(dataclasses.replace(base, **change)) != _PINNED["ch3_cifar"], change
    assert _numbers_hash(dataclasses.replace(base, assumed=(), reference="x")) == _PINNED["ch3_cifar"]
