"""Audit 69 (Chapter 3): an Attack takes only the settings its kind uses; store keys are unchanged.

``make_attack("fgsm", epsilon=0.03, step_size=0.5)`` (and "natural", "spsa")
stored an unchecked ``step_size`` that did nothing (even ``step_size="abc"``),
``spsa_params`` given to another attack were dropped without a word, and
``make_attack("spsa", random_start=False)`` still started at a random point.
Each is now a ``ValueError`` naming the attack and the value; the evaluation
functions, which build every named column from one shared set of settings, give
each kind only what it uses, and the store keys of their columns are pinned to
the values they had before (the committed result archives are looked up by them).
"""

import copy
import pickle

import numpy as np
import pytest
from _tiny_model import threshold_model as _threshold_model, tiny_classifier

from tf_dlthesis import robustness as R
from tf_dlthesis.experiments.results_store import config_hash
from tf_dlthesis.robustness import evaluation as E


def _line(n=16):
    v = np.linspace(0.005, 0.995, n).astype(np.float32)
    return v.reshape(-1, 1, 1, 1), (v < 0.5).astype(np.int64)


# --------------------------------------------------------------------------- settings a kind does not use
@pytest.mark.parametrize("name", ["fgsm", "natural", "spsa"])
@pytest.mark.parametrize("step_size", [0.5, 0.01, "abc", 0.0])
def test_make_attack_refuses_a_step_size_its_kind_does_not_use(name, step_size):
    # Old: accepted and stored (shown by get_config / repr), never used; "abc" too.
    with pytest.raises(ValueError, match=rf"Attack '{name}' does not use `step_size`.*"
                                         rf"Received: step_size={step_size!r}"):
        R.make_attack(name, epsilon=0.03, step_size=step_size)


@pytest.mark.parametrize("name", ["fgsm", "natural", "pgd10"])
def test_make_attack_refuses_spsa_params_for_other_attacks(name):
    # Old: silently dropped (get_config showed spsa_params=None).
    kw = {"step_size": 0.01} if name.startswith("pgd") else {}
    with pytest.raises(ValueError, match=rf"Attack '{name}' does not use `spsa_params`.*"
                                         r"Received: spsa_params=\{'num_steps': 3\}"):
        R.make_attack(name, epsilon=0.03, spsa_params={"num_steps": 3}, **kw)
    # no settings at all is fine
    assert R.make_attack(name, epsilon=0.03, spsa_params={}, **kw).spsa_params is None


def test_spsa_refuses_random_start_false():
    # Old: accepted and stored, yet SPSA always starts at a uniform point of the epsilon ball (as CleverHans).
    with pytest.raises(ValueError, match=r"Attack 'spsa' always starts at a uniform random point.*"
                                         r"Received: random_start=False"):
        R.make_attack("spsa", epsilon=0.03, random_start=False)
    assert R.make_attack("spsa", epsilon=0.03).random_start is True


@pytest.mark.parametrize("name", ["fgsm", "natural"])
def test_single_step_attacks_report_no_random_start(name):
    # Old: get_config() of every FGSM said random_start=True (an R+FGSM it never ran), and
    # make_attack("fgsm", random_start=False) != make_attack("fgsm") though they are the same attack.
    # The flag stays accepted (RobustModel(attack="fgsm") forwards its own), normalised to False.
    a, b = R.make_attack(name, epsilon=0.03), R.make_attack(name, epsilon=0.03, random_start=False)
    assert a.get_config()["random_start"] is False and a == b and hash(a) == hash(b)
    with pytest.raises(TypeError, match="random_start"):
        R.make_attack(name, epsilon=0.03, random_start="no")


def test_fgsm_robust_model_still_builds_its_attack():
    model = tiny_classifier()
    for random_start in (True, False):
        robust = R.RobustModel(model, "pgd", attack="fgsm", random_start=random_start)
        assert robust._train_attack.kind == "fgsm" and robust._train_attack.step_size is None


def test_repr_tells_a_pgd_without_random_start_apart():
    # Old: both printed Attack('pgd10', epsilon=0.03, step_size=0.01, clip_range=(0.0, 1.0)), so
    # evaluate_white_box's "two different attacks named 'pgd10'" error showed two identical reprs.
    a = R.make_attack("pgd10", epsilon=0.03, step_size=0.01)
    b = R.make_attack("pgd10", epsilon=0.03, step_size=0.01, random_start=False)
    assert repr(a) != repr(b) and "random_start=False" in repr(b) and "random_start" not in repr(a)
    x, y = _line(4)
    with pytest.raises(ValueError, match="random_start=False") as info:
        R.evaluate_white_box(_threshold_model(), (x, y), [a, b])
    assert repr(a) in str(info.value) and repr(b) in str(info.value)


