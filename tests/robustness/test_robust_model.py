"""RobustModel: defenses through fit, loss values, tracing, save/load, bad input."""

import os

import keras
import numpy as np
import pytest

from tf_dlthesis import robustness as R


from _tiny_model import log_softmax as _log_softmax, tiny_classifier as _model


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(0)
    return rng.random((32, 6, 6, 1)).astype("float32"), (np.arange(32) % 5).astype("int64")



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
        # ratio = adversarial loss / pairing loss (thesis Sec. 3.5.2): pairing term = ce_ls / 0.5
        ("lrm", (("beta", 0.01), ("ratio", 0.5), ("mixing", None))): ce_ls + ce_ls / 0.5 + 0.01 * 2 * sq,
    }
    for (defense, params), want in cases.items():
        rm = R.RobustModel(inner, defense, epsilon=0.0, step_size=0.0, num_steps=1, **dict(params))
        loss, _, _ = rm.defense_loss(x, y, 0, training=False)
        np.testing.assert_allclose(float(loss), want, rtol=1e-4, err_msg=defense)
    assert entropy > 0  # h of LRM at identical logits is the entropy, scaled away by the ratio coefficient


def test_pgd_clean_weight_zero_trains_on_adversarial_only(data):
    x, y = data
    inner = _model()
    rm = R.RobustModel(inner, "pgd", clean_weight=0.0, epsilon=0.2, step_size=0.1, num_steps=2, seed=4)
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
    after_one = rm._attack_trace_count
    rm.fit(x, y, batch_size=16, epochs=3, verbose=0)
    assert after_one >= 1 and rm._attack_trace_count == after_one


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
    with pytest.raises(ValueError, match="clean_weight"):
        R.RobustModel(m, "pgd", clean_weight=1.5)
    with pytest.raises(ValueError, match="epsilon"):
        R.RobustModel(m, "pgd", epsilon=-0.1)
    with pytest.raises(ValueError, match="mixing"):
        R.RobustModel(m, "lrm", mixing="cutmix")
    with pytest.raises(TypeError, match="keras.Model"):
        R.RobustModel(lambda t: t, "pgd")


# --------------------------------------------------------------------------- issue 11 / 12
def _ce(z, y):
    return -_log_softmax(z)[np.arange(len(y)), y].mean()


@pytest.mark.parametrize("ratio,clean_weight", [(0.125, 0.0), (0.95, 0.0), (0.5, 0.3)])
def test_lrm_pairing_loss_is_adversarial_loss_over_ratio_per_batch(data, ratio, clean_weight):
    x, y = data
    rm = R.RobustModel(_model(), "lrm", epsilon=0.1, step_size=0.05, num_steps=2, ratio=ratio,
                       clean_weight=clean_weight)
    rm.compile(keras.optimizers.SGD(0.05), jit_compile=False)
    for start in (0, 16):
        rm.reset_metrics()
        logs = rm.train_on_batch(x[start:start + 16], y[start:start + 16], return_dict=True)
        training_loss = logs["adversarial_loss"] + logs.get("clean_loss", 0.0)     # Eq. 3.1
        assert logs["pairing_loss"] / training_loss == pytest.approx(1.0 / ratio, rel=1e-5)
        assert ("clean_loss" in logs) == (clean_weight > 0)
        total = training_loss + logs["pairing_loss"] + logs["logit_norm_loss"]
        assert logs["loss"] == pytest.approx(total, rel=1e-5)


def test_lrm_defaults_are_the_thesis_composition():
    p = R.RobustModel(_model(), "lrm").defense_params
    assert {k: p[k] for k in ("smoothing", "mixing", "beta", "ratio", "clean_weight", "h_gradient")} == {
        "smoothing": 0.1, "mixing": "vh_mixup", "beta": 1e-3, "ratio": 0.125, "clean_weight": 0.0,
        "h_gradient": "adversarial"}


def test_presets_are_the_thesis_settings():
    # Thesis Sec. 3.5.1-3.5.2
    assert set(R.PRESETS) == {"cifar10", "cifar100", "svhn"}
    lrm = {name: dict(R.PRESETS[name]["lrm"]) for name in R.PRESETS}
    assert lrm["cifar10"] == {"clean_weight": 0.0, "smoothing": 0.1, "mixing": "vh_mixup", "beta": 1e-3,
                              "ratio": 0.125}
    assert lrm["cifar100"] == {"clean_weight": 0.0, "smoothing": 0.1, "mixing": "vh_mixup", "beta": 3e-5,
                               "ratio": 0.95}
    assert lrm["svhn"] == {"clean_weight": 0.0, "smoothing": 0.2, "mixing": "mixup", "beta": 1e-4, "ratio": 0.95}
    assert R.PRESETS["cifar10"]["alp"]["pairing_weight"] == 0.5
    assert R.PRESETS["cifar100"]["alp"]["pairing_weight"] == 5.0
    assert R.PRESETS["svhn"]["attack"]["epsilon"] == pytest.approx(12 / 255)
    with pytest.raises(TypeError):
        R.PRESETS["cifar10"]["lrm"]["beta"] = 1.0          # read-only


