"""Labels and settings the robustness API used to mishandle: (N, 1) sparse labels, models whose
logit width Keras does not know (subclassed, unbuilt), SPSA's inputs, and argument conflicts.
Each test failed before its fix (the comment says how)."""

import warnings

import keras
import numpy as np
import pytest
import tensorflow as tf

from tf_dlthesis import robustness as R

from _tiny_model import tiny_classifier


class SubclassedNet(keras.Model):
    """tiny_classifier's layers as a subclassed model (Keras knows no output shape for it)."""

    def __init__(self):
        super().__init__()
        self.conv = keras.layers.Conv2D(4, 3, activation="relu")
        self.flat = keras.layers.Flatten()
        self.dense = keras.layers.Dense(5)

    def call(self, x, training=None):
        return self.dense(self.flat(self.conv(x)))


def _subclassed_copy(seed=0):
    """A subclassed model with exactly the weights of ``tiny_classifier(seed)``."""
    model = SubclassedNet()
    model(np.zeros((1, 6, 6, 1), np.float32))
    model.set_weights(tiny_classifier(seed).get_weights())
    return model


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(0)
    return rng.uniform(size=(8, 6, 6, 1)).astype(np.float32), np.arange(8) % 5


def _weights(robust):
    return np.concatenate([v.numpy().ravel() for v in robust.model.weights])


def _fit(inner, defense, x, y, **kwargs):
    pgd = {} if kwargs.get("attack") == "fgsm" else {"step_size": 0.05, "num_steps": 1}
    robust = R.RobustModel(inner, defense, epsilon=0.1, seed=0, **pgd, **kwargs)
    robust.compile(keras.optimizers.SGD(0.1), metrics=["accuracy"])
    if isinstance(x, tf.data.Dataset):
        hist = robust.fit(x, epochs=1, verbose=0, shuffle=False)
    else:
        hist = robust.fit(x, y, batch_size=4, epochs=1, verbose=0, shuffle=False)
    return robust, hist


# ---------------------------------------------------------------- (N, 1) sparse labels
def test_attacks_take_column_labels_as_sparse(data):
    # before: "One-hot/soft `y` must have 5 columns ... y.shape=(8, 1)" (SPSA: argmax of a column, class 0)
    x, y = data
    model = tiny_classifier(0)
    col = y[:, None]
    np.testing.assert_array_equal(R.fgsm(model, x, col, epsilon=0.1), R.fgsm(model, x, y, epsilon=0.1))
    kw = {"epsilon": 0.1, "step_size": 0.05, "num_steps": 2, "seed": 3}
    np.testing.assert_array_equal(R.pgd(model, x, col, **kw), R.pgd(model, x, y, **kw))
    attack = R.make_attack("pgd2", epsilon=0.1, step_size=0.05)
    np.testing.assert_array_equal(attack(model, x, col, seed=1), attack(model, x, y, seed=1))
    kw = {"epsilon": 0.1, "num_steps": 2, "spsa_samples": 4, "seed": 2}
    np.testing.assert_array_equal(R.spsa(model, x, col, **kw), R.spsa(model, x, y, **kw))
    with pytest.raises(ValueError, match=r"`y` has labels outside \[0, 4\].*\[7\]"):
        R.pgd(model, x[:2], np.array([[0], [7]]), epsilon=0.1, step_size=0.05, num_steps=1)


@pytest.mark.parametrize("defense, kwargs", [("pgd", {}), ("alp", {}), ("lrm", {"mixing": None}),
                                             ("pgd", {"attack": "fgsm"})])
