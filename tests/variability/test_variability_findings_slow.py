"""Chapter 5 items at quick scale on digits (slow: ~5-10 min on 2 cores; `pytest -m slow`)."""

import pytest

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def outputs(tmp_path_factory):
    from tf_dlthesis.experiments import ResultsStore, get
    import tf_dlthesis.experiments.chapter5  # noqa: F401  (registers the experiments)

    store = ResultsStore(tmp_path_factory.mktemp("ch5") / "results.sqlite")
    return {i: get(i)("quick", "digits", store) for i in ("5.1", "5.3", "5.5", "fig5.2", "B.1")}


def test_every_verdict_shows_an_effect_with_an_interval(outputs):
    from tf_dlthesis.experiments import stats

    for item, out in outputs.items():
        for f in out.findings:
            if f.verdict != "not comparable at this scale":
                assert isinstance(f.effect, stats.Effect) and f.effect.low <= f.effect.high, (item, f.claim)
            else:
                assert f.evidence, (item, f.claim)


def test_linear_bit_change_leaves_predictions_unchanged(outputs):
    # Sec. 5.4.2: a linear model's (effective) bit change changes no test prediction.
    rows = outputs["B.1"].tables[0].rows
    assert rows["linear/bit_change"]["accuracy_sd_pct"] == 0
    assert rows["linear/bit_change"]["disagreement_pct"] == 0


def test_counted_bit_changes_took_effect_and_cpu_ops_source_is_absent(outputs):
    for item in ("5.3", "B.1"):
        took = [c for c in outputs[item].checks if "took effect" in c.name]
        assert took and all(c.passed for c in took), [c.detail for c in took]
    import tensorflow as tf

    ops = [f for f in outputs["5.1"].findings if "cudnn" in f.claim]
    assert ops
    if not tf.config.list_physical_devices("GPU"):  # a CPU's kernels are deterministic
        assert ops[0].verdict == "not comparable at this scale" and "bit-identical" in ops[0].evidence
    else:  # a GPU's (cuDNN) may or may not differ between runs: the verdict must say which it found
        assert (ops[0].verdict == "not comparable at this scale") == ("bit-identical to each other" in ops[0].evidence)
