"""Process-level hardening: saved models load after `import tf_dlthesis` alone (every
registered object, in a fresh interpreter, `safe_mode=True`), quiet start-up, a CLI
whose --help/--version do not import TensorFlow, `python -m tf_dlthesis`."""

import json
import os
import subprocess
import sys
import textwrap

import keras
import numpy as np
import pytest

import tf_dlthesis
from tf_dlthesis import augment, normalization, recipes, robustness, variability
from tf_dlthesis.models import _shuffle_layers

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
RNG = np.random.default_rng(0)
X = RNG.uniform(0, 1, (4, 8, 8, 4)).astype("float32")
LOGITS_A = RNG.normal(size=(4, 10)).astype("float32")
LOGITS_B = RNG.normal(size=(4, 10)).astype("float32")
ONE_HOT = np.eye(10, dtype="float32")[[1, 3, 5, 7]]


def _clean_env(**extra):
    env = {k: v for k, v in os.environ.items() if k not in ("TF_CPP_MIN_LOG_LEVEL", "TF_DLTHESIS_VERBOSE")}
    env["PYTHONPATH"] = REPO + os.pathsep + env.get("PYTHONPATH", "")
    env.update(extra)
    return env


def _randomize(model, seed=1):
    """Every weight drawn from U(0.5, 1.5): non-trivial moving statistics, positive variances."""
    rng = np.random.default_rng(seed)
    model.set_weights([rng.uniform(0.5, 1.5, w.shape).astype(w.dtype) for w in model.get_weights()])
    return model


def _layer_model(layer, inputs=X):
    inp = keras.Input(inputs.shape[1:])
    out = layer(inp)
    if isinstance(out, (list, tuple)):
        out = keras.layers.Concatenate()(list(out))
    model = keras.Model(inp, keras.layers.Dense(3, name="head")(keras.layers.Flatten()(out)))
    return _randomize(model)


def _dense_model(**dense_kwargs):
    inp = keras.Input((10,))
    return _randomize(keras.Model(inp, keras.layers.Dense(10, **dense_kwargs)(inp)))


def _norm(layer):
    return {"kind": "model", "model": _layer_model(layer)}


def _loss(loss, *args):
    model = _dense_model()
    model.compile(optimizer="sgd", loss=loss)
    return {"kind": "loss", "model": model, "args": list(args)}


def _schedule(schedule, steps):
    model = _dense_model()
    model.compile(optimizer=keras.optimizers.SGD(learning_rate=schedule), loss="mse")
    return {"kind": "schedule", "model": model, "steps": list(steps), "schedule": schedule}


def _mixed_example():
    images, labels = keras.Input((8, 8, 4), name="images"), keras.Input((10,), name="labels")
    out = augment.MixedExample("vh_mixup", seed=0, num_classes=10)({"images": images, "labels": labels})
    model = keras.Model({"images": images, "labels": labels}, out)
    return {"kind": "mixing", "model": model}


def _robust_model():
    inner = _layer_model(keras.layers.Conv2D(2, 3, padding="same"))
    robust = robustness.RobustModel(inner, "alp", epsilon=0.1, step_size=0.05, num_steps=2)
    robust(X)
    return {"kind": "model", "model": robust}


