"""The thesis's Chapter 3 findings and regime at quick scale (digits, epsilon 0.15), through the registered items.

The items share their models through one results store; together they train and
attack about thirty small models (several minutes on 2 CPU cores), so the tests are
marked slow.
"""

import pytest

from tf_dlthesis.experiments import chapter3, stats
from tf_dlthesis.experiments.registry import VERDICTS, get
from tf_dlthesis.experiments.results_store import ResultsStore

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def run_item(tmp_path_factory):
    store = ResultsStore(str(tmp_path_factory.mktemp("ch3") / "results.sqlite"))
    outputs = {}

    def run(id_):
        if id_ not in outputs:
            outputs[id_] = get(id_)("quick", None, store)
        return outputs[id_]

    run.store = store
    return run


def _finding(out, text):
    return next(f for f in out.findings if text in f.claim)


@pytest.mark.parametrize("id_", ["3.1", "3.3", "3.5"])
def test_every_defense_trains_and_passes_the_sanity_checks(run_item, id_):
    """Issue 11: no Chapter 3 row at chance, no collapsed model (LRM once predicted one class)."""
    out = run_item(id_)
    rows = out.tables[0].rows
    assert min(r["natural"] for r in rows.values()) > 80.0, rows
    assert rows["regular"]["pgd20"] <= 5.0 and rows["pgd"]["pgd10"] > 40.0, rows  # the thesis's regime
    failed = [(c.name, c.detail) for c in out.checks if not c.passed]
    assert not failed
    sanity = [c for c in out.checks if c.name.startswith("sanity report:")]
    assert len(sanity) == 10 and all(int(c.detail.split()[1]) >= 9 for c in sanity)


def test_spsa_is_strong_enough_at_quick_scale(run_item):
    """Issue 11: on the undefended model SPSA comes within 10 points of PGD-1000, so its findings are tested."""
    out = run_item("3.6")
    check = next(c for c in out.checks if c.name.startswith("SPSA strong enough"))
    assert check.passed, check.detail
    rows = out.tables[0].rows
    assert rows["regular"]["spsa"] - rows["regular"]["pgd1000"] <= chapter3.SPSA_MAX_GAP_PTS
    assert all(f.verdict != VERDICTS[3] for f in out.findings if "SPSA" in f.claim)


def test_label_smoothing_lifts_fgsm_and_shrinks_the_logits(run_item):
    """Every label-smoothing model beats its regular counterpart under FGSM, significantly on the test set.

    The report's finding pools the 2 seeds, and its interval's seed part (t at 1 df) is wide whenever
    the seeds' lifts differ (e.g. +13 and +27 points), so it may read inconclusive; the qualitative
    finding is that each trained model shows the lift, which this checks seed by seed.
    """
    fgsm = _finding(run_item("3.1"), "Label smoothing alone lifts FGSM")
    assert fgsm.effect.estimate > 0 and fgsm.verdict != VERDICTS[1], fgsm  # never significantly reversed
    setting = chapter3.setting_for("quick")
    regular, smoothed = (chapter3.evaluated(setting, chapter3.spec_for(setting, row), setting.seeds, run_item.store)
                         for row in ("regular", "label_smoothing"))
    for seed in range(len(setting.seeds)):
        lift = stats.accuracy_difference(smoothed.correct["fgsm"][seed], regular.correct["fgsm"][seed])
        assert stats.verdict(lift, above=0) == VERDICTS[0], (setting.seeds[seed], lift)
    out = run_item("fig3.2")
    for text in ("shrinks the clean logits' dynamic range", "also holds on PGD-10 adversarial examples"):
        finding = _finding(out, text)
        assert finding.verdict == "reproduced", finding


def test_alp_has_smaller_logit_variance_than_pgd_training(run_item):
    out = run_item("fig3.1")
    finding = _finding(out, "smaller variance")
    assert finding.verdict == "reproduced" and finding.effect.high < 1.0, finding
    variances = out.tables[0].rows
    assert variances["alp"]["variance"] < variances["pgd"]["variance"]