def test_robust_model_trains_on_column_labels_as_on_sparse_ones(data, defense, kwargs):
    # before: the train step's attack raised "One-hot/soft `y` must have 5 columns ... y.shape=(4, 1)"
    x, y = data
    want, _ = _fit(tiny_classifier(1), defense, x, y, **kwargs)
    got, _ = _fit(tiny_classifier(1), defense, x, y[:, None], **kwargs)
    np.testing.assert_array_equal(_weights(got), _weights(want))
    ds = tf.data.Dataset.from_tensor_slices((x, y[:, None])).batch(4)
    from_ds, _ = _fit(tiny_classifier(1), defense, ds, None, **kwargs)
    np.testing.assert_array_equal(_weights(from_ds), _weights(want))


# ---------------------------------------------------------------- models without a known output shape
@pytest.mark.parametrize("source", ["arrays", "dataset"])
def test_lrm_mixing_trains_a_subclassed_inner_model(data, source):
    # before: AttributeError: 'Net' object has no attribute 'output_shape' (RobustModel._mix)
    x, y = data
    ds = tf.data.Dataset.from_tensor_slices((x, y)).batch(4)
    want, _ = _fit(tiny_classifier(2), "lrm", x, y)
    got, hist = _fit(_subclassed_copy(2), "lrm", ds if source == "dataset" else x, y)
    assert np.isfinite(hist.history["loss"][0])
    np.testing.assert_allclose(_weights(got), _weights(want), rtol=1e-6, atol=1e-7)


def test_lrm_mixing_trains_an_unbuilt_sequential(data):
    # before: AttributeError: Sequential model 'sequential' has no defined output shape yet.
    x, y = data
    inner = keras.Sequential([keras.layers.Flatten(), keras.layers.Dense(5)])
    _, hist = _fit(inner, "lrm", x, y)
    assert np.isfinite(hist.history["loss"][0])


@pytest.mark.parametrize("defense", ["none", "label_smoothing", "pgd"])
def test_robust_model_checks_label_range_of_a_subclassed_inner_model(data, defense):
    # before: 'none' / 'label_smoothing' trained silently on all-zero targets; 'pgd' failed deep in the graph
    x, y = data
    robust = R.RobustModel(SubclassedNet(), defense, num_steps=1)
    robust.compile("sgd")
    bad = np.where(y == 3, 11, y)
    with pytest.raises(ValueError, match=r"`y` has labels outside \[0, 4\] for a model with 5 logits.*\[11\]"):
        robust.fit(x, bad, verbose=0)
    with pytest.raises(ValueError, match=r"`y` has labels outside \[0, 4\]"):
        robust.evaluate(x, bad, verbose=0)
    ds = tf.data.Dataset.from_tensor_slices((x, np.eye(3, dtype=np.float32)[y % 3])).batch(4)
    with pytest.raises(ValueError, match=r"labels `y` must have 5 columns"):
        R.RobustModel(SubclassedNet(), defense, num_steps=1).fit(ds, verbose=0)


def test_attacks_check_labels_of_a_subclassed_model(data):
    # before: InvalidArgumentError from SparseSoftmaxCrossEntropyWithLogits / a shape error in the graph
    x, _ = data
    model = _subclassed_copy()
    with pytest.raises(ValueError, match=r"`y` has labels outside \[0, 4\].*\[-3, 12\]"):
        R.fgsm(model, x[:2], np.array([12, -3]), epsilon=0.1)
    with pytest.raises(ValueError, match=r"`y` has labels outside"):
        R.make_attack("pgd2", epsilon=0.1, step_size=0.05)(model, x[:2], np.array([12, -3]), seed=0)
    with pytest.raises(ValueError, match=r"One-hot/soft `y` must have 5 columns"):
        R.pgd(model, x[:2], np.eye(3, dtype=np.float32)[[0, 1]], epsilon=0.1, step_size=0.05, num_steps=1)


# ---------------------------------------------------------------- SPSA
_SPSA = {"epsilon": 0.1, "num_steps": 1, "spsa_samples": 4, "seed": 0}


