"""Audit 69 (Chapter 3): ``RobustModel`` and the Chapter 3 losses inside real Keras training code.

Under ``tf.distribute.MirroredStrategy`` the Keras losses divide each replica's value by the number of
replicas (the replicas' gradients are summed) and Keras's own steps undo that for the logs.
``RobustModel`` logged the scaled values (``loss``, the loss terms and ``val_loss`` halved on two
replicas), added the regularization losses unscaled (counted once per replica: a different update
than on one device) and tied LRM's pairing weight to each replica's own ratio of losses instead of
the batch's; every replica drew the same random start / mixing / partners for its share of the
batch (one step seed for all).  On one device nothing changes, bit for bit (the experiments' numbers).
"""

import os
import subprocess
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf
from _tiny_model import tiny_classifier

from tf_dlthesis.robustness import DecoupledLogitPairing, RobustModel, scale_to_ratio

_MIRRORED = r"""
import numpy as np, tensorflow as tf
cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
import keras
from tf_dlthesis.robustness import RobustModel

rng = np.random.default_rng(0)
x = rng.uniform(size=(8, 6, 6, 1)).astype("float32")
y = rng.integers(0, 5, 8)
strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
SETTINGS = {  # no random draw (random start, mixing, random partners): one device and two agree exactly
    "pgd": {}, "alp": {}, "lrm": {"mixing": None}, "logit_squeezing": {},
}


def run(defense, distributed):
    def build():
        keras.utils.set_random_seed(0)
        inner = keras.Sequential([keras.Input((6, 6, 1)), keras.layers.Flatten(),
                                  keras.layers.Dense(5, kernel_regularizer=keras.regularizers.L2(0.1))])
        robust = RobustModel(inner, defense, num_steps=2, random_start=False, **SETTINGS[defense])
        robust.compile(keras.optimizers.SGD(0.5), metrics=["accuracy"])
        return robust
    if distributed:
        with strategy.scope():
            robust = build()
    else:
        robust = build()
    history = robust.fit(x, y, batch_size=8, epochs=2, shuffle=False, verbose=0, validation_data=(x, y))
    return robust.model.get_weights()[0], history.history


for defense in SETTINGS:
    w1, h1 = run(defense, False)
    w2, h2 = run(defense, True)
    assert sorted(h1) == sorted(h2), (defense, sorted(h1), sorted(h2))
    for key in h1:
        assert np.allclose(h1[key], h2[key], rtol=1e-5, atol=1e-7), (defense, key, h1[key], h2[key])
    assert np.allclose(w1, w2, atol=1e-6), (defense, np.abs(w1 - w2).max())

# the replicas draw their own random starts: a step seed shared by all replicas repeated the same noise
# on every replica's share of the batch
with strategy.scope():
    keras.utils.set_random_seed(0)
    inner = keras.Sequential([keras.Input((6, 6, 1)), keras.layers.Flatten(), keras.layers.Dense(5)])
    robust = RobustModel(inner, "pgd", num_steps=1, step_size=0.0, clean_weight=0.0)  # x_adv: x + random start


@tf.function
def adversarial_logits():
    return strategy.run(lambda: robust.defense_loss(tf.fill([1, 6, 6, 1], 0.5), tf.zeros([1], tf.int64), 0)[1])


first, second = (t.numpy() for t in strategy.experimental_local_results(adversarial_logits()))
assert not np.array_equal(first, second), (first, second)
print("MIRRORED_OK")
"""


def test_mirrored_strategy_trains_and_logs_as_one_device():
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "CUDA_VISIBLE_DEVICES": ""}
    proc = subprocess.run([sys.executable, "-c", _MIRRORED], capture_output=True, text=True, env=env, timeout=300)
    assert "MIRRORED_OK" in proc.stdout, proc.stderr[-3000:]


class _PreviousRegularization(RobustModel):
    """RobustModel with the previous release's regularization sum (one device: must give the same bits)."""

    def _with_regularization(self, loss):
        return loss + tf.add_n(self.losses) if self.losses else loss


