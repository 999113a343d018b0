import os

import pytest

from tf_dlthesis import runtime


def test_configure_reports_settings_and_is_idempotent():
    first = runtime.configure(seed=3, deterministic=True)
    second = runtime.configure(seed=3, deterministic=True)
    assert first == second
    assert first["seed"] == 3 and first["deterministic"] is True
    assert "--xla_gpu_deterministic_ops=true" in os.environ["XLA_FLAGS"].split()
    assert os.environ["XLA_FLAGS"].split().count("--xla_gpu_deterministic_ops=true") == 1
    off = runtime.configure(deterministic=False)
    assert off["deterministic"] is False
    assert "--xla_gpu_deterministic_ops=true" not in os.environ.get("XLA_FLAGS", "")
    assert "TF_DETERMINISTIC_OPS" not in os.environ


@pytest.mark.parametrize("kwargs", [{"seed": 1.5}, {"seed": "1"}, {"deterministic": 1}, {"jit": "yes"}])
def test_configure_rejects_bad_types(kwargs):
    with pytest.raises(TypeError, match="Received"):
        runtime.configure(**kwargs)


def test_configure_rejects_negative_seed():
    with pytest.raises(ValueError, match="seed=-1"):
        runtime.configure(seed=-1)


def test_jit_compile_default_is_off_on_cpu():
    assert runtime.jit_compile() is False


def test_op_determinism_turns_keras_xla_off_and_jit_compile_says_so():
    import keras
    import tensorflow as tf

    try:
        with pytest.warns(UserWarning, match="without XLA"):
            settings = runtime.configure(seed=0, deterministic=True, jit=True)
        assert settings["jit"] is True and settings["fit_jit"] is False and runtime.jit_compile() is False
        # the Keras behaviour the rule rests on: compile(jit_compile=True) falls back to False
        model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
        with pytest.warns(UserWarning, match="jit_compile"):
            model.compile("sgd", "mse", jit_compile=True)
        assert model.jit_compile is False
        off = runtime.configure(deterministic=False)
        assert off["fit_jit"] is True and runtime.jit_compile() is True
        model.compile("sgd", "mse", jit_compile=True)
        assert model.jit_compile is True
    finally:
        runtime._STATE["jit"] = None
        tf.config.optimizer.set_jit(False)


def _train_once():
    from tf_dlthesis.experiments import TrainSpec, train

    runtime.configure(seed=0, deterministic=True)
    [run] = train(TrainSpec(model="cnn", epochs=2, model_kwargs={"filters": [8, 16]}), seeds=5)
    return run.model.get_weights()


def test_two_deterministic_runs_give_bit_identical_weights():
    a = _train_once()
    b = _train_once()
    assert len(a) == len(b)
    for wa, wb in zip(a, b):
        assert wa.tobytes() == wb.tobytes()


def test_machine_names_what_decides_floating_point_results(monkeypatch):
    first = runtime.machine()
    assert set(first) == {"id", "cpu", "isa", "cache", "cores", "gpus", "tensorflow", "onednn"}
    assert first == runtime.machine() and len(first["id"]) == 12
    assert first["cores"] == os.cpu_count()
    # oneDNN on or off changes TF's CPU kernels, so it is another machine for bit-exactness
    monkeypatch.setenv("TF_ENABLE_ONEDNN_OPTS", "0" if first["onednn"] != "0" else "1")
    assert runtime.machine()["id"] != first["id"]
