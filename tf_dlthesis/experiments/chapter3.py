"""Chapter 3 experiments: Tables 3.1-3.6 and Figures 3.1-3.2 (logit regularization, adversarial robustness).

Quick scale (default, ``dataset="digits"``): the small CNN (``filters=(16, 32)``)
on scikit-learn's 8x8 digits, Adam 3e-3, batch 128, 10 epochs for adversarially
trained models and 25 for clean ones, no augmentation, one run, adversarial
training with PGD-5 on adversarial examples only (alpha = 0).  The thesis's epsilon 0.03 (~8/255 on CIFAR) barely moves an 8x8 digit
whose pixels come in 1/16 steps, so epsilon is scaled to the data: **epsilon =
0.15, step 0.0375** (the thesis's step/epsilon ratio 0.26), at which a regularly
trained model is at ~0% PGD-10 accuracy as on CIFAR-10.  PGD-1000 and SPSA
(20 steps x 64 samples) run on a fixed random 64-image sample.  Trained models
are stored (weights) in the results store and cached in-process, so Tables
3.1/3.2/3.6 and Figs. 3.1/3.2 share them and a killed ``reproduce`` resumes.

Tables whose thesis dataset is CIFAR-100 (3.3, 3.4) or SVHN (3.5) rerun on the
same digits with that table's *hyperparameters* (ALP weight 5.0, LRM beta 3e-5
and ratio 0.95; SVHN: label smoothing 0.2, beta 1e-4, mixup, ratio 0.95); their
dataset-specific claims are reported "not comparable at this scale".

Full scale: the thesis's settings (Sec. 3.5.1): pre-activation ResNet-18 on
CIFAR-10/100 (ResNet-8 on SVHN), SGD momentum 0.9, weight decay 2e-4, 5-epoch
warm-up to LR 0.1, /10 at epochs 100 and 150, 200 epochs (101 for adversarial
training), batch 128, crop+flip, epsilon 0.03 / step 0.0078 (SVHN 12/255 and
3/255), PGD-10 training, SPSA on 1,000 test images with 100 steps x 8,192
samples.  Expected cost: ~10 GPU-days for the 20 adversarially trained models
plus ~90 GPU-hours for SPSA; never run here.
"""

from __future__ import annotations

import time

import keras
import numpy as np

from tf_dlthesis import data, models, runtime
from tf_dlthesis.experiments.registry import Finding, Output, Table, fit_callbacks, register, thesis_rows
from tf_dlthesis.robustness import (
    RobustModel,
    black_box_matrix,
    evaluate_white_box,
    logit_statistics,
)

ROWS = ("regular", "label_smoothing", "pgd", "alp", "lrm")
_QUICK = dict(model="cnn", model_kwargs={"filters": (16, 32)}, epochs=10, clean_epochs=25, batch_size=128,
              learning_rate=3e-3, train_steps=5, epsilon=0.15, step_size=0.0375, ls=0.5, strong_sample=64,
              spsa=dict(num_steps=20, spsa_samples=64), pgd_long=1000, ls_sweep=(0.0, 0.1, 0.3, 0.5, 0.75),
              squeeze=(0.0, 0.02), eval_examples=None)
_FULL = dict(model="preact_resnet18", model_kwargs={}, epochs=101, clean_epochs=200, batch_size=128,
             learning_rate=0.1, train_steps=10, epsilon=0.03, step_size=0.0078, ls=0.5, strong_sample=1000,
             spsa=dict(num_steps=100, spsa_samples=8192), pgd_long=1000, ls_sweep=(0.0, 0.01, 0.1, 0.3, 0.5, 0.75),
             squeeze=(0.0, 0.01, 0.03, 0.1, 0.3), eval_examples=None)
