import os
import subprocess
import sys

import matplotlib
import numpy as np

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pytest  # noqa: E402

import tf_dlthesis  # noqa: E402
from tf_dlthesis import cli, experiments  # noqa: E402
from tf_dlthesis.experiments import Check, Finding, Output, Table, stats  # noqa: E402


@pytest.mark.parametrize(
    "argv, match",
    [
        (["train", "--dataset", "cifar1O"], "Unknown dataset"),
        (["train", "--model", "resnet50"], "Unknown model"),
        (["train", "--norm", "batchnorm"], "Unknown norm"),
        (["train", "--mixing", "vhmixup"], "Unknown mixing method 'vhmixup'. Did you mean 'vh_mixup'"),
        (["train", "--recipe", "cosin"], "cosin"),
        (["table", "9.9"], "Unknown table/figure id '9.9'"),
        (["reproduce", "--only", "2.1x"], "Unknown table/figure id '2.1x'"),
        (["reproduce", "--only", "2.1,fig9"], "Unknown table/figure id 'fig9'"),
        (["figure", "base"], "'base' is a table, not a figure: use `tf-dlthesis table base`"),
        (["figure", "4.wd"], "'4.wd' is a table, not a figure"),
        (["table", "fig4.1"], "'fig4.1' is a figure, not a table"),
        (["reproduce", "--dataset", "nosuchset"], "nosuchset"),
        (["train", "--train-examples", "99999"], "`train_examples`=99999 exceeds the 1433 training examples."),
        (["train", "--batch-size", "5000", "--mixing", "mixup"],
         "`batch_size` must be <= the 1433 training examples with `mixing`"),
    ],
)
def test_bad_names_are_argparse_errors_before_anything_is_created(argv, match, capsys, tmp_path):
    out = tmp_path / "new" / "out"
    with pytest.raises(SystemExit) as info:
        cli.main(argv + ["--out", str(out)])
    assert info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[0].startswith("usage: tf-dlthesis")
    assert err[-1].startswith(f"tf-dlthesis {argv[0]}: error: ") and match in err[-1], err[-1]
    assert not (tmp_path / "new").exists()  # a failed command leaves no output folder behind