@pytest.mark.parametrize("defense", ["pgd", "lrm"])
def test_one_device_training_is_bit_identical_to_the_previous_release(defense):
    """The experiments' calls (one device, seeded, regularized models) give exactly the old numbers."""
    rng = np.random.default_rng(1)
    x, y = rng.uniform(size=(8, 6, 6, 1)).astype("float32"), rng.integers(0, 5, 8)
    runs = []
    for cls in (RobustModel, _PreviousRegularization):
        keras.utils.set_random_seed(0)
        inner = keras.Sequential([keras.Input((6, 6, 1)), keras.layers.Flatten(),
                                  keras.layers.Dense(5, kernel_regularizer=keras.regularizers.L2(0.01))])
        robust = cls(inner, defense, num_steps=2, seed=3)
        robust.compile(keras.optimizers.SGD(0.1), metrics=["accuracy"])
        history = robust.fit(x, y, batch_size=4, epochs=2, shuffle=False, verbose=0).history
        runs.append((robust.model.get_weights(), history))
    (w_new, h_new), (w_old, h_old) = runs
    for a, b in zip(w_new, w_old):
        np.testing.assert_array_equal(a, b)
    assert h_new == h_old


def test_lrm_terms_outside_a_strategy_are_unchanged():
    rng = np.random.default_rng(2)
    clean, adv = rng.normal(size=(2, 4, 5)).astype("float32")
    loss = DecoupledLogitPairing(beta=1e-3, ratio=0.125)
    h, _ = loss.parts(clean, adv)
    terms = loss.terms(clean, adv, tf.constant(1.7))
    assert terms["pairing_loss"].numpy() == scale_to_ratio(tf.reduce_mean(h), tf.constant(1.7), 0.125).numpy()
    np.testing.assert_allclose(terms["pairing_loss"].numpy(), 1.7 / 0.125, rtol=1e-6)


def test_validation_metrics_are_clean_cross_entropy():
    """``fit(validation_data=...)`` reports the plain cross-entropy of clean inputs (as documented)."""
    rng = np.random.default_rng(3)
    x, y = rng.uniform(size=(8, 6, 6, 1)).astype("float32"), rng.integers(0, 5, 8)
    robust = RobustModel(tiny_classifier(), "lrm", num_steps=2)
    robust.compile(keras.optimizers.SGD(0.1), metrics=["accuracy"])
    history = robust.fit(x, y, batch_size=8, epochs=1, verbose=0, validation_data=(x, y)).history
    z = robust.model.predict(x, verbose=0).astype(np.float64)
    log_p = z - np.log(np.exp(z).sum(-1, keepdims=True))
    np.testing.assert_allclose(history["val_loss"][0], -log_p[np.arange(8), y].mean(), rtol=1e-5)
    np.testing.assert_allclose(history["val_accuracy"][0], (z.argmax(1) == y).mean())


@pytest.mark.parametrize("form", ["dict", "list", "dataset_dict", "dataset_tuple"])
def test_inputs_of_a_multi_input_model_are_refused_with_a_named_error(form):
    """`fit({"a": x}, y)` failed inside Keras with `TypeError: Expected any non-tensor type, but got a tensor
    instead.`; the attacks perturb one image tensor, so several inputs are refused up front."""
    x = np.random.default_rng(0).uniform(size=(8, 6, 6, 1)).astype("float32")
    y = np.arange(8) % 5
    robust = RobustModel(tiny_classifier(), "pgd", epsilon=0.1, step_size=0.05, num_steps=1, seed=0)
    robust.compile(keras.optimizers.SGD(0.1))
    data = {"dict": ({"a": x}, y), "list": ([x, x], y),
            "dataset_dict": (tf.data.Dataset.from_tensor_slices(({"a": x}, y)).batch(4), None),
            "dataset_tuple": (tf.data.Dataset.from_tensor_slices(((x, x), y)).batch(4), None)}[form]
    with pytest.raises(TypeError, match="one image input"):
        robust.fit(*data, epochs=1, verbose=0)
    with pytest.raises(TypeError, match="one image input"):
        robust.evaluate(*data, verbose=0)