# Defense settings per thesis dataset (Sec. 3.5.1-3.5.2).  alpha = 0: adversarial examples only.
_DEFENSES = {
    "cifar10": {"regular": ("none", {}), "label_smoothing": ("label_smoothing", {"smoothing": "ls"}),
                "pgd": ("pgd", {"alpha": 0.0}), "alp": ("alp", {"alpha": 0.0, "pairing_weight": 0.5}),
                "lrm": ("lrm", {"alpha": 0.0, "smoothing": 0.1, "beta": 1e-3, "ratio": 0.125, "mixing": "vh_mixup"})},
    "cifar100": {"alp": ("alp", {"alpha": 0.0, "pairing_weight": 5.0}),
                 "lrm": ("lrm", {"alpha": 0.0, "smoothing": 0.1, "beta": 3e-5, "ratio": 0.95, "mixing": "vh_mixup"})},
    "svhn": {"label_smoothing": ("label_smoothing", {"smoothing": 0.2}),
             "lrm": ("lrm", {"alpha": 0.0, "smoothing": 0.2, "beta": 1e-4, "ratio": 0.95, "mixing": "mixup"})},
}
_THESIS_DATA = {"cifar10": "cifar10", "cifar100": "cifar100", "svhn": "svhn_cropped"}
_MODELS: dict = {}
_ARRAYS: dict = {}


def _settings(scale):
    if scale not in ("quick", "full"):
        raise ValueError(f"`scale` must be 'quick' or 'full'. Received: scale={scale!r}")
    return _QUICK if scale == "quick" else _FULL


def _dataset_name(dataset, scale, setting):
    if scale == "full" and dataset == "digits":
        return _THESIS_DATA[setting]
    return dataset


def _arrays(name):
    if name not in _ARRAYS:
        _ARRAYS[name] = (data.load_arrays(name, "train"), data.load_arrays(name, "test"))
    return _ARRAYS[name]


def _defense(setting, row, cfg):
    table = {**_DEFENSES["cifar10"], **_DEFENSES[setting]}
    defense, params = table[row]
    params = {k: (cfg["ls"] if v == "ls" else v) for k, v in params.items()}
    return defense, params


def _optimizer(scale, cfg, steps_per_epoch, epochs):
    if scale == "quick":
        return keras.optimizers.Adam(cfg["learning_rate"])
    warm = 5 * steps_per_epoch
    bounds = [warm, 100 * steps_per_epoch, 150 * steps_per_epoch]
    values = [cfg["learning_rate"] / 5, cfg["learning_rate"], cfg["learning_rate"] / 10, cfg["learning_rate"] / 100]
    schedule = keras.optimizers.schedules.PiecewiseConstantDecay(bounds, values)
    return keras.optimizers.SGD(schedule, momentum=0.9, weight_decay=2e-4)


def train_defense(row, *, scale, dataset, store, setting="cifar10", seed=0, overrides=None):
    """Train (or fetch from the in-process cache / results store) the model of one table row.

    Returns the inner Keras model (logits).  Weights are recorded in ``store``
    under experiment ``"3/models"`` so a later call (or a resumed
    ``reproduce``) loads them instead of retraining.
    """
    cfg = _settings(scale)
    defense, params = _defense(setting, row, cfg)
    params.update(overrides or {})
    name = _dataset_name(dataset, scale, setting)
    adversarial = defense in ("pgd", "alp", "lrm")
    epochs = cfg["epochs"] if adversarial else cfg["clean_epochs"]
    config = {"scale": scale, "dataset": name, "defense": defense, "params": params, "model": cfg["model"],
              "model_kwargs": {k: list(v) if isinstance(v, tuple) else v for k, v in cfg["model_kwargs"].items()},
              "epochs": epochs, "epsilon": cfg["epsilon"], "step_size": cfg["step_size"],
              "train_steps": cfg["train_steps"], "batch_size": cfg["batch_size"]}
    key = repr(sorted(config.items())) + f"/{seed}"
    if key in _MODELS:
        return _MODELS[key]
    (x, y), _ = _arrays(name)
    model = models.build(cfg["model"], x.shape[1:], int(y.max()) + 1, seed=seed, **cfg["model_kwargs"])
    saved = store.get("3/models", config, seed) if store is not None else None
    if saved is not None:
        model.set_weights([saved["weights"][f"w{i}"] for i in range(len(saved["weights"]))])
    else:
        start = time.perf_counter()
        robust = RobustModel(model, defense, epsilon=cfg["epsilon"], step_size=cfg["step_size"],
                             num_steps=cfg["train_steps"], seed=seed, **params)
        steps = data.steps_per_epoch(len(x), cfg["batch_size"], drop_remainder=True)
        robust.compile(_optimizer(scale, cfg, steps, epochs), metrics=["accuracy"], jit_compile=runtime.jit_compile())
        # stateless, reproducible order (and crop/flip augmentation at full scale only)
        ds = data.training_dataset(x, y, batch_size=cfg["batch_size"], shuffle_seed=seed,
                                   augment_seed=None if scale == "quick" else seed + 1,
                                   flip=name not in ("svhn_cropped", "digits"), drop_remainder=True)
        robust.fit(ds, epochs=epochs, steps_per_epoch=steps, verbose=0, shuffle=False,
                   callbacks=fit_callbacks(f"ch3_{row}_{setting}_{seed}"))
        if store is not None:
            store.record("3/models", config, seed, {
                "weights": {f"w{i}": np.asarray(w) for i, w in enumerate(model.get_weights())},
                "seconds": time.perf_counter() - start})
    _MODELS[key] = model
    return model


