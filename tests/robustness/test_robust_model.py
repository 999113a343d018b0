"""RobustModel: defenses through fit, loss values, tracing, save/load, bad input."""

import os

import keras
import numpy as np
import pytest

from tf_dlthesis import robustness as R


from _tiny_model import tiny_classifier as _model


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(0)
    return rng.random((32, 6, 6, 1)).astype("float32"), (np.arange(32) % 5).astype("int64")


def _log_softmax(z):
    z = np.asarray(z, np.float64)
    return z - np.log(np.exp(z).sum(-1, keepdims=True))


@pytest.mark.parametrize("defense", R.DEFENSES)
def test_every_defense_fits(defense, data):
    x, y = data
    rm = R.RobustModel(_model(), defense, epsilon=0.1, step_size=0.05, num_steps=2)
    rm.compile(keras.optimizers.SGD(0.05), metrics=["accuracy"], jit_compile=False)
    hist = rm.fit(x, y, batch_size=16, epochs=1, verbose=0).history
    assert np.isfinite(hist["loss"][0]) and "accuracy" in hist


def test_loss_values_match_hand_computation_at_zero_epsilon(data):
    """With epsilon = 0 the adversarial batch is the clean batch, so every loss has a closed form."""
    x, y = data
    inner = _model()
    z = inner(x, training=False).numpy()
    ls = _log_softmax(z)
    ce = -ls[np.arange(len(y)), y].mean()
    t = np.full((len(y), 5), 0.1 / 4)
    t[np.arange(len(y)), y] = 0.9
    ce_ls = -(t * ls).sum(-1).mean()
    sq = (z.astype(np.float64) ** 2).sum(-1).mean()
    entropy = -(np.exp(ls) * ls).sum(-1).mean()
    cases = {
        ("pgd", ()): ce,
        ("alp", (("pairing_weight", 3.0),)): ce,  # pairing term vanishes
        ("logit_squeezing", (("squeeze_weight", 0.5),)): ce + 0.5 * sq,
        ("label_smoothing", (("smoothing", 0.1),)): ce_ls,
        ("lrm", (("beta", 0.01), ("ratio", 0.5))): ce_ls + 0.5 * ce_ls + 0.01 * 2 * sq,
    }
    for (defense, params), want in cases.items():
        rm = R.RobustModel(inner, defense, epsilon=0.0, step_size=0.0, num_steps=1, **dict(params))
        loss, _, _ = rm.defense_loss(x, y, 0, training=False)
        np.testing.assert_allclose(float(loss), want, rtol=1e-4, err_msg=defense)
    assert entropy > 0  # h of LRM at identical logits is the entropy, scaled away by the ratio coefficient


def test_pgd_alpha_zero_trains_on_adversarial_only(data):
    x, y = data
    inner = _model()
    rm = R.RobustModel(inner, "pgd", alpha=0.0, epsilon=0.2, step_size=0.1, num_steps=2, seed=4)
    loss, logits, _ = rm.defense_loss(x, y, 5, training=False)
    adv = rm.adversarial_examples(x, y, _seed(4, 5))
    z = inner(adv, training=False).numpy()
    want = -_log_softmax(z)[np.arange(len(y)), y].mean()
    np.testing.assert_allclose(float(loss), want, rtol=1e-5)


def _seed(seed, step):
    import tensorflow as tf
    base = tf.random.experimental.stateless_fold_in(tf.constant([seed, 0], tf.int64), step)
    return tf.unstack(tf.random.experimental.stateless_split(base, 3))[1]


def test_attack_traced_once_across_epochs(data):
    x, y = data
    rm = R.RobustModel(_model(), "alp", epsilon=0.1, step_size=0.05, num_steps=2)
    rm.compile(keras.optimizers.SGD(0.05), jit_compile=False)
    rm.fit(x, y, batch_size=16, epochs=1, verbose=0)
    after_one = rm.attack_trace_count
    rm.fit(x, y, batch_size=16, epochs=3, verbose=0)
    assert after_one >= 1 and rm.attack_trace_count == after_one


def test_save_and_load_roundtrip(data, tmp_path):
    x, y = data
    rm = R.RobustModel(_model(), "lrm", epsilon=0.1, step_size=0.05, num_steps=2, beta=0.002, ratio=0.3)
    rm.compile(keras.optimizers.SGD(0.05), jit_compile=False)
    rm.fit(x, y, batch_size=16, epochs=1, verbose=0)
    path = os.path.join(tmp_path, "robust.keras")
    rm.save(path)
    again = keras.models.load_model(path)
    assert isinstance(again, R.RobustModel) and again.defense == "lrm"
    assert again.defense_params["ratio"] == 0.3 and again.epsilon == 0.1
    np.testing.assert_allclose(again.predict(x, verbose=0), rm.predict(x, verbose=0), rtol=1e-5, atol=1e-6)
    ev = again.evaluate(x, y, verbose=0, return_dict=True)
    assert np.isfinite(ev["loss"])


def test_vh_mixup_option(data):
    pytest.importorskip("tf_dlthesis.augment")
    x, y = data
    rm = R.RobustModel(_model(), "lrm", epsilon=0.1, step_size=0.05, num_steps=1, mixing="vh_mixup")
    rm.compile(keras.optimizers.SGD(0.05), metrics=["accuracy"], jit_compile=False)
    assert np.isfinite(rm.fit(x, y, batch_size=16, epochs=1, verbose=0).history["loss"][0])


def test_robust_model_bad_input():
    m = _model()
    with pytest.raises(ValueError, match="Unknown defense"):
        R.RobustModel(m, "trades")
    with pytest.raises(ValueError, match="Unknown attack"):
        R.RobustModel(m, "pgd", attack="cw")
    with pytest.raises(ValueError, match="does not take"):
        R.RobustModel(m, "none", pairing_weight=1.0)
    with pytest.raises(ValueError, match="step_size"):
        R.RobustModel(m, "pgd", epsilon=0.01, step_size=0.1)
    with pytest.raises(ValueError, match="alpha"):
        R.RobustModel(m, "pgd", alpha=1.5)
    with pytest.raises(ValueError, match="epsilon"):
        R.RobustModel(m, "pgd", epsilon=-0.1)
    with pytest.raises(ValueError, match="mixing"):
        R.RobustModel(m, "lrm", mixing="cutmix")
    with pytest.raises(TypeError, match="keras.Model"):
        R.RobustModel(lambda t: t, "pgd")
