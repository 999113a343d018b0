"""The benchmark scripts still build against the current API (they are not run here: timings need idle cores)."""

import importlib
import pathlib
import sys

import pytest

BENCHMARKS = pathlib.Path(__file__).resolve().parents[2] / "benchmarks"


@pytest.fixture(autouse=True)
def _benchmarks_on_path(monkeypatch):
    monkeypatch.syspath_prepend(str(BENCHMARKS))


@pytest.mark.parametrize("name", sorted(p.stem for p in BENCHMARKS.glob("bench_*.py")))
def test_benchmark_module_imports(name):
    module = importlib.import_module(name)
    assert callable(module.main)


def test_augment_benchmark_pipelines_yield_batches_of_the_right_shape():
    bench = importlib.import_module("bench_augment")
    pipes = bench.pipelines(2 * bench.BATCH)
    assert {"identity", "keras.MixUp", "keras.CutMix", "naive per-pair mixup", "pair-mode mixup"} <= set(pipes)
    for name, ds in pipes.items():
        x, y = next(iter(ds))
        assert tuple(x.shape[1:]) == bench.SHAPE and y.shape[-1] == bench.CLASSES, name
    assert sum(int(x.shape[0]) for x, _ in pipes["pair-mode mixup"]) == 2 * bench.BATCH  # one epoch's length
    sys.modules.pop("bench_augment", None)


def test_training_benchmark_counts_one_trace_of_the_train_step_ours_and_two_for_the_peer():
    from tf_dlthesis.experiments import TrainSpec

    bench = importlib.import_module("bench_training")
    assert set(bench.settings()) == {"baseline", "pair-mode mixup"}
    spec = TrainSpec(dataset="digits", model="cnn", model_kwargs={"filters": [4]}, epochs=1, train_examples=256,
                     test_examples=64)
    _, ours, traced_ours = bench._time(spec, 0, True)
    _, peer, traced_peer = bench._time(spec, 0, False)
    assert (traced_ours, traced_peer) == (1, 2)
    assert (ours.test_pred == peer.test_pred).all()
    sys.modules.pop("bench_training", None)


def test_standard_cost_benchmark_covers_every_chapter_and_its_floor_counts_the_runs_steps():
    from tf_dlthesis.experiments import TrainSpec, training

    bench = importlib.import_module("bench_standard_cost")
    chosen = bench.settings()
    assert {name.split(":")[0] for name in chosen} >= {"base", "2.1", "3.x", "4.1", "5.x"}
    assert all(epochs >= 1 and epochs <= spec.epochs for spec, epochs in chosen.values())
    assert any((spec.defense or {}).get("defense") == "pgd" for spec, _ in chosen.values())  # the PGD-k branch
    spec = TrainSpec(dataset="digits", model="cnn", model_kwargs={"filters": [4]}, epochs=2, batch_size=64,
                     train_examples=256, test_examples=64,
                     defense={"defense": "pgd", "epsilon": 0.1, "step_size": 0.05, "num_steps": 2})
    seconds, steps = bench._floor(spec, training.load_data(spec))
    assert steps == 2 * 256 // 64 and seconds > 0
    with pytest.raises(SystemExit):
        bench.main(["--only", "no-such-setting"])
    sys.modules.pop("bench_standard_cost", None)


@pytest.mark.parametrize("module, argv, message", [
    ("bench_training", ["--repeats", "0"], "--repeats must be >= 1. Received: 0"),
    ("sim_sd_ratio_coverage", ["--draws", "-1"], "--draws must be >= 1. Received: -1"),
    ("bench_robustness", ["--no-xla", "--xla-only"], "not allowed with argument"),
    ("bench_robustness", ["--quick", "--full"], "not allowed with argument"),
])
def test_benchmark_arguments_that_cannot_work_are_argparse_errors(module, argv, message, capsys):
    """`--repeats 0` trained a warm-up model and then died in statistics.median; `--draws -1` printed -0.0%
    coverage; `--no-xla --xla-only` ran the variant the user asked to skip."""
    bench = importlib.import_module(module)
    with pytest.raises(SystemExit) as info:
        bench.main(argv)
    assert info.value.code == 2 and message in capsys.readouterr().err
    sys.modules.pop(module, None)
