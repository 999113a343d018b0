"""Audit of the Chapter 5 metrics, protocol and mitigations: each test failed before its fix."""

import numpy as np
import pytest

from tf_dlthesis.variability import cka_matrix, linear_cka, run_protocol
from tf_dlthesis.variability import metrics

N, C = 5, 3
LABELS = np.array([0, 1, 2, 1, 0])
CALLS = []


def _logits(plan, classes=C):
    CALLS.append(plan.run)
    return np.random.default_rng([plan.init, plan.shuffle]).normal(size=(N, classes))


def flip_in_first_run_only(plan):
    out = {"logits": _logits(plan)}
    if plan.run == 0:
        out["variants"] = {"flip": _logits(plan)}
    return out


def flip_in_second_run_only(plan):
    out = {"logits": _logits(plan)}
    if plan.run == 1:
        out["variants"] = {"flip": _logits(plan)}
    return out


def classes_differ_between_runs(plan):
    return _logits(plan, C if plan.run == 0 else C + 1)


def plain(plan):
    return _logits(plan)


def _serial(train_fn, **kwargs):
    args = dict(sources=["init"], runs=2, labels=LABELS, executor="serial", progress=False, bootstrap_samples=10)
    return run_protocol(train_fn, **{**args, **kwargs})


def test_protocol_variant_missing_from_a_later_run_is_a_clear_error():
    # before: KeyError 'variant:flip' after every run had trained
    with pytest.raises(ValueError, match=r"same 'variants' in every run.*run 1 returned \['logits'\]"):
        _serial(flip_in_first_run_only)


def test_protocol_variant_of_a_later_run_is_not_silently_dropped():
    # before: the row list came back without "init/flip": run 1's flip logits were dropped
    with pytest.raises(ValueError, match=r"same 'variants' in every run.*run 1 returned \['flip', 'logits'\]"):
        _serial(flip_in_second_run_only)


def test_protocol_runs_with_different_class_counts_name_the_runs():
    # before: NumPy's bare "all input arrays must have the same shape" from np.stack
    with pytest.raises(ValueError, match=r"one shape \(N, C\).*\(5, 4\) in run 1 but \(5, 3\) in run 0"):
        _serial(classes_differ_between_runs)


def test_protocol_consistent_variants_still_give_their_rows():
    def both(plan):
        return {"logits": _logits(plan), "variants": {"flip": _logits(plan)}}

    assert sorted(_serial(both).rows) == ["init", "init/flip"]


@pytest.mark.parametrize("labels, num_classes, trained", [
    (np.array([0, -1, 2, 1, 0]), None, []),  # negative: refused before any run
    (np.array([0, 1, 5, 1, 0]), 3, []),  # >= num_classes: refused before any run
    (np.array([0, 1, 5, 1, 0]), None, [0]),  # >= C of the logits: refused after the first run
])
def test_protocol_labels_out_of_range_are_refused_before_training_everything(labels, num_classes, trained):
    # before: every run trained (and, with store=None, was lost) before variability_metrics refused the labels
    CALLS.clear()
    with pytest.raises(ValueError, match=r"`labels` must"):
        _serial(plain, runs=3, labels=labels, num_classes=num_classes)
    assert CALLS == trained


def test_weight_noise_second_fit_draws_new_offsets():
    # before: each fit restarted the step count at 0, so a continued fit repeated the first fit's offsets
    import keras

    from tf_dlthesis.variability import WeightNoise

    seen = []

    class Spy(keras.callbacks.Callback):  # runs after WeightNoise's batch begin: sees w + eps
        def on_train_batch_begin(self, batch, logs=None):
            seen.append(self.model.get_weights()[0].copy())

    inputs = keras.Input((3,))
    model = keras.Model(inputs, keras.layers.Dense(2, kernel_initializer="zeros", use_bias=False)(inputs))
    model.compile(keras.optimizers.SGD(0.0), "mse")  # lr 0: weights stay 0, so each seen array is eps itself
    x, y = np.ones((4, 3), "float32"), np.zeros((4, 2), "float32")
    noise = WeightNoise(0.1, seed=0)
    model.fit(x, y, batch_size=2, epochs=1, callbacks=[noise, Spy()], verbose=0)
    model.fit(x, y, batch_size=2, epochs=2, initial_epoch=1, callbacks=[noise, Spy()], verbose=0)
    assert len(seen) == 4
    for i in range(4):
        for j in range(i):
            assert not np.allclose(seen[i], seen[j]), (i, j)
    np.testing.assert_allclose(model.get_weights()[0], 0.0)  # the offsets were taken back out


def test_linear_cka_two_examples_is_one_not_above():
    # n = 2: both centred representations are rank one (x1 - x2 and its negative), so CKA = 1 exactly;
    # before: 1.0000000000000002 from rounding, outside the documented [0, 1]
    rng = np.random.default_rng(13)
    x, y = rng.normal(size=(2, 3)), rng.normal(size=(2, 5))
    assert linear_cka(x, y) == pytest.approx(1.0, abs=1e-12)
    assert linear_cka(x, y) <= 1.0
    mat = cka_matrix([x, y])
    np.testing.assert_allclose(mat, np.ones((2, 2)), atol=1e-12)
    assert mat.max() <= 1.0 and mat.min() >= 0.0


@pytest.mark.parametrize("second", [np.zeros((4, C)), np.zeros((N, C + 1))])
def test_metrics_runs_of_different_shapes_name_the_shapes(second):
    # before: TypeError "`logits` must be a numeric array of shape (R, N, C). Received: list"
    with pytest.raises(ValueError, match=r"entries \(runs\) differ in shape. Received: entries of shapes"):
        metrics.variability_metrics([np.zeros((N, C)), second], LABELS)


@pytest.mark.parametrize("layers, error, message", [("d", TypeError, "not a string"), ([], ValueError, "at least one")])
def test_layer_activations_layer_names(layers, error, message):
    # before: a string was read letter by letter ("dense" -> 'd', 'e', ...); [] failed inside keras.Model
    import keras

    from tf_dlthesis.variability import layer_activations

    inputs = keras.Input((4, 4, 1))
    model = keras.Model(inputs, keras.layers.Dense(3, name="d")(keras.layers.Flatten()(inputs)))
    with pytest.raises(error, match=message):
        layer_activations(model, np.zeros((3, 4, 4, 1), "float32"), layers)


def test_protocol_variants_not_a_dict_is_a_type_error():
    # before: AttributeError "'list' object has no attribute 'items'" from inside the run
    def listed(plan):
        return {"logits": _logits(plan), "variants": [_logits(plan)]}

    with pytest.raises(TypeError, match=r"'variants' must be a dict"):
        _serial(listed)
