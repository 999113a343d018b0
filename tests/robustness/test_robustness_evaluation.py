"""Evaluation against a model whose robust accuracy is known in closed form."""

import keras
import numpy as np
import pytest

from tf_dlthesis import robustness as R
from tf_dlthesis.experiments.results_store import ResultsStore


def _threshold_model(scale=10.0, softmax=False):
    """One pixel v -> logits scale*(v - 0.5, 0.5 - v): class 0 iff v > 0.5."""
    inp = keras.Input((1, 1, 1))
    flat = keras.layers.Flatten()(inp)
    dense = keras.layers.Dense(2, activation="softmax" if softmax else None)
    out = dense(flat)
    dense.set_weights([np.array([[scale, -scale]], np.float32), np.array([-scale / 2, scale / 2], np.float32)])
    return keras.Model(inp, out)


@pytest.fixture(scope="module")
def data():
    v = np.linspace(0.005, 0.995, 100).astype(np.float32)
    return v.reshape(-1, 1, 1, 1), (v < 0.5).astype(np.int64)


def _closed_form(v, eps):
    return float((np.abs(v - 0.5) > eps).mean())  # the attack moves v toward 0.5 by eps


def test_white_box_accuracy_matches_closed_form(data):
    x, y = data
    model = _threshold_model()
    acc = R.evaluate_white_box(model, (x, y), ["natural", "fgsm", "pgd5", "pgd20"], epsilon=0.2, step_size=0.1,
                               batch_size=32)
    v = x.reshape(-1)
    assert acc["natural"] == 1.0
    for name in ("fgsm", "pgd5", "pgd20"):
        assert abs(acc[name] - _closed_form(v, 0.2)) <= 0.011, (name, acc[name])


def test_sample_and_dataset_input(data):
    import tensorflow as tf
    x, y = data
    ds = tf.data.Dataset.from_tensor_slices((x, y))
    acc, details = R.evaluate_white_box(_threshold_model(), ds, ["natural", "fgsm"], epsilon=0.1,
                                        sample={"fgsm": 30}, return_details=True)
    assert len(details["natural"]) == 100 and len(details["fgsm"]) == 30


def test_black_box_matrix_diagonal_is_white_box(data):
    x, y = data
    m1, m2 = _threshold_model(10.0), _threshold_model(-10.0)  # m2 is always wrong on clean data
    table = R.black_box_matrix({"a": m1, "b": m2}, (x, y), "pgd10", epsilon=0.2, step_size=0.05, batch_size=50)
    white = R.evaluate_white_box(m1, (x, y), ["pgd10"], epsilon=0.2, step_size=0.05, batch_size=50)["pgd10"]
    assert table["a"]["a"] == pytest.approx(white)
    assert set(table) == {"a", "b"} and set(table["a"]) == {"a", "b"}
    # adversarial examples from the inverted model push away from 0.5: the true model stays correct
    assert table["a"]["b"] == 1.0


def test_logit_statistics_hand_computed(data):
    x, y = data
    stats = R.logit_statistics(_threshold_model(), (x, y), bins=10)
    logits = 10.0 * np.stack([x.reshape(-1) - 0.5, 0.5 - x.reshape(-1)], -1)
    assert stats["variance"] == pytest.approx(logits.var(), rel=1e-4)
    assert stats["dynamic_range"] == pytest.approx(logits.max() - logits.min(), rel=1e-4)
    assert stats["histogram"].sum() == logits.size


def test_sanity_report_passes_and_flags_probabilities(data):
    x, y = data
    good = R.sanity_report(_threshold_model(), (x, y), epsilon=0.1, step_size=0.025)
    assert good.passed, str(good)
    bad = R.sanity_report(_threshold_model(softmax=True), (x, y), epsilon=0.1, step_size=0.025)
    names = {c.name: c.passed for c in bad.checks}
    assert names["outputs_logits"] is False and not bad.passed


def test_per_example_results_resume_from_store(data, tmp_path):
    x, y = data
    store = ResultsStore(str(tmp_path / "r.sqlite"))
    calls = []

    def attack(model, xb, yb, seed):
        calls.append(len(xb))
        return xb

    attack.get_config = lambda: {"name": "identity"}  # a user function's store key is its get_config()
    first = R.evaluate_white_box(_threshold_model(), (x, y), {"slow": attack}, batch_size=25, store=store,
                                 store_key="m")
    assert len(calls) == 4

    def broken(model, xb, yb, seed):
        raise AssertionError("must not be recomputed")

    broken.get_config = attack.get_config  # the same attack, e.g. in a resumed process
    again = R.evaluate_white_box(_threshold_model(), (x, y), {"slow": broken}, batch_size=25, store=store,
                                 store_key="m")
    assert again == first
    with pytest.raises(ValueError, match="store_key"):
        R.evaluate_white_box(_threshold_model(), (x, y), ["natural"], store=store)