#: One example per registered name: a model (or a callback config) that uses it. A
#: new registered class or function needs an entry here (the test says which).
EXAMPLES = {
    "ExampleWeightedBatchNormalization": lambda: _norm(normalization.ExampleWeightedBatchNormalization(0.3)),
    "GhostBatchNormalization": lambda: _norm(normalization.GhostBatchNormalization(2, example_weight=0.3)),
    "BatchGroupNormalization": lambda: _norm(normalization.BatchGroupNormalization(2, ghost_batch_size=2,
                                                                                   example_weight=0.3)),
    "ExampleWeightedGroupNormalization": lambda: _norm(normalization.ExampleWeightedGroupNormalization(2, 0.5)),
    "ChannelSplit": lambda: _norm(_shuffle_layers.ChannelSplit()),
    "ChannelShuffle": lambda: _norm(_shuffle_layers.ChannelShuffle(2)),
    "MixedExample": _mixed_example,
    "RobustModel": _robust_model,
    "CenteredL2": lambda: {"kind": "regularized", "x": LOGITS_A,
                           "model": _dense_model(kernel_regularizer=normalization.CenteredL2(0.01, 1.0))},
    "LabelSmoothingCrossEntropy": lambda: _loss(robustness.LabelSmoothingCrossEntropy(0.2), ONE_HOT, LOGITS_A),
    "LogitSqueezing": lambda: _loss(robustness.LogitSqueezing(), ONE_HOT, LOGITS_A),
    "LogitPairing": lambda: _loss(robustness.LogitPairing(), LOGITS_A, LOGITS_B),
    "DecoupledLogitPairing": lambda: _loss(robustness.DecoupledLogitPairing(beta=0.01), LOGITS_A, LOGITS_B),
    "label_smoothing_cross_entropy": lambda: _loss(robustness.label_smoothing_cross_entropy, ONE_HOT, LOGITS_A),
    "logit_squeezing": lambda: _loss(robustness.logit_squeezing, LOGITS_A),
    "logit_pairing": lambda: _loss(robustness.logit_pairing, LOGITS_A, LOGITS_B),
    "decoupled_logit_pairing": lambda: _loss(robustness.decoupled_logit_pairing, LOGITS_A, LOGITS_B),
    "CyclicCosineSchedule": lambda: _schedule(variability.CyclicCosineSchedule(0.1, 100, cycles=5, warmup_steps=3),
                                              [0, 2, 7, 19, 20, 55, 99]),
    "WarmupCosine": lambda: _schedule(recipes.WarmupCosine(0.1, 100, warmup_steps=10), [0, 5, 10, 50, 99]),
    "WarmupPiecewiseConstant": lambda: _schedule(
        recipes.WarmupPiecewiseConstant(10, 0.01, [40, 80], [0.1, 0.01, 0.001], warmup="linear"),
        [0, 5, 10, 39, 40, 85]),
    "SnapshotEnsemble": lambda: {"kind": "callback", "object": variability.SnapshotEnsemble(cycles=3)},
    "PreciseBN": lambda: {"kind": "callback", "object": normalization.PreciseBN(X, epochs=[1, 3], steps=2)},
    # an optimizer: serialized and rebuilt from its config like the callbacks
    "CoupledSGD": lambda: {"kind": "callback", "object": recipes.CoupledSGD(0.1, momentum=0.9, nesterov=True, l2=5e-4)},
    "DecaySGD": lambda: {"kind": "callback", "object": recipes.sgd(0.1, weight_decay=5e-4, weight_decay_mode="decoupled")},
    "DecayAdam": lambda: {"kind": "callback", "object": recipes.adam(0.01, weight_decay=1e-4)},
}
_OPTIONAL = {  # registered by modules that may not exist in every checkout of this issue
    "SWASchedule": ("tf_dlthesis.variability.swa", lambda m: _schedule(m.SWASchedule(0.1, 0.01, 40), [0, 10, 25, 39, 40, 60])),
    "StochasticWeightAveraging": ("tf_dlthesis.variability.swa",
                                  lambda m: {"kind": "callback", "object": m.StochasticWeightAveraging("swa", 2)}),
    "WeightNoise": ("tf_dlthesis.variability.weight_noise",
                    lambda m: {"kind": "callback", "object": m.WeightNoise(0.01, seed=3)}),
}

