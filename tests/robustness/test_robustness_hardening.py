"""Issue 15 (hardening): bad inputs to the robustness API fail with one clear error
naming the argument, checked once at the API boundary; attacks trace once per shape."""

import warnings

import keras
import numpy as np
import pytest
import tensorflow as tf

from tf_dlthesis import robustness as R
from tf_dlthesis.robustness.losses import label_smoothing_cross_entropy, smoothed_targets

from _tiny_model import tiny_classifier


@pytest.fixture(scope="module")
def model():
    return tiny_classifier()


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(0)
    return rng.uniform(size=(10, 6, 6, 1)).astype(np.float32), np.arange(10) % 5


# ---------------------------------------------------------------- losses
def test_smoothed_targets_rejects_out_of_range_labels():
    # before: rows of s/(C-1) = 0.0111 everywhere, no true class
    with pytest.raises(ValueError, match=r"`y_true`.*outside \[0, 9\].*\[-1, 12\]"):
        smoothed_targets([12, -1], 10, 0.1)
    # the thesis's Eq. 3.8 on valid labels: 1 - s on the true class, s / (C - 1) elsewhere
    np.testing.assert_allclose(smoothed_targets([2], 3, 0.2).numpy(), [[0.1, 0.1, 0.8]], rtol=1e-6)


def test_label_smoothing_rejects_soft_labels_of_the_wrong_width():
    # before: (B, 4) one-hot labels for 3 logits were re-read as 4 sparse labels
    with pytest.raises(ValueError, match=r"`y_true`.*\(B, 3\).*y_true.shape=\(2, 4\)"):
        label_smoothing_cross_entropy(np.eye(4, dtype=np.float32)[[0, 1]], np.zeros((2, 3), np.float32))
    with pytest.raises(ValueError, match="`y_true`"):
        R.LabelSmoothingCrossEntropy(0.1)(np.eye(4, dtype=np.float32)[[0, 1]], np.zeros((2, 3), np.float32))
    # (B, 1) column labels stay sparse: CE of uniform logits is log(3)
    loss = label_smoothing_cross_entropy([[1], [2]], np.zeros((2, 3), np.float32), 0.0).numpy()
    np.testing.assert_allclose(loss, [np.log(3.0)] * 2, rtol=1e-6)


def test_label_smoothing_check_numerics():
    logits = np.array([[0.0, np.nan, 1.0]], np.float32)
    with pytest.raises(tf.errors.InvalidArgumentError, match="`y_pred` has NaN"):
        label_smoothing_cross_entropy([0], logits, 0.1, check_numerics=True)
    assert np.isnan(label_smoothing_cross_entropy([0], logits, 0.1).numpy()).all()   # off by default
    loss = R.LabelSmoothingCrossEntropy(0.1, check_numerics=True)
    assert keras.losses.deserialize(keras.losses.serialize(loss)).check_numerics is True


# ---------------------------------------------------------------- attacks
def test_attacks_reject_empty_batches_and_bad_labels(model, data):
    x, y = data
    with pytest.raises(ValueError, match="`x` is an empty batch"):
        R.fgsm(model, x[:0], epsilon=0.1)
    with pytest.raises(ValueError, match="`x` is an empty batch"):
        R.pgd(model, x[:0], y[:0], epsilon=0.1, step_size=0.05, num_steps=2)
    with pytest.raises(ValueError, match=r"`y` has labels outside \[0, 4\].*\[-3, 7\]"):
        R.pgd(model, x[:4], [0, 7, -3, 1], epsilon=0.1, step_size=0.05, num_steps=2, seed=0)
    with pytest.raises(ValueError, match=r"`y` must have 5 columns"):
        R.fgsm(model, x[:2], np.eye(3, dtype=np.float32)[[0, 1]], epsilon=0.1)
    with pytest.raises(ValueError, match=r"`y` has labels outside"):
        R.make_attack("pgd2", epsilon=0.1, step_size=0.05)(model, x[:2], [0, 5], seed=0)


def test_compiled_attack_traces_once_per_shape(data):
    x, y = data
    model = tiny_classifier(1)
    attack = R.make_attack("pgd3", epsilon=0.1, step_size=0.05)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        attack(model, x[:4], y[:4], seed=0)
        fn = attack._compiled(model, tf.constant(x[:4]), tf.constant(y[:4], tf.int64))
        assert fn.experimental_get_tracing_count() == 1
        for n, seed in ((4, 1), (3, None), (10, [2, 3]), (4, 5), (7, 6), (2, 7), (9, 8)):
            attack(model, x[:n], y[:n].astype(np.int32), seed=seed)   # other batch sizes, seeds, int32
        assert fn.experimental_get_tracing_count() == 1
        attack(model, x[:4], np.eye(5, dtype=np.float32)[y[:4]], seed=0)   # one-hot: its own function
        attack(model, x[:4], np.eye(5, dtype=np.float32)[y[:4]], seed=1)
        soft = attack._compiled(model, tf.constant(x[:4]), tf.constant(np.eye(5, dtype=np.float32)[y[:4]]))
        assert soft is not fn and soft.experimental_get_tracing_count() == 1
    assert not [w for w in caught if "retracing" in str(w.message)]


