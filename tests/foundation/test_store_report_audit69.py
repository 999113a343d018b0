"""Audit 69: the results store's in-memory paths and figure names shared by two report items."""
import os
import pathlib
import re
import threading

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pytest  # noqa: E402

from tf_dlthesis import experiments  # noqa: E402
from tf_dlthesis.experiments import Output, ResultsStore  # noqa: E402
from tf_dlthesis.experiments.report import write_report  # noqa: E402


# ------------------------------------------------------------------ results store: in-memory databases
@pytest.mark.parametrize("path", [":memory:", pathlib.Path(":memory:"), "file::memory:",
                                  "file::memory:?cache=shared", "FILE:runs?mode=memory",
                                  "file:runs?cache=shared&mode=memory"])
def test_an_in_memory_store_is_refused_with_a_file_path_suggested(path, tmp_path, monkeypatch):
    # before: accepted, but the store opens one connection per thread (and per worker process), each its own
    # empty database: a record written in one thread was not there for `len`, `has` or `get` in another
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ValueError, match=r"an in-memory SQLite database is private to one connection.*"
                                         r"Use a file path, e.g\. os\.path\.join\(tempfile\.mkdtemp\(\), "
                                         r"'results\.sqlite'\)\. Received: path="):
        ResultsStore(path)
    assert os.listdir(tmp_path) == []  # nothing created


def test_a_file_store_is_shared_by_threads_and_file_uris_still_open_files(tmp_path, monkeypatch):
    store = ResultsStore(tmp_path / "r.sqlite")
    store.record("e", {"a": 1}, 0, {"x": 1.0})
    seen = []
    thread = threading.Thread(target=lambda: seen.append((len(store), store.get("e", {"a": 1}, 0))))
    thread.start()
    thread.join()
    assert seen == [(1, {"x": 1.0})]
    monkeypatch.chdir(tmp_path)  # a `file:` name that is no in-memory database is a file as before
    assert len(ResultsStore("file:other.sqlite?mode=rwc")) == 0


# ------------------------------------------------------------------ report: one figure name, two items
def _item_with_figures(*names):
    def fn(scale, dataset, store, *, out=None):
        figures = []
        for name in names:
            fig, ax = plt.subplots()
            ax.set_title(f"{name} of {fn.item}")
            figures.append((name, fig))
        store.record(f"{fn.item}.runs", {"n": 1}, 0, {"acc": 0.5})
        return Output(figures=figures)

    return fn


@pytest.fixture
def items():
    registered = []

    def register(item_id, *names):
        fn = _item_with_figures(*names)
        fn.item = item_id
        experiments.register(item_id, title=f"item {item_id}", chapter="T", quick_minutes=0.0)(fn)
        registered.append(item_id)

    yield register
    for item_id in registered:
        experiments.REGISTRY.pop(item_id, None)


def test_a_figure_name_of_an_earlier_item_fails_the_later_one_and_keeps_the_first_png(tmp_path, items):
    # before: the later item's PNG silently replaced the earlier's figures/fig_t.png and both sections linked it
    items("T.fa", "fig_t")
    items("T.fb", "fig_own", "fig_t")
    items("T.fc", "fig_own")  # T.fb claimed none of its names: fig_own is free for T.fc
    path, failed = experiments.reproduce(out_dir=str(tmp_path), only=["T.fa", "T.fb", "T.fc"], progress=False)
    text = open(path).read()
    assert failed == 1
    assert ("ValueError: Items 'T.fa' and 'T.fb' both return a figure named 'fig_t' (saved as figures/fig_t.png "
            "and linked from both sections). Give each figure its own name.") in text
    assert text.count("](figures/fig_t.png)") == 1 and text.count("](figures/fig_own.png)") == 1
    first = tmp_path / "figures" / "fig_t.png"
    assert sorted(os.listdir(tmp_path / "figures")) == ["fig_own.png", "fig_t.png"]
    store = ResultsStore(tmp_path / "results.sqlite")
    assert store.has("T.fb.runs", {"n": 1}, 0)  # the failed item's runs are kept
    # the PNG is T.fa's: rerun T.fa alone into a fresh folder and compare bytes
    alone, _ = experiments.reproduce(out_dir=str(tmp_path / "alone"), only=["T.fa"], progress=False)
    assert first.read_bytes() == (tmp_path / "alone" / "figures" / "fig_t.png").read_bytes()