LOADER = textwrap.dedent(r"""
    import json, sys
    import numpy as np
    import keras
    import tf_dlthesis  # the only import of the package: it must register everything

    cases = json.load(open(sys.argv[1]))
    report = {"registered": sorted(k.split(">", 1)[1] for k in keras.saving.get_custom_objects()
                                   if k.startswith("tf_dlthesis>")), "results": {}}
    for name, case in cases.items():
        try:
            data = np.load(case["arrays"])
            if case["kind"] == "callback":
                config = json.load(open(case["file"]))
                cls = keras.saving.get_registered_object(config["registered_name"])
                obj = cls.from_config(config["config"]) if hasattr(cls, "from_config") else cls(**config["config"])
                got = {"class": type(obj).__name__, "config": obj.get_config()}
                ok = got == case["expected"]
            else:
                model = keras.saving.load_model(case["file"], safe_mode=True)
                if case["kind"] == "mixing":
                    out = model({"images": data["images"], "labels": data["labels"]}, training=True)
                    got = [np.asarray(out["images"]), np.asarray(out["labels"])]
                elif case["kind"] == "loss":
                    got = [np.asarray(model.loss(*[data[f"arg{i}"] for i in range(case["num_args"])]))]
                elif case["kind"] == "schedule":
                    got = []
                    for step in case["steps"]:
                        model.optimizer.iterations.assign(step)
                        got.append(np.asarray(model.optimizer.learning_rate))
                    got = [np.asarray(got)]
                else:
                    got = [np.asarray(model(data["x"], training=False))]
                    if case["kind"] == "regularized":
                        got.append(np.asarray(sum(model.losses)))
                ok = len(got) == case["num_expected"] and all(
                    np.array_equal(g, data[f"expected{i}"]) for i, g in enumerate(got))
            report["results"][name] = "ok" if ok else f"outputs differ: {got!r:.300}"
        except Exception as err:  # noqa: BLE001 - reported per case
            report["results"][name] = f"{type(err).__name__}: {err}"[:500]
    json.dump(report, open(sys.argv[2], "w"))
""")


def _save_case(name, case, folder):
    """Writes one case's file and expected outputs; returns its entry for the loader."""
    arrays, expected = {}, []
    entry = {"kind": case["kind"]}
    if case["kind"] == "callback":
        obj = case["object"]
        entry["file"] = str(folder / f"{name}.json")
        with open(entry["file"], "w") as fh:
            json.dump(keras.saving.serialize_keras_object(obj), fh)
        entry["expected"] = json.loads(json.dumps({"class": type(obj).__name__, "config": obj.get_config()}))
    else:
        model = case["model"]
        entry["file"] = str(folder / f"{name}.keras")
        model.save(entry["file"])
        if case["kind"] == "mixing":  # after saving: the saved seed state is the one the loader starts from
            images, labels = X, ONE_HOT
            out = model({"images": images, "labels": labels}, training=True)
            arrays.update(images=images, labels=labels)
            expected = [np.asarray(out["images"]), np.asarray(out["labels"])]
            assert not np.array_equal(expected[0], images)  # a real mix, not the identity
        elif case["kind"] == "loss":
            arrays.update({f"arg{i}": a for i, a in enumerate(case["args"])})
            entry["num_args"] = len(case["args"])
            expected = [np.asarray(model.loss(*case["args"]))]
        elif case["kind"] == "schedule":
            entry["steps"] = case["steps"]
            expected = [np.asarray([np.asarray(case["schedule"](s)) for s in case["steps"]], dtype="float32")]
        else:
            x = case.get("x", X)
            arrays["x"] = x
            expected = [np.asarray(model(x, training=False))]
            if case["kind"] == "regularized":
                expected.append(np.asarray(sum(model.losses)))
    entry["num_expected"] = len(expected)
    arrays.update({f"expected{i}": e for i, e in enumerate(expected)})
    entry["arrays"] = str(folder / f"{name}.npz")
    np.savez(entry["arrays"], **arrays)
    return entry


def test_every_registered_object_loads_in_a_fresh_process_after_import_tf_dlthesis(tmp_path):
    registered = sorted(k.split(">", 1)[1] for k in keras.saving.get_custom_objects() if k.startswith("tf_dlthesis>"))
    examples = dict(EXAMPLES)
    for name, (module, build) in _OPTIONAL.items():
        if name in registered:
            import importlib

            mod = importlib.import_module(module)
            examples[name] = lambda build=build, mod=mod: build(mod)
    missing = [n for n in registered if n not in examples]
    assert not missing, f"registered objects without a saving example in this test: {missing}"
    cases = {name: _save_case(name, examples[name](), tmp_path) for name in registered}
    (tmp_path / "cases.json").write_text(json.dumps(cases))
    (tmp_path / "loader.py").write_text(LOADER)
    proc = subprocess.run([sys.executable, str(tmp_path / "loader.py"), str(tmp_path / "cases.json"),
                           str(tmp_path / "report.json")], capture_output=True, text=True, timeout=240,
                          env=_clean_env(), cwd=str(tmp_path))
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads((tmp_path / "report.json").read_text())
    # `import tf_dlthesis` alone registers everything this test process registered
    assert report["registered"] == registered
    failed = {n: r for n, r in report["results"].items() if r != "ok"}
    assert not failed, failed
    assert len(report["results"]) == len(registered) >= 19


