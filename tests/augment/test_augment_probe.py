"""Defects found by probing the mixing API: NumPy scalars for hyperparameters and
`num_classes`, `seed=None` inside traced code, mismatched label dtypes in `mix_pair`,
`sample_beta`'s seed vocabulary, `mix_dataset`'s up-front dtype / epoch checks, and
`MixedExample`'s constructor checks and config."""

import os
import warnings

import keras
import numpy as np
import pytest
import tensorflow as tf

from tf_dlthesis.augment import MixedExample, MixStage, mix_batch, mix_dataset, mix_pair, sample_beta


def _batch(n=4, h=5, w=5):
    x = np.random.default_rng(0).uniform(size=(n, h, w, 1)).astype(np.float32)
    return x, (np.arange(n) % 4).astype(np.int64)


# --------------------------------------------- NumPy scalars are numbers, not garbage
@pytest.mark.parametrize("params", [
    {"alpha": np.float32(0.4)}, {"p": np.float32(0.5)}, {"size": np.int64(3)},
    {"size": np.float32(0.5)}, {"std_floor": np.float32(0.01)}, {"noise_std": np.float32(0.1)},
])
def test_numpy_scalar_hyperparameters_equal_python_numbers(params):
    x, y = _batch()
    method = {"alpha": "vh_mixup", "p": "random_2x2", "size": "random_square",
              "std_floor": "bc_plus", "noise_std": "noisy_mixup"}[next(iter(params))]
    plain = {k: (int(v) if isinstance(v, np.integer) else float(v)) for k, v in params.items()}
    got = mix_batch(x, y, method, seed=0, num_classes=4, **params)
    want = mix_batch(x, y, method, seed=0, num_classes=4, **plain)
    for a, b in zip(got, want):
        np.testing.assert_array_equal(a, b)


def test_numpy_integer_num_classes_is_accepted_everywhere():
    x, y = _batch()
    k = np.int64(y.max() + 1)                     # what `y.max() + 1` gives
    np.testing.assert_array_equal(mix_batch(x, y, "mixup", seed=0, num_classes=k)[1],
                                  mix_batch(x, y, "mixup", seed=0, num_classes=4)[1])
    assert MixStage("mixup", num_classes=k).num_classes == 4
    mix_dataset(tf.data.Dataset.from_tensor_slices((x, y)), "mixup", seed=0, num_classes=k)
    out = MixedExample("mixup", seed=0, num_classes=k)({"images": x, "labels": y})
    assert out["labels"].shape == (4, 4)


def test_infinite_std_floor_is_rejected():
    x, y = _batch()
    with pytest.raises(ValueError, match=r"`std_floor`.*finite.*Received: std_floor=inf"):
        mix_batch(x, y, "bc_plus", seed=0, num_classes=4, std_floor=float("inf"))


# ------------------------------------------------------ seed=None inside traced code
def test_seed_none_is_fresh_on_every_traced_call():
    # 16 examples of 4 classes: a draw gives the unmixed one-hot labels whatever lambda is only when its random
    # permutation pairs every example with one of its class, (4!)**4 / 16! = 1.6e-8 (with 8 examples 1/2520,
    # and all three draws alike 1/2520**3 = 6e-11 per assertion).
    x, y = _batch(16)

    @tf.function
    def step(x, y):
        return mix_batch(x, y, "mixup", seed=None, num_classes=4)[1]

    draws = [step(x, y).numpy() for _ in range(3)]
    assert not np.array_equal(draws[0], draws[1]) or not np.array_equal(draws[1], draws[2])
    ds = (tf.data.Dataset.from_tensor_slices((x, y)).batch(16).repeat(3)
          .map(lambda a, b: mix_batch(a, b, "mixup", seed=None, num_classes=4)))
    labels = [b.numpy() for _, b in ds]
    assert not np.array_equal(labels[0], labels[1]) or not np.array_equal(labels[1], labels[2])


def test_seed_none_in_graph_also_for_mix_pair_and_sample_beta():
    x, _ = _batch(2)

    @tf.function
    def pair():
        return mix_pair(x[0], [1.0, 0.0], x[1], [0.0, 1.0], "mixup", seed=None)[1]

    @tf.function
    def beta():
        return sample_beta(None, [4], alpha=0.5)

    assert len({pair().numpy().tobytes() for _ in range(4)}) > 1
    assert len({beta().numpy().tobytes() for _ in range(4)}) > 1


def test_int_seed_in_graph_is_unchanged():
    x, y = _batch(8)
    eager = mix_batch(x, y, "random_2x2", seed=3, num_classes=4)
    graph = tf.function(lambda a, b: mix_batch(a, b, "random_2x2", seed=3, num_classes=4))(x, y)
    for a, b in zip(eager, graph):
        np.testing.assert_array_equal(a, b)


