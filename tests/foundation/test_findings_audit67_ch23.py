"""Audit 67: Chapters 2 and 3 findings test the thesis's quantifier ("both", "each", "any", "every", "all").

Each test builds synthetic per-example correctness with hand-set counts where the
thesis's claim fails for one member of the group while the group's mean (or one
chosen member) still passes, and checks the finding's estimate against the hand-computed
margin and that the verdict is no longer "reproduced".
"""

import types

import matplotlib

matplotlib.use("Agg")

import numpy as np  # noqa: E402
import pytest  # noqa: E402

from tf_dlthesis.experiments import chapter2 as c2  # noqa: E402
from tf_dlthesis.experiments import chapter3 as c3  # noqa: E402
from tf_dlthesis.experiments.training import Run, TrainSpec, as_plan  # noqa: E402

N = 2000


def _finding(out, text):
    (found,) = [f for f in out.findings if text in f.claim]
    return found


# ---------------------------------------------------------------------------- Chapter 2
def _fake_train(accuracy):
    """`train` stand-in: every seed of a method has exactly `accuracy[method] * N` correct test examples."""

    def fake(spec, seeds, *, store=None, **kwargs):
        method = spec.mixing["method"] if spec.mixing else "baseline"
        runs = []
        for s in seeds:
            rng = np.random.default_rng([s, c2.ROWS_2_1.index(method)])
            correct = rng.permutation(N) < round(accuracy[method] * N)
            runs.append(Run(spec, as_plan(s), {"test_accuracy": float(correct.mean()), "train_accuracy": 1.0},
                            correct, np.zeros(N, np.int64), {"distinct_predictions": 10, "num_classes": 10}))
        return runs

    return fake


def _accuracies(**changes):
    acc = {m: 0.90 for m in c2.ROWS_2_1}
    acc.update(baseline=0.80, random_pixels=0.70, random_elements=0.70, **changes)
    return acc


def test_vh_finding_needs_both_vh_methods_to_beat_both_mixup_and_bc_plus(monkeypatch):
    """Sec. 2.4.2: "VH-Mixup" and "VH-BC+" ... "both were able to outperform all other approaches".

    VH-Mixup 2% error, VH-BC+ 16%, mixup and BC+ 14%: the groups' means (9% vs 14%) favour VH, but VH-BC+
    loses to both by 2 points. The old finding (mean of the groups) read "reproduced"."""
    monkeypatch.setattr(c2, "train", _fake_train(_accuracies(vh_mixup=0.98, vh_bc_plus=0.84, mixup=0.86,
                                                             bc_plus=0.86)))
    finding = _finding(c2.table_2_1("quick", None, None), "beat mixup and BC+")
    np.testing.assert_allclose(finding.effect.estimate, 84.0 - 86.0, atol=1e-9)   # VH-BC+ vs mixup / BC+
    assert finding.verdict == "not reproduced", finding


def test_vh_finding_reproduced_when_both_vh_methods_win(monkeypatch):
    monkeypatch.setattr(c2, "train", _fake_train(_accuracies(vh_mixup=0.97, vh_bc_plus=0.95, mixup=0.88,
                                                             bc_plus=0.89)))
    finding = _finding(c2.table_2_1("quick", None, None), "beat mixup and BC+")
    np.testing.assert_allclose(finding.effect.estimate, 95.0 - 89.0, atol=1e-9)
    assert finding.verdict == "reproduced", finding


def test_row_column_finding_needs_every_pair(monkeypatch):
    """Sec. 2.4.2: "'Vert. Concat' outperformed 'Horiz. Concat', 'Rand. Rows' outperformed 'Rand. Cols', and
    'Rand. Row. Int' improved upon 'Rand. Col. Int'".

    Two pairs favour the row-based method by 15 points, the third reverses by 4: mean +8.7 points (the old
    finding: "reproduced"), smallest pair -4."""
    monkeypatch.setattr(c2, "train", _fake_train(_accuracies(
        vertical_concat=0.95, horizontal_concat=0.80, random_rows=0.95, random_columns=0.80,
        random_row_interval=0.80, random_column_interval=0.84)))
    finding = _finding(c2.table_2_2("quick", None, None), "Row-based methods")
    np.testing.assert_allclose(finding.effect.estimate, -4.0, atol=1e-9)
    assert finding.verdict == "not reproduced", finding


