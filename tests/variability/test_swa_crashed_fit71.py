"""Stop 71: a `fit` that dies before `on_train_end` (Keras calls it without a `finally`) must not leave
`StochasticWeightAveraging(mode="aswa")` believing it is still inside `fit`: a later `model.evaluate`
given the callback would then assign the average to the model (README: "A `model.evaluate` outside
`fit` is not affected"). Fails on the code before the fix (the weights changed)."""

import keras
import numpy as np
import pytest

from tf_dlthesis.variability import StochasticWeightAveraging

RNG = np.random.default_rng(0)
X = RNG.normal(size=(16, 4)).astype("float32")
Y = RNG.integers(0, 3, 16)


class _Die(keras.callbacks.Callback):
    def on_epoch_end(self, epoch, logs=None):
        if epoch == 1:
            raise RuntimeError("died")


def _model():
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(5, activation="relu"), keras.layers.Dense(3)])
    model.compile(keras.optimizers.SGD(0.1, momentum=0.9), keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    return model


def test_evaluate_after_a_crashed_fit_leaves_the_weights_alone():
    model = _model()
    swa = StochasticWeightAveraging(mode="aswa", start_epoch=0)
    with pytest.raises(RuntimeError, match="died"):  # dies after ASWA's epoch-1 assignment, before on_train_end
        model.fit(X, Y, batch_size=4, epochs=4, shuffle=False, verbose=0, callbacks=[swa, _Die()])
    model.fit(X, Y, batch_size=4, epochs=1, shuffle=False, verbose=0)  # the user trains on without the callback
    assert not all(np.array_equal(a, b) for a, b in zip(model.get_weights()[:4], swa.average()))
    before = [w.copy() for w in model.get_weights()]
    model.evaluate(X, Y, verbose=0, callbacks=[swa])
    for a, b in zip(model.get_weights(), before):
        np.testing.assert_array_equal(a, b)


def test_validation_inside_a_later_fit_still_sees_the_average():
    # the fix must not cost the in-fit behaviour: after a crashed fit, a new fit's validation is again averaged
    model = _model()
    swa = StochasticWeightAveraging(mode="aswa", start_epoch=0)
    with pytest.raises(RuntimeError, match="died"):
        model.fit(X, Y, batch_size=4, epochs=4, shuffle=False, verbose=0, callbacks=[swa, _Die()])
    seen = []

    class _Probe(keras.callbacks.Callback):  # after swa in the list: sees the weights validation uses
        def on_test_begin(self, logs=None):
            seen.append([w.numpy().copy() for w in self.model.trainable_variables])

    model.fit(X, Y, batch_size=4, epochs=1, shuffle=False, verbose=0, validation_data=(X, Y), callbacks=[swa, _Probe()])
    assert seen and swa.averaged == 4
    for a, b in zip(seen[0], swa.average()):
        np.testing.assert_array_equal(a, b)
