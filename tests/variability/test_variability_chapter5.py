"""Chapter 5 items (Tables 5.1, 5.3, 5.5, B.1, Fig. 5.2) on the one training path, at a tiny setting."""

import dataclasses
import math

import numpy as np
import pytest

from tf_dlthesis.experiments import ResultsStore, TrainSpec, stats
from tf_dlthesis.experiments import chapter5 as c5
from tf_dlthesis.experiments.registry import VERDICTS, Finding, get
from tf_dlthesis.variability import SeedPlan

TINY_SPEC = TrainSpec(dataset="digits", model="cnn", model_kwargs={"filters": [4, 8]}, norm_kwargs={"momentum": 0.9},
                      train_examples=300, test_examples=120, epochs=5, batch_size=32, learning_rate=0.05)
TINY = dataclasses.replace(c5.SETTINGS["quick"], spec=TINY_SPEC, runs=2, runs_all=4, runs_ops=2, runs_snapshot=2,
                           runs_b1=2, onsets=(0, 1, 4),
                           b1_models=(("linear", "linear", {}), ("hidden_fc", "mlp", {"hidden": 16}),
                                      ("hidden_conv", "conv1", {"filters": 4})))


@pytest.fixture(scope="module")
def outputs(tmp_path_factory):
    """Every item at the tiny setting, in-process (serial executor), one shared store."""
    patch = pytest.MonkeyPatch()
    patch.setitem(c5.SETTINGS, "quick", TINY)
    patch.setattr(c5, "EXECUTOR", "serial")
    store = ResultsStore(tmp_path_factory.mktemp("ch5") / "results.sqlite")
    try:
        yield {i: get(i)("quick", None, store) for i in ("5.1", "5.3", "5.5", "fig5.2", "B.1")}, store
    finally:
        patch.undo()


def _every_verdict_has_an_interval(output):
    assert output.findings
    for f in output.findings:
        assert isinstance(f, Finding) and f.verdict in VERDICTS
        if f.verdict != VERDICTS[3]:
            assert isinstance(f.effect, stats.Effect) and f.effect.low <= f.effect.estimate <= f.effect.high, f.claim
            assert f.region


@pytest.mark.parametrize("item", ["5.1", "5.3", "5.5", "fig5.2", "B.1"])
def test_items_return_tables_findings_with_intervals_and_checks(outputs, item):
    out = outputs[0][item]
    assert out.tables and out.tables[0].rows and out.checks
    _every_verdict_has_an_interval(out)
    assert any(c.name == "no collapsed model" for c in out.checks)
    assert all(c.passed for c in out.checks if "collapsed" in c.name), [c.detail for c in out.checks]


def test_table_5_1_rows_and_the_cpu_ops_source(outputs):
    out = outputs[0]["5.1"]
    assert set(out.tables[0].rows) == {"init", "shuffle", "augment", "cudnn", "all"}
    assert out.tables[0].rows["all"]["runs"] == 4 and out.tables[0].rows["init"]["runs"] == 2
    claims = {f.claim.split(" ")[0]: f for f in out.findings}
    assert {"shuffle", "augment", "all"} <= set(claims)
    for source in ("shuffle", "augment", "all"):
        assert claims[source].region == "in (0.5, 2.00)" and "SD ratio" in claims[source].effect.statistic
    ops = [f for f in out.findings if "cudnn" in f.claim][0]
    # on this CPU the kernels are deterministic: the runs with op determinism off are bit-identical
    assert ops.verdict == VERDICTS[3] and "bit-identical" in ops.evidence
    names = [c.name for c in out.checks]
    assert any("bit changes took effect" in n for n in names) and any("instability" in n for n in names)
    assert any("runs per source" in n for n in names) and any("convergence" in n for n in names)


def test_bit_changes_are_checked_against_the_control_and_reported(outputs):
    out, store = outputs[0]["5.3"], outputs[1]
    assert "replaced by another bit position" in out.tables[0].setting
    took_effect = [c for c in out.checks if "took effect" in c.name][0]
    assert "of 2 runs differ from the unperturbed control" in took_effect.detail
    # the protocol trained exactly one control for the main spec, and every counted run differs from it
    rows = store.rows(c5.STORE_KEY)
    controls = [r for r in rows if r["config"]["source"] == "control" and r["config"]["spec"] == TINY_SPEC.to_config()]
    assert len(controls) == 1
    counted = [r for r in rows if r["config"]["source"] == "bit_change" and r["config"]["spec"] == TINY_SPEC.to_config()
               and "bit_change_attempt" not in r["config"]]
    assert len(counted) == 2
    for r in counted:
        assert not np.array_equal(r["result"]["logits"], controls[0]["result"]["logits"])
        assert r["result"]["info:bit_change"]["variable"].endswith("kernel")