def test_preset_with_overrides():
    m = _model()
    rm = R.RobustModel(m, "lrm", preset="cifar100", beta=1e-4)
    assert rm.defense_params["beta"] == 1e-4 and rm.defense_params["ratio"] == 0.95
    assert rm.defense_params["mixing"] == "vh_mixup" and (rm.epsilon, rm.step_size) == (0.03, 0.0078)
    svhn = R.RobustModel(m, "lrm", preset="svhn", epsilon=0.1, mixing=None)
    assert svhn.epsilon == 0.1 and svhn.step_size == pytest.approx(3 / 255)
    assert svhn.defense_params["smoothing"] == 0.2 and svhn.defense_params["mixing"] is None
    alp = R.RobustModel(m, "alp", preset="cifar100")
    assert alp.defense_params["pairing_weight"] == 5.0 and alp.defense_params["clean_weight"] == 0.0
    assert R.RobustModel(m, "none", preset="cifar10").defense_params["smoothing"] == 0.0
    again = R.RobustModel.from_config(rm.get_config())
    assert again.defense_params == rm.defense_params and again.preset == "cifar100"


def test_unknown_preset_and_bad_ratio():
    m = _model()
    with pytest.raises(ValueError, match="cifar10.*cifar100.*svhn"):
        R.RobustModel(m, "lrm", preset="imagenet")
    for ratio in (0.0, -1.0):
        with pytest.raises(ValueError, match=f"ratio={ratio}"):
            R.RobustModel(m, "lrm", ratio=ratio)
    with pytest.raises(ValueError, match="h_gradient"):
        R.RobustModel(m, "lrm", h_gradient="clean")
    with pytest.raises(ValueError, match="class_reduction"):
        R.RobustModel(m, "alp", class_reduction="max")


def test_alp_default_pairing_is_kannan_mean(data):
    """total = CE(adv) + 0.5 * mean over all B*C logits of (f(x) - f(g(x)))^2 (Kannan et al.'s code)."""
    x, y = data
    inner = _model()
    for class_reduction, scale in ((None, 1.0 / 5), ("sum", 1.0)):
        rm = R.RobustModel(inner, "alp", clean_weight=0.0, epsilon=0.2, step_size=0.1, num_steps=2, seed=3,
                           class_reduction=class_reduction)
        loss, _, _ = rm.defense_loss(x, y, 7, training=False)
        adv = rm.adversarial_examples(x, y, _seed(3, 7))
        zc, za = inner(x, training=False).numpy(), inner(adv, training=False).numpy()
        want = _ce(za, y) + 0.5 * scale * ((zc.astype(np.float64) - za) ** 2).sum(-1).mean()
        np.testing.assert_allclose(float(loss), want, rtol=1e-5)


def test_history_carries_the_loss_terms_and_evaluate_uses_plain_cross_entropy(data):
    x, y = data
    rm = R.RobustModel(_model(), "lrm", epsilon=0.1, step_size=0.05, num_steps=1)
    rm.compile(keras.optimizers.SGD(0.05), metrics=["accuracy"], jit_compile=False)
    hist = rm.fit(x, y, batch_size=16, epochs=1, verbose=0).history
    assert set(hist) == {"loss", "accuracy", "adversarial_loss", "pairing_loss", "logit_norm_loss"}
    assert {"adversarial_loss", "pairing_loss", "logit_norm_loss"} <= {m.name for m in rm.metrics}
    ev = rm.evaluate(x, y, verbose=0, return_dict=True)
    assert set(ev) == {"loss", "accuracy"}
    z = rm.model(x, training=False).numpy()
    assert ev["loss"] == pytest.approx(_ce(z, y), rel=1e-5)                  # no smoothing
    assert ev["accuracy"] == pytest.approx((z.argmax(-1) == y).mean())
    ls = R.RobustModel(_model(), "label_smoothing", smoothing=0.5)
    ls.compile(keras.optimizers.SGD(0.0), jit_compile=False)
    z = ls.model(x, training=False).numpy()
    assert ls.evaluate(x, y, verbose=0, return_dict=True)["loss"] == pytest.approx(_ce(z, y), rel=1e-5)


