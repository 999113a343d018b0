"""Chapter 2 experiments: registration, the 20-copies selection option, resumability."""

import dataclasses
import os

import numpy as np

from tf_dlthesis.experiments import REGISTRY, ResultsStore
from tf_dlthesis.experiments import chapter2 as c2


def test_registered_ids_and_settings():
    for key in ("2.1", "2.2", "2.3", "fig2.2"):
        assert key in REGISTRY
    quick = c2._setting("2.1", "quick", "digits")
    assert quick.dataset == "digits" and quick.select_from == 0
    full = c2._setting("2.1", "full", "digits")
    assert (full.dataset, full.model, full.runs, full.select_from, full.select_epochs) == (
        "cifar10", "preact_resnet18", 3, 20, 3)
    assert (full.weight_decay_mix, full.weight_decay_base) == (1e-4, 5e-4)   # Sec. 2.4.1
    assert c2._setting("2.2", "full", "digits").weight_decay_mix == 5e-4
    assert set(c2.ROWS_2_1) == set(REGISTRY["2.1"].fn.__globals__["thesis_rows"]("2.1"))


def test_thesis_schedule_warmup_and_decays():
    setting = dataclasses.replace(c2._setting("2.1", "full", "digits"), epochs=205)
    sched = c2._schedule(setting, 390)       # 205 * 390 = 79,950 steps ~ the thesis's 80k
    lrs = [float(sched(s)) for s in (0, 399, 500, 33000, 50000, 75000)]
    np.testing.assert_allclose(lrs, [0.01, 0.01, 0.1, 0.01, 0.001, 0.0001], rtol=1e-5)


def test_selection_of_lowest_loss_copies_and_resume(tmp_path):
    store = ResultsStore(os.path.join(tmp_path, "r.sqlite"))
    setting = dataclasses.replace(c2._setting("2.1", "quick", "digits"), epochs=2, runs=1,
                                  select_from=2, select_epochs=1)
    errs = c2.train_runs(setting, "vh_mixup", store)
    assert len(errs) == 1 and 0.0 <= errs[0] <= 100.0
    row = store.rows(c2.STORE_KEY)[0]
    assert row["result"]["seed"] in (0, 1)
    # resumed from the store: no training, same numbers
    assert c2.train_runs(setting, "vh_mixup", store) == errs


def test_figure_2_2(tmp_path):
    out = REGISTRY["fig2.2"].fn("quick", "digits", None)
    (name, fig), = out.figures
    assert name == "fig_2_2" and len(fig.axes) >= len(c2.METHODS) + 2
