"""Chapter 3 losses against hand-computed values (thesis Eqs. 3.8, 3.9, 3.11)."""

import keras
import numpy as np
import pytest

from _tiny_model import log_softmax as _log_softmax

from tf_dlthesis import robustness as R


def test_smoothed_targets_eq_3_8():
    t = R.smoothed_targets(np.array([2, 0]), 4, 0.3).numpy()
    np.testing.assert_allclose(t, [[0.1, 0.1, 0.7, 0.1], [0.7, 0.1, 0.1, 0.1]], rtol=1e-6)


def test_label_smoothing_cross_entropy_hand_computed():
    logits = np.array([[2.0, 0.0, 0.0], [0.0, 1.0, 3.0]], np.float32)
    want = -(np.array([[0.8, 0.1, 0.1], [0.1, 0.1, 0.8]]) * _log_softmax(logits)).sum(-1)
    sparse = R.label_smoothing_cross_entropy(np.array([0, 2]), logits, smoothing=0.2).numpy()
    onehot = R.label_smoothing_cross_entropy(np.eye(3)[[0, 2]], logits, smoothing=0.2).numpy()
    np.testing.assert_allclose(sparse, want, rtol=1e-5)
    np.testing.assert_allclose(onehot, want, rtol=1e-5)
    loss = R.LabelSmoothingCrossEntropy(0.2)
    np.testing.assert_allclose(float(loss(np.array([0, 2]), logits)), want.mean(), rtol=1e-5)
    # Keras's own label_smoothing uses s/C on every class: a different number
    keras_value = float(keras.losses.CategoricalCrossentropy(from_logits=True, label_smoothing=0.2)(
        np.eye(3)[[0, 2]], logits))
    assert abs(keras_value - want.mean()) > 1e-3


def test_label_smoothing_probabilities_input():
    probs = np.array([[0.7, 0.2, 0.1]], np.float32)
    want = -(np.array([0.9, 0.05, 0.05]) * np.log(probs[0])).sum()
    got = R.label_smoothing_cross_entropy([0], probs, smoothing=0.1, from_logits=False).numpy()
    np.testing.assert_allclose(got, [want], rtol=1e-5)


def test_soft_labels_are_smoothed_linearly():
    y = np.array([[0.5, 0.5, 0.0]], np.float32)
    t = R.smoothed_targets(y, 3, 0.2).numpy()
    np.testing.assert_allclose(t, [[0.45, 0.45, 0.1]], rtol=1e-6)


def test_logit_pairing_and_squeezing_hand_computed():
    a = np.array([[1.0, 2.0], [3.0, 4.0]], np.float32)
    b = np.array([[0.0, 0.0], [1.0, 1.0]], np.float32)
    np.testing.assert_allclose(R.logit_pairing(a, b, class_reduction="sum").numpy(), [5.0, 13.0])
    np.testing.assert_allclose(R.logit_pairing(a, b, class_reduction="mean").numpy(), [2.5, 6.5])
    np.testing.assert_allclose(R.logit_squeezing(a).numpy(), [5.0, 25.0])
    np.testing.assert_allclose(float(R.LogitPairing(class_reduction="sum")(a, b)), 9.0)
    np.testing.assert_allclose(float(R.LogitSqueezing()(np.zeros_like(a), a)), 15.0)


def test_decoupled_logit_pairing_eq_3_11():
    a = np.array([[1.0, -1.0, 0.5]], np.float32)
    b = np.array([[0.0, 2.0, -0.5]], np.float32)
    p = np.exp(_log_softmax(a))
    h = -(p * _log_softmax(b)).sum(-1)
    want = h + 0.1 * ((a ** 2).sum() + (b ** 2).sum())
    np.testing.assert_allclose(R.decoupled_logit_pairing(a, b, beta=0.1).numpy(), want, rtol=1e-5)
    np.testing.assert_allclose(float(R.DecoupledLogitPairing(beta=0.1)(a, b)), want[0], rtol=1e-5)


@pytest.mark.parametrize("cls,kwargs", [(R.LabelSmoothingCrossEntropy, {"smoothing": 0.3}),
                                        (R.LogitPairing, {"class_reduction": "mean"}),
                                        (R.DecoupledLogitPairing, {"beta": 0.01})])
def test_losses_serialize(cls, kwargs):
    loss = cls(**kwargs)
    again = keras.losses.deserialize(keras.losses.serialize(loss))
    assert type(again) is cls
    for k, v in kwargs.items():
        assert getattr(again, k) == v