def test_pgd_only_adversarial_logs_no_clean_term(data):
    x, y = data
    rm = R.RobustModel(_model(), "pgd", clean_weight=0.0, epsilon=0.1, step_size=0.05, num_steps=1,
                       squeeze_weight=0.01)
    rm.compile(keras.optimizers.SGD(0.05), jit_compile=False)
    logs = rm.train_on_batch(x, y, return_dict=True)
    assert set(logs) == {"loss", "adversarial_loss", "squeezing_loss"}
    assert logs["loss"] == pytest.approx(logs["adversarial_loss"] + logs["squeezing_loss"], rel=1e-5)


def test_compute_loss_keras_api(data):
    x, y = data
    inner = _model()
    rm = R.RobustModel(inner, "lrm", epsilon=0.1, step_size=0.05, num_steps=1, mixing=None)
    want, _, _ = rm.defense_loss(x, y, 0, training=True)
    np.testing.assert_allclose(float(rm.compute_loss(x, y)), float(want), rtol=1e-5)   # forward passes inside
    z = inner(x, training=False)
    assert float(rm.compute_loss(x, y, z, training=False)) == pytest.approx(_ce(z.numpy(), y), rel=1e-5)
    with pytest.raises(ValueError, match="adversarial logits"):
        rm.compute_loss(x, y, z)
    sq = R.RobustModel(inner, "logit_squeezing", squeeze_weight=0.5)
    want = _ce(z.numpy(), y) + 0.5 * (z.numpy().astype(np.float64) ** 2).sum(-1).mean()
    assert float(sq.compute_loss(x, y, z)) == pytest.approx(want, rel=1e-5)


def test_sample_weights_weight_the_terms(data):
    x, y = data
    inner = _model()
    rm = R.RobustModel(inner, "logit_squeezing", squeeze_weight=0.5)
    z = inner(x, training=False).numpy().astype(np.float64)
    w = (np.arange(32) % 2).astype(np.float32)
    per = -_log_softmax(z)[np.arange(32), y] + 0.5 * (z ** 2).sum(-1)
    got = float(rm.compute_loss(x, y, z.astype(np.float32), sample_weight=w))
    assert got == pytest.approx((per * w).sum() / 32, rel=1e-5)               # Keras "sum_over_batch_size"


def test_deprecated_alpha_and_pairing_reduction(data):
    m = _model()
    with pytest.warns(DeprecationWarning, match="clean_weight"):
        rm = R.RobustModel(m, "pgd", alpha=0.25)
    assert rm.defense_params["clean_weight"] == 0.25
    config = rm.get_config()
    assert config["clean_weight"] == 0.25 and "alpha" not in config
    with pytest.warns(DeprecationWarning, match="class_reduction"):
        rm = R.RobustModel(m, "alp", pairing_reduction="sum")
    assert rm.defense_params["class_reduction"] == "sum" and "pairing_reduction" not in rm.get_config()
    with pytest.raises(ValueError, match="not both"):
        R.RobustModel(m, "pgd", alpha=0.25, clean_weight=0.5)
    # a config saved before the rename still loads
    old = {**R.RobustModel(m, "alp").get_config(), "alpha": 0.1, "pairing_reduction": "sum"}
    del old["clean_weight"], old["class_reduction"], old["preset"]
    with pytest.warns(DeprecationWarning):
        again = R.RobustModel.from_config(old)
    assert again.defense_params["clean_weight"] == 0.1 and again.defense_params["class_reduction"] == "sum"
    with pytest.warns(DeprecationWarning, match="test-only"):
        assert again.attack_trace_count == 0


def test_seed_none_draws_a_fresh_seed():
    m = _model()
    seeds = {R.RobustModel(m, "pgd", seed=None).seed for _ in range(3)}
    assert len(seeds) > 1 and all(isinstance(s, int) for s in seeds)
    assert R.RobustModel(m, "pgd", seed=5).seed == 5
    with pytest.raises(TypeError, match="seed"):
        R.RobustModel(m, "pgd", seed=1.5)


def test_training_attacks_are_private():
    from tf_dlthesis.robustness import robust_model
    assert not hasattr(robust_model, "ATTACKS") and robust_model._TRAIN_ATTACKS == ("pgd", "fgsm")
    assert "pgd10" in R.ATTACK_NAMES
