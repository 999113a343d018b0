"""Chapter 2 experiments: settings per scale, the group statistic, the findings, the items and Figure 2.2."""

import os

import matplotlib

matplotlib.use("Agg")

import numpy as np  # noqa: E402
import pytest  # noqa: E402

from tf_dlthesis.augment import METHODS, plot_methods  # noqa: E402
from tf_dlthesis.experiments import ResultsStore, TrainSpec, registry, training  # noqa: E402
from tf_dlthesis.experiments import chapter2 as c2  # noqa: E402
from tf_dlthesis import recipes  # noqa: E402
from tf_dlthesis.experiments.training import Run, as_plan  # noqa: E402


# ---------------------------------------------------------------------------- settings
def test_rows_are_the_thesis_rows():
    assert set(c2.ROWS_2_1) == set(registry.thesis_rows("2.1")) == set(registry.thesis_rows("2.2"))
    assert set(c2.ROWS_2_3) == set(registry.thesis_rows("2.3"))
    assert "bc" not in c2.ROWS_2_1 and len(c2.ROWS_2_1) == 17
    assert set(c2.NON_LINEAR) < set(METHODS) and len(c2.NON_LINEAR) == 11
    for key in ("2.1", "2.2", "2.3", "fig2.2"):
        assert key in registry.REGISTRY


def test_quick_and_standard_share_one_setting_across_tables():
    for scale, dataset, n_seeds in (("quick", "digits", 2), ("standard", "fashion_mnist", 3)):
        s21 = c2.setting("2.1", scale)
        assert s21.baseline.dataset == dataset and len(s21.seeds) == n_seeds
        assert s21.baseline.mixing is None
        assert s21.spec("vh_mixup").mixing == {"method": "vh_mixup", "mode": "pair"}
        assert s21.spec("vh_mixup").replace(mixing=None) == s21.baseline   # mixing is the only difference
        for table in ("2.2", "2.3"):    # 2.2 and 2.3 read 2.1's runs from the store
            other = c2.setting(table, scale)
            assert all(other.spec(m).key() == s21.spec(m).key() for m in c2.TABLE_ROWS[table])
    assert c2.setting("2.1", "quick").baseline.model_kwargs == {"filters": [16, 32]}


def test_full_scale_uses_the_thesis_recipes():
    s21, s22, s23 = (c2.setting(t, "full") for t in ("2.1", "2.2", "2.3"))
    assert (s21.baseline.dataset, s21.baseline.model, s21.baseline.epochs, s21.baseline.batch_size) == (
        "cifar10", "preact_resnet18", 205, 128)
    assert (s21.baseline.recipe, s21.spec("mixup").recipe) == ("ch2_cifar10_baseline", "ch2_cifar10_mixing")
    assert s22.baseline.dataset == "cifar100" and s22.baseline.recipe == s22.spec("vh_mixup").recipe == "ch2_cifar100"
    assert (s23.baseline.recipe, s23.spec("vh_bc_plus").recipe) == ("ch2_caltech_baseline", "ch2_caltech_mixing")
    assert (s23.baseline.batch_size, s23.baseline.image_size, s23.seeds) == (64, 299, (0,))
    assert len(s21.seeds) == len(s22.seeds) == 3


def test_setting_validation_and_other_datasets(monkeypatch):
    with pytest.raises(ValueError, match="scale"):
        c2.setting("2.1", "huge")
    with pytest.raises(ValueError, match="table"):
        c2.setting("2.9", "quick")
    with pytest.raises(ValueError, match="method"):
        c2.setting("2.1", "quick").spec("cutmix")
    moved = c2.setting("2.1", "standard", "digits")
    assert moved.baseline.dataset == moved.spec("mixup").dataset == "digits"
    assert moved.baseline.train_examples == 1024 and "instead of fashion_mnist" in moved.chosen
    usual = c2.SETTINGS["standard"]["2.1"]
    large = c2.TableSetting(usual.baseline.replace(train_examples=5000), usual.mixing.replace(train_examples=5000),
                            usual.seeds, usual.chosen, usual.thesis_setting)
    monkeypatch.setitem(c2.SETTINGS["standard"], "2.1", large)
    assert c2.setting("2.1", "standard", "digits").baseline.train_examples is None   # digits has 1,433


