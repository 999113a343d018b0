"""Audit 68 of the experiments infrastructure: results store, report writer, registry, statistics."""

import re
import types

import matplotlib
import numpy as np

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pytest  # noqa: E402

from tf_dlthesis.experiments import Output, ResultsStore, Table, stats  # noqa: E402
from tf_dlthesis.experiments.registry import fmt  # noqa: E402
from tf_dlthesis.experiments.report import _table_md, write_report  # noqa: E402
from tf_dlthesis.experiments.results_store import config_hash  # noqa: E402


# ------------------------------------------------------------------ results store
@pytest.mark.parametrize("masked", [np.ma.array([1.0, 2.0, 3.0], mask=[False, True, False]),
                                    np.ma.array([1, 2], mask=False), np.ma.masked])
def test_store_refuses_a_masked_array_instead_of_losing_its_mask(masked, tmp_path):
    # before: the array was stored as its bytes, which are the data with the masked entries filled in: the
    # first case read back as [1.0, 1e+20, 3.0], a plain array, without its mask and without a word
    store = ResultsStore(tmp_path / "r.sqlite")
    with pytest.raises(TypeError, match=r"Masked arrays cannot be stored.*key 'm'"):
        store.record("x", {}, 0, {"m": masked})
    with pytest.raises(TypeError, match="Masked arrays cannot be stored"):
        store.get_or_compute("x", {}, 1, lambda: {"nested": {"m": masked}})
    with pytest.raises(TypeError, match="Masked arrays cannot be stored"):
        config_hash({"m": masked})
    assert len(store) == 0
    # the data and the mask as two plain arrays round-trip, and plain arrays keep their key
    arr = np.ma.array([1.0, 2.0, 3.0], mask=[False, True, False])
    store.record("x", {}, 0, {"data": arr.data, "mask": np.ma.getmaskarray(arr)})
    back = store.get("x", {}, 0)
    np.testing.assert_array_equal(back["data"], [1.0, 2.0, 3.0])
    np.testing.assert_array_equal(back["mask"], [False, True, False])
    assert config_hash({"a": np.arange(3.0)}) == config_hash({"a": np.arange(3.0)[::1].copy()})


# ------------------------------------------------------------------ registry: figures and cells
@pytest.mark.parametrize("name", ["sub/fig", "../fig", "fig one", ".hidden", "fig(1)"])
def test_output_refuses_a_figure_name_that_is_no_plain_file_name(name):
    # before: "sub/fig" and "../fig" were saved outside figures/ (or failed deep in matplotlib with a
    # FileNotFoundError), "fig one" and "fig(1)" broke the report's Markdown link to the PNG
    fig, _ = plt.subplots()
    try:
        with pytest.raises(ValueError, match=r"`figures\[0\]` in the output of 'T\.f': a figure's name must be a "
                                             r"plain file name"):
            Output(figures=[(name, fig)]).validate("T.f")
    finally:
        plt.close(fig)


def test_output_refuses_two_figures_of_one_name():
    # before: the second figure's PNG silently replaced the first's, and the report linked both to it
    figs = [plt.subplots()[0] for _ in range(2)]
    try:
        with pytest.raises(ValueError, match=r"`figures\[1\]`: two figures are named 'fig_2_2'"):
            Output(figures=[("fig_2_2", figs[0]), ("fig_2_2", figs[1])]).validate()
        Output(figures=[("fig_2_2", figs[0]), ("fig_2.3-b", figs[1])]).validate()  # distinct plain names pass
    finally:
        for f in figs:
            plt.close(f)


@pytest.mark.parametrize("value", [np.float32(93.456789), np.float32(0.123456), np.float32(1234.5678), np.float16(12.0)])
def test_fmt_formats_numpy_floats_as_floats(value):
    # before: np.float32 / float16 (not Python floats) fell through to str(): "93.45679", "0.123456", "1234.5677",
    # "12.0" where a float reads "93.46", "0.1235", "1.23e+03", "12.00"
    assert fmt(value) == fmt(float(value))
    assert fmt(np.int32(7)) == "7" and fmt(np.bool_(True)) == "True"