def test_pgd_step_counts_share_one_compiled_function(data):
    x, y = data
    model = tiny_classifier(1)
    attacks = [R.make_attack(f"pgd{n}", epsilon=0.1, step_size=0.03) for n in (2, 5, 30)]
    images = [np.asarray(a(model, x[:6], y[:6], seed=4)) for a in attacks]
    fn = attacks[0]._compiled(model, tf.constant(x[:6]), tf.constant(y[:6], tf.int64))
    assert attacks[2]._compiled(model, tf.constant(x[:6]), tf.constant(y[:6], tf.int64)) is fn
    assert fn.experimental_get_tracing_count() == 1               # one trace for 2, 5 and 30 steps
    for a, got in zip(attacks, images):                            # each is its own number of steps
        want = R.pgd(model, x[:6], y[:6], epsilon=0.1, step_size=0.03, num_steps=a.num_steps, seed=4)
        np.testing.assert_array_equal(got, want.numpy())
    assert not np.array_equal(images[0], images[2])
    with pytest.raises(ValueError, match="scalar integer tensor"):
        R.pgd(model, x[:2], y[:2], epsilon=0.1, step_size=0.03, num_steps=tf.constant([1, 2]))
    with pytest.raises(TypeError, match="`num_steps` must be an int or a scalar integer tensor"):
        R.pgd(model, x[:2], y[:2], epsilon=0.1, step_size=0.03, num_steps=tf.constant(2.0))


# ---------------------------------------------------------------- evaluation
def test_evaluate_white_box_bad_inputs(model, data):
    x, y = data
    with pytest.raises(ValueError, match=r"`dataset` has labels outside \[0, 4\].*\[9\]"):
        R.evaluate_white_box(model, (x[:3], np.array([0, 9, 1])), ["natural", "fgsm"])
    with pytest.raises(ValueError, match="`batch_size` must be an int >= 1. Received: batch_size=0"):
        R.evaluate_white_box(model, (x, y), ["natural"], batch_size=0)
    with pytest.raises(ValueError, match="`dataset` is empty"):
        R.evaluate_white_box(model, tf.data.Dataset.from_tensor_slices((x[:0], y[:0])), ["natural"])
    with pytest.raises(ValueError, match="`dataset` is empty"):
        R.evaluate_white_box(model, (x[:0], y[:0]), ["natural"])
    # before: {'natural': nan}
    with pytest.raises(ValueError, match=r"`sample\['natural'\]` must be an int >= 1 \(an empty sample has no "
                                         r"accuracy\)\. Received: sample\['natural'\]=0"):
        R.evaluate_white_box(model, (x, y), ["natural"], sample={"natural": 0})
    with pytest.raises(TypeError, match=r"Received: sample\['natural'\]=0\.5"):
        R.evaluate_white_box(model, (x, y), ["natural"], sample={"natural": 0.5})
    with pytest.raises(ValueError, match="`batch_size`"):
        R.black_box_matrix({"m": model}, (x, y), batch_size=0)


def test_logit_statistics_bad_inputs(model, data):
    x, y = data
    with pytest.raises(ValueError, match=r"`bins`.*Received: bins=0"):
        R.logit_statistics(model, (x, y), bins=0)
    with pytest.raises(ValueError, match="`value_range`"):
        R.logit_statistics(model, (x, y), value_range=(1.0, -1.0))
    stats = R.logit_statistics(model, (x, y), bins=4, value_range=(-1.0, 1.0))
    assert stats["histogram"].shape == (4,)
    np.testing.assert_allclose(stats["bin_edges"], [-1.0, -0.5, 0.0, 0.5, 1.0])


# ---------------------------------------------------------------- RobustModel
def test_robust_model_checks_labels_once_at_fit(data):
    x, y = data
    robust = R.RobustModel(tiny_classifier(2), "pgd", num_steps=1)
    robust.compile("sgd")
    with pytest.raises(ValueError, match=r"`y` has labels outside \[0, 4\].*\[5, 11\]"):
        robust.fit(x[:4], np.array([0, 5, 11, 1]), verbose=0)
    with pytest.raises(ValueError, match=r"`y` must have 5 columns"):
        robust.fit(x[:2], np.eye(3, dtype=np.float32)[[0, 1]], verbose=0)
    ds = tf.data.Dataset.from_tensor_slices((x[:4], np.eye(3, dtype=np.float32)[[0, 1, 2, 0]])).batch(2)
    with pytest.raises(ValueError, match=r"labels `y` must have 5 columns.*\(None, 3\)"):
        robust.fit(ds, verbose=0)
    with pytest.raises(ValueError, match=r"`y` has labels outside"):
        robust.evaluate(x[:4], np.array([0, 5, 1, 1]), verbose=0)
    hist = robust.fit(x[:4], y[:4], batch_size=2, epochs=1, verbose=0)
    assert np.isfinite(hist.history["loss"][0])


def test_robust_model_check_numerics(data):
    x, y = data
    robust = R.RobustModel(tiny_classifier(3), "label_smoothing", check_numerics=True)
    robust.compile("sgd")
    bad = x[:4].copy()
    bad[0, 0, 0, 0] = np.nan
    with pytest.raises(tf.errors.InvalidArgumentError, match="images `x` have NaN"):
        robust.fit(bad, y[:4], verbose=0)
    restored = R.RobustModel.from_config(robust.get_config())
    assert restored.check_numerics is True
    with pytest.raises(TypeError, match="check_numerics"):
        R.RobustModel(tiny_classifier(3), "none", check_numerics="on")