def test_write_report_refuses_two_sections_with_one_figure_name_before_writing(tmp_path, items):
    # before: the second section's figure was never saved (its PNG existed) and both linked the first's
    items("T.wa", "fig_w")
    items("T.wb", "fig_w")
    fig_a, fig_b = plt.figure(), plt.figure()
    sections = [(experiments.get("T.wa"), Output(figures=[("fig_w", fig_a)]), 1.0, None),
                (experiments.get("T.wb"), Output(figures=[("fig_w", fig_b)]), 1.0, None)]
    with pytest.raises(ValueError, match=r"Items 'T\.wa' and 'T\.wb' both return a figure named 'fig_w'"):
        write_report(sections, str(tmp_path / "out"), scale="quick", dataset=None, total_seconds=1.0)
    assert not (tmp_path / "out").exists()
    # a failed section's figures do not count
    sections[1] = (sections[1][0], None, 1.0, "Traceback: boom")
    path = write_report(sections, str(tmp_path / "out"), scale="quick", dataset=None, total_seconds=1.0)
    assert open(path).read().count("](figures/fig_w.png)") == 1



def test_two_chapters_side_by_side_with_one_figure_name_fail_one_item_and_keep_the_others_png(
        short_tmp, process_session):
    # with jobs > 1 each chapter runs in a process of its own: before, both saved figures/fig_t.png (the later
    # one's bytes stayed), both sections linked it, and the run reported no failure
    import subprocess
    import sys
    import textwrap

    repo = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    for module, item, color in (("ch69_a", "T.pa", "red"), ("ch69_b", "T.pb", "blue")):
        (short_tmp / f"{module}.py").write_text(textwrap.dedent(f"""
            import matplotlib
            matplotlib.use("Agg")
            import matplotlib.pyplot as plt
            from tf_dlthesis import experiments
            from tf_dlthesis.experiments import Output

            @experiments.register({item!r}, title="a figure", chapter="T", quick_minutes=0.0)
            def item(scale, dataset, store, *, out=None):
                store.record({item!r} + ".runs", {{"n": 1}}, 0, {{"acc": 0.5}})
                fig, ax = plt.subplots()
                ax.plot([0, 1], [0, 1], color={color!r})
                return Output(figures=[("fig_t", fig)])
        """))
    (short_tmp / "run.py").write_text(textwrap.dedent(f"""
        import sys
        import ch69_a, ch69_b
        from tf_dlthesis import experiments

        if __name__ == "__main__":
            path, failed = experiments.reproduce(out_dir={str(short_tmp / "out")!r}, only=["T.pa", "T.pb"],
                                                 progress=False, jobs=2)
            print("FAILED", failed)
            text = open(path).read()
            winner = "T.pa" if "Items 'T.pa' and 'T.pb' both" in text else "T.pb"  # the first to claim it
            print("WINNER", winner)
            experiments.reproduce(out_dir={str(short_tmp / "alone")!r}, only=[winner], progress=False)
    """))
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(short_tmp), repo, os.environ.get("PYTHONPATH", "")]),
               TMPDIR=str(short_tmp))
    proc = process_session.start([sys.executable, str(short_tmp / "run.py")], env=env, stdout=subprocess.PIPE,
                                 stderr=subprocess.PIPE, cwd=str(short_tmp))
    out, err = proc.communicate(timeout=300)
    out, err = out.decode(), err.decode()
    assert proc.returncode == 0, err[-3000:]
    assert "FAILED 1" in out, out + err[-3000:]
    text = (short_tmp / "out" / "report.md").read_text()
    winner = out.split("WINNER ")[1].split()[0]
    loser = {"T.pa": "T.pb", "T.pb": "T.pa"}[winner]
    assert f"ValueError: Items {winner!r} and {loser!r} both return a figure named 'fig_t'" in text, text
    assert text.count("](figures/fig_t.png)") == 1
    assert (short_tmp / "out" / "figures" / "fig_t.png").read_bytes() == \
        (short_tmp / "alone" / "figures" / "fig_t.png").read_bytes()
    store = ResultsStore(short_tmp / "out" / "results.sqlite")
    assert store.has("T.pa.runs", {"n": 1}, 0) and store.has("T.pb.runs", {"n": 1}, 0)


# ------------------------------------------------------------------ results store: bfloat16 arrays
def test_bfloat16_and_other_ml_dtypes_arrays_round_trip_losslessly(tmp_path):
    # before: TypeError "Arrays must have a numeric, bool or string dtype ... dtype=bfloat16" (NumPy reports the
    # kind of TensorFlow's bfloat16 / float8 / int4 arrays, e.g. a mixed-precision model's logits, as void)
    import ml_dtypes
    import numpy as np

    store = ResultsStore(tmp_path / "r.sqlite")
    values = {"bf16": np.array([[1.5, -2.0], [3.0e38, float("nan")]], ml_dtypes.bfloat16),
              "f8": np.array([0.5, -448.0], ml_dtypes.float8_e4m3fn), "i4": np.array([-8, 7], ml_dtypes.int4),
              "scalar": np.array(1.25, ml_dtypes.bfloat16)}
    store.record("mixed", {"policy": "mixed_bfloat16"}, 0, values)
    back = store.get("mixed", {"policy": "mixed_bfloat16"}, 0)
    for key, arr in values.items():
        assert back[key].dtype == arr.dtype and back[key].shape == arr.shape, key
        assert back[key].tobytes() == arr.tobytes(), key  # bit for bit (the NaN included)
    structured = np.zeros(2, dtype=[("a", "f4")])  # structured arrays are still refused
    with pytest.raises(TypeError, match=r"structured arrays cannot be stored"):
        store.record("mixed", {"policy": "x"}, 0, {"s": structured})