def test_evaluation_bad_input(data):
    x, y = data
    with pytest.raises(ValueError, match="Unknown attack"):
        R.evaluate_white_box(_threshold_model(), (x, y), ["cw"])
    with pytest.raises(TypeError, match="dataset"):
        R.evaluate_white_box(_threshold_model(), "digits", ["natural"])
    with pytest.raises(ValueError, match="differ in length"):
        R.evaluate_white_box(_threshold_model(), (x, y[:5]), ["natural"])


def _compiled_functions(model):
    return list(getattr(model, "_tf_dlthesis_attack_cache").compiled.values())


def test_repeated_white_box_evaluations_do_not_retrace(data):
    x, y = data
    model = _threshold_model()
    names = ["fgsm", "pgd5", "spsa"]
    kw = dict(epsilon=0.2, step_size=0.1, batch_size=32, spsa_params={"num_steps": 2, "spsa_samples": 4})
    first = R.evaluate_white_box(model, (x, y), names, **kw)
    counts = [f.experimental_get_tracing_count() for f in _compiled_functions(model)]
    assert len(counts) == 3 and all(c >= 1 for c in counts)
    for _ in range(2):
        again = R.evaluate_white_box(model, (x, y), names, **kw)
        assert again == first                                   # same seeds, same result
    # another epsilon reuses the same functions (epsilon is a tensor argument)
    R.evaluate_white_box(model, (x, y), ["fgsm", "pgd5"], epsilon=0.1, step_size=0.05, batch_size=32)
    assert [f.experimental_get_tracing_count() for f in _compiled_functions(model)] == counts


def test_attack_objects_are_accepted(data):
    x, y = data
    model = _threshold_model()
    fgsm = R.make_attack("fgsm", epsilon=0.2)
    acc = R.evaluate_white_box(model, (x, y), [fgsm, "natural"], batch_size=32)
    assert set(acc) == {"fgsm", "natural"}
    assert acc["fgsm"] == R.evaluate_white_box(model, (x, y), ["fgsm"], epsilon=0.2, batch_size=32)["fgsm"]
    table = R.black_box_matrix({"a": model}, (x, y), R.make_attack("pgd5", epsilon=0.2, step_size=0.1))
    assert table["a"]["a"] == pytest.approx(acc["fgsm"], abs=0.011)


def test_evaluation_seed_none(data):
    x, y = data
    acc = R.evaluate_white_box(_threshold_model(), (x, y), ["pgd5"], epsilon=0.2, step_size=0.1, seed=None)
    assert 0.0 <= acc["pgd5"] <= 1.0
    with pytest.raises(TypeError, match="seed"):
        R.evaluate_white_box(_threshold_model(), (x, y), ["natural"], seed=0.5)


def _constant_model(num_classes=4):
    """Predicts class 0 for every input (a collapsed classifier)."""
    inp = keras.Input((1, 1, 1))
    dense = keras.layers.Dense(num_classes)
    out = dense(keras.layers.Flatten()(inp))
    dense.set_weights([np.zeros((1, num_classes), np.float32), np.eye(num_classes, dtype=np.float32)[0] * 3])
    return keras.Model(inp, out)


def test_sanity_report_flags_a_collapsed_model():
    rng = np.random.default_rng(0)
    x = rng.random((64, 1, 1, 1)).astype(np.float32)
    y = np.arange(64) % 4
    report = R.sanity_report(_constant_model(), (x, y), epsilon=0.1, step_size=0.025)
    checks = {c.name: c for c in report.checks}
    assert checks["not_collapsed"].passed is False and "1 of 4" in checks["not_collapsed"].detail
    assert report.distinct_predicted_classes == 1 and report.details["num_classes"] == 4
    assert not report.passed and "not_collapsed" in str(report)


def test_sanity_report_counts_distinct_predictions(data):
    x, y = data
    report = R.sanity_report(_threshold_model(), (x, y), epsilon=0.1, step_size=0.025)
    assert report.details == {"distinct_predicted_classes": 2, "num_classes": 2, "classes_in_labels": 2}
    assert {c.name: c.passed for c in report.checks}["not_collapsed"]
