"""Audit 67: model zoo norm callables, model options, and `train(keep_weights=True)` on stored runs."""

import functools

import keras
import numpy as np
import pytest

from tf_dlthesis import models
from tf_dlthesis.experiments import ResultsStore, TrainSpec, train


def test_norm_may_be_a_functools_partial_of_a_keras_layer_class():
    # before: "Unrecognized keyword arguments passed to BatchNormalization: {'channels': 4}" although
    # TrainSpec documents `norm` as "a module-level function or class ..., or a functools.partial of one"
    norm = functools.partial(keras.layers.BatchNormalization, momentum=0.9)
    model = models.build("cnn", (8, 8, 1), 3, norm=norm, seed=0, filters=(4, 8))
    reference = models.build("cnn", (8, 8, 1), 3, norm="batch", norm_kwargs={"momentum": 0.9}, seed=0, filters=(4, 8))
    norms = [layer for layer in model.layers if layer.name.endswith("_norm")]
    assert [layer.name for layer in norms] == [layer.name for layer in reference.layers if layer.name.endswith("_norm")]
    assert len(norms) == 4 and all(isinstance(layer, keras.layers.BatchNormalization) for layer in norms)
    assert all(layer.momentum == 0.9 for layer in norms)
    grouped = models.build("cnn", (8, 8, 1), 3, seed=0, filters=(4, 8),
                           norm=functools.partial(keras.layers.GroupNormalization, groups=2),
                           norm_kwargs={"epsilon": 0.01})
    gn = grouped.get_layer("block2_conv2_norm")
    assert isinstance(gn, keras.layers.GroupNormalization) and gn.groups == 2 and gn.epsilon == 0.01


def _plain_bn(channels, name):
    return keras.layers.BatchNormalization(name=name)


def test_a_norm_callable_refusing_a_norm_kwarg_is_not_reported_as_a_model_option():
    # before: ValueError "Unknown option for model 'cnn': _plain_bn() got an unexpected keyword argument
    # 'momentum'" - blaming the model options; norm_factory documents a TypeError for such a keyword
    with pytest.raises(TypeError, match=r"norm=.*_plain_bn.* does not take \['momentum'\]"):
        models.build("cnn", (8, 8, 1), 3, norm=_plain_bn, norm_kwargs={"momentum": 0.9})
    with pytest.raises(TypeError, match=r"does not take \['bogus'\]"):
        models.build("cnn", (8, 8, 1), 3, norm=keras.layers.BatchNormalization, norm_kwargs={"bogus": 1})
    # a real unknown model option is still one ValueError naming it and the options the model takes
    with pytest.raises(ValueError, match=r"Unknown option for model 'resnet6': 'bogus'.*width_multiplier"):
        models.build("resnet6", (8, 8, 1), 3, bogus=1)


def test_keep_weights_gives_a_model_for_a_run_an_earlier_call_stored_without_weights(tmp_path):
    # before: `run.model` raised "train it with `keep_weights=True`" although the call had keep_weights=True
    spec = TrainSpec(dataset="digits", model="linear", epochs=1, train_examples=100, test_examples=50)
    store = ResultsStore(str(tmp_path / "runs.sqlite"))
    [plain] = train(spec, 0, store=store)
    [kept] = train(spec, 0, store=store, keep_weights=True)
    model = kept.model
    np.testing.assert_array_equal(model.get_weights()[0], plain.model.get_weights()[0])  # same machine: bit-identical
    np.testing.assert_array_equal(kept.test_pred, plain.test_pred)
    [again] = train(spec, 0, store=store)  # the row now keeps the weights: no retraining, the model is rebuilt
    assert again.from_store
    np.testing.assert_array_equal(again.model.get_weights()[0], model.get_weights()[0])


def test_numpy_int_widths_build_like_python_ints():
    # before: mlp / mnist_2conv with hidden=np.int64(8) passed validation, then Keras's Dense refused it
    # ("expected a positive integer. Received: units=8")
    mlp = models.build("mlp", (8, 8, 1), 3, norm="none", hidden=np.int64(8), dropout=np.float32(0.5))
    assert mlp.count_params() == (64 * 8 + 8) + (8 * 3 + 3)  # flatten 64 -> dense 8 -> logits 3
    small = models.build("mnist_2conv", (8, 8, 1), 3, norm="none", hidden=np.int64(5), filters=(np.int64(2), 4))
    # 3x3 valid convs 8 -> 6 -> 4, 2x2 pool -> 2x2x4 = 16 features
    assert small.count_params() == (9 * 1 * 2 + 2) + (9 * 2 * 4 + 4) + (16 * 5 + 5) + (5 * 3 + 3)
    assert models.build("conv1", (8, 8, 1), 3, norm="none", filters=np.int32(4)).get_layer("conv").filters == 4


def test_configure_seed_reseeds_tfs_global_generator():
    # before: the docstring promised "TF's global generator" seeded, but `keras.utils.set_random_seed` sets
    # only TF's global seed; `tf.random.get_global_generator()` went on with its old state
    import tensorflow as tf

    from tf_dlthesis import runtime

    generator = tf.random.get_global_generator()
    runtime.configure(seed=5)
    first = generator.normal([3]).numpy()
    generator.normal([7])  # advance it
    runtime.configure(seed=5)
    np.testing.assert_array_equal(tf.random.get_global_generator().normal([3]).numpy(), first)
    np.testing.assert_array_equal(first, tf.random.Generator.from_seed(5).normal([3]).numpy())


def test_configure_seed_under_op_determinism_without_a_global_generator():
    # reseeding the global generator must not break `configure(seed=...)` once op determinism is on: TF
    # refuses `get_global_generator()` then unless one was set, so the first attempt raised RuntimeError
    import subprocess
    import sys

    code = ("import tensorflow as tf, numpy as np\n"
            "from tf_dlthesis import runtime\n"
            "runtime.configure(deterministic=True)\n"
            "runtime.configure(seed=3)\n"
            "a = tf.random.get_global_generator().normal([3]).numpy()\n"
            "np.testing.assert_array_equal(a, tf.random.Generator.from_seed(3).normal([3]).numpy())\n"
            "runtime.configure(seed=3, deterministic=True)\n"
            "np.testing.assert_array_equal(tf.random.get_global_generator().normal([3]).numpy(), a)\n"
            "print('ok')\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0 and out.stdout.strip().endswith("ok"), out.stderr[-2000:]