# ---------------------------------------------------------------------------- the group statistic
# ---------------------------------------------------------------------------- findings on synthetic runs
def _fake_train(accuracy, n=1000):
    """A stand-in for `train` whose runs have the given test accuracy per method (exact counts)."""

    def fake(spec, seeds, *, store=None, **kwargs):
        method = spec.mixing["method"] if spec.mixing else "baseline"
        runs = []
        for s in seeds:
            rng = np.random.default_rng([s, c2.ROWS_2_1.index(method)])
            correct = rng.permutation(n) < round(accuracy[method] * n)
            runs.append(Run(spec, as_plan(s), {"test_accuracy": float(correct.mean()),
                                               "train_accuracy": 1.0 if method == "baseline" else 0.97},
                            correct, np.zeros(n, np.int64), {"distinct_predictions": 10, "num_classes": 10}))
        return runs

    return fake


_THESIS_LIKE = {m: 0.90 for m in c2.ROWS_2_1}
_THESIS_LIKE.update(baseline=0.80, random_pixels=0.70, random_elements=0.70, mixup=0.88, bc_plus=0.88,
                    vh_mixup=0.95, vh_bc_plus=0.94, vertical_concat=0.92, random_rows=0.92, random_row_interval=0.92,
                    horizontal_concat=0.88, random_columns=0.88, random_column_interval=0.88)


def _verdicts(output):
    return [f.verdict for f in output.findings]


def test_findings_follow_the_runs(monkeypatch):
    monkeypatch.setattr(c2, "train", _fake_train(_THESIS_LIKE))
    out21 = c2.table_2_1("quick", None, None)
    assert _verdicts(out21) == ["reproduced"] * 3
    assert all(f.effect is not None and f.region == "> 0" for f in out21.findings)
    (table,) = out21.tables
    assert list(table.rows) == list(c2.ROWS_2_1) and table.thesis["baseline"]["error_pct"] == 5.4
    np.testing.assert_allclose(table.rows["baseline"]["error_pct"], 20.0)
    row = table.rows["random_pixels"]
    np.testing.assert_allclose(row["vs_baseline_pts"], 10.0)      # 30% vs 20% error
    assert row["ci_low"] < 10.0 < row["ci_high"]
    (check,) = out21.checks
    assert check.passed and "gap 20.00 pts" in check.detail
    out22 = c2.table_2_2("quick", None, None)
    assert _verdicts(out22) == ["reproduced", "not comparable at this scale"]
    assert out22.findings[1].effect.estimate > 0                  # measured and shown all the same
    out23 = c2.table_2_3("quick", None, None)
    assert _verdicts(out23) == ["reproduced", "not comparable at this scale"]
    assert list(out23.tables[0].rows) == list(c2.ROWS_2_3)


def test_findings_reverse_when_mixing_hurts(monkeypatch):
    hurts = {m: 0.80 for m in c2.ROWS_2_1}
    hurts.update(baseline=0.95, random_pixels=0.97, random_elements=0.97, vh_mixup=0.70, vh_bc_plus=0.70,
                 horizontal_concat=0.90, random_columns=0.90, random_column_interval=0.90)
    monkeypatch.setattr(c2, "train", _fake_train(hurts))
    assert _verdicts(c2.table_2_1("quick", None, None)) == ["not reproduced"] * 3
    out22 = c2.table_2_2("quick", None, None)
    assert out22.findings[0].verdict == "not reproduced"
    assert c2.table_2_3("quick", None, None).findings[0].verdict == "not reproduced"


# ---------------------------------------------------------------------------- real (tiny) runs
_TINY = TrainSpec(dataset="digits", train_examples=200, test_examples=100, model="cnn",
                  model_kwargs={"filters": [4, 8]}, norm_kwargs={"momentum": 0.9}, epochs=1, batch_size=32)


def _tiny(monkeypatch, seeds):
    tiny = {t: c2._same(_TINY, seeds, "tiny test setting", "thesis") for t in c2.TABLE_ROWS}
    monkeypatch.setitem(c2.SETTINGS, "quick", tiny)
    trained = []

    def spy(spec, seeds, **kwargs):
        runs = training.train(spec, seeds, **kwargs)
        trained.extend(r for r in runs if not r.from_store)
        return runs

    monkeypatch.setattr(c2, "train", spy)
    return trained