@pytest.mark.parametrize("argv, match", [
    (["reproduce", "--scale", "huge"], "argument --scale: invalid choice: 'huge'"),
    (["reproduce", "--out", "/proc/no/such"], "argument --out: cannot write to output folder"),
    (["reproduce", "--only", ""], "argument --only: must name at least one table or figure id"),
    (["reproduce", "--only", " , "], "argument --only: must name at least one table or figure id"),
    (["reproduce", "--jobs", "0"], "argument --jobs: expected a positive int or 'auto', got '0'"),
    (["reproduce", "--jobs", "two"], "argument --jobs: expected a positive int or 'auto', got 'two'"),
    (["table", ""], "argument id: expected a name, got ''"),
    (["train", "--epochs", "0"], "argument --epochs: expected a positive int, got '0'"),
    (["train", "--epochs", "-3"], "argument --epochs: expected a positive int, got '-3'"),
    (["train", "--batch-size", "2.5"], "argument --batch-size: expected a positive int, got '2.5'"),
    (["train", "--train-examples", "-1"], "argument --train-examples: expected a positive int"),
    (["train", "--image-size", "0"], "argument --image-size: expected a positive int"),
    (["train", "--lr", "-0.1"], "argument --lr: expected a positive float, got '-0.1'"),
    (["train", "--lr", "nan"], "argument --lr: expected a positive float, got 'nan'"),
    (["train", "--lr", "inf"], "argument --lr: expected a positive float, got 'inf'"),
    (["train", "--seed", "-1"], "argument --seed: expected an int seed >= 0, got '-1'"),
    (["train", "--seed", "x"], "argument --seed: expected an int seed >= 0, got 'x'"),
    (["train", "--seed", "4294967296"], "argument --seed: expected an int seed <= 4294967295"),
    (["train", "--save", "model.h5"], "argument --save: expected a file name ending in .keras"),
    (["train", "--data-dir", "/no/such/folder"], "argument --data-dir: no such folder: '/no/such/folder'"),
    (["train", "--model", ""], "argument --model: expected a name, got ''"),
])
def test_bad_flags_are_caught_by_argparse_before_anything_is_created(argv, match, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as info:
        cli.main(argv)
    assert info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith(f"tf-dlthesis {argv[0]}: error: ") and match in err[-1], err[-1]
    assert os.listdir(tmp_path) == []  # not even the default tf-dlthesis-out/ folder


def test_train_without_the_datasets_files_is_a_one_line_error_before_anything_is_created(capsys, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(SystemExit) as info:
        cli.main(["train", "--dataset", "mnist", "--data-dir", str(empty), "--out", str(tmp_path / "out")])
    assert info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("tf-dlthesis train: error: `data_dir` does not hold MNIST"), err[-1]
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("command", [["table", "2.1"], ["reproduce", "--only", "2.1"]])
def test_table_or_reproduce_without_the_datasets_files_is_a_one_line_error_before_anything_is_created(
        command, capsys, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(SystemExit) as info:  # once: an output folder and a failed report, exit 1
        cli.main([*command, "--dataset", "mnist", "--data-dir", str(empty), "--out", str(tmp_path / "out")])
    assert info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith(f"tf-dlthesis {command[0]}: error: `data_dir` does not hold MNIST"), err[-1]
    assert not (tmp_path / "out").exists()


def test_an_image_size_too_large_for_memory_is_a_one_line_error(capsys, tmp_path):
    with pytest.raises(SystemExit) as info:  # once: a ten-frame traceback ending in ResourceExhaustedError
        cli.main(["train", "--image-size", "100000", "--epochs", "1", "--out", str(tmp_path / "out")])
    assert info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("tf-dlthesis train: error: out of memory preparing the data (OOM"), err[-1]
    assert "--image-size" in err[-1] and not (tmp_path / "out").exists()


def test_version_flag(capsys):
    with pytest.raises(SystemExit) as info:
        cli.main(["--version"])
    assert info.value.code == 0
    assert capsys.readouterr().out.strip() == f"tf-dlthesis {tf_dlthesis.__version__}"


def test_train_save_writes_a_keras_model_with_the_trained_weights(tmp_path, capsys):
    import keras
    import numpy as np

    path = tmp_path / "models" / "linear.keras"
    (tmp_path / "models").mkdir()
    argv = ["train", "--model", "linear", "--norm", "none", "--epochs", "1", "--out", str(tmp_path / "out"),
            "--save", str(path)]
    assert cli.main(argv) == 0
    assert f"model: {path}" in capsys.readouterr().out
    model = keras.saving.load_model(path, safe_mode=True)
    [row] = experiments.ResultsStore(tmp_path / "out" / "results.sqlite").rows("runs")
    stored = row["result"]["weights"]  # the run's final weights, as recorded in the store
    weights = model.get_weights()
    assert len(weights) == len(stored) >= 2
    for i, w in enumerate(weights):
        np.testing.assert_array_equal(w, stored[f"w{i}"])
    x = np.random.default_rng(0).uniform(0, 1, (5, *model.input_shape[1:])).astype("float32")
    w, b = weights  # a linear model: logits = flatten(x) @ W + b, by hand
    np.testing.assert_allclose(model.predict(x, verbose=0), x.reshape(5, -1) @ w + b, rtol=1e-5, atol=1e-5)


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


def test_only_selects_in_report_order_whatever_the_order_given():
    every = experiments.registry.all_ids()
    picked = [every[-1], every[0], every[len(every) // 2]]
    chosen = [e.id for e in experiments.registry.select(picked)]
    assert chosen == [i for i in every if i in picked] and chosen != picked


@pytest.mark.parametrize("jobs, error", [(0, ValueError), (-1, ValueError), (True, TypeError), (1.5, TypeError),
                                         ("2", TypeError)])
def test_reproduce_refuses_a_bad_jobs_count_before_creating_anything(jobs, error, tmp_path):
    with pytest.raises(error, match=r"`jobs` must be an int >= 1 .* Received: jobs="):
        experiments.reproduce(out_dir=str(tmp_path / "out"), only=["fig2.2"], jobs=jobs)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("scale, cores, expected", [("quick", 2, 3), ("quick", 1, 2), ("quick", 8, 9),
                                                    ("standard", 2, 1), ("full", 8, 1)])
def test_auto_jobs_is_one_more_than_the_cores_at_the_quick_scale_only(scale, cores, expected, monkeypatch):
    from tf_dlthesis.experiments import report

    from tf_dlthesis import runtime

    monkeypatch.setattr(runtime.os, "cpu_count", lambda: 64)  # a container's share of a larger host
    monkeypatch.setattr(runtime.os, "sched_getaffinity", lambda pid: set(range(cores)), raising=False)
    assert report.auto_jobs(scale) == expected
    assert report._jobs("auto", scale) == expected


@pytest.mark.parametrize("argv, expected", [([], "auto"), (["--jobs", "auto"], "auto"), (["--jobs", "2"], 2)])
def test_the_command_line_runs_chapters_side_by_side_unless_told(argv, expected, tmp_path, monkeypatch):
    seen = {}

    def fake_reproduce(**kwargs):
        seen.update(kwargs)
        return str(tmp_path / "report.md"), 0

    monkeypatch.setattr(experiments, "reproduce", fake_reproduce)
    assert cli.main(["reproduce", "--only", "fig2.2", "--out", str(tmp_path), *argv]) == 0
    assert seen["jobs"] == expected


@pytest.mark.parametrize("workers, error", [(0, ValueError), (True, TypeError), (2.0, TypeError)])
def test_register_refuses_a_bad_workers_count(workers, error):
    with pytest.raises(error, match=r"`workers` must be an int >= 1. Received: workers="):
        experiments.register("T.w", title="t", chapter="T", workers=workers)
    assert "T.w" not in experiments.REGISTRY


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


def test_reproduce_writes_tensorboard_runs_and_resumes_from_the_store_or_its_archive(tmp_path, monkeypatch):
    from tf_dlthesis.experiments import training

    spec = experiments.TrainSpec(dataset="digits", model="linear", norm="none", epochs=1)

    @experiments.register("T.2", title="resumable", chapter="T", quick_minutes=0.0)
    def _resumable(scale, dataset, store, *, out=None):
        [run] = experiments.train(spec, 0, store=store)
        table = Table("T.2", "acc", "digits", ["acc"], {"linear": {"acc": run.metrics["test_accuracy"]}})
        return Output(tables=[table])

    try:
        first, failed = experiments.reproduce(out_dir=str(tmp_path / "out"), only=["T.2"],
                                              tensorboard=str(tmp_path / "tb"), progress=False,
                                              archive=str(tmp_path / "rows"))
        assert failed == 0
        assert any((tmp_path / "tb").rglob("events.out.tfevents.*"))
        # the one training run, and the item's compute time (one row per process that computed)
        assert len(list((tmp_path / "rows").rglob("*.json.gz"))) == 2
        header = open(first).read().split("| id |")[0]
        total = len(experiments.registry.select())
        assert f"**Partial report: 1 of {total} registered items.**" in header and ", 2.1, " in header
        import tensorflow as tf

        from tf_dlthesis import runtime

        assert f"TensorFlow {tf.__version__}" in header and f"(machine id {runtime.machine()['id']})" in header
        assert f"{runtime.machine()['cores']} cores" in header and "the core count and the cache sizes" in header
        assert not runtime.machine()["cache"] or f"cache size {runtime.machine()['cache']}" in header
        monkeypatch.setattr(training, "_train_one", lambda *a, **k: (_ for _ in ()).throw(AssertionError("retrained")))
        path, failed = experiments.reproduce(out_dir=str(tmp_path / "out"), only=["T.2"], progress=False)
        assert failed == 0, open(path).read()
        assert training.TENSORBOARD_DIR.get() is None  # TensorBoard switched off again after the run
        # a fresh machine: a new output folder with only the committed archive
        moved, failed = experiments.reproduce(out_dir=str(tmp_path / "fresh"), only=["T.2"], progress=False,
                                              archive=str(tmp_path / "rows"))
        assert failed == 0, open(moved).read()
        table = [line for line in open(first) if line.startswith("| linear")]
        assert table and table == [line for line in open(moved) if line.startswith("| linear")]
        # each section names the machine that computed its stored results; the archive carries it
        here = runtime.machine()["id"]
        provenance = (f"Provenance: its stored results (trained runs and evaluations) were all computed on machine "
                      f"{here}. `--only T.2` reproduces this section bit for bit on a machine with id {here}.\n")
        assert provenance in open(path).readlines() and provenance in open(moved).readlines()
        # the resumed reports show the item's recorded compute time, not the read-back time
        timing = [line for line in open(first) if line.startswith("| T.2 |")]
        assert timing == [line for line in open(path) if line.startswith("| T.2 |")]
        assert timing == [line for line in open(moved) if line.startswith("| T.2 |")]
    finally:
        experiments.REGISTRY.pop("T.2")


def test_archive_reads_lists_the_rows_no_item_reads_and_never_trains(tmp_path, monkeypatch):
    from tf_dlthesis.experiments import training

    spec = experiments.TrainSpec(dataset="digits", model="linear", norm="none", epochs=1)

    @experiments.register("T.3", title="reads one run", chapter="T", quick_minutes=0.0)
    def _reads(scale, dataset, store, *, out=None):
        [run] = experiments.train(spec, 0, store=store)
        return Output(tables=[Table("T.3", "acc", "digits", ["acc"], {"linear": {"acc": run.metrics["test_accuracy"]}})])

    rows = tmp_path / "rows"
    try:
        _, failed = experiments.reproduce(out_dir=str(tmp_path / "out"), only=["T.3"], progress=False,
                                          archive=str(rows))
        assert failed == 0
        stray = experiments.ResultsStore(tmp_path / "stray.sqlite")  # a row of settings no item uses any more
        stray.record("runs", {"spec": "an old setting"}, 0, {"acc": 0.1})
        stray.export_rows(rows)
        files = sorted(str(p.relative_to(rows)) for p in rows.rglob("*.json.gz"))
        assert len(files) == 3  # the run, the item's time, the stray row
        monkeypatch.setattr(training, "_train_one", lambda *a, **k: (_ for _ in ()).throw(AssertionError("trained")))
        found = experiments.archive_reads(rows, scale="quick", only="T.3")
        stray_file = experiments.ResultsStore._archive_name("runs", experiments.results_store.config_hash(
            {"spec": "an old setting"}), 0)
        assert found["unread"] == [stray_file]
        assert sorted(found["read"] + found["unread"]) == files
        assert sorted(str(p.relative_to(rows)) for p in rows.rglob("*.json.gz")) == files  # archive untouched
        # an archive that lacks the item's run: a ValueError naming the item, and nothing trained
        (rows / [f for f in found["read"] if f.startswith("runs-")][0]).unlink()
        with pytest.raises(ValueError, match=r"Item T.3 reads a run that the archive .* lacks \(Not stored: Run 0"):
            experiments.archive_reads(rows, scale="quick", only="T.3")
    finally:
        experiments.REGISTRY.pop("T.3")
    with pytest.raises(ValueError, match=r"`archive` must be a folder .* Received: archive="):
        experiments.archive_reads(tmp_path / "missing")
    with pytest.raises(ValueError, match="`scale` must be one of"):
        experiments.archive_reads(rows, scale="huge")
    with pytest.raises(ValueError, match="Unknown table/figure id '9.9'"):
        experiments.archive_reads(rows, only="9.9")


def test_item_compute_seconds_add_up_over_processes_and_survive_the_archive(tmp_path):
    from tf_dlthesis.experiments import report

    store = experiments.ResultsStore(tmp_path / "a.sqlite")
    exp = experiments.registry.get("2.1")
    assert report.item_seconds(store, "standard", None, exp) == 0.0
    assert report.record_item_seconds(store, "standard", None, exp, 100.0) == 100.0
    assert report.record_item_seconds(store, "standard", None, exp, 20.5) == 120.5
    assert report.item_seconds(store, "quick", None, exp) == 0.0  # per scale
    assert report.item_seconds(store, "standard", "fashion_mnist", exp) == 120.5  # the scale's default dataset
    with pytest.raises(ValueError, match="seconds"):
        report.record_item_seconds(store, "standard", None, exp, -1.0)
    store.export_rows(tmp_path / "rows")
    fresh = experiments.ResultsStore(tmp_path / "b.sqlite")
    fresh.import_rows(tmp_path / "rows")
    assert len(fresh) == 2 and report.item_seconds(fresh, "standard", None, exp) == 120.5


def test_progress_off_a_terminal_is_a_line_per_finished_item(tmp_path, capsys):
    for i in (0, 1):
        experiments.register(f"T.p{i}", title=f"tiny {i}", chapter="T", quick_minutes=0.0)(
            lambda scale, dataset, store, *, out=None: Output([], [], [], []))
    try:
        experiments.reproduce(out_dir=str(tmp_path), only=["T.p0", "T.p1"], progress=True)
    finally:
        for i in (0, 1):
            experiments.REGISTRY.pop(f"T.p{i}", None)
    err = capsys.readouterr().err
    lines = err.replace("\r", "\n").splitlines()
    assert not [line for line in lines if line.startswith("reproduce")], err  # no bar in a log
    items = [line for line in lines if line.startswith("[")]
    assert [line.split(" (")[0] for line in items] == ["[1/2] T.p0 done", "[2/2] T.p1 done"], err


@pytest.mark.parametrize("value, text", [(0.99999999, "1.00"), (1.0000001, "1.00"), (-0.99999, "-1.00"),
                                         (0.9999, "0.9999"), (0.87164, "0.8716"), (1.5, "1.50"), (0.0074, "0.0074"),
                                         (99.996, "100.0"), (100.0, "100.0"), (999.96, "1.00e+03"),
                                         (0.00099996, "0.001"), (0.001, "0.001"), (1.234e-5, "1.23e-05"),
                                         (123.456, "123.5"), (float("inf"), "inf")])
def test_fmt_reads_the_same_on_both_sides_of_a_band_edge(value, text):
    # a value that rounds up to 1 used to read "1" while one an ulp above 1 read "1.00" (and 99.996 "100.00")
    from tf_dlthesis.experiments.registry import fmt

    assert fmt(value) == text


def _deep(n):
    if n == 0:
        raise ZeroDivisionError("raised at the bottom")
    return _deep(n - 1)


def test_a_malformed_item_fails_alone_and_the_report_keeps_the_line_that_raised(tmp_path):
    # before: an Output the report could not show (table rows that are no dicts, a finding that is no
    # Finding, a figure that is no figure) stopped reproduce with an AttributeError and no report; and a
    # traceback deeper than 8 frames lost its innermost frames, the line that raised
    good_table = Table("T.g", "good", "s", ["a"], {"r": {"a": 1.0}})
    items = {
        "T.bt": lambda: Output(tables=[Table("T.bt", "t", "s", ["a"], [1, 2])]),
        "T.bf": lambda: Output(findings=["not a finding"]),
        "T.bg": lambda: Output(figures=[("fig_bad", "not a figure")]),
        "T.dp": lambda: _deep(20),
        "T.g": lambda: Output(tables=[good_table]),
    }
    for item_id, make in items.items():
        experiments.register(item_id, title=item_id, chapter="T", quick_minutes=0.0)(
            lambda scale, dataset, store, *, out=None, make=make: make())
    try:
        path, failed = experiments.reproduce(out_dir=str(tmp_path), only=list(items), progress=False)
        text = open(path).read()
        assert failed == 4
        assert "| r | 1.00 |" in text  # the good item is reported
        assert "TypeError: Table 'T.bt' in the output of 'T.bt': `rows` must map each row name" in text
        assert "TypeError: `findings[0]` in the output of 'T.bf' must be a Finding. Received: 'not a finding'" in text
        assert "TypeError: `figures[0]` in the output of 'T.bg' must be a (name, matplotlib figure) pair" in text
        assert 'raise ZeroDivisionError("raised at the bottom")' in text and "frame(s) omitted" in text
        assert "return _deep(n - 1)" in text and "in _compute_item" in text  # both ends of the stack
    finally:
        for item_id in items:
            experiments.REGISTRY.pop(item_id, None)


def test_reproduce_checks_scale_only_and_out_dir_before_creating_anything(tmp_path):
    # before: scale="huge" made the folder, failed every item, then a KeyError; only=[] wrote an empty
    # report; only="T.s" (a string) was read as the ids 'T', '.', 's'; a file as out_dir: FileExistsError
    experiments.register("T.s", title="tiny", chapter="T", quick_minutes=0.0)(
        lambda scale, dataset, store, *, out=None: Output())
    try:
        with pytest.raises(ValueError, match=r"`scale` must be one of \('quick', 'standard', 'full'\). "
                                             r"Received: scale='huge'"):
            experiments.reproduce(scale="huge", out_dir=str(tmp_path / "a"), only=["T.s"], progress=False)
        with pytest.raises(ValueError, match=r"`only` must name at least one table or figure id"):
            experiments.reproduce(out_dir=str(tmp_path / "a"), only=[], progress=False)
        (tmp_path / "file").write_text("")
        with pytest.raises(ValueError, match=r"`out_dir` must be a folder, but .* is a file"):
            experiments.reproduce(out_dir=str(tmp_path / "file"), only=["T.s"], progress=False)
        with pytest.raises(ValueError, match=r"`out_dir` must be a non-empty folder path"):
            experiments.reproduce(out_dir="", only=["T.s"], progress=False)
        assert not (tmp_path / "a").exists()
        path, failed = experiments.reproduce(out_dir=str(tmp_path / "b"), only="T.s", progress=False)
        assert failed == 0 and "## T.s: tiny" in open(path).read()
        assert [e.id for e in experiments.registry.select("T.s, T.s")] == ["T.s"]
    finally:
        experiments.REGISTRY.pop("T.s", None)


def test_findings_and_checks_refuse_contradictions():
    effect = stats.Effect(1.0, 0.5, 2.0, "difference")
    nan = float("nan")
    # before: all accepted, and the report printed a verdict nobody could check
    with pytest.raises(ValueError, match=r"needs the claimed region it was judged against"):
        Finding("c", "reproduced", "", effect)
    with pytest.raises(ValueError, match=r"a NaN interval is 'inconclusive'"):
        Finding("c", "reproduced", "", stats.Effect(nan, nan, nan, "difference"), "> 0")
    with pytest.raises(TypeError, match=r"`effect` must be a stats.Effect .* Received: effect=0.5"):
        Finding.test("c", 0.5, above=0)  # before: AttributeError: 'float' object has no attribute 'low'
    with pytest.raises(TypeError, match=r"`effect` must be a stats.Effect or None"):
        Finding.not_comparable("c", "reason", effect=0.5)
    with pytest.raises(ValueError, match=r"`above` must be < `below`. Received: above=2, below=1"):
        Finding.not_comparable("c", "reason", above=2, below=1)  # before: region "in (2.00, 1.00)"
    with pytest.raises(ValueError, match=r"`above` must be a finite number or None. Received: above=nan"):
        Finding.test("c", effect, above=nan)  # before: region "> nan", verdict inconclusive
    with pytest.raises(TypeError, match=r"Check `passed` must be a bool. Received: passed='no'"):
        Check("n", "no", "detail")  # before: a truthy string, reported "ok"
    assert Check("n", np.bool_(False), "detail").passed == False  # noqa: E712 (NumPy comparisons stay fine)
    assert Finding.test("c", stats.Effect(1.0, 0.5, float("inf"), "ratio"), above=0).verdict == "reproduced"
    assert Finding.not_comparable("c", "reason", above=0.5, below=2).region == "in (0.5, 2.00)"


@pytest.mark.parametrize("machines, expected", [
    ({}, "Provenance: no stored results; everything here was computed by the run that wrote this report."),
    ({"m2": 3, "m1": 5}, "Provenance: its stored results (trained runs and evaluations) were computed on machine m1 "
                         "and machine m2. `--only X.1` in a fresh folder recomputes them all on one machine, so it "
                         "can match this section bit for bit only where every one of them was computed on a machine "
                         "like it."),
    ({None: 2, "m1": 1}, "Provenance: its stored results (trained runs and evaluations) were computed on machine m1 "
                         "and unrecorded machines (stored before machines were recorded). `--only X.1` in a fresh "
                         "folder recomputes"),
    ({None: 1}, "Provenance: its stored results (trained runs and evaluations) were all computed on unrecorded "
                "machines (stored before machines were recorded). `--only X.1` in a fresh folder"),
    ({"m1": 4}, "Provenance: its stored results (trained runs and evaluations) were all computed on machine m1. "
                "`--only X.1` reproduces this section bit for bit on a machine with id m1."),
])
def test_provenance_line_names_every_machine_and_promises_bit_exactness_only_for_one(machines, expected):
    from tf_dlthesis.experiments import report

    line = report._provenance_line("X.1", machines)
    assert line.startswith(expected)
    assert ("reproduces this section bit for bit" in line) == (len(machines) == 1 and None not in machines)


def test_the_header_counts_sections_by_provenance():
    from tf_dlthesis.experiments import report

    outputs = [Output(machines=m) for m in ({"a": 2}, {"a": 5}, {"b": 1}, {}, {None: 3, "a": 1}, {"a": 1, "b": 1})]
    assert report._provenance_summary(outputs) == (
        "Provenance of the 6 sections (each has its own line): 2 used results all computed on machine a (an "
        "`--only` rerun on a machine with that id reproduces them bit for bit), 1 stored nothing, 1 used results "
        "all computed on machine b (an `--only` rerun on a machine with that id reproduces them bit for bit), 1 "
        "used results from several recorded machines, 1 used results from unrecorded machines.")


def test_an_item_counts_each_stored_result_it_used_once_by_machine(tmp_path, monkeypatch):
    store = experiments.ResultsStore(tmp_path / "r.sqlite")
    store.record("e", {"k": 0}, 0, {"v": 1})
    monkeypatch.setattr(store, "_machine", "other")  # the next rows come from another machine
    store.record("e", {"k": 1}, 0, {"v": 2})

    @experiments.register("T.m", title="provenance", chapter="T", quick_minutes=0.0)
    def _item(scale, dataset, store, *, out=None):
        for _ in range(2):  # read twice: counted once
            store.get("e", {"k": 0}, 0), store.get("e", {"k": 1}, 0)
        store.get("e", {"k": 2}, 0)  # absent: not counted
        store.get_or_compute("e", {"k": 3}, 0, lambda: {"v": 3})  # computed here, by "other"
        return Output()

    try:
        output = experiments.registry.get("T.m")("quick", None, store)
    finally:
        experiments.REGISTRY.pop("T.m")
    from tf_dlthesis import runtime

    assert output.machines == {runtime.machine()["id"]: 1, "other": 2}


def test_an_item_read_back_from_its_store_counts_the_same_results_as_when_it_computed_them(tmp_path):
    """A rebuild reads an evaluation's own row only; the rows it was computed from still count (Table 3.6's case)."""
    store = experiments.ResultsStore(tmp_path / "r.sqlite")

    @experiments.register("T.r", title="rebuild", chapter="T", quick_minutes=0.0)
    def _item(scale, dataset, store, *, out=None):
        def evaluate():
            for batch in range(3):  # per-batch rows for resuming, recorded on the way
                store.record("per_batch", {"b": batch}, 0, {"v": batch})
            return {"acc": 0.5}

        store.get_or_compute("evaluation", {"k": 0}, 0, evaluate)
        return Output()

    try:
        fresh = experiments.registry.get("T.r")("quick", None, store)
        rebuilt = experiments.registry.get("T.r")("quick", None, experiments.ResultsStore(tmp_path / "r.sqlite"))
    finally:
        experiments.REGISTRY.pop("T.r")
    from tf_dlthesis import runtime

    assert fresh.machines == rebuilt.machines == {runtime.machine()["id"]: 4}


@pytest.mark.parametrize("argv", [["reproduce", "--scale", "quick", "--only", "A.2"], ["train", "--epochs", "1"]])
@pytest.mark.parametrize("bad", ["garbage", "folder"])
def test_an_unreadable_results_file_is_a_one_line_error(argv, bad, capsys, tmp_path):
    # it was a full traceback ending in "file is not a database", exit status 1
    out = tmp_path / "out"
    out.mkdir()
    if bad == "garbage":
        (out / "results.sqlite").write_bytes(b"not a database" * 100)
    else:
        (out / "results.sqlite").mkdir()
    assert cli.main(argv + ["--out", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("tf-dlthesis: error: Cannot open results store"), err


@pytest.mark.parametrize("number", ["2.2", "3.1", "3.2", "4.1", "5.1", "5.2"])
def test_figure_with_a_bare_number_names_the_figure_where_a_table_shares_it(number):
    """`tf-dlthesis figure 4.1` (DESIGN.md's own example) was refused: the table of the same number was found first."""
    import argparse

    from tf_dlthesis import experiments

    assert experiments.get(number, kind="figure").id == f"fig{number}"
    assert experiments.get(number, kind="table").id == experiments.get(number).id == number
    for command, expected in (("figure", f"fig{number}"), ("table", number)):
        args = argparse.Namespace(command=command, id=number, dataset=None, data_dir=None)

        class _Parser:
            def error(self, message):
                raise AssertionError(message)

        cli._check_names(args, _Parser())  # no error: the id names an item of the command's kind
        assert experiments.get(args.id, kind=command).id == expected
    with pytest.raises(ValueError, match="`kind` must be 'table', 'figure' or None. Received: kind='fig'"):
        experiments.get(number, kind="fig")


def test_reproduce_checks_the_archive_first_and_refuses_a_second_run_on_one_folder(tmp_path):
    from tf_dlthesis.experiments import report

    (tmp_path / "archive").write_text("a file")
    for archive in (tmp_path / "archive", 123):  # once: the item trained, then the export failed, no report
        with pytest.raises(ValueError, match="`archive` must be"):
            experiments.reproduce(only="fig2.2", out_dir=str(tmp_path / "out"), archive=archive, progress=False)
    assert not (tmp_path / "out").exists()
    out = tmp_path / "locked"
    out.mkdir()
    with report._run_lock(str(out)):  # another reproduce holds the folder: both would claim one time share
        with pytest.raises(ValueError, match="Another `reproduce` is writing into"):
            experiments.reproduce(only="fig2.2", out_dir=str(out), progress=False)
    assert not (out / "report.md").exists()


def test_writable_dir_retries_when_a_parent_vanishes_while_being_created(tmp_path, monkeypatch):
    # os.makedirs raises FileExistsError when another caller creates a parent and removes it again before
    # makedirs sees it as a folder (once in 600 probes of the test below, in CI): retried, not an error
    real, calls = cli.os.makedirs, []

    def makedirs(path, exist_ok=False):
        calls.append(path)
        if len(calls) == 1:
            raise FileExistsError(17, "File exists", path)
        return real(path, exist_ok=exist_ok)

    monkeypatch.setattr(cli.os, "makedirs", makedirs)
    target = str(tmp_path / "new" / "out")
    assert cli._writable_dir(target) == target and calls.count(target) == 2  # (makedirs recurses for parents)
    assert not (tmp_path / "new").exists()  # the probe removes what it created


def test_writable_dir_probes_of_two_callers_at_once_never_collide(tmp_path):
    # one fixed probe file name: one caller removed it under the other ("cannot write ... No such file")
    import threading

    failures = []

    def hammer():
        for _ in range(300):
            try:
                cli._writable_dir(str(tmp_path / "new" / "out"))
            except Exception as err:  # noqa: BLE001 - any failure counts
                failures.append(err)

    threads = [threading.Thread(target=hammer) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not failures, failures[:3]