# ---------------------------------------------------------------------------- Chapter 3
SETTING = c3.Setting(
    base=TrainSpec(dataset="digits", model="mlp", norm="none", epochs=2, batch_size=64, augment=False),
    clean_epochs=3, epsilon=0.15, step_size=0.0375, train_steps=2, long_steps=30, long_examples=None,
    spsa_examples=N, spsa_steps=1, spsa_samples=2, ls_sweep=(0.0, 0.01, 0.5), squeeze=(0.01, 0.03),
    sanity_examples=30)
_SANE = {"passed": True, "checks": [], "distinct": 10, "num_classes": 10}


def _first(k):
    """(N,) correctness: the first `k` test examples right."""
    return np.arange(N) < k


def _evaluated(spec, seeds, correct_of):
    """An `Evaluated` whose every seed has the white-box correctness `correct_of(spec)` (attack -> (N,))."""
    per_attack = correct_of(spec)
    correct = {a: np.stack([per_attack.get(a, _first(0))] * len(seeds)) for a in c3.WHITE_BOX}
    runs = [types.SimpleNamespace(plan=types.SimpleNamespace(init=s), metrics={"train_accuracy": 0.8})
            for s in seeds]
    return c3.Evaluated(spec, runs, correct, [_SANE] * len(seeds))


def _logits(setting, spec, seeds, store):
    """Clean / PGD-10 logits whose range shrinks with label smoothing (10x at s > 0)."""
    scale = 1.0 if spec.defense and spec.defense.get("smoothing") else 10.0
    base = np.linspace(-1.0, 1.0, N * 10).reshape(1, N, 10) * scale
    return {"clean": np.repeat(base, len(seeds), 0), "pgd10": np.repeat(base, len(seeds), 0)}


@pytest.fixture
def stubbed(monkeypatch):
    """Chapter 3 items on hand-set correctness: no model is trained or attacked."""
    monkeypatch.setitem(c3.SETTINGS, "quick", SETTING)
    monkeypatch.setattr(c3, "resolved_defense", lambda defense, preset, **overrides: dict(overrides))
    monkeypatch.setattr(c3, "_logits", _logits)

    def use(correct_of, strong=None):
        monkeypatch.setattr(c3, "evaluated", lambda setting, spec, seeds, store: _evaluated(spec, seeds, correct_of))
        if strong is not None:
            monkeypatch.setattr(c3, "_strong", lambda setting, spec, seed, store: strong(spec))
            labels = np.arange(N) % 10
            monkeypatch.setattr(c3, "load_data", lambda spec: types.SimpleNamespace(test=(None, labels)))

    return use


@pytest.mark.parametrize("at_half, verdict", [(150, "not reproduced"), (600, "reproduced")])
def test_any_label_smoothing_must_lift_fgsm_at_every_strength(stubbed, at_half, verdict):
    """Sec. 3.4: "adding in any label smoothing at all dramatically improves robustness to FGSM-based
    adversaries". FGSM accuracy: s=0 10%, s=0.01 60%, s=0.5 7.5% (or 30%). The old finding tested s=0.01
    alone (+50 points, "reproduced"); at 7.5% s=0.5 is 2.5 points below no smoothing, 50 of 50 discordant
    examples, so the smallest gain is significantly negative."""
    fgsm = {0.0: 200, 0.01: 1200, 0.5: at_half}

    def correct_of(spec):
        s = spec.defense["smoothing"] if spec.defense else 0.0
        return {"natural": _first(1800), "fgsm": _first(fgsm[s])}

    stubbed(correct_of)
    finding = _finding(c3.figure_3_2("quick", None, None), "Any label smoothing lifts FGSM")
    np.testing.assert_allclose(finding.effect.estimate, 100.0 * (at_half - 200) / N, atol=1e-9)
    assert finding.verdict == verdict, finding
    assert "every s > 0" in finding.claim