def test_table_2_3_trains_once_and_resumes(monkeypatch, tmp_path):
    trained = _tiny(monkeypatch, (0,))
    store = ResultsStore(os.path.join(tmp_path, "r.sqlite"))
    out = registry.get("2.3")("quick", None, store)
    assert len(trained) == len(c2.ROWS_2_3)
    assert {r.spec.mixing["method"] for r in trained if r.spec.mixing} == set(c2.ROWS_2_3) - {"baseline"}
    rows = out.tables[0].rows
    assert all(0.0 <= v["error_pct"] <= 100.0 for v in rows.values())
    assert [f.verdict for f in out.findings][1] == "not comparable at this scale"
    assert any(c.name.startswith("baseline fits") for c in out.checks)
    assert any("collapsed" in c.name for c in out.checks)                  # the registry's health check
    again = registry.get("2.3")("quick", None, store)
    assert len(trained) == len(c2.ROWS_2_3)                                # read back, nothing retrained
    assert again.tables[0].rows == rows


@pytest.mark.slow
def test_table_2_2_reads_the_runs_of_table_2_1(monkeypatch, tmp_path):
    trained = _tiny(monkeypatch, (0, 1))
    store = ResultsStore(os.path.join(tmp_path, "r.sqlite"))
    out21 = registry.get("2.1")("quick", None, store)
    assert len(trained) == 2 * len(c2.ROWS_2_1)
    out22 = registry.get("2.2")("quick", None, store)
    assert len(trained) == 2 * len(c2.ROWS_2_1)
    assert out22.tables[0].rows == out21.tables[0].rows
    assert len(out21.findings) == 3 and len(out22.findings) == 2
    assert "identical" in out21.findings[2].evidence       # digits: one channel, so Elems. = Pixels


# ---------------------------------------------------------------------------- Figure 2.2
def test_figure_2_2_shows_both_images_in_every_panel():
    out = registry.get("fig2.2")("quick", None, None)
    ((name, fig),) = out.figures
    titled = [ax.get_title() for ax in fig.axes if ax.get_title()]
    assert name == "fig_2_2" and titled[:2] == ["x1", "x2"] and len(titled) == len(METHODS) + 2
    weights = [float(t.split("=")[-1]) for t in titled[2:]]
    assert all(0.0 < w < 1.0 for w in weights), weights
    x = np.zeros((8, 8, 1), np.float32)
    with pytest.raises(ValueError, match="lam"):
        plot_methods(x, x + 1.0, ["mixup"], lam=1.0)
    with pytest.raises(ValueError, match="draws"):
        plot_methods(x, x + 1.0, ["mixup"], lam=0.5, draws=0)


def test_full_scale_stabilisation_keeps_the_lowest_loss_candidates(monkeypatch):
    """The thesis's "20 copies for 3 epochs, continue the best 3" picks seeds by the candidates' loss."""
    calls = []

    def fake_train(spec, seeds, store=None, **kw):
        calls.append((spec.stop_epoch, list(seeds)))
        return [Run(spec, as_plan(s), {"fit_loss": float((7 * s) % 5)}, np.ones(2, bool), np.zeros(2, int),
                    {"distinct_predictions": 2, "num_classes": 2}) for s in seeds]

    monkeypatch.setattr(c2, "train", fake_train)
    chosen = c2.setting("2.1", "full")
    assert chosen.select_from == 20 and chosen.select_epochs == 3
    c2._runs(chosen, ("baseline",), store=None)
    (stop, candidates), (full, kept) = calls
    assert stop == 3 and candidates == list(range(20)) and full is None
    assert kept == [0, 5, 10]  # loss (7 s) mod 5 is 0 for s = 0, 5, 10, 15: the three smallest seeds win ties


def test_full_scale_table_2_3_runs_the_thesis_steps_and_milestones():
    """Sec. 2.4.1: log-linear warm-up over 2,000 steps; /10 after 20k and 26k (baseline) or 45k and 57k (mixing)
    steps of 30k / 60k. The epochs were computed for Caltech-256's 160 steps per epoch, so on caltech101 (48 steps)
    the run was ~30% of the thesis's and every milestone moved with it."""
    from tf_dlthesis import data
    from tf_dlthesis.augment import MixStage

    s23 = c2.setting("2.3", "full")
    n = data.info("caltech101", image_size=299).splits["train"]
    for spec, mix, thesis_steps, warmup, decays in (
            (s23.baseline, None, 30000, 2000, [20000, 26000]),
            (s23.spec("vh_mixup"), MixStage("vh_mixup", num_classes=102, seed=0), 60000, 2000, [45000, 57000])):
        steps = data.steps_per_epoch_of(n, spec.batch_size, drop_remainder=mix is not None, mix=mix)
        assert abs(spec.epochs * steps - thesis_steps) < steps, (spec.epochs, steps)
        schedule = recipes.get(spec.recipe).schedule(steps, spec.epochs).get_config()
        assert schedule["warmup_steps"] == warmup and schedule["boundaries"] == decays