def test_spsa_checks_its_inputs_like_fgsm_and_pgd(data):
    # before: out-of-range labels and wrong-width one-hot labels ran silently; an empty batch raised
    # InvalidArgumentError deep in the loop
    x, y = data
    model = tiny_classifier(0)
    spsa = R.make_attack("spsa", epsilon=0.1, spsa_params={"num_steps": 1, "spsa_samples": 4})
    for attack in (lambda xs, ys: R.spsa(model, xs, ys, **_SPSA), lambda xs, ys: spsa(model, xs, ys, seed=0),
                   lambda xs, ys: R.cleverhans_spsa(model, xs, ys, epsilon=0.1, num_steps=1, spsa_samples=4)):
        with pytest.raises(ValueError, match=r"`y` has labels outside \[0, 4\] for a model with 5 logits.*\[-3, 12\]"):
            attack(x[:2], np.array([12, -3]))
        with pytest.raises(ValueError, match=r"One-hot/soft `y` must have 5 columns.*\(2, 3\)"):
            attack(x[:2], np.eye(3)[[0, 1]])
        with pytest.raises(ValueError, match="`x` is an empty batch"):
            attack(x[:0], y[:0])
        with pytest.raises(ValueError, match="same batch size"):
            attack(x[:3], y[:2])


def test_spsa_without_labels_attacks_the_predictions(data):
    # before: a TF conversion error on y=None (FGSM / PGD use the model's predictions)
    x, _ = data
    model = tiny_classifier(0)
    predicted = np.asarray(model(x)).argmax(-1)
    np.testing.assert_array_equal(R.spsa(model, x, None, **_SPSA), R.spsa(model, x, predicted, **_SPSA))
    spsa = R.make_attack("spsa", epsilon=0.1, spsa_params={"num_steps": 1, "spsa_samples": 4})
    np.testing.assert_array_equal(spsa(model, x, seed=0), spsa(model, x, predicted, seed=0))


# ---------------------------------------------------------------- losses
def test_label_smoothing_rejects_batch_size_mismatch():
    # before: broadcast silently to shape (2,)
    with pytest.raises(ValueError, match=r"same batch size.*y_true.shape=\(2,\), y_pred.shape=\(1, 3\)"):
        R.label_smoothing_cross_entropy([0, 1], [[1.0, 2.0, 3.0]], 0.1)
    with pytest.raises(ValueError, match="same batch size"):
        R.LabelSmoothingCrossEntropy(0.1)([0, 1, 2], np.zeros((2, 3), np.float32))
    with pytest.raises(ValueError, match="same batch size"):
        R.label_smoothing_cross_entropy(np.eye(3)[[0, 1]], [[1.0, 2.0, 3.0]], 0.1)


@pytest.mark.parametrize("fn, explicit, deprecated", [
    (lambda **kw: R.logit_pairing([[1.0, 2.0]], [[0.0, 0.0]], **kw), "mean", "sum"),
    (lambda **kw: R.logit_squeezing([[1.0, 2.0]], **kw), "sum", "mean"),
])
def test_class_reduction_conflicts_with_the_deprecated_keyword_even_at_its_default(fn, explicit, deprecated):
    # before: the explicit value equal to the default was ignored and the deprecated one used
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        with pytest.raises(ValueError, match="Pass either `class_reduction` or the deprecated `reduction`"):
            fn(class_reduction=explicit, reduction=deprecated)
        np.testing.assert_array_equal(fn(class_reduction=explicit, reduction=explicit), fn())   # agreeing: fine
    with pytest.warns(DeprecationWarning, match="`reduction` is deprecated"):
        alone = fn(reduction=deprecated)                                  # the old keyword alone still works
    np.testing.assert_array_equal(alone, fn(class_reduction=deprecated))
    np.testing.assert_array_equal(fn(class_reduction=None), fn())