def _test(dataset, scale, setting="cifar10"):
    cfg = _settings(scale)
    _, (xt, yt) = _arrays(_dataset_name(dataset, scale, setting))
    if cfg["eval_examples"]:
        xt, yt = xt[: cfg["eval_examples"]], yt[: cfg["eval_examples"]]
    return xt, yt


def _eps_text(cfg):
    return f"L-inf epsilon {cfg['epsilon']}, PGD step {cfg['step_size']}, random start"


def _setting_text(scale, dataset, setting, cfg):
    name = _dataset_name(dataset, scale, setting)
    if scale == "quick":
        return (f"{name} (quick scale, {setting.upper()} hyperparameters), {cfg['model']} "
                f"{cfg['model_kwargs']}, Adam {cfg['learning_rate']}, {cfg['epochs']} epochs ({cfg['clean_epochs']} clean), "
                f"PGD-{cfg['train_steps']} "
                f"adversarial training (alpha=0), label smoothing s={cfg['ls']}, {_eps_text(cfg)}, 1 run")
    return (f"{name}, {cfg['model']}, thesis Sec. 3.5.1 schedule, PGD-{cfg['train_steps']} training, "
            f"{_eps_text(cfg)}, 1 run")


def _pct(d):
    return {k: 100.0 * v for k, v in d.items()}


def _white_box_table(table_id, title, scale, dataset, store, setting):
    cfg = _settings(scale)
    test = _test(dataset, scale, setting)
    rows = {}
    for row in ROWS:
        model = train_defense(row, scale=scale, dataset=dataset, store=store, setting=setting)
        rows[row] = _pct(evaluate_white_box(model, test, ("natural", "fgsm", "pgd5", "pgd10", "pgd20"),
                                            epsilon=cfg["epsilon"], step_size=cfg["step_size"], seed=0))
    thesis_dataset = {"cifar10": "CIFAR-10, ResNet-18", "cifar100": "CIFAR-100, ResNet-18",
                      "svhn": "SVHN, ResNet-8"}[setting]
    table = Table(id=table_id, title=title, setting=_setting_text(scale, dataset, setting, cfg),
                  columns=["natural", "fgsm", "pgd5", "pgd10", "pgd20"], rows=rows, thesis=thesis_rows(table_id),
                  thesis_setting=f"{thesis_dataset}, eps 0.03 (SVHN 12/255), accuracy %")
    return table, rows