# ------------------------------------------------------------------------ sample_beta
def test_sample_beta_takes_the_library_seed_vocabulary():
    np.testing.assert_array_equal(sample_beta(3, [5], alpha=0.4),
                                  sample_beta(tf.constant([3, 0], tf.int64), [5], alpha=0.4))
    np.testing.assert_array_equal(sample_beta(3, [5], alpha=np.float32(0.5)),
                                  sample_beta(3, [5], alpha=float(np.float32(0.5))))
    assert sample_beta(None, [5], alpha=0.4).shape == (5,)
    with pytest.raises(ValueError, match="seed"):
        sample_beta(-1, [5], alpha=0.4)


# ------------------------------------------------------------ mix_pair label dtypes
def test_mix_pair_mixes_labels_of_different_float_dtypes():
    x, _ = _batch(2)
    y1 = np.array([1.0, 0.0, 0.0], np.float32)
    y2 = np.array([0.0, 0.25, 0.75], np.float64)
    _, y = mix_pair(x[0], y1, x[1], y2, "vertical_concat", seed=0)
    _, ref = mix_pair(x[0], y1.astype(np.float64), x[1], y2, "vertical_concat", seed=0)
    assert y.dtype == tf.float64
    np.testing.assert_array_equal(y, ref)
    _, y = mix_pair(x[0], 2, x[1], y2, "vertical_concat", seed=0, num_classes=3)  # sparse + float64
    assert y.dtype == tf.float64 and abs(float(tf.reduce_sum(y)) - 1.0) < 1e-12


# ------------------------------------------------------------- mix_dataset up front
def test_mix_dataset_checks_dtypes_and_epoch_at_the_call():
    x, y = _batch()
    with pytest.raises(TypeError, match=r"`labels` must be integer.*Received: labels of dtype bool"):
        mix_dataset(tf.data.Dataset.from_tensor_slices((x, y > 1)), "mixup", seed=0, num_classes=4)
    with pytest.raises(TypeError, match=r"`images` must be float or integer.*dtype bool"):
        mix_dataset(tf.data.Dataset.from_tensor_slices((x > 0.5, y)), "mixup", seed=0, num_classes=4)
    ds = tf.data.Dataset.from_tensor_slices((x, y))
    with pytest.raises(TypeError, match=r"`epoch`.*Received: epoch=1.5"):
        mix_dataset(ds, "mixup", seed=0, num_classes=4, epoch=1.5)
    with pytest.raises(ValueError, match=r"`epoch` must be >= 0. Received: epoch=-1"):
        mix_dataset(ds, "mixup", seed=0, num_classes=4, epoch=-1)
    mix_dataset(ds, "mixup", seed=0, num_classes=4, epoch=np.int64(1))
    mix_dataset(ds, "mixup", seed=0, num_classes=4, epoch=tf.Variable(0, dtype=tf.int64))


# ----------------------------------------------------------------------- MixedExample
def test_mixed_example_checks_seed_and_num_classes_at_construction():
    with pytest.raises(ValueError, match=r"`num_classes` must be an int >= 1 or None. Received: num_classes=0"):
        MixedExample("mixup", num_classes=0)
    with pytest.raises(TypeError, match=r"Received: num_classes='4'"):
        MixedExample("mixup", num_classes="4")
    with pytest.raises(ValueError, match=r"`seed` must be an int >= 0 or None\. Received: seed=-1"):
        MixedExample("mixup", seed=-1)
    with pytest.raises(TypeError, match=r"`seed` must be an int"):
        MixedExample("mixup", seed=1.5)
    x, y = _batch()
    a = MixedExample("random_2x2", seed=np.int64(5), num_classes=4)({"images": x, "labels": y})
    b = MixedExample("random_2x2", seed=5, num_classes=4)({"images": x, "labels": y})
    np.testing.assert_array_equal(a["images"], b["images"])


def test_mixed_example_with_numpy_seed_saves_and_loads(tmp_path):
    inputs = {"images": keras.Input((5, 5, 1), name="images"), "labels": keras.Input((4,), name="labels")}
    model = keras.Model(inputs, MixedExample("mixup", seed=np.int64(3))(inputs))
    path = os.path.join(tmp_path, "m.keras")
    model.save(path)
    assert keras.saving.load_model(path).layers[-1].get_config()["seed"] == 3


def test_mixed_example_config_uses_std_floor_not_the_deprecated_epsilon():
    with pytest.warns(DeprecationWarning):
        layer = MixedExample("bc_plus", seed=0, num_classes=4, epsilon=0.01)
    config = layer.get_config()
    assert config["std_floor"] == 0.01 and "epsilon" not in config
    with warnings.catch_warnings():
        warnings.simplefilter("error", DeprecationWarning)   # reloading does not warn
        clone = MixedExample.from_config(config)
    x, y = _batch()
    np.testing.assert_array_equal(clone({"images": x, "labels": y})["images"],
                                  layer({"images": x, "labels": y})["images"])