# --------------------------------------------------------------------------- round trips
_ATTACKS = [
    ("natural", {}),
    ("fgsm", {"clip_range": None}),
    ("pgd5", {"step_size": 0.01}),
    ("pgd20", {"step_size": 0.01, "random_start": False}),
    ("spsa", {"spsa_params": {"num_steps": 2, "spsa_samples": 4, "corrected_gradient": True}}),
]


@pytest.mark.parametrize("name, kw", _ATTACKS)
def test_config_and_pickle_round_trip(name, kw):
    attack = R.make_attack(name, epsilon=0.03, **kw)
    config = attack.get_config()
    again = R.Attack.from_config(config)
    assert again == attack and again.get_config() == config and repr(again) == repr(attack)
    assert pickle.loads(pickle.dumps(attack)) == attack
    assert copy.deepcopy(attack) == attack


@pytest.mark.parametrize("name", ["natural", "fgsm", "spsa"])
def test_configs_of_earlier_releases_still_load(name):
    # earlier releases stored an unused step_size (and SPSA's unused random_start): dropped on load, as
    # RobustModel.from_config drops an FGSM's num_steps / step_size
    old = {"name": name, "epsilon": 0.03, "step_size": 0.0078, "clip_range": (0.0, 1.0),
           "spsa_params": {"num_steps": 100} if name == "spsa" else None, "random_start": False}
    attack = R.Attack.from_config(old)
    assert attack == R.make_attack(name, epsilon=0.03, spsa_params=old["spsa_params"])
    assert attack.step_size is None


# --------------------------------------------------------------------------- the callers
def test_evaluate_white_box_gives_each_named_column_only_its_settings():
    x, y = _line()
    model = _threshold_model()
    kw = {"epsilon": 0.2, "step_size": 0.1, "batch_size": 8, "spsa_params": {"num_steps": 1, "spsa_samples": 4}}
    acc = R.evaluate_white_box(model, (x, y), ["natural", "fgsm", "pgd5", "spsa"], **kw)
    assert set(acc) == {"natural", "fgsm", "pgd5", "spsa"}
    # the FGSM column is the attack without a step size: the same numbers as a column built by hand
    by_hand = R.evaluate_white_box(model, (x, y), {"fgsm": R.make_attack("fgsm", epsilon=0.2)}, batch_size=8)
    assert acc["fgsm"] == by_hand["fgsm"]
    # hand check of FGSM on the threshold model: v moves by 0.2 toward 0.5, so |v - 0.5| <= 0.2 flips
    v = x.reshape(-1)
    assert acc["fgsm"] == pytest.approx(np.mean(np.abs(v - 0.5) > 0.2))
    assert acc["natural"] == 1.0
    table = R.black_box_matrix({"m": model}, (x, y), "fgsm", epsilon=0.2, batch_size=8)
    assert table["m"]["m"] == acc["fgsm"]
    stats = R.logit_statistics(model, (x, y), attack="fgsm", epsilon=0.2, batch_size=8)
    assert stats["logits"].shape == (16, 2)


@pytest.mark.parametrize("step_size", ["abc", float("nan"), -0.1])
def test_evaluate_white_box_checks_the_shared_step_size(step_size):
    # Old: with no PGD column the step size reached only FGSM / natural Attacks, which stored it unchecked.
    x, y = _line(4)
    with pytest.raises((TypeError, ValueError), match=r"`step_size` must be"):
        R.evaluate_white_box(_threshold_model(), (x, y), ["natural", "fgsm"], step_size=step_size)
    with pytest.raises((TypeError, ValueError), match=r"`step_size` must be"):
        R.black_box_matrix({"m": _threshold_model()}, (x, y), "fgsm", step_size=step_size)


def test_evaluate_white_box_refuses_spsa_params_without_an_spsa_column():
    # Old: the SPSA settings were ignored and no SPSA column was evaluated.
    x, y = _line(4)
    with pytest.raises(ValueError, match=r"`spsa_params`.*no 'spsa' column.*Received: spsa_params=\{'num_steps': 2\}"):
        R.evaluate_white_box(_threshold_model(), (x, y), ["natural", "fgsm"], spsa_params={"num_steps": 2})
    # an SPSA column under another name uses them
    acc = R.evaluate_white_box(_threshold_model(), (x, y), {"strong": "spsa"}, epsilon=0.1, batch_size=4,
                               spsa_params={"num_steps": 1, "spsa_samples": 4})
    assert set(acc) == {"strong"}