@register("3.1", title="White-box accuracy (%), CIFAR-10 settings", chapter=3, quick_minutes=1.5)
def table_3_1(scale, dataset, store, *, out=None):
    table, r = _white_box_table("3.1", "White-box accuracy (%) under FGSM and PGD", scale, dataset, store, "cifar10")
    findings = [
        Finding.check("Label smoothing alone lifts FGSM accuracy over regular training",
                      r["label_smoothing"]["fgsm"] > r["regular"]["fgsm"],
                      f"FGSM {r['label_smoothing']['fgsm']:.1f}% vs {r['regular']['fgsm']:.1f}% (thesis 54.7 vs 6.1)"),
        Finding.check("ALP is more robust to PGD-10 than PGD adversarial training",
                      r["alp"]["pgd10"] >= r["pgd"]["pgd10"],
                      f"PGD-10 {r['alp']['pgd10']:.1f}% vs {r['pgd']['pgd10']:.1f}% (thesis 49.1 vs 46.1)"),
        Finding.check("LRM is at least as robust to PGD-10 as PGD adversarial training",
                      r["lrm"]["pgd10"] >= r["pgd"]["pgd10"],
                      f"PGD-10 {r['lrm']['pgd10']:.1f}% vs {r['pgd']['pgd10']:.1f}% (thesis 51.4 vs 46.1)"),
        Finding.check("LRM is the most robust defense to every PGD attack",
                      all(r["lrm"][c] >= max(r[k][c] for k in ROWS) for c in ("pgd5", "pgd10", "pgd20")),
                      "PGD-5/10/20: " + "; ".join(f"{k} {r[k]['pgd5']:.1f}/{r[k]['pgd10']:.1f}/{r[k]['pgd20']:.1f}"
                                                   for k in ROWS)),
        Finding.check("Adversarial defenses trade clean accuracy for robustness (LRM natural < regular natural)",
                      r["lrm"]["natural"] < r["regular"]["natural"],
                      f"natural {r['lrm']['natural']:.1f}% vs {r['regular']['natural']:.1f}% (thesis 68.5 vs 87.4)"),
    ]
    return Output(tables=[table], findings=findings)


def _black_box(table_id, title, scale, dataset, store, setting):
    cfg = _settings(scale)
    test = _test(dataset, scale, setting)
    sources = {r: train_defense(r, scale=scale, dataset=dataset, store=store, setting=setting, seed=0) for r in ROWS}
    targets = {r: train_defense(r, scale=scale, dataset=dataset, store=store, setting=setting, seed=1) for r in ROWS}
    m = black_box_matrix(sources, test, "pgd10", targets=targets, epsilon=cfg["epsilon"], step_size=cfg["step_size"])
    rows = {t: _pct(v) for t, v in m.items()}
    table = Table(id=table_id, title=title, setting=_setting_text(scale, dataset, setting, cfg) +
                  "; PGD-10 examples from the source (columns, seed 0) evaluated on an independently trained target "
                  "(rows, seed 1)", columns=list(ROWS), rows=rows, thesis=thesis_rows(table_id),
                  thesis_setting={"cifar10": "CIFAR-10", "cifar100": "CIFAR-100"}[setting] + ", ResNet-18, PGD-10")
    return table, rows


@register("3.2", title="Black-box accuracy (%), CIFAR-10 settings", chapter=3, quick_minutes=1.0)
def table_3_2(scale, dataset, store, *, out=None):
    table, r = _black_box("3.2", "Black-box (transfer) accuracy (%), PGD-10", scale, dataset, store, "cifar10")
    worst = {t: min(v.values()) for t, v in r.items()}
    best_other = max(v for k, v in worst.items() if k != "label_smoothing")
    findings = [
        Finding.check("Label smoothing has the highest minimum black-box accuracy across sources",
                      worst["label_smoothing"] >= best_other,
                      "min over sources: " + ", ".join(f"{k} {v:.1f}%" for k, v in worst.items())),
        Finding.check("Examples from adversarially trained (PGD) sources transfer poorly to a regular target",
                      r["regular"]["pgd"] > r["regular"]["regular"],
                      f"regular target: from PGD {r['regular']['pgd']:.1f}% vs from regular "
                      f"{r['regular']['regular']:.1f}% (thesis 75.1 vs 26.8)"),
    ]
    return Output(tables=[table], findings=findings)


@register("3.3", title="White-box accuracy (%), CIFAR-100 settings", chapter=3, quick_minutes=0.5)
def table_3_3(scale, dataset, store, *, out=None):
    table, r = _white_box_table("3.3", "White-box accuracy (%), CIFAR-100 hyperparameters", scale, dataset, store,
                                "cifar100")
    comparable = scale == "full"
    findings = [
        Finding.check("LRM >= ALP >= PGD on PGD-10 (CIFAR-100)",
                      r["lrm"]["pgd10"] >= r["alp"]["pgd10"] >= r["pgd"]["pgd10"],
                      f"PGD-10 LRM {r['lrm']['pgd10']:.1f}, ALP {r['alp']['pgd10']:.1f}, PGD {r['pgd']['pgd10']:.1f}",
                      comparable=comparable),
        Finding.check("Label smoothing fails completely against PGD on CIFAR-100 (PGD-10 < 5%)",
                      r["label_smoothing"]["pgd10"] < 5.0, f"PGD-10 {r['label_smoothing']['pgd10']:.1f}%",
                      comparable=comparable),
    ]
    return Output(tables=[table], findings=findings)


