"""Fixes of the Chapter-3 review (D1-D7): each test fails on the code before its fix.

D1 stored results keyed by the attack, not the column name; D2 uint8 images at
``predict`` / ``__call__``; D3 float images outside ``clip_range``; D4 SPSA
settings; D5 NumPy labels with mixing; D6 NumPy float settings; D7 non-integer
float labels.
"""

import json

import keras
import numpy as np
import pytest
import tensorflow as tf

from tf_dlthesis import robustness as R
from tf_dlthesis.experiments.results_store import ResultsStore

from _tiny_model import log_softmax as _log_softmax, threshold_model as _threshold_model, tiny_classifier


@pytest.fixture(scope="module")
def line():
    v = np.linspace(0.005, 0.995, 100).astype(np.float32)
    return v.reshape(-1, 1, 1, 1), (v < 0.5).astype(np.int64)


@pytest.fixture(scope="module")
def images():
    rng = np.random.default_rng(0)
    return rng.random((8, 6, 6, 1)).astype("float32"), (np.arange(8) % 5).astype("int64")


# --------------------------------------------------------------------------- D1
def test_store_keys_results_by_the_attack_not_the_column_name(line, tmp_path):
    x, y = line
    store = ResultsStore(str(tmp_path / "r.sqlite"))
    model = _threshold_model()
    kw = dict(epsilon=0.2, step_size=0.1, batch_size=50, store=store, store_key="m")
    assert R.evaluate_white_box(model, (x, y), {"col": "natural"}, **kw) == {"col": 1.0}
    fgsm = R.evaluate_white_box(model, (x, y), {"col": "fgsm"}, **kw)["col"]
    v = x.reshape(-1)
    assert fgsm == pytest.approx(float((np.abs(v - 0.5) > 0.2).mean()), abs=0.011)  # closed form, not 1.0
    # the same attack under another column name resumes from the stored batches
    assert R.evaluate_white_box(model, (x, y), {"other": "fgsm"}, **kw) == {"other": fgsm}


def test_spsa_settings_enter_the_key_under_any_column_name(line, tmp_path):
    x, y = line
    store = ResultsStore(str(tmp_path / "r.sqlite"))
    kw = dict(epsilon=0.2, batch_size=4, max_examples=4, store=store, store_key="m")
    for samples in (4, 8):
        R.evaluate_white_box(_threshold_model(), (x, y), {"strong": "spsa"},
                             spsa_params={"num_steps": 1, "spsa_samples": samples}, **kw)
    assert len(store.rows("robustness/per_example")) == 2  # one batch per SPSA setting, not one shared batch


def test_user_functions_are_stored_under_their_get_config(line, tmp_path):
    x, y = line
    store = ResultsStore(str(tmp_path / "r.sqlite"))
    kw = dict(batch_size=50, store=store, store_key="m")

    def identity(model, xb, yb, seed):
        return xb

    def flip(model, xb, yb, seed):  # moves every pixel across 0.5: every prediction wrong
        return 1.0 - xb

    with pytest.raises(ValueError, match=r"get_config.*'col'"):
        R.evaluate_white_box(_threshold_model(), (x, y), {"col": identity}, **kw)
    identity.get_config = lambda: {"name": "identity"}
    flip.get_config = lambda: {"name": "flip"}
    assert R.evaluate_white_box(_threshold_model(), (x, y), {"col": identity}, **kw) == {"col": 1.0}
    assert R.evaluate_white_box(_threshold_model(), (x, y), {"col": flip}, **kw) == {"col": 0.0}


