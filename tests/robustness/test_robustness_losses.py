"""Chapter 3 losses against hand-computed values (thesis Eqs. 3.8, 3.9, 3.11)."""

import keras
import numpy as np
import pytest

from tf_dlthesis import robustness as R


def _log_softmax(z):
    z = np.asarray(z, np.float64)
    return z - np.log(np.exp(z).sum(-1, keepdims=True))


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
    np.testing.assert_allclose(R.logit_pairing(a, b).numpy(), [5.0, 13.0])
    np.testing.assert_allclose(R.logit_pairing(a, b, reduction="mean").numpy(), [2.5, 6.5])
    np.testing.assert_allclose(R.logit_squeezing(a).numpy(), [5.0, 25.0])
    np.testing.assert_allclose(float(R.LogitPairing()(a, b)), 9.0)
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
                                        (R.LogitPairing, {"reduction_over_classes": "mean"}),
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
    with pytest.raises(ValueError, match="reduction"):
        R.logit_squeezing(np.zeros((2, 3)), reduction="max")
    with pytest.raises(ValueError, match="beta"):
        R.decoupled_logit_pairing(np.zeros((2, 3)), np.zeros((2, 3)), beta=-1.0)