# ------------------------------------------------------------------ registry: what `register` accepts
@pytest.mark.parametrize("kwargs, error, match", [
    (dict(title=None), TypeError, r"`title` must be a non-empty string\. Received: title=None"),
    (dict(title=""), TypeError, r"`title` must be a non-empty string\. Received: title=''"),
    (dict(title="t", quick_minutes=float("nan")), ValueError,
     r"`quick_minutes` must be a finite number >= 0 .*Received: quick_minutes=nan"),
    (dict(title="t", quick_minutes=-1), ValueError, r"Received: quick_minutes=-1"),
    (dict(title="t", quick_minutes="2"), TypeError, r"Received: quick_minutes='2'"),
    (dict(title="t", quick_minutes=True), TypeError, r"Received: quick_minutes=True"),
])
def test_register_refuses_a_bad_title_or_quick_minutes_before_registering(kwargs, error, match):
    # before: accepted; a title that is no string stopped `reproduce` between items (TypeError from
    # `exp.title[:40]` outside any item, so no report), and a NaN estimate made the chapters' cost order garbage
    try:
        with pytest.raises(error, match=match):
            experiments.register("T.r69", chapter="T", **kwargs)(lambda scale, dataset, store, *, out=None: Output())
        assert "T.r69" not in experiments.REGISTRY
    finally:
        experiments.REGISTRY.pop("T.r69", None)


def test_register_refuses_a_function_that_is_not_callable():
    try:
        with pytest.raises(TypeError, match=r"`fn` of experiment 'T\.r69' must be callable .*Received: fn='x'"):
            experiments.register("T.r69", title="t", chapter="T")("x")
        assert "T.r69" not in experiments.REGISTRY
    finally:
        experiments.REGISTRY.pop("T.r69", None)


@pytest.mark.parametrize("result", [{"run": 7, "acc": 0.5}, {"lr": 0.01, "acc": 0.5}])
def test_table_refuses_a_result_entry_named_as_a_config_key_or_run(result, tmp_path):
    # before: the result's entry silently replaced the config value (or the run index) in the flat row
    store = ResultsStore(tmp_path / "r.sqlite")
    store.record("e", {"lr": 0.1}, 0, result)
    clash = sorted(set(result) & {"lr", "run"})
    with pytest.raises(ValueError, match=rf"Run 0 of 'e' has result entries named as its config keys or `run`.*"
                                         rf"{re.escape(repr(clash))}\. Read them apart with `rows\('e'\)`"):
        store.table("e")
    assert store.rows("e")[0]["config"] == {"lr": 0.1} and store.rows("e")[0]["run"] == 0


@pytest.mark.parametrize("columns", ["error_pct", {"error_pct"}, None])
def test_an_output_refuses_table_columns_that_are_no_list(columns):
    # before: validated; the report then printed a string's letters as columns ("e", "r", "r", ...), each "—"
    from tf_dlthesis.experiments import Table

    table = Table("T.c", "t", "s", columns, {"mixup": {"error_pct": 4.3}})
    with pytest.raises(TypeError, match=r"Table 'T\.c' in the output of 'T\.c': `columns` must be a list of "
                                        r"column names\. Received: columns="):
        Output(tables=[table]).validate("T.c")
    Output(tables=[Table("T.c", "t", "s", ("error_pct",), {"mixup": {"error_pct": 4.3}})]).validate("T.c")


def test_a_store_on_a_relative_path_keeps_its_file_when_the_working_folder_changes(tmp_path, monkeypatch):
    # before: a thread (or an unpickled copy, as a worker process gets) connecting after `os.chdir` opened
    # <new folder>/runs.sqlite, a second store: its records were lost to the first
    import pickle

    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    monkeypatch.chdir(tmp_path / "a")
    store = ResultsStore("runs.sqlite")
    store.record("e", {"a": 1}, 0, {"x": 1.0})
    os.chdir(tmp_path / "b")  # (monkeypatch.chdir restores the folder)
    thread = threading.Thread(target=lambda: store.record("e", {"a": 2}, 0, {"x": 2.0}))
    thread.start()
    thread.join()
    copy = pickle.loads(pickle.dumps(store))
    copy.record("e", {"a": 3}, 0, {"x": 3.0})
    assert len(store) == 3 and [r["result"]["x"] for r in store.rows("e")] == [1.0, 2.0, 3.0]
    assert not os.listdir(tmp_path / "b") and store.path == "runs.sqlite"