# --------------------------------------------------------------------------- D2
def test_predict_and_call_scale_uint8_images_like_fit_and_evaluate(images):
    x, y = images
    xu = (x * 255).astype(np.uint8)
    inner = tiny_classifier(0)
    robust = R.RobustModel(inner, "none")
    robust.compile("sgd", jit_compile=False)
    expected = inner.predict(xu.astype(np.float32) / np.float32(255), verbose=0)
    np.testing.assert_allclose(robust.predict(xu, verbose=0), expected, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(robust(xu).numpy(), expected, rtol=1e-6, atol=1e-6)
    # float images are passed through untouched
    np.testing.assert_array_equal(robust.predict(x, verbose=0), inner.predict(x, verbose=0))
    np.testing.assert_array_equal(robust(x).numpy(), inner(x).numpy())


# --------------------------------------------------------------------------- D3
def test_float_images_outside_clip_range_are_an_error(images):
    x, y = images
    x255 = x * 255.0
    found = rf"\[{x255.min():g}, {x255.max():g}\].*clip_range=\(0, 1\)"
    model = tiny_classifier(0)
    calls = [lambda: R.fgsm(model, x255, y, epsilon=0.03),
             lambda: R.pgd(model, x255, y, epsilon=0.03, step_size=0.01, num_steps=2, seed=0),
             lambda: R.spsa(model, x255, y, epsilon=0.03, num_steps=1, spsa_samples=4, seed=0),
             lambda: R.make_attack("pgd5", epsilon=0.03, step_size=0.01)(model, x255, y, seed=0),
             lambda: R.evaluate_white_box(model, (x255, y), ["fgsm"], epsilon=0.03)]
    for call in calls:
        with pytest.raises(ValueError, match=found):
            call()
    robust = R.RobustModel(tiny_classifier(0), "pgd", epsilon=0.03, step_size=0.01, num_steps=1)
    robust.compile("sgd", jit_compile=False)
    with pytest.raises(ValueError, match=found):
        robust.fit(x255, y, epochs=1, verbose=0)


def test_images_inside_clip_range_still_pass(images):
    x, y = images
    model = tiny_classifier(0)
    edges = x.copy()
    edges[0], edges[1] = 0.0, 1.0  # the bounds themselves are inside
    assert np.abs(R.fgsm(model, edges, y, epsilon=0.1).numpy() - edges).max() <= 0.1 + 1e-6
    xu = (x * 255).astype(np.uint8)  # integer images are scaled by 1/255 first
    np.testing.assert_array_equal(R.fgsm(model, xu, y, epsilon=0.1).numpy(),
                                  R.fgsm(model, xu.astype(np.float32) / np.float32(255), y, epsilon=0.1).numpy())
    x255 = x * 255.0
    assert np.abs(R.fgsm(model, x255, y, epsilon=0.5, clip_range=(0.0, 255.0)).numpy() - x255).max() <= 0.5 + 1e-4
    assert np.abs(R.fgsm(model, x255, y, epsilon=0.5, clip_range=None).numpy() - x255).max() <= 0.5 + 1e-4
    # no attack, no clip range to respect: a defense without an adversary trains on any images
    plain = R.RobustModel(tiny_classifier(0), "none")
    plain.compile("sgd", jit_compile=False)
    assert np.isfinite(plain.fit(x255, y, epochs=1, verbose=0).history["loss"][0])


# --------------------------------------------------------------------------- D4
@pytest.mark.parametrize("params, name, error", [({"delta": 0.0}, "delta", ValueError),
                                                 ({"delta": -0.01}, "delta", ValueError),
                                                 ({"learning_rate": 0.0}, "learning_rate", ValueError),
                                                 ({"spsa_iters": 0}, "spsa_iters", ValueError),
                                                 ({"spsa_iters": -1}, "spsa_iters", ValueError),
                                                 ({"spsa_iters": 1.5}, "spsa_iters", TypeError)])
def test_spsa_rejects_degenerate_settings(images, params, name, error):
    x, y = images
    model = tiny_classifier(0)
    with pytest.raises(error, match=f"`{name}` must be"):
        R.spsa(model, x, y, epsilon=0.1, num_steps=1, spsa_samples=4, seed=0, **params)
    with pytest.raises(error, match=f"`{name}` must be"):
        R.make_attack("spsa", epsilon=0.1, spsa_params={"num_steps": 1, **params})
    with pytest.raises(error, match=f"`{name}` must be"):
        R.cleverhans_spsa(model, x[:1], y[:1], epsilon=0.1, num_steps=1, spsa_samples=4, **params)


def test_spsa_with_several_iterations_runs(images):
    x, y = images
    adv = R.spsa(tiny_classifier(0), x, y, epsilon=0.1, num_steps=2, spsa_samples=4, spsa_iters=2, seed=0).numpy()
    assert np.isfinite(adv).all() and np.abs(adv - x).max() <= 0.1 + 1e-6


# --------------------------------------------------------------------------- D5
def test_defense_loss_takes_numpy_labels_with_mixing(images):
    x, y = images
    robust = R.RobustModel(tiny_classifier(0), "none", mixing="mixup", seed=3)
    loss, logits, labels = robust.defense_loss(x, y, 3, training=False)
    labels = np.asarray(labels)
    assert labels.shape == (8, 5) and np.allclose(labels.sum(-1), 1.0)
    expected = keras.losses.CategoricalCrossentropy(from_logits=True)(labels, logits)
    assert float(loss) == pytest.approx(float(expected), rel=1e-5)
    lrm = R.RobustModel(tiny_classifier(0), "lrm", num_steps=1, seed=7)  # LRM's default VH-mixup
    assert np.isfinite(float(lrm.defense_loss(x, y, 3, training=False)[0]))
    lrm.compile("sgd", jit_compile=False)
    assert np.isfinite(float(lrm.compute_loss(x, y, None)))


# --------------------------------------------------------------------------- D6
def test_numpy_float_settings_are_accepted_as_python_floats(images):
    pairing = R.DecoupledLogitPairing(beta=np.float32(1e-3), ratio=np.float64(0.125))
    smoothing = R.LabelSmoothingCrossEntropy(np.float32(0.2))
    config = {**pairing.get_config(), **smoothing.get_config()}
    for key, value in (("beta", float(np.float32(1e-3))), ("ratio", 0.125), ("smoothing", float(np.float32(0.2)))):
        assert type(config[key]) is float and config[key] == value
    z = np.array([[2.0, 0.0, -1.0]], np.float32)
    targets = np.array([[0.8, 0.1, 0.1]])  # Eq. 3.8 with s = 0.2, C = 3, true class 0
    assert float(smoothing([0], z)) == pytest.approx(-(targets * _log_softmax(z)).sum(), rel=1e-5)
    robust = R.RobustModel(tiny_classifier(0), "lrm", beta=np.float32(1e-3), ratio=np.float32(0.125),
                           smoothing=np.float64(0.1), clean_weight=np.int64(0), epsilon=np.float32(0.03))
    cfg = robust.get_config()
    assert all(type(cfg[k]) is float for k in ("beta", "ratio", "smoothing", "clean_weight", "epsilon"))
    json.dumps({k: cfg[k] for k in ("beta", "ratio", "smoothing", "clean_weight", "epsilon")})
    for bad in (True, "0.1", None):
        with pytest.raises(TypeError, match="`beta` must be a real number"):
            R.DecoupledLogitPairing(beta=bad)
    with pytest.raises(TypeError, match="`smoothing` must be a real number"):
        R.RobustModel(tiny_classifier(0), "label_smoothing", smoothing=np.bool_(True))


# --------------------------------------------------------------------------- D7
def test_non_integer_float_labels_are_an_error(images):
    z = np.array([[2.0, 0.0, -1.0], [0.0, 1.0, 0.0]], np.float32)
    with pytest.raises(ValueError, match=r"non-integer labels: \[0\.6, 1\.9\]"):
        R.label_smoothing_cross_entropy(np.array([0.6, 1.9]), z, 0.1)
    # integer-valued floats are fine (Keras's Loss.__call__ casts int labels to float)
    targets = np.array([[0.9, 0.05, 0.05], [0.05, 0.9, 0.05]])
    expected = -(targets * _log_softmax(z)).sum(-1)
    np.testing.assert_allclose(R.label_smoothing_cross_entropy(np.array([0.0, 1.0]), z, 0.1), expected, rtol=1e-5)
    assert float(R.LabelSmoothingCrossEntropy(0.1)(np.array([0, 1]), z)) == pytest.approx(expected.mean(), rel=1e-5)
    x, y = images
    model = tiny_classifier(0)
    bad = y.astype(np.float32) + 0.5
    for call in (lambda: R.fgsm(model, x, bad, epsilon=0.1),
                 lambda: R.pgd(model, x, bad, epsilon=0.1, step_size=0.05, num_steps=1, seed=0),
                 lambda: R.spsa(model, x, bad, epsilon=0.1, num_steps=1, spsa_samples=4, seed=0),
                 lambda: R.make_attack("pgd2", epsilon=0.1, step_size=0.05)(model, x, bad, seed=0)):
        with pytest.raises(ValueError, match="non-integer labels"):
            call()
    robust = R.RobustModel(tiny_classifier(0), "none")
    robust.compile("sgd", jit_compile=False)
    with pytest.raises(ValueError, match="non-integer labels"):
        robust.fit(x, bad, epochs=1, verbose=0)
    assert np.isfinite(robust.fit(x, tf.constant(y, tf.float32), epochs=1, verbose=0).history["loss"][0])


# --------------------------------------------------------------------------- bool images
def test_bool_images_are_0_1_like_the_data_pipeline(images):
    """`as_images` made bool images 0 / (1/255) while `data.as_arrays` makes them 0/1: the attack saw other images."""
    x, y = images
    xb = x > 0.5
    model = tiny_classifier(0)
    from tf_dlthesis.data import as_arrays
    from tf_dlthesis.robustness.attacks import as_images

    x_data, _ = as_arrays((xb, y))
    np.testing.assert_array_equal(as_images(xb).numpy(), x_data)
    np.testing.assert_array_equal(as_images(xb).numpy(), xb.astype(np.float32))
    np.testing.assert_array_equal(R.fgsm(model, xb, y, epsilon=0.1).numpy(),
                                  R.fgsm(model, xb.astype(np.float32), y, epsilon=0.1).numpy())
    robust = R.RobustModel(tiny_classifier(0), "none")
    robust.compile("sgd", jit_compile=False)
    np.testing.assert_array_equal(robust.predict(xb, verbose=0), robust.predict(xb.astype(np.float32), verbose=0))
    # clip_range is checked on the 0/1 values, not on 0/255ths: (0.5, 1) excludes the zeros
    with pytest.raises(ValueError, match=r"\[0, 1\].*clip_range=\(0.5, 1\)"):
        R.fgsm(model, xb, y, epsilon=0.1, clip_range=(0.5, 1.0))


# --------------------------------------------------------------------- second review (2026-12-05, night)
def test_robust_model_config_keeps_trainable_and_dtype():
    inner = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3)])
    frozen = R.RobustModel(inner, "pgd", epsilon=0.1, step_size=0.05, trainable=False, dtype="float64")
    again = R.RobustModel.from_config(json.loads(json.dumps(frozen.get_config())))
    # before: a frozen float64 model came back trainable and float32
    assert again.trainable is False and again.dtype_policy.name == "float64"