def test_table_5_5_ensembles_snapshots_tta(outputs):
    out = outputs[0]["5.5"]
    rows = out.tables[0].rows
    assert {"single", "ensemble_2", "snapshot", "single_crop_tta", "snapshot_crop_tta"} <= set(rows)
    assert rows["ensemble_2"]["runs"] == 2 and rows["snapshot"]["runs"] == 2
    assert rows["single"]["variability_reduction_pct"] is None
    assert all(f.region == "< 0" for f in out.findings) and len(out.findings) == 3


def test_figure_5_2_shares_onset_0_with_table_5_1(outputs):
    out = outputs[0]["fig5.2"]
    assert out.figures and out.figures[0][0] == "fig_5_2"
    rows = out.tables[0].rows
    assert list(rows) == ["onset 0", "onset 1", "onset 4"]
    assert rows["onset 0"]["accuracy_sd_pct"] == outputs[0]["5.1"].tables[0].rows["shuffle"]["accuracy_sd_pct"]
    assert [f.region for f in out.findings] == ["> 0.5", "< 1.00"]


def test_table_b_1_models_and_linear_vs_deeper(outputs):
    out = outputs[0]["B.1"]
    rows = out.tables[0].rows
    for model in ("linear", "hidden_fc", "hidden_conv", "resnet10"):
        assert f"{model}/init" in rows and f"{model}/all" in rows and f"{model}/single_crop_tta" in rows
    assert "resnet10/snapshot" in rows
    assert [f.region for f in out.findings] == ["< 0.01"] * 3 or any(f.verdict == VERDICTS[3] for f in out.findings)


def test_items_resume_from_the_store_without_training(outputs, monkeypatch):
    _, store = outputs
    monkeypatch.setitem(c5.SETTINGS, "quick", TINY)
    monkeypatch.setattr(c5, "EXECUTOR", "serial")
    monkeypatch.setattr(c5, "train", lambda *a, **k: pytest.fail("retrained a stored run"))
    again = get("5.3")("quick", None, store)
    first = outputs[0]["5.3"]
    assert again.tables[0].rows == first.tables[0].rows
    assert [(f.verdict, f.effect) for f in again.findings] == [(f.verdict, f.effect) for f in first.findings]


def test_protocol_run_snapshot_tta_variants_and_bad_input():
    spec = TINY_SPEC.replace(snapshots=5)
    out = c5.protocol_run(SeedPlan().vary("all", 0), spec=spec, tta=("crop",))
    assert set(out) == {"logits", "variants", "init_hash", "order_hash", "weights_hash", "info"}
    assert set(out["variants"]) == {"crop_tta"} and out["logits"].shape == (120, 10)
    assert "snapshot_test_accuracy" in out["info"] and out["info"]["bit_change"] is None
    assert math.isclose(out["info"]["snapshot_test_accuracy"],
                        float((out["logits"].argmax(1) == c5.load_data(spec).test[1]).mean()), abs_tol=1e-6)
    plain = c5.protocol_run(SeedPlan().vary("init", 0), spec=TINY_SPEC, tta=("crop",), tta_sources=("all",))
    assert plain["variants"] == {}  # TTA only for the sources asked for
    with pytest.raises(ValueError, match="tta"):
        c5.protocol_run(SeedPlan(), spec=TINY_SPEC, tta=("rotate",))
    with pytest.raises(ValueError, match="scale"):
        c5.settings("huge")


def test_settings_per_scale():
    std = c5.settings("standard")
    assert std.spec.dataset == "fashion_mnist" and std.runs >= 10 and std.spec.epochs % 5 == 0
    assert std.onsets[0] == 0 and std.tta_modes(std.spec) == ("flip", "flip_crop")
    full = c5.settings("full")
    assert full.spec.recipe == "ch5_cifar10" and full.spec.model == "preact_resnet14" and full.runs == 100
    assert full.spec.epochs == 500 and full.spec.batch_size == 512 and full.deep_model[0] == "preact_resnet10"
    quick = c5.settings("quick")
    assert quick.spec.dataset == "digits" and quick.tta_modes(quick.spec) == ("crop",)
    other = c5.settings("standard", "digits")  # a smaller dataset drops subsets it cannot fill
    assert other.spec.dataset == "digits" and other.spec.train_examples is None and other.spec.pad is None