@register("3.4", title="Black-box accuracy (%), CIFAR-100 settings", chapter=3, quick_minutes=0.7)
def table_3_4(scale, dataset, store, *, out=None):
    table, r = _black_box("3.4", "Black-box accuracy (%), CIFAR-100 hyperparameters", scale, dataset, store,
                          "cifar100")
    spread = max(max(v.values()) - min(v.values()) for k, v in r.items() if k in ("pgd", "alp", "lrm"))
    findings = [Finding.check("On CIFAR-100 adversarially trained targets perform similarly across sources "
                              "(spread < 10 points)", spread < 10.0, f"largest spread {spread:.1f} points",
                              comparable=scale == "full")]
    return Output(tables=[table], findings=findings)


@register("3.5", title="White-box accuracy (%), SVHN settings", chapter=3, quick_minutes=0.4)
def table_3_5(scale, dataset, store, *, out=None):
    table, r = _white_box_table("3.5", "White-box accuracy (%), SVHN hyperparameters", scale, dataset, store, "svhn")
    findings = [Finding.check("LRM is the most robust defense to every attack (SVHN)",
                              all(r["lrm"][c] >= max(r[k][c] for k in ROWS) for c in ("fgsm", "pgd5", "pgd10", "pgd20")),
                              "; ".join(f"{k} PGD-10 {r[k]['pgd10']:.1f}" for k in ROWS), comparable=scale == "full")]
    return Output(tables=[table], findings=findings)


@register("3.6", title="Strongest white-box attacks: PGD-1000 and SPSA", chapter=3, quick_minutes=0.8)
def table_3_6(scale, dataset, store, *, out=None):
    cfg = _settings(scale)
    test = _test(dataset, scale)
    n = min(cfg["strong_sample"], len(test[0]))
    rows = {}
    long_name = f"pgd{cfg['pgd_long']}"
    for row in ROWS:
        model = train_defense(row, scale=scale, dataset=dataset, store=store)
        key = f"3.6/{scale}/{dataset}/{row}"
        acc = evaluate_white_box(model, test, ("pgd20", long_name, "spsa"), epsilon=cfg["epsilon"],
                                 step_size=cfg["step_size"], sample={"pgd20": n, long_name: n, "spsa": n},
                                 spsa_params=cfg["spsa"], store=store, store_key=key, seed=0)
        rows[row] = {"pgd20": 100 * acc["pgd20"], "pgd1000": 100 * acc[long_name], "spsa": 100 * acc["spsa"]}
    table = Table(id="3.6", title="White-box accuracy (%) under the strongest attacks",
                  setting=_setting_text(scale, dataset, "cifar10", cfg) +
                  f"; all three attacks on the same fixed random {n}-image test sample; SPSA "
                  f"{cfg['spsa']['num_steps']} steps x {cfg['spsa']['spsa_samples']} samples, lr 0.01, delta 0.01",
                  columns=["pgd20", "pgd1000", "spsa"], rows=rows, thesis=thesis_rows("3.6"),
                  thesis_setting="CIFAR-10, ResNet-18; SPSA on 1,000 images")
    drop = {k: rows[k]["pgd20"] - rows[k]["pgd1000"] for k in ROWS}
    findings = [
        Finding.check("PGD-1000 is barely stronger than PGD-20 on adversarially trained models (drop <= 3 points)",
                      all(drop[k] <= 3.0 for k in ("pgd", "alp", "lrm")),
                      "PGD-20 minus PGD-1000: " + ", ".join(f"{k} {drop[k]:.1f}" for k in ROWS)),
        Finding.check("Label smoothing loses more robustness from PGD-20 to PGD-1000 than PGD training",
                      drop["label_smoothing"] > drop["pgd"],
                      f"drop LS {drop['label_smoothing']:.1f} vs PGD {drop['pgd']:.1f} points (thesis 27.2 vs 0.1)"),
        Finding.check("SPSA (gradient-free) is no stronger than PGD-1000 against PGD training (SPSA accuracy >= PGD-1000's - 3 points)",
                      rows["pgd"]["spsa"] >= rows["pgd"]["pgd1000"] - 3.0,
                      f"PGD model: SPSA {rows['pgd']['spsa']:.1f}% vs PGD-1000 {rows['pgd']['pgd1000']:.1f}%"),
    ]
    return Output(tables=[table], findings=findings)