@pytest.mark.parametrize("make", [
    lambda: R.RobustModel(keras.Sequential([keras.Input((4,)), keras.layers.Dense(3)]), "pgd", random_start="False"),
    lambda: R.RobustModel(keras.Sequential([keras.Input((4,)), keras.layers.Dense(3)]), "pgd", random_start=None),
    lambda: R.LabelSmoothingCrossEntropy(from_logits="False"),
    lambda: R.make_attack("pgd10", epsilon=0.1, step_size=0.05, random_start="no"),
])
def test_bool_options_are_checked_not_converted(make):
    # before: "False" and "no" read as True (a random start; probabilities taken for logits), None as False
    with pytest.raises(TypeError, match=r"must be a bool. Received: \w+=('False'|None|'no')"):
        make()


def test_smoothing_that_is_not_a_number_is_named():
    y, logits = np.array([0, 1]), np.zeros((2, 3), np.float32)
    # before: "'<=' not supported between instances of 'float' and 'str'"; True was read as 1.0
    for bad in ("0.1", True):
        with pytest.raises(TypeError, match=rf"`smoothing` must be a real number. Received: smoothing={bad!r}"):
            R.label_smoothing_cross_entropy(y, logits, bad)


def test_a_robust_model_compiled_with_a_loss_is_refused_not_ignored():
    robust = R.RobustModel(keras.Sequential([keras.Input((4,)), keras.layers.Dense(3)]), "label_smoothing")
    x, y = np.zeros((4, 4), np.float32), np.arange(4) % 3
    robust.compile("sgd", loss="mse")
    # before: the loss was accepted and never used (the defense's own loss trains)
    for run in (robust.fit, robust.evaluate):
        with pytest.raises(ValueError, match="would be ignored.*Received: loss='mse'"):
            run(x, y, verbose=0)
    fresh = R.RobustModel(keras.Sequential([keras.Input((4,)), keras.layers.Dense(3)]), "label_smoothing")
    fresh.compile("sgd", metrics=["accuracy"])  # the supported call still trains
    assert np.isfinite(fresh.fit(x, y, epochs=1, verbose=0).history["loss"][0])


