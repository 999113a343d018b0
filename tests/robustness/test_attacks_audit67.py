"""Audit of the Ch. 3 attacks and their evaluation: label forms, store keys, sweeps and input checks."""

import numpy as np
import pytest

from tf_dlthesis import robustness as R
from tf_dlthesis.experiments import ResultsStore

from _tiny_model import tiny_classifier


@pytest.fixture(scope="module")
def model():
    return tiny_classifier(seed=3)


@pytest.fixture(scope="module")
def data(model):
    """16 images labelled with the model's own predictions: clean accuracy is exactly 1."""
    x = np.random.default_rng(5).random((16, 6, 6, 1)).astype("float32")
    return x, model(x, training=False).numpy().argmax(-1).astype("int64")


# --------------------------------------------------------------------------- per_example_correct
def test_per_example_correct_takes_column_and_one_hot_labels(model, data):
    """One bool per example for (N,), (N, 1) and one-hot labels (a column used to give an N x N table)."""
    x, y = data
    wrong = (y + 1) % 5                                       # every label wrong: hand-known correctness
    y_mixed = np.where(np.arange(16) % 2 == 0, y, wrong)      # correct exactly on even indices
    expected = np.arange(16) % 2 == 0
    natural = R.make_attack("natural", epsilon=0.0)
    for labels in (y_mixed, y_mixed[:, None], np.eye(5, dtype="float32")[y_mixed]):
        got = R.per_example_correct(model, x, labels, natural, batch_size=5)
        assert got.shape == (16,)
        np.testing.assert_array_equal(got, expected)


def test_per_example_correct_store_keys_results_by_the_attack(model, data, tmp_path):
    """Without store_config, a second attack must not read the first one's stored results."""
    x, y = data
    store = ResultsStore(str(tmp_path / "r.sqlite"))
    natural = R.make_attack("natural", epsilon=0.0)
    fgsm = R.make_attack("fgsm", epsilon=0.5)
    clean = R.per_example_correct(model, x, y, natural, store=store, store_key="m")
    assert clean.all()                                        # labels are the predictions
    attacked = R.per_example_correct(model, x, y, fgsm, store=store, store_key="m")
    fresh = R.per_example_correct(model, x, y, fgsm)
    assert not fresh.all()                                    # FGSM at 0.5 flips some predictions
    np.testing.assert_array_equal(attacked, fresh)
    with pytest.raises(ValueError, match="store_key"):
        R.per_example_correct(model, x, y, fgsm, store=store)
    with pytest.raises(ValueError, match="get_config"):
        R.per_example_correct(model, x, y, lambda m, a, b, s: a, store=store, store_key="m")
    with pytest.raises(TypeError, match="attack"):
        R.per_example_correct(model, x, y, "fgsm")


# --------------------------------------------------------------------------- evaluate_white_box / sanity_report
def test_two_attacks_with_one_name_are_refused_not_merged(model, data):
    x, y = data
    weak, strong = (R.make_attack("pgd2", epsilon=e, step_size=0.05) for e in (0.05, 0.4))
    with pytest.raises(ValueError, match="pgd2"):
        R.evaluate_white_box(model, (x, y), [weak, strong])
    res = R.evaluate_white_box(model, (x, y), [weak, weak, "natural"], seed=0)  # the same attack twice is one column
    assert set(res) == {"pgd2", "natural"} and res["natural"] == 1.0
    res = R.evaluate_white_box(model, (x, y), {"weak": weak, "strong": strong}, seed=0)
    assert res["strong"] <= res["weak"]


def test_store_with_step_size_none_for_single_step_columns(model, data, tmp_path):
    x, y = data
    store = ResultsStore(str(tmp_path / "r.sqlite"))
    kw = dict(epsilon=0.5, step_size=None, seed=0)
    stored = R.evaluate_white_box(model, (x, y), ["natural", "fgsm"], store=store, store_key="m", **kw)
    assert stored == R.evaluate_white_box(model, (x, y), ["natural", "fgsm"], **kw)
    assert stored["natural"] == 1.0


def test_sanity_report_checks_epsilons_in_increasing_order(model, data):
    """PGD success grows with epsilon: a sweep given large-to-small must not read as a failure."""
    x, y = data
    kw = dict(epsilon=0.1, step_size=0.05, max_examples=16, seed=0)
    report = R.sanity_report(model, (x, y), epsilons=[0.4, 0.01], **kw)
    check = next(c for c in report.checks if c.name == "success_grows_with_epsilon")
    assert check.passed, check.detail
    assert check.detail.index("0.01") < check.detail.index("0.4")
    assert report.accuracies["pgd10@0.01"] >= report.accuracies["pgd10@0.4"]
    with pytest.raises(ValueError, match="epsilons"):
        R.sanity_report(model, (x, y), epsilons=[0.1, -0.1], **kw)


# --------------------------------------------------------------------------- input checks
def test_pgd_random_start_must_be_a_bool(model, data):
    x, y = data
    with pytest.raises(TypeError, match="random_start"):  # "no" used to read as True: a random start
        R.pgd(model, x, y, epsilon=0.1, step_size=0.05, num_steps=1, random_start="no")


def test_attacks_refuse_images_and_labels_that_are_not_real_numbers(model, data):
    x, y = data
    with pytest.raises(TypeError, match="real numbers"):  # complex: imaginary part dropped silently before
        R.fgsm(model, x.astype(np.complex64), y, epsilon=0.1)
    with pytest.raises(TypeError, match="real numbers"):  # strings: a TF UnimplementedError before
        R.make_attack("fgsm", epsilon=0.1)(model, np.full((2, 6, 6, 1), "a"), y[:2])
    with pytest.raises(TypeError, match="Labels must be"):
        R.pgd(model, x, np.array(["cat"] * 16), epsilon=0.1, step_size=0.05, num_steps=1, seed=0)


def test_spsa_params_are_checked_when_the_attack_is_made():
    with pytest.raises(TypeError, match="corrected_gradient"):
        R.make_attack("spsa", epsilon=0.1, spsa_params={"corrected_gradient": "yes"})
    with pytest.raises(TypeError, match="spsa_params"):
        R.make_attack("spsa", epsilon=0.1, spsa_params=[("num_steps", 3)])
