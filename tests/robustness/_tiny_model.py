"""The tiny seeded classifier the robustness tests share (imported by module name: pytest puts this folder on sys.path)."""

import keras
import numpy as np


def tiny_classifier(seed=0):
    """A seeded 6x6x1 -> 5-class conv net, small enough for exact attack comparisons."""
    keras.utils.set_random_seed(seed)
    return keras.Sequential([keras.Input((6, 6, 1)), keras.layers.Conv2D(4, 3, activation="relu"),
                             keras.layers.Flatten(), keras.layers.Dense(5)])


def log_softmax(z):
    """log softmax in float64 (the hand computation the loss tests compare with)."""
    z = np.asarray(z, np.float64)
    return z - np.log(np.exp(z).sum(-1, keepdims=True))


def threshold_model():
    """One pixel v -> logits 10 (v - 0.5, 0.5 - v): class 0 iff v > 0.5 (an attack moves v toward 0.5 by eps)."""
    inp = keras.Input((1, 1, 1))
    dense = keras.layers.Dense(2)
    out = dense(keras.layers.Flatten()(inp))
    dense.set_weights([np.array([[10.0, -10.0]], np.float32), np.array([-5.0, 5.0], np.float32)])
    return keras.Model(inp, out)
