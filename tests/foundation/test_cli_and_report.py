import os
import subprocess
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pytest  # noqa: E402

from tf_dlthesis import cli, experiments  # noqa: E402
from tf_dlthesis.experiments import Check, Finding, Output, Table, stats  # noqa: E402


@pytest.mark.parametrize(
    "argv, match",
    [
        (["train", "--dataset", "cifar1O"], "Unknown dataset"),
        (["train", "--model", "resnet50"], "Unknown model"),
        (["train", "--norm", "batchnorm"], "Unknown norm"),
        (["table", "9.9"], "Unknown table/figure id"),
        (["reproduce", "--only", "2.1x"], "Unknown table/figure id"),
        (["reproduce", "--only", ","], "--only must name at least one"),
        (["figure", "base"], "is a table, not a figure"),
    ],
)
def test_bad_names_give_one_line_errors(argv, match, capsys, tmp_path):
    out = tmp_path / "new" / "out"
    assert cli.main(argv + ["--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert match in err and len(err.splitlines()) == 1 and err.startswith("tf-dlthesis: error:")
    assert not (tmp_path / "new").exists()  # a failed command leaves no output folder behind


@pytest.mark.parametrize("argv", [["reproduce", "--scale", "huge"], ["reproduce", "--out", "/proc/no/such"],
                                  ["train", "--epochs", "0"], ["train", "--seed", "-1"]])
def test_bad_arguments_exit_2_with_one_line(argv, capsys):
    with pytest.raises(SystemExit) as info:
        cli.main(argv)
    assert info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("tf-dlthesis") and "error" in err[-1]


def test_report_has_thesis_beside_ours_figures_and_verdicts(tmp_path):
    @experiments.register("T.0", title="test table", chapter="T", quick_minutes=0.0)
    def _tiny(scale, dataset, store, *, out=None):
        store.record("T.0", {"x": 1}, 0, {"acc": 0.9})
        fig, ax = plt.subplots()
        ax.plot([0, 1], [0, 1])
        table = Table("T.0", "demo", "digits, quick", ["error_pct"], {"mixup": {"error_pct": 12.5}}, experiments.thesis_rows("2.1"), "CIFAR-10")
        findings = [Finding.test("mixup beats baseline", stats.Effect(0.5, 0.2, 0.8, "paired error difference"),
                                 above=0, evidence="12.5 vs 13.0"),
                    Finding.test("mixup beats BC+", stats.Effect(0.1, -0.2, 0.4, "paired error difference"), above=0),
                    Finding.not_comparable("works on CIFAR-100", "digits are not CIFAR-100")]
        return Output([table], [("fig_t0", fig)], findings, [Check("baseline overfits", False, "train acc 80%")])

    @experiments.register("T.1", title="broken", chapter="T", quick_minutes=0.0)
    def _broken(scale, dataset, store, *, out=None):
        raise RuntimeError("boom")

    try:
        path, failed = experiments.reproduce(out_dir=str(tmp_path), only=["T.0", "T.1"], progress=False)
        text = open(path).read()
        assert failed == 1
        assert "| error_pct (thesis) | error_pct (ours) |" in text
        assert "| mixup | 4.30 | 12.50 |" in text  # thesis 4.3 (Table 2.1) beside ours
        assert "| baseline | 5.40 | — |" in text
        assert "**reproduced**" in text and "RuntimeError: boom" in text
        assert "| 0.5 [0.2, 0.8] | > 0 | **reproduced** |" in text
        assert "**inconclusive**" in text and "**not comparable at this scale**" in text
        assert "reproduced: 1, inconclusive: 1, not comparable at this scale: 1" in text
        assert "| baseline overfits | **FAILED** | train acc 80% |" in text
        assert "0 of 1 passed (failed: T.0: baseline overfits)" in text
        assert os.path.exists(tmp_path / "figures" / "fig_t0.png")
        assert experiments.ResultsStore(tmp_path / "results.sqlite").has("T.0", {"x": 1}, 0)
    finally:
        experiments.REGISTRY.pop("T.0")
        experiments.REGISTRY.pop("T.1")


def test_finding_verdicts_are_validated():
    assert Finding.not_comparable("c", "reason").verdict == "not comparable at this scale"
    with pytest.raises(ValueError, match="verdict"):
        Finding("c", "probably", "e")
    with pytest.raises(ValueError, match="interval"):
        Finding("c", "reproduced", "no effect given")


def test_thesis_rows_normalises_single_metric_tables():
    rows = experiments.thesis_rows("2.1")
    assert rows["baseline"] == {"error_pct": 5.4}
    assert experiments.thesis_rows("3.1")["lrm"]["pgd10"] == 51.4


def test_train_command_reaches_95_percent_on_digits(tmp_path):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    proc = subprocess.run(
        [sys.executable, "-m", "tf_dlthesis.cli", "train", "--dataset", "digits", "--model", "cnn", "--epochs", "12", "--out", str(tmp_path)],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    line = [l for l in proc.stdout.splitlines() if l.startswith("test accuracy")][-1]
    accuracy = float(line.split()[2].rstrip("%"))
    assert accuracy >= 95.0, line
    rows = experiments.ResultsStore(tmp_path / "results.sqlite").rows("runs")
    assert rows and abs(rows[0]["result"]["metrics"]["test_accuracy"] * 100 - accuracy) < 0.01


def test_reproduce_writes_tensorboard_runs_and_resumes_from_the_store(tmp_path, monkeypatch):
    from tf_dlthesis.experiments import training

    spec = experiments.TrainSpec(dataset="digits", model="linear", norm="none", epochs=1)

    @experiments.register("T.2", title="resumable", chapter="T", quick_minutes=0.0)
    def _resumable(scale, dataset, store, *, out=None):
        [run] = experiments.train(spec, 0, store=store)
        table = Table("T.2", "acc", "digits", ["acc"], {"linear": {"acc": run.metrics["test_accuracy"]}})
        return Output(tables=[table])

    try:
        _, failed = experiments.reproduce(out_dir=str(tmp_path / "out"), only=["T.2"], tensorboard=str(tmp_path / "tb"),
                                          progress=False)
        assert failed == 0
        assert any((tmp_path / "tb").rglob("events.out.tfevents.*"))
        monkeypatch.setattr(training, "_train_one", lambda *a, **k: (_ for _ in ()).throw(AssertionError("retrained")))
        path, failed = experiments.reproduce(out_dir=str(tmp_path / "out"), only=["T.2"], progress=False)
        assert failed == 0, open(path).read()
        assert training.TENSORBOARD_DIR.get() is None  # TensorBoard switched off again after the run
    finally:
        experiments.REGISTRY.pop("T.2")
