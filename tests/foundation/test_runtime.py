import os

import numpy as np
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


@pytest.mark.skipif(bool(runtime.tf.config.list_physical_devices("GPU")),
                    reason="asserts the CPU default: with a GPU, jit_compile() defaults to True")
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
    assert first["cores"] == runtime.usable_cores()
    # oneDNN on or off changes TF's CPU kernels, so it is another machine for bit-exactness
    monkeypatch.setenv("TF_ENABLE_ONEDNN_OPTS", "0" if first["onednn"] != "0" else "1")
    assert runtime.machine()["id"] != first["id"]


def test_usable_cores_is_the_affinity_mask_not_the_hosts_count(monkeypatch):
    # a 2-core share of a 64-core host (a container, `taskset`): TF sizes its thread pools from the mask
    monkeypatch.setattr(runtime.os, "cpu_count", lambda: 64)
    monkeypatch.setattr(runtime.os, "sched_getaffinity", lambda pid: {5, 9}, raising=False)
    assert runtime.usable_cores() == 2
    assert runtime.machine()["cores"] == 2


@pytest.mark.parametrize("cpu_count, expected", [(8, 8), (None, 1)])
def test_usable_cores_falls_back_to_the_cpu_count_without_an_affinity_call(cpu_count, expected, monkeypatch):
    monkeypatch.delattr(runtime.os, "sched_getaffinity", raising=False)  # macOS, Windows
    monkeypatch.setattr(runtime.os, "cpu_count", lambda: cpu_count)
    assert runtime.usable_cores() == expected


def test_the_variability_protocols_default_worker_count_follows_the_usable_cores(monkeypatch):
    from tf_dlthesis.variability import protocol

    seen = []

    class Stop(Exception):
        pass

    def fake_executor(executor, train_fn, threads, workers, *args):
        seen.append(workers)
        raise Stop

    monkeypatch.setattr(protocol, "_parallel_executor", fake_executor)
    for cores, expected in ((1, 1), (2, 2), (16, 2)):
        monkeypatch.setattr(runtime, "usable_cores", lambda cores=cores: cores)
        with pytest.raises(Stop):
            protocol.run_protocol(lambda plan: None, sources=["init"], runs=2, labels=np.arange(4) % 2,
                                  executor="serial", progress=False)
    assert seen == [1, 2, 2]


@pytest.mark.parametrize("seed", [2**32, 2**40, np.uint64(2**63)])
def test_configure_rejects_a_seed_numpy_cannot_take_before_reseeding_anything(seed):
    # before: NumPy's "Seed must be between 0 and 2**32 - 1", raised after Keras's global seed and
    # Python's `random` had already been reseeded with it
    import random

    runtime.configure(seed=5)
    state = random.getstate()
    with pytest.raises(ValueError, match=r"`seed` must be an int in \[0, 2\*\*32 - 1\]. Received: seed="):
        runtime.configure(seed=seed)
    assert random.getstate() == state
    assert runtime.configure()["seed"] == 5
    assert runtime.configure(seed=2**32 - 1)["seed"] == 2**32 - 1


def test_a_stateless_seed_beyond_int64_is_an_error_naming_the_argument():
    from tf_dlthesis import data
    from tf_dlthesis._seeds import as_seed

    assert as_seed(2**63 - 1).numpy().tolist() == [2**63 - 1, 0]
    # before: TensorFlow's "Can't convert Python int to int64" style error, naming no argument
    with pytest.raises(ValueError, match=r"`seed` must be < 2\*\*63 \(an int64\). Received: seed=9223372036854775808"):
        data.standard_augment(np.zeros((8, 8, 1), np.float32), seed=2**63)