def test_loss_bad_input():
    with pytest.raises(ValueError, match="smoothing"):
        R.LabelSmoothingCrossEntropy(1.5)
    with pytest.raises(ValueError, match="smoothing"):
        R.smoothed_targets([0], 3, 0.9)  # > 1 - 1/C
    with pytest.raises(ValueError, match="same shape"):
        R.logit_pairing(np.zeros((2, 3)), np.zeros((2, 4)))
    with pytest.raises(ValueError, match="class_reduction"):
        R.logit_squeezing(np.zeros((2, 3)), class_reduction="max")
    with pytest.raises(ValueError, match="beta"):
        R.decoupled_logit_pairing(np.zeros((2, 3)), np.zeros((2, 3)), beta=-1.0)


# --------------------------------------------------------------------------- ALP reduction (issue 11)
_A = np.array([[1.0, 2.0, 3.0], [0.0, -1.0, 4.0]], np.float32)
_B = np.array([[0.0, 0.0, 0.0], [1.0, 1.0, 1.0]], np.float32)


def test_alp_default_is_kannan_mean_squared_error():
    """Kannan et al.: tf.losses.mean_squared_error(clean, adv, weights=w) = w * mean over all B*C elements."""
    sq = (_A - _B) ** 2                      # [[1, 4, 9], [1, 4, 9]]
    kannan = 0.5 * sq.mean()                 # 0.5 * 28 / 6
    assert kannan == pytest.approx(0.5 * 28 / 6)
    np.testing.assert_allclose(R.logit_pairing(_A, _B).numpy(), [14 / 3, 14 / 3], rtol=1e-6)
    np.testing.assert_allclose(0.5 * float(R.LogitPairing()(_A, _B)), kannan, rtol=1e-6)


def test_alp_sum_option_is_the_per_example_squared_norm():
    np.testing.assert_allclose(R.logit_pairing(_A, _B, class_reduction="sum").numpy(), [14.0, 14.0])
    np.testing.assert_allclose(float(R.LogitPairing("sum")(_A, _B)), 14.0)
    assert R.LogitPairing().class_reduction == "mean" and R.LogitSqueezing().class_reduction == "sum"


# --------------------------------------------------------------------------- h and the ratio (issue 11)
def test_h_has_no_gradient_into_clean_logits_by_default():
    import tensorflow as tf
    a = tf.constant([[1.0, -1.0, 0.5], [0.2, 0.1, -0.3]])
    b = tf.constant([[0.0, 2.0, -0.5], [1.0, -1.0, 0.0]])
    for fn in (lambda c, d: R.pairing_cross_entropy(c, d),
               lambda c, d: R.decoupled_logit_pairing(c, d, beta=0.0),
               lambda c, d: 2.0 * R.DecoupledLogitPairing(beta=0.0)(c, d)):   # batch mean of 2
        with tf.GradientTape(persistent=True) as tape:
            tape.watch([a, b])
            loss = tf.reduce_sum(fn(a, b))
        g_clean, g_adv = tape.gradient(loss, [a, b])
        assert g_clean is None or np.all(g_clean.numpy() == 0.0)
        # d/d adv of -sum p_clean log softmax(adv) = softmax(adv) - p_clean
        p = np.exp(_log_softmax(a.numpy()))
        q = np.exp(_log_softmax(b.numpy()))
        np.testing.assert_allclose(g_adv.numpy(), q - p, atol=1e-6)


def test_symmetric_h_option_has_gradient_into_clean_logits():
    import tensorflow as tf
    a = tf.constant([[1.0, -1.0, 0.5]])
    b = tf.constant([[0.0, 2.0, -0.5]])
    with tf.GradientTape() as tape:
        tape.watch(a)
        loss = tf.reduce_sum(R.pairing_cross_entropy(a, b, h_gradient="both"))
    g = tape.gradient(loss, a).numpy()
    # d/da of -sum softmax(a) * l with l = log softmax(b): -p * (l - sum p l)
    p, log_q = np.exp(_log_softmax(a.numpy())), _log_softmax(b.numpy())
    np.testing.assert_allclose(g, -p * (log_q - (p * log_q).sum(-1, keepdims=True)), atol=1e-6)
    assert np.abs(g).max() > 1e-3
    # the value is the same either way
    np.testing.assert_allclose(R.pairing_cross_entropy(a, b, h_gradient="both").numpy(),
                               R.pairing_cross_entropy(a, b).numpy())