def _hist(ax, stats, label, **kw):
    edges = stats["bin_edges"]
    ax.stairs(stats["histogram"] / stats["histogram"].sum(), edges, label=label, **kw)


@register("fig3.1", title="Logit pairing regularizes logits; logit squeezing with and without ALP", chapter=3,
          quick_minutes=0.6)
def figure_3_1(scale, dataset, store, *, out=None):
    import matplotlib.pyplot as plt

    cfg = _settings(scale)
    test = _test(dataset, scale)
    pgd_model = train_defense("pgd", scale=scale, dataset=dataset, store=store)
    alp_model = train_defense("alp", scale=scale, dataset=dataset, store=store)
    s_pgd, s_alp = logit_statistics(pgd_model, test), logit_statistics(alp_model, test)
    lo = min(s_pgd["bin_edges"][0], s_alp["bin_edges"][0])
    hi = max(s_pgd["bin_edges"][-1], s_alp["bin_edges"][-1])
    s_pgd, s_alp = (logit_statistics(m, test, value_range=(lo, hi)) for m in (pgd_model, alp_model))
    curves = {}
    for row in ("pgd", "alp"):
        curves[row] = []
        for w in cfg["squeeze"]:
            model = pgd_model if w == 0 and row == "pgd" else alp_model if w == 0 else train_defense(
                row, scale=scale, dataset=dataset, store=store, overrides={"squeeze_weight": w})
            acc = evaluate_white_box(model, test, ("pgd10",), epsilon=cfg["epsilon"], step_size=cfg["step_size"])
            curves[row].append(100 * acc["pgd10"])
    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 3.6))
    _hist(a, s_pgd, f"PGD (var {s_pgd['variance']:.2f})")
    _hist(a, s_alp, f"ALP (var {s_alp['variance']:.2f})")
    a.set(title="Clean test logits", xlabel="logit", ylabel="fraction")
    a.legend()
    weights = [w for w in cfg["squeeze"] if w > 0]
    for row, style in (("pgd", "C0"), ("alp", "C1")):
        b.plot(weights, curves[row][1:], "o-", color=style, label=f"{row.upper()} + logit squeezing")
        b.axhline(curves[row][0], color=style, ls="--", label=f"{row.upper()}, no squeezing")
    b.set(xscale="log", title="PGD-10 accuracy", xlabel="squeeze weight", ylabel="accuracy (%)")
    b.legend(fontsize=7)
    fig.tight_layout()
    findings = [
        Finding.check("ALP's clean-test logits have smaller variance than PGD training's",
                      s_alp["variance"] < s_pgd["variance"],
                      f"variance ALP {s_alp['variance']:.2f} vs PGD {s_pgd['variance']:.2f} (thesis 4.02 vs 8.31)"),
        Finding.check("Logit squeezing improves PGD training but not ALP (best squeezed gain PGD > ALP)",
                      max(curves["pgd"][1:]) - curves["pgd"][0] > max(curves["alp"][1:]) - curves["alp"][0],
                      "PGD-10 at squeezing weights " + ", ".join(str(w) for w in cfg["squeeze"]) + ": PGD "
                      + " / ".join(f"{a:.1f}%" for a in curves["pgd"]) + "; ALP " + " / ".join(f"{a:.1f}%" for a in curves["alp"])),
    ]
    table = Table(id="fig3.1", title="PGD-10 accuracy (%) vs logit-squeezing weight",
                  setting=_setting_text(scale, dataset, "cifar10", cfg), columns=[str(w) for w in cfg["squeeze"]],
                  rows={r: dict(zip((str(w) for w in cfg["squeeze"]), curves[r])) for r in curves})
    return Output(tables=[table], figures=[("fig_3_1", fig)], findings=findings)


