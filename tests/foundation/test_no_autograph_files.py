"""The library's own tf.functions that branch only on Python values skip AutoGraph.

AutoGraph writes each converted function's source to a `__autograph_generated_file*.py`
in the temp folder and deletes it at interpreter exit (`atexit`). The variability
protocol's workers leave with `os._exit`, which skips `atexit`, so every run used to
leave its converted inference function (and the language model's train / evaluation
steps) behind: ~400 files an hour of `reproduce` in /tmp on the machine that found it.
"""

import tempfile

import keras
import numpy as np
import pytest

from tf_dlthesis import normalization, runtime
from tf_dlthesis.variability import StochasticWeightAveraging, WeightNoise, language_model


@pytest.fixture
def temp_dir(tmp_path, monkeypatch):
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))  # where AutoGraph would write its files
    return tmp_path


def _generated(folder):
    return sorted(p.name for p in folder.glob("__autograph_generated_file*"))


def _bn_model():
    inputs = keras.Input((4,))
    x = normalization.ExampleWeightedBatchNormalization()(keras.layers.Dense(6)(inputs))
    return keras.Model(inputs, keras.layers.Dense(3)(x))


def test_inference_sweep_and_precise_bn_leave_no_generated_source(temp_dir):
    model = _bn_model()
    x = np.random.default_rng(0).normal(size=(16, 4)).astype("float32")
    y = np.arange(16) % 3
    runtime.inference_function(model)(x).numpy()
    normalization.sweep_example_weight(model, (x, y), [0.0, 0.5], batch_size=8)
    normalization.update_bn_statistics(model, x, batch_size=8)
    assert _generated(temp_dir) == []


def test_the_language_models_steps_leave_no_generated_source(temp_dir):
    inputs = keras.Input((None,), dtype="int32")
    model = keras.Model(inputs, keras.layers.Dense(5)(keras.layers.Embedding(5, 4)(inputs)))
    x = (np.arange(12).reshape(3, 4) % 5).astype("int32")
    language_model._make_train_step(model, keras.optimizers.SGD(0.1))(x, x).numpy()
    language_model._make_eval_step([model, model])(x, x)
    assert _generated(temp_dir) == []


def test_the_weight_callbacks_leave_no_generated_source(temp_dir):
    model = _bn_model()
    model.compile(optimizer="sgd", loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    x = np.random.default_rng(1).normal(size=(16, 4)).astype("float32")
    model.fit(x, np.arange(16) % 3, batch_size=8, epochs=1, verbose=0,
              callbacks=[WeightNoise(1e-3, seed=0), StochasticWeightAveraging(start_epoch=0, bn_data=x)])
    assert _generated(temp_dir) == []
