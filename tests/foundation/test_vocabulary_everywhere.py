"""README's "One vocabulary" held across the subpackages: `seed=None` inside traced graphs, the dataset
forms every evaluating function takes, and the checks they share (label width, finite images, types)."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from tf_dlthesis import data, robustness
from tf_dlthesis.normalization import sweep_example_weight, update_bn_statistics
from tf_dlthesis.variability import layer_cka, predict_tta, recompute_batch_norm_statistics


def _digits(n=48):
    from sklearn.datasets import load_digits

    d = load_digits()
    return (d.images[:n] / 16.0).astype(np.float32)[..., None], d.target[:n].astype(np.int64)


@pytest.fixture(scope="module")
def bn_model():
    inputs = keras.Input((8, 8, 1))
    h = keras.layers.Dense(16, kernel_initializer=keras.initializers.GlorotUniform(0))(keras.layers.Flatten()(inputs))
    h = keras.layers.BatchNormalization()(h)
    outputs = keras.layers.Dense(10, kernel_initializer=keras.initializers.GlorotUniform(1))(keras.layers.ReLU()(h))
    model = keras.Model(inputs, outputs)
    model(np.zeros((2, 8, 8, 1), np.float32))
    return model


# ----------------------------------------------------------------------------- seed=None in graphs


def test_seed_none_draws_fresh_entropy_at_every_execution_of_a_traced_graph():
    # drawn at trace time, one seed was frozen into the graph: every tf.data element got the same crop
    # and every PGD call inside a tf.function the same random start
    image = tf.reshape(tf.range(64, dtype=tf.float32), (8, 8, 1)) / 64.0
    crops = tf.data.Dataset.from_tensors(image).repeat(8).map(lambda im: data.standard_augment(im, seed=None))
    assert len({c.numpy().tobytes() for c in crops}) > 1
    model = keras.Sequential([keras.Input((8, 8, 1)), keras.layers.Flatten(), keras.layers.Dense(10)])
    x, y = _digits(4)
    pgd = tf.function(lambda x, y: robustness.pgd(model, x, y, epsilon=0.1, step_size=0.05, num_steps=1, seed=None))
    assert len({pgd(x, y).numpy().tobytes() for _ in range(4)}) > 1
    attack = robustness.make_attack("pgd1", epsilon=0.1, step_size=0.05)
    traced = tf.function(lambda x, y: attack(model, x, y, seed=None))
    assert len({traced(x, y).numpy().tobytes() for _ in range(4)}) > 1
    # an int seed stays reproducible inside the graph
    fixed = tf.function(lambda x, y: robustness.pgd(model, x, y, epsilon=0.1, step_size=0.05, num_steps=1, seed=3))
    np.testing.assert_array_equal(fixed(x, y), fixed(x, y))


def test_seed_none_in_a_graph_under_op_determinism_says_what_to_do():
    import subprocess
    import sys

    code = ("import tensorflow as tf; tf.config.experimental.enable_op_determinism()\n"
            "from tf_dlthesis._seeds import as_seed\n"
            "try:\n    tf.function(lambda: as_seed(None))()\n"
            "except RuntimeError as e:\n    print('ERR', e)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120).stdout
    assert "ERR `seed=None` inside a traced graph" in out and "tf.random.set_seed" in out and "int `seed`" in out


# ----------------------------------------------------------------------------- evaluation checks


def test_evaluation_refuses_one_hot_labels_of_another_width_nan_images_and_bad_types(bn_model):
    x, y = _digits(16)
    for width in (5, 12):
        with pytest.raises(ValueError, match=f"labels of {width} columns for a model with 10 logits"):
            robustness.evaluate_white_box(bn_model, (x, np.eye(width)[y % width]), ["natural"])
        with pytest.raises(ValueError, match=f"labels of {width} columns for a model with 10 logits"):
            sweep_example_weight(bn_model, (x, np.eye(width)[y % width]), [0.0])
    bad = x.copy()
    bad[0, 0, 0, 0] = np.nan
    with pytest.raises(ValueError, match="1 NaN or infinite"):
        robustness.evaluate_white_box(bn_model, (bad, y), ["natural"])
    with pytest.raises(ValueError, match="`x` must hold finite values"):
        robustness.fgsm(bn_model, bad, y, epsilon=0.1)
    with pytest.raises(ValueError, match=r"labels outside \[0, 9\]"):
        sweep_example_weight(bn_model, (x, np.full(16, 12)), [0.0])
    with pytest.raises(TypeError, match="`models` must be a non-empty dict"):
        robustness.black_box_matrix([bn_model], (x, y))
    with pytest.raises(TypeError, match="`targets` must be a non-empty dict"):
        robustness.black_box_matrix({"a": bn_model}, (x, y), targets=[bn_model])
    with pytest.raises(TypeError, match=r"`models\['a'\]` must be a Keras model"):
        robustness.black_box_matrix({"a": "m"}, (x, y))
    with pytest.raises(TypeError, match="`model` must be a Keras model"):
        sweep_example_weight("abc", (x, y), [0.0])
    for attacks in (5, None, [3]):
        with pytest.raises(TypeError, match="`attacks`"):
            robustness.evaluate_white_box(bn_model, (x, y), attacks)


def test_evaluation_reads_grey_and_feature_datasets_like_their_arrays():
    x, y = _digits(20)
    flat = x.reshape(20, 64)
    model = keras.Sequential([keras.Input((64,)), keras.layers.Dense(10, kernel_initializer="ones")])
    want = robustness.evaluate_white_box(model, (flat, y), ["natural", "fgsm"], epsilon=0.1)
    for ds in (tf.data.Dataset.from_tensor_slices((flat, y)), tf.data.Dataset.from_tensor_slices((flat, y)).batch(6)):
        assert robustness.evaluate_white_box(model, ds, ["natural", "fgsm"], epsilon=0.1) == want
    grey = keras.Sequential([keras.Input((8, 8, 1)), keras.layers.Flatten(), keras.layers.Dense(10)])
    want = robustness.logit_statistics(grey, (x, y))["logits"]
    got = robustness.logit_statistics(grey, tf.data.Dataset.from_tensor_slices((x[..., 0], y)).batch(7))["logits"]
    np.testing.assert_array_equal(got, want)


# ----------------------------------------------------------------------------- TTA, CKA, BN statistics


def test_tta_and_cka_take_pairs_datasets_and_uint8_images_like_arrays(bn_model):
    x, y = _digits(20)
    x8 = (x * 255).round().astype(np.uint8)
    want = predict_tta(bn_model, x8.astype(np.float32) / np.float32(255), mode="flip")
    for given in (x8, (x8[..., 0], y), tf.data.Dataset.from_tensor_slices((x8, y)).batch(6)):
        np.testing.assert_array_equal(predict_tta(bn_model, given, mode="flip"), want)
    other = keras.models.clone_model(bn_model)
    other.set_weights([w * 0.5 for w in bn_model.get_weights()])
    want = layer_cka([bn_model, other], x8.astype(np.float32) / np.float32(255))
    for given in (x8, (x8, y), tf.data.Dataset.from_tensor_slices((x8, y)).batch(6)):
        assert layer_cka([bn_model, other], given) == want


def test_bn_statistics_read_x_y_arrays_as_keras_fit_and_refuse_unbatched_datasets(bn_model):
    x, y = _digits(48)
    model = keras.models.clone_model(bn_model)
    model.set_weights(bn_model.get_weights())
    bn = [layer for layer in model.layers if isinstance(layer, keras.layers.BatchNormalization)][0]
    recompute_batch_norm_statistics(model, x)
    want = bn.moving_mean.numpy().copy()
    model.set_weights(bn_model.get_weights())
    recompute_batch_norm_statistics(model, (x, y))  # once read as two batches, the labels fed to the model
    np.testing.assert_array_equal(bn.moving_mean.numpy(), want)
    unbatched = tf.data.Dataset.from_tensor_slices((x, y))
    for fn in (recompute_batch_norm_statistics, update_bn_statistics):
        with pytest.raises(ValueError, match=r"dataset of single examples .* batch it first"):
            fn(model, unbatched)