def _squeezing(pgd10):
    def correct_of(spec):
        row = spec.defense["defense"]
        return {"natural": _first(1500), "pgd10": _first(pgd10[row][spec.defense.get("squeeze_weight", 0.0)])}

    return correct_of


def test_squeezing_must_hurt_alp_at_every_weight(stubbed):
    """Sec. 3.3.1: for ALP, squeezing "hurts performance at all levels of regularization strength". ALP's
    PGD-10 accuracy: 50% without, 55% at w=0.01, 20% at w=0.03: the mean gain (-12.5 points) read
    "reproduced"; at w=0.01 squeezing helps by 5 points."""
    stubbed(_squeezing({"pgd": {0.0: 1000, 0.01: 1000, 0.03: 1000}, "alp": {0.0: 1000, 0.01: 1100, 0.03: 400}}))
    finding = _finding(c3.figure_3_1("quick", None, None), "does not help ALP")
    np.testing.assert_allclose(finding.effect.estimate, 100.0 * (1000 - 1100) / N, atol=1e-9)
    assert finding.verdict == "not reproduced", finding


def test_squeezing_hurting_alp_everywhere_is_reproduced(stubbed):
    stubbed(_squeezing({"pgd": {0.0: 1000, 0.01: 1000, 0.03: 1000}, "alp": {0.0: 1000, 0.01: 900, 0.03: 400}}))
    finding = _finding(c3.figure_3_1("quick", None, None), "does not help ALP")
    np.testing.assert_allclose(finding.effect.estimate, 100.0 * (1000 - 900) / N, atol=1e-9)
    assert finding.verdict == "reproduced", finding


def _strong_attacks(pgd20, long):
    def correct_of(spec):
        row = spec.defense["defense"] if spec.defense else "regular"
        return {"natural": _first(1600), "pgd10": _first(pgd20[row]), "pgd20": _first(pgd20[row])}

    def strong(spec):
        row = spec.defense["defense"] if spec.defense else "regular"
        return {"long": _first(long[row]), "spsa": _first(long[row])}

    return correct_of, strong


def test_long_pgd_must_be_barely_stronger_on_every_adversarial_model(stubbed):
    """Sec. 3.5.3: "nearly no difference when going from a 20-step to a 1,000-step PGD attack for all methods
    except for label smoothing". PGD and ALP lose nothing, LRM 6 points: the mean drop (2 points) read
    "reproduced" against the 3-point bound."""
    pgd20 = {"regular": 0, "label_smoothing": 0, "pgd": 1000, "alp": 1000, "lrm": 1000}
    long = dict(pgd20, lrm=880)
    stubbed(*_strong_attacks(pgd20, long))
    out = c3.table_3_6("quick", None, None)
    finding = _finding(out, "barely stronger")
    np.testing.assert_allclose(finding.effect.estimate, 100.0 * (1000 - 880) / N, atol=1e-9)
    assert finding.effect.low > c3.LONG_PGD_MAX_DROP_PTS and finding.verdict == "not reproduced", finding


def test_long_pgd_barely_stronger_everywhere_is_reproduced(stubbed):
    pgd20 = {"regular": 0, "label_smoothing": 0, "pgd": 1000, "alp": 1000, "lrm": 1000}
    long = dict(pgd20, pgd=996, alp=1000, lrm=990)
    stubbed(*_strong_attacks(pgd20, long))
    finding = _finding(c3.table_3_6("quick", None, None), "barely stronger")
    np.testing.assert_allclose(finding.effect.estimate, 100.0 * 10 / N, atol=1e-9)     # LRM's 0.5 points
    assert finding.verdict == "reproduced", finding