def _cells(line: str) -> list:
    """A Markdown table row's cells, split at the pipes that are not escaped."""
    assert line.startswith("|") and line.endswith("|"), line
    return re.split(r"(?<!\\)\|", line[1:-1])


def test_table_cells_and_headers_keep_every_row_one_line_of_the_right_width():
    # before: a carriage return in a cell ("\r\n" from a file read on Windows, or a bare "\r") stayed in it and
    # ended the row (Markdown reads "\r" as a line break), and a column name with "|" was not escaped: the
    # header had one cell too many
    table = Table("T.c", "cells", "s", ["acc|top-1", "note"],
                  {"a\r\nb": {"acc|top-1": 1.0, "note": "x\r\ny"}, "c": {"note": "p\rq|r"}})
    lines = [line for line in _table_md(table) if line.startswith("|")]
    assert len(lines) == 4  # header, rule, two rows
    assert all("\r" not in line and "\n" not in line for line in lines)
    assert [len(_cells(line)) for line in lines] == [3, 3, 3, 3]
    assert _cells(lines[0])[1].strip() == "acc\\|top-1"
    assert _cells(lines[3])[2].strip() == "p q\\|r"


def test_report_overview_escapes_an_item_title(tmp_path):
    # before: the overview table wrote the title raw: "a | b" split the row into one cell too many
    exp = types.SimpleNamespace(id="T.t", title="train | test\r\nerror")
    path = write_report([(exp, Output(), 1.0, None)], str(tmp_path), scale="quick", dataset=None, total_seconds=1.0)
    with open(path) as fh:
        text = fh.read()
    rows = [line for line in text.split("\n") if line.startswith("| T.t ")]
    assert len(rows) == 1 and len(_cells(rows[0])) == 4, rows
    assert "train \\| test error" in rows[0]


# ------------------------------------------------------------------ statistics
def test_paired_difference_refuses_values_that_only_pair_up_after_flattening():
    # before: (2, 3) against (3, 2) were flattened and paired element by element, pairing the wrong values
    a, b = np.arange(6.0).reshape(2, 3), np.arange(6.0).reshape(3, 2)
    with pytest.raises(ValueError, match=r"must pair up.*\(2, 3\) and \(3, 2\)"):
        stats.paired_difference(a, b)
    with pytest.raises(ValueError, match=r"must pair up.*\(3,\) and \(2,\)"):
        stats.paired_difference([1.0, 2.0, 3.0], [1.0, 2.0])
    effect = stats.paired_difference([3.0, 5.0, 4.0], [1.0, 2.0, 2.5])  # d = 2, 3, 1.5: t interval by hand
    d = np.array([2.0, 3.0, 1.5])
    half = 4.302652729911275 * d.std(ddof=1) / np.sqrt(3)
    assert effect.estimate == pytest.approx(d.mean())
    assert (effect.low, effect.high) == pytest.approx((d.mean() - half, d.mean() + half))
    assert stats.verdict(effect, above=0) == "reproduced" and stats.verdict(effect, below=0) == "not reproduced"


def test_mcnemar_counts_refuse_scores_and_transposed_runs():
    # before: a score of 0.3 counted as correct (cast to bool), and (2, 3) against (3, 2) were flattened
    with pytest.raises(ValueError, match=r"`correct_a` must hold per-example correctness.*0\.3"):
        stats.mcnemar_counts([0.3, 1.0, 0.0], [1, 1, 0])
    with pytest.raises(ValueError, match=r"`correct_b` must hold per-example correctness.*2\.0"):
        stats.mcnemar_counts([1, 1, 0], [2, 1, 0])
    with pytest.raises(ValueError, match=r"same shape. Received \(2, 3\) and \(3, 2\)"):
        stats.mcnemar_counts(np.ones((2, 3)), np.ones((3, 2)))
    counts = stats.mcnemar_counts([True, True, False, False, True], np.array([1, 0, 1, 0, 0]))
    assert counts == {"a_only": 2, "b_only": 1, "n": 5}