def test_fgsm_training_refuses_pgd_settings_and_old_fgsm_configs_load():
    def inner():
        return keras.Sequential([keras.Input((4,)), keras.layers.Dense(3)])

    # before: num_steps=20 and step_size=0.01 were stored, shown in get_config and silently unused
    for bad, shown in (({"num_steps": 20}, "num_steps=20"), ({"step_size": 0.01}, "step_size=0.01")):
        with pytest.raises(ValueError, match=rf"attack='fgsm' takes one step of size `epsilon`.*Received: {shown}"):
            R.RobustModel(inner(), "pgd", attack="fgsm", epsilon=0.1, **bad)
    robust = R.RobustModel(inner(), "alp", attack="fgsm", epsilon=0.1, preset="cifar10")  # preset step: PGD's
    config = robust.get_config()
    assert (config["num_steps"], config["step_size"]) == (None, None)
    settings = {k: v for k, v in config.items() if k != "model"}  # (the inner model's layer names change)

    def reloaded(cfg):
        return {k: v for k, v in R.RobustModel.from_config(cfg).get_config().items() if k != "model"}

    assert reloaded(json.loads(json.dumps(config))) == settings
    # a config written by an earlier release (PGD defaults stored for FGSM) still loads
    assert reloaded(dict(config, num_steps=10, step_size=0.0078)) == settings
    pgd = R.RobustModel(inner(), "pgd", epsilon=0.1, step_size=0.05)
    assert (pgd.num_steps, pgd.step_size) == (10, 0.05)