@pytest.mark.parametrize("step_size", [None, "abc"])
def test_sanity_report_checks_its_step_size(step_size):
    # Old: `TypeError: '<' not supported between instances of 'float' and 'NoneType'` from min(step, eps).
    x, y = _line(4)
    with pytest.raises(TypeError, match=rf"`step_size` must be a real number. Received: step_size={step_size!r}"):
        R.sanity_report(_threshold_model(), (x, y), step_size=step_size)


def test_sanity_report_with_spsa_runs():
    x, y = _line(8)
    report = R.sanity_report(_threshold_model(), (x, y), epsilon=0.05, step_size=0.02, batch_size=8,
                             spsa_params={"num_steps": 1, "spsa_samples": 4})
    assert "spsa" in report.accuracies and any(c.name == "gradient_free_not_stronger" for c in report.checks)


# --------------------------------------------------------------------------- pinned store keys
# Computed with the code before this audit's changes: the result archives are looked up by these keys.
_PINNED = {
    "natural": ({"attack": "natural", "epsilon": 0.03, "step_size": 0.0078, "clip_range": [0.0, 1.0],
                 "sample": 100, "spsa": None}, "e2d6492423fedce3"),
    "fgsm": ({"attack": "fgsm", "epsilon": 0.03, "step_size": 0.0078, "clip_range": [0.0, 1.0],
              "sample": 100, "spsa": None}, "93d94ffdef9116dd"),
    "pgd10": ({"attack": "pgd10", "epsilon": 0.03, "step_size": 0.0078, "clip_range": [0.0, 1.0],
               "sample": 100, "spsa": None}, "cf955d86f42084a2"),
    "spsa": ({"attack": "spsa", "epsilon": 0.03, "step_size": 0.0078, "clip_range": [0.0, 1.0],
              "sample": 100, "spsa": {"num_steps": 5}}, "80181530ff00147f"),
}


@pytest.mark.parametrize("name", sorted(_PINNED))
def test_store_key_of_a_named_column_is_unchanged(name):
    config, digest = _PINNED[name]
    got = E._store_config(name, name, 100, 0.03, 0.0078, (0.0, 1.0), {"num_steps": 5} if name == "spsa" else None)
    assert got == config and config_hash(got) == digest


def test_store_keys_of_the_chapter3_attacks_are_unchanged():
    # chapter3._strong_hook stores PGD-1000 and SPSA columns built with make_attack
    pgd = R.make_attack("pgd1000", epsilon=0.03, step_size=0.0078)
    spsa = R.make_attack("spsa", epsilon=0.03, spsa_params={"num_steps": 100, "spsa_samples": 128})
    assert config_hash(E._store_config("pgd1000", pgd, 64, None, None, None, None)) == "ef8a0e0b5c0d72f4"
    assert config_hash(E._store_config("spsa", spsa, 64, None, None, None, None)) == "6e3cca8af1d0f98a"
    assert config_hash(E._store_config("fgsm", R.make_attack("fgsm", epsilon=0.03), 64, None, None, None,
                                       None)) == "e6eaca2c5e6641ed"
    # chapter3._black_box_results keys its results by the PGD-10 attack's get_config()
    pgd10 = R.make_attack("pgd10", epsilon=0.03, step_size=0.0078).get_config()
    assert pgd10 == {"name": "pgd10", "epsilon": 0.03, "step_size": 0.0078, "clip_range": (0.0, 1.0),
                     "spsa_params": None, "random_start": True}
    assert config_hash(pgd10) == "fb5b59beeb966583"

class _RecordingStore:
    def __init__(self):
        self.keys = []

    def get(self, experiment, config, index):
        self.keys.append((experiment, dict(config), index))  # nothing stored: every batch is computed

    def record(self, experiment, config, index, value):
        pass


def test_evaluate_white_box_stores_a_named_fgsm_column_under_its_old_key():
    x, y = _line(4)
    store = _RecordingStore()
    R.evaluate_white_box(_threshold_model(), (x, y), ["fgsm"], batch_size=4, store=store, store_key="m")
    (experiment, config, index), = store.keys
    assert (experiment, index) == ("robustness/per_example", 0)
    assert config == {"model": "m", "n": 4, "batch_size": 4, "seed": 0, "attack": "fgsm", "epsilon": 0.03,
                      "step_size": 0.0078, "clip_range": [0.0, 1.0], "sample": 4, "spsa": None}
    assert config_hash(config) == "a284442730218f84"