# ------------------------------------------------------------------ command line
@pytest.mark.parametrize("case", ["locked", "bad archive"])
def test_reproduce_refused_by_its_folder_or_archive_is_a_one_line_error(case, tmp_path, capsys):
    # before: a second `reproduce` on one --out (README: "refused") and an --archive holding a file that is no
    # exported run ended the command line in a full Python traceback (exit status 1), not a one-line error
    from tf_dlthesis import cli
    from tf_dlthesis.experiments import report

    out, archive = tmp_path / "out", tmp_path / "archive"
    out.mkdir()
    argv = ["reproduce", "--only", "fig2.2", "--out", str(out), "--no-progress"]
    if case == "locked":
        with report._run_lock(str(out)):  # another reproduce holds the folder
            status = cli.main(argv)
        expected = "Another `reproduce` is writing into"
    else:
        (archive / "2.1-abcdef").mkdir(parents=True)
        (archive / "2.1-abcdef" / "0123456789abcdef-0.json.gz").write_bytes(b"not gzip")
        status = cli.main(argv + ["--archive", str(archive)])
        expected = "is not a run exported by `export_rows`"
    err = capsys.readouterr().err.strip().splitlines()
    assert status == 2
    assert len(err) == 1 and err[0].startswith("tf-dlthesis: error: ") and expected in err[0], err
    assert not (out / "report.md").exists()


@pytest.mark.parametrize("runs", [2, 3, 5])
def test_identical_runs_are_no_more_significant_than_one(runs):
    # before: 4 test examples of 1000 won by A and none by B is inconclusive for one run (McNemar's exact p is
    # 0.125), but the same run repeated (bit-identical seeds) was "reproduced", 0.4 [0.0181, 0.782]: the seed
    # part of the crossed interval is 0 and the example bootstrap alone is too narrow with 4 discordant examples
    from scipy import stats as sps

    b = np.zeros(1000)
    a = b.copy()
    a[:4] = 1
    one = stats.accuracy_difference(a, b)
    many = stats.accuracy_difference(np.tile(a, (runs, 1)), np.tile(b, (runs, 1)))
    mcnemar_low = 100 * 4 * (2 * sps.beta.ppf(0.025, 4, 1) - 1) / 1000  # Clopper-Pearson of 4 of 4, mapped
    assert many.estimate == pytest.approx(0.4)
    assert many.low == pytest.approx(mcnemar_low) and one.low == pytest.approx(mcnemar_low)
    assert stats.verdict(one, above=0) == stats.verdict(many, above=0) == "inconclusive"
    assert "runs' differences identical: at least McNemar's exact interval" in many.statistic
    # runs that differ keep the crossed interval alone
    c = np.tile(a, (runs, 1))
    c[0, 10] = 1
    varied = stats.accuracy_difference(c, np.tile(b, (runs, 1)))
    assert "identical" not in varied.statistic and varied.low < varied.estimate < varied.high


def test_identical_runs_without_a_discordant_example_keep_their_zero_width_interval():
    # the documented convention (and the committed reports): no example told apart on any run is [0, 0],
    # inconclusive for a claim of an effect
    b = np.tile(np.array([1.0, 0.0] * 50), (3, 1))
    same = stats.accuracy_difference(b, b.copy())
    assert (same.low, same.high) == (0.0, 0.0) and "identical" not in same.statistic
    assert stats.verdict(same, above=0) == "inconclusive"


@pytest.mark.parametrize("kwargs", [{"above": float("nan")}, {"below": np.float64("nan")}, {"above": "0"},
                                    {"above": True}, {"above": 0, "below": float("nan")}])
def test_verdict_refuses_a_bound_that_is_no_number(kwargs):
    # before: a NaN bound made every comparison false, so even an interval far inside the claimed side was
    # "inconclusive" without a word; "0" raised a bare TypeError from `>`, True counted as 1, and below=NaN was
    # reported as "`above` must be < `below`"
    effect = stats.Effect(5.0, 4.0, 6.0, "x")
    with pytest.raises(ValueError, match=r"`(above|below)` must be a number or None. Received"):
        stats.verdict(effect, **kwargs)
    with pytest.raises(TypeError, match="`effect` must be an Effect"):
        stats.verdict((5.0, 4.0, 6.0), above=0)
    assert stats.verdict(effect, above=np.float32(0)) == "reproduced"
    assert stats.verdict(effect, below=np.int64(3)) == "not reproduced"