@register("fig3.2", title="Label smoothing: robustness and logit distribution", chapter=3, quick_minutes=0.5)
def figure_3_2(scale, dataset, store, *, out=None):
    import matplotlib.pyplot as plt

    cfg = _settings(scale)
    test = _test(dataset, scale)
    sweep = {}
    for s in cfg["ls_sweep"]:
        model = train_defense("regular", scale=scale, dataset=dataset, store=store) if s == 0 else train_defense(
            "label_smoothing", scale=scale, dataset=dataset, store=store, overrides={"smoothing": s})
        sweep[s] = (model, _pct(evaluate_white_box(model, test, ("natural", "fgsm", "pgd10"), epsilon=cfg["epsilon"],
                                                   step_size=cfg["step_size"])))
    s_max = max(cfg["ls_sweep"])
    none_clean = logit_statistics(sweep[0.0][0], test)
    ls_clean = logit_statistics(sweep[s_max][0], test)
    kw = dict(attack="pgd10", epsilon=cfg["epsilon"], step_size=cfg["step_size"])
    none_adv, ls_adv = logit_statistics(sweep[0.0][0], test, **kw), logit_statistics(sweep[s_max][0], test, **kw)
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.6))
    xs = list(sweep)
    for col, name in (("natural", "original test"), ("fgsm", "FGSM"), ("pgd10", "PGD-10")):
        axes[0].plot(xs, [sweep[s][1][col] for s in xs], "o-", label=name)
    axes[0].set(title="Accuracy vs label smoothing", xlabel="smoothing s", ylabel="accuracy (%)")
    axes[0].legend()
    for ax, (a, b), title in ((axes[1], (none_clean, ls_clean), "clean test logits"),
                              (axes[2], (none_adv, ls_adv), "PGD-10 adversarial logits")):
        _hist(ax, a, f"s=0 (range {a['dynamic_range']:.1f})")
        _hist(ax, b, f"s={s_max} (range {b['dynamic_range']:.1f})")
        ax.set(title=title, xlabel="logit", ylabel="fraction")
        ax.legend()
    fig.tight_layout()
    shrink = none_clean["dynamic_range"] / max(ls_clean["dynamic_range"], 1e-9)
    findings = [
        Finding.check(f"Label smoothing (s={s_max}) shrinks the logits' dynamic range several-fold (>= 3x)",
                      shrink >= 3.0, f"{none_clean['dynamic_range']:.1f} -> {ls_clean['dynamic_range']:.1f} "
                      f"({shrink:.1f}x; thesis 20 -> 1.2, 16x)"),
        Finding.check("The shrinkage also holds on PGD adversarial examples",
                      ls_adv["dynamic_range"] < none_adv["dynamic_range"],
                      f"{none_adv['dynamic_range']:.1f} -> {ls_adv['dynamic_range']:.1f}"),
        Finding.check("Any label smoothing lifts FGSM accuracy", all(sweep[s][1]["fgsm"] > sweep[0.0][1]["fgsm"]
                                                                     for s in xs if s > 0),
                      "FGSM: " + ", ".join(f"s={s}: {sweep[s][1]['fgsm']:.1f}%" for s in xs)),
        Finding.check("Label smoothing costs little clean accuracy (< 3 points at every s)",
                      all(sweep[0.0][1]["natural"] - sweep[s][1]["natural"] < 3.0 for s in xs),
                      "natural: " + ", ".join(f"s={s}: {sweep[s][1]['natural']:.1f}%" for s in xs)),
    ]
    table = Table(id="fig3.2", title="Accuracy (%) vs label smoothing strength (clean training only)",
                  setting=_setting_text(scale, dataset, "cifar10", cfg), columns=["natural", "fgsm", "pgd10"],
                  rows={f"s={s}": sweep[s][1] for s in xs})
    return Output(tables=[table], figures=[("fig_3_2", fig)], findings=findings)