def test_scale_to_ratio_value_and_gradient():
    import tensorflow as tf
    h = tf.Variable(2.0)
    adv_loss = tf.constant(1.5)
    for ratio in (0.125, 0.95):
        with tf.GradientTape() as tape:
            term = R.scale_to_ratio(h, adv_loss, ratio)
        assert float(term) == pytest.approx(1.5 / ratio)          # pairing = adversarial loss / ratio
        assert float(tape.gradient(term, h)) == pytest.approx(1.5 / (ratio * 2.0))


def test_decoupled_terms_hand_computed():
    a = np.array([[1.0, -1.0, 0.5], [0.0, 0.3, 0.2]], np.float32)
    b = np.array([[0.0, 2.0, -0.5], [0.4, 0.1, 0.0]], np.float32)
    pairing = R.DecoupledLogitPairing(beta=1e-3, ratio=0.95)
    terms = pairing.terms(a, b, adversarial_loss=2.0)
    assert float(terms["pairing_loss"]) == pytest.approx(2.0 / 0.95, rel=1e-6)
    norms = ((a ** 2).sum(-1) + (b ** 2).sum(-1)).mean()
    assert float(terms["logit_norm_loss"]) == pytest.approx(1e-3 * norms, rel=1e-5)
    h = -(np.exp(_log_softmax(a)) * _log_softmax(b)).sum(-1).mean()
    assert float(R.DecoupledLogitPairing(beta=0.0, ratio=None).terms(a, b, 2.0)["pairing_loss"]) == \
        pytest.approx(h, rel=1e-5)


@pytest.mark.parametrize("ratio", [0.0, -0.5])
def test_ratio_must_be_positive(ratio):
    with pytest.raises(ValueError, match=f"ratio={ratio}"):
        R.DecoupledLogitPairing(ratio=ratio)
    with pytest.raises(ValueError, match="ratio"):
        R.scale_to_ratio(1.0, 1.0, ratio)


def test_h_gradient_and_class_reduction_validation():
    with pytest.raises(ValueError, match="h_gradient"):
        R.pairing_cross_entropy(np.zeros((1, 3)), np.zeros((1, 3)), h_gradient="clean")
    with pytest.raises(ValueError, match="h_gradient"):
        R.DecoupledLogitPairing(h_gradient="symmetric")
    with pytest.raises(ValueError, match="class_reduction"):
        R.LogitPairing("max")
    with pytest.raises(ValueError, match="same shape"):
        R.LogitPairing()(np.zeros((2, 3)), np.zeros((2, 4)))


# --------------------------------------------------------------------------- deprecated names (issue 12)
def test_deprecated_reduction_keywords_still_work():
    with pytest.warns(DeprecationWarning, match="class_reduction"):
        got = R.logit_pairing(_A, _B, reduction="sum").numpy()
    np.testing.assert_allclose(got, [14.0, 14.0])
    with pytest.warns(DeprecationWarning, match="class_reduction"):
        got = R.logit_squeezing(_A, reduction="mean").numpy()
    np.testing.assert_allclose(got, [14 / 3, 17 / 3], rtol=1e-6)
    with pytest.warns(DeprecationWarning, match="class_reduction"):
        loss = R.LogitPairing(reduction_over_classes="sum")
    assert loss.class_reduction == "sum" and loss.get_config()["class_reduction"] == "sum"
    assert "reduction_over_classes" not in loss.get_config()
    with pytest.raises(ValueError, match="not both"):
        R.LogitPairing("mean", reduction_over_classes="sum")


def test_old_loss_config_with_reduction_over_classes_loads():
    old = {"name": "logit_pairing", "reduction": "sum_over_batch_size", "reduction_over_classes": "sum"}
    with pytest.warns(DeprecationWarning):
        loss = R.LogitPairing.from_config(old)
    assert loss.class_reduction == "sum"
    with pytest.warns(DeprecationWarning):
        sq = R.LogitSqueezing.from_config({**old, "name": "logit_squeezing", "reduction_over_classes": "mean"})
    assert sq.class_reduction == "mean"


def test_decoupled_loss_serializes_new_settings():
    loss = R.DecoupledLogitPairing(beta=3e-5, ratio=0.95, h_gradient="both", class_reduction="mean")
    again = keras.losses.deserialize(keras.losses.serialize(loss))
    assert (again.beta, again.ratio, again.h_gradient, again.class_reduction) == (3e-5, 0.95, "both", "mean")