# ---------------------------------------------------------------- evaluation
def test_sanity_report_validates_epsilon_and_clip_range(data):
    # before: ZeroDivisionError / "cannot unpack non-iterable NoneType object"
    x, y = data
    model = tiny_classifier(0)
    with pytest.raises(ValueError, match=r"`epsilon` must be > 0.*Received: epsilon=0.0"):
        R.sanity_report(model, (x, y), epsilon=0.0)
    with pytest.raises(ValueError, match="`epsilon` must be a finite number >= 0"):
        R.sanity_report(model, (x, y), epsilon=-0.1)
    with pytest.raises(ValueError, match=r"`large_epsilon` is required with clip_range=None"):
        R.sanity_report(model, (x, y), clip_range=None)
    with pytest.raises(ValueError, match="`clip_range` must satisfy min < max"):
        R.sanity_report(model, (x, y), clip_range=(1.0, 0.0))
    report = R.sanity_report(model, (x, y), epsilon=0.1, step_size=0.05, clip_range=None, large_epsilon=0.5,
                             max_examples=8, batch_size=8)
    assert "pgd20@0.5" in report.accuracies


def test_black_box_matrix_checks_every_models_width(data):
    # before: only the first source was checked; a 3-logit model scored labels 3 and 4 as plain errors
    x, y = data
    five, three = tiny_classifier(0), keras.Sequential([keras.Input((6, 6, 1)), keras.layers.Flatten(),
                                                        keras.layers.Dense(3)])
    with pytest.raises(ValueError, match=r"`dataset` has labels outside \[0, 2\] for a model with 3 logits.*\[3, 4\]"):
        R.black_box_matrix({"a": five, "b": three}, (x, y), "fgsm", epsilon=0.1)
    with pytest.raises(ValueError, match=r"outside \[0, 2\]"):
        R.black_box_matrix({"a": five}, (x, y), "fgsm", epsilon=0.1, targets={"t": three})


def test_one_hot_labels_of_a_width_unknown_when_traced_follow_eq_3_8():
    # read as sparse, a (B, C) one-hot matrix became B * C labels: a wrong loss at B = 1, a crash above
    import tensorflow as tf

    from tf_dlthesis.robustness import LabelSmoothingCrossEntropy, RobustModel

    classes, s = 4, 0.2
    loss = LabelSmoothingCrossEntropy(s)
    logits = np.array([[2.0, 0.5, -1.0, 0.0]], np.float32)
    labels = np.eye(classes, dtype=np.float32)[[1]]
    traced = tf.function(loss, input_signature=[tf.TensorSpec([None, None], tf.float32),
                                                tf.TensorSpec([None, classes], tf.float32)])
    targets = np.full(classes, s / (classes - 1))
    targets[1] = 1 - s
    shifted = logits[0].astype(np.float64) - logits[0].max()
    want = -(targets * (shifted - np.log(np.exp(shifted).sum()))).sum()  # Eq. 3.8 targets, by hand
    assert float(traced(labels, logits)) == pytest.approx(want, rel=1e-6)
    sparse = tf.function(loss, input_signature=[tf.TensorSpec([None, None], tf.int64),
                                                tf.TensorSpec([None, classes], tf.float32)])
    assert float(sparse(np.array([[1]]), logits)) == pytest.approx(want, rel=1e-6)  # (B, 1) sparse stays sparse
    rng = np.random.default_rng(0)
    x = rng.uniform(size=(8, 6)).astype(np.float32)
    y = np.eye(classes, dtype=np.float32)[rng.integers(0, classes, 8)]
    ds = tf.data.Dataset.from_generator(lambda: iter([(x, y)]), output_signature=(
        tf.TensorSpec([None, 6], tf.float32), tf.TensorSpec([None, None], tf.float32)))
    inputs = keras.Input((6,))
    model = RobustModel(keras.Model(inputs, keras.layers.Dense(classes)(inputs)), "label_smoothing", seed=0)
    model.compile("sgd")
    assert np.isfinite(model.fit(ds.repeat(), epochs=1, steps_per_epoch=1, shuffle=False, verbose=0).history["loss"][0])