def test_registered_callbacks_deserialize_through_keras():
    for name in ("SnapshotEnsemble", "StochasticWeightAveraging", "WeightNoise"):
        cls = keras.saving.get_registered_object(f"tf_dlthesis>{name}")
        if cls is None:
            continue
        config = keras.saving.serialize_keras_object(EXAMPLES.get(name, lambda: None)()["object"]
                                                     if name in EXAMPLES else _OPTIONAL[name][1](
                                                         sys.modules[_OPTIONAL[name][0]])["object"])
        assert type(keras.saving.deserialize_keras_object(config, safe_mode=True)) is cls


def test_import_and_first_op_print_nothing_unless_verbose(tmp_path):
    code = ("import tf_dlthesis, keras, numpy as np\n"
            "m = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])\n"
            "m.compile('sgd', 'mse')\n"
            "m.fit(np.zeros((8, 3)), np.zeros((8, 2)), epochs=1, verbose=0)\n"
            "import os; print(os.environ.get('TF_CPP_MIN_LOG_LEVEL'))\n")
    quiet = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                           env=_clean_env(), cwd=str(tmp_path))
    assert quiet.returncode == 0, quiet.stderr
    assert quiet.stderr == "", quiet.stderr  # no oneDNN / CUDA / cpu-feature banner, no cuInit error
    assert quiet.stdout.strip() == "3"
    loud = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                          env=_clean_env(TF_DLTHESIS_VERBOSE="1"), cwd=str(tmp_path))
    assert loud.returncode == 0, loud.stderr
    assert loud.stdout.strip() == "None"  # verbose: TensorFlow's own default log level


def test_verbose_reads_the_environment(monkeypatch):
    for value, expected in (("1", True), ("true", True), ("ON", True), ("0", False), ("", False)):
        monkeypatch.setenv("TF_DLTHESIS_VERBOSE", value)
        assert tf_dlthesis.verbose() is expected
    monkeypatch.delenv("TF_DLTHESIS_VERBOSE")
    assert tf_dlthesis.verbose() is False


@pytest.mark.parametrize("argv", [["-m", "tf_dlthesis", "--help"], ["-m", "tf_dlthesis", "--version"],
                                  ["-m", "tf_dlthesis.cli", "train", "--seed", "-1"]])
def test_cli_help_version_and_flag_errors_do_not_import_tensorflow(argv, tmp_path):
    proc = subprocess.run([sys.executable, "-X", "importtime", *argv], capture_output=True, text=True, timeout=60,
                          env=_clean_env(), cwd=str(tmp_path))
    imported = {line.split("|")[-1].strip() for line in proc.stderr.splitlines() if line.startswith("import time:")}
    assert "tf_dlthesis" in imported
    assert "tensorflow" not in imported and "keras" not in imported
    if "--version" in argv:
        assert proc.returncode == 0 and proc.stdout.strip() == f"tf-dlthesis {tf_dlthesis.__version__}"
    elif "--help" in argv:
        assert proc.returncode == 0 and "reproduce" in proc.stdout and "--version" in proc.stdout
    else:
        assert proc.returncode == 2 and "argument --seed: expected an int seed >= 0, got '-1'" in proc.stderr


def test_python_dash_m_tf_dlthesis_runs_the_cli(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "tf_dlthesis", "list"], capture_output=True, text=True, timeout=120,
                          env=_clean_env(), cwd=str(tmp_path))
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == ""  # quiet: no TensorFlow banner
    ids = [line.split()[0] for line in proc.stdout.splitlines()]
    assert {"2.1", "fig4.1", "5.1"} <= set(ids)
