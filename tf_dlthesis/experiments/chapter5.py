"""Chapter 5 and Appendix B: nondeterminism, instability and reducing variability.

Registers Tables 5.1 (each source of nondeterminism), 5.3 (random bit change),
5.5 (ensembles, snapshot ensembles, TTA), B.1 (linear / one hidden layer / small
ResNet) and Fig. 5.2 (onset of nondeterminism). All of them run
`tf_dlthesis.variability.run_protocol` over `train_run`, sharing one store
namespace (``"ch5.runs"``), so a run trained for one table (e.g. the "all
sources" runs) is reused by the others and a killed `reproduce` resumes.

Quick scale (digits, 2 CPU cores): small models, few epochs, R = 4-5 runs per
source. Full scale: the thesis's settings (CIFAR-10, ResNet-14, 500 epochs, R =
100) - wired up, never run here (~700 ResNet-14 trainings of 500 epochs per table:
thousands of GPU-hours).

Reference: Thesis Ch. 5 and App. B; arXiv:2103.04514.
"""

from __future__ import annotations

import dataclasses
import functools
import time

import numpy as np

from tf_dlthesis.experiments.registry import Finding, Output, Table, fit_callbacks, register, thesis_rows
from tf_dlthesis.variability import (
    CyclicCosineSchedule,
    SeedPlan,
    SnapshotEnsemble,
    bit_change,
    order_hash,
    predict_tta,
    reseed_stochastic_layers,
    run_protocol,
    weights_hash,
)

STORE_KEY = "ch5.runs"
COLUMNS = [
    "accuracy_sd_pct",
    "accuracy_sd_err",
    "cross_entropy_sd",
    "cross_entropy_sd_err",
    "disagreement_pct",
    "correlation",
    "ensemble_delta_pct",
]


@dataclasses.dataclass(frozen=True)
class TrainSettings:
    """One training setting of the protocol (hashable; part of the store key)."""

    dataset: str = "digits"
    model: str = "cnn"
    norm: str = "batch"
    epochs: int = 12
    batch_size: int = 64
    learning_rate: float = 0.05
    momentum: float = 0.9
    weight_decay: float = 5e-4
    augment: bool = True
    flip: bool = False
    pad: int = 1
    image_size: int | None = None
    schedule: str = "cosine"  # or "cyclic" (snapshot ensemble, `cycles` snapshots)
    cycles: int = 5
    tta: tuple = ("crop",)
    model_kwargs: tuple = ()

    def to_config(self) -> dict:
        out = dataclasses.asdict(self)
        out["tta"] = list(self.tta)
        out["model_kwargs"] = [list(kv) for kv in self.model_kwargs]
        return out


@functools.lru_cache(maxsize=4)
def _arrays(dataset: str, image_size):
    from tf_dlthesis import data

    return data.load_arrays(dataset, "train", image_size=image_size), data.load_arrays(dataset, "test", image_size=image_size)


def _stream(x, y, settings: TrainSettings, plan: SeedPlan, *, with_index: bool = False):
    """The training stream: per-epoch seeds from the plan (honours the onset epoch)."""
    from tf_dlthesis import data

    epochs = settings.epochs
    onset = min(plan.onset_epoch, epochs) if plan.base is not None else 0
    pieces = []
    for lo, hi, seeds in ((0, onset, plan.base), (onset, epochs, plan)):
        if hi <= lo:
            continue
        pieces.append(
            data.training_dataset(
                x,
                y,
                batch_size=settings.batch_size,
                shuffle_seed=seeds.shuffle,
                augment_seed=seeds.augment if settings.augment else None,
                epochs=hi,
                start_epoch=lo,
                pad=settings.pad,
                flip=settings.flip,
            )
        )
    ds = pieces[0]
    for extra in pieces[1:]:
        ds = ds.concatenate(extra)
    return ds


def data_order(num_examples: int, epochs: int, plan: SeedPlan) -> np.ndarray:
    """The example order `data.training_dataset` feeds under `plan`, all epochs concatenated.

    Epoch e is the stateless permutation of `training_dataset` seeded by
    (`plan.epoch_seed("shuffle", e)`, e); hashed to verify the shuffle source.
    """
    import tensorflow as tf

    from tf_dlthesis import data

    perms = []
    for e in range(epochs):
        seed = tf.random.experimental.stateless_fold_in(data.as_seed(plan.epoch_seed("shuffle", e)), tf.constant(e, tf.int64))
        perms.append(tf.argsort(tf.random.stateless_uniform([num_examples], seed)).numpy())
    return np.concatenate(perms) if perms else np.zeros((0,), np.int64)


def train_run(plan: SeedPlan, settings: TrainSettings = TrainSettings()) -> dict:
    """Trains one model under `plan` and returns its test logits (+ TTA/snapshot variants).

    Sources: `plan.init` builds the model, `plan.stochastic` re-seeds its dropout,
    `plan.bit_change` moves one first-layer weight by one ULP after building,
    `plan.epoch_seed("shuffle"/"augment", e)` drive the data stream. Returns the
    hash of the initial weights (before the bit change) and of the data order.
    Module-level so that process executors can pickle it.
    """
    import keras

    from tf_dlthesis import data, models, runtime

    (x, y), (xt, yt) = _arrays(settings.dataset, settings.image_size)
    num_classes = int(max(y.max(), yt.max()) + 1)
    model = models.build(
        settings.model, x.shape[1:], num_classes, norm=settings.norm, seed=plan.init, **dict(settings.model_kwargs)
    )
    reseed_stochastic_layers(model, plan.stochastic)
    init_hash = weights_hash(model)
    change = bit_change(model, seed=plan.bit_change) if plan.bit_change is not None else None

    steps = data.steps_per_epoch(len(x), settings.batch_size)
    total = max(1, settings.epochs * steps)
    if settings.schedule == "cyclic":
        schedule = CyclicCosineSchedule(settings.learning_rate, total_steps=total, cycles=settings.cycles)
    else:
        schedule = keras.optimizers.schedules.CosineDecay(settings.learning_rate, decay_steps=total)
    model.compile(
        optimizer=keras.optimizers.SGD(
            schedule, momentum=settings.momentum, nesterov=True, weight_decay=settings.weight_decay or None
        ),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        jit_compile=runtime.jit_compile(),
    )
    callbacks = fit_callbacks(f"ch5-{settings.model}-{plan.source}-{plan.run}")
    snapshots = None
    if settings.schedule == "cyclic":
        snapshots = SnapshotEnsemble(cycles=settings.cycles)
        callbacks = callbacks + [snapshots]
    order = data_order(len(x), settings.epochs, plan)
    t0 = time.time()
    model.fit(_stream(x, y, settings, plan), epochs=settings.epochs, steps_per_epoch=steps, verbose=0, shuffle=False, callbacks=callbacks)
    train_seconds = time.time() - t0

    variants = {}
    if snapshots is not None:
        logits = snapshots.predict(xt)
        variants["final"] = predict_tta(model, xt, mode="none")
        for mode in settings.tta:
            variants[f"{mode}_tta"] = snapshots.predict(xt, tta=mode, pad=settings.pad)
    else:
        logits = predict_tta(model, xt, mode="none")
        for mode in settings.tta:
            variants[f"{mode}_tta"] = predict_tta(model, xt, mode=mode, pad=settings.pad)
    return {
        "logits": logits,
        "variants": variants,
        "init_hash": init_hash,
        "order_hash": order_hash(order),
        "info": {"train_seconds": train_seconds, "bit_change": None if change is None else change.to_config()},
    }


# --------------------------------------------------------------------------------------
# Settings per scale
# --------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class Scale:
    runs: int  # R per source
    runs_all: int  # R for "all sources" / single models of Table 5.5 (ensembles need R = N x groups)
    runs_ops: int  # R for the op-determinism source
    runs_b1: int  # R per source for Table B.1's shallow models
    main: TrainSettings  # Tables 5.1 / 5.3 / 5.5, Fig. 5.2 (and the deep model of B.1)
    b1_models: tuple  # (row label, TrainSettings) of Table B.1's shallow models
    onsets: tuple  # Fig. 5.2 onset epochs
    sources: tuple  # Table 5.1 rows (source names)
    description: str


def _image_settings(dataset: str):
    from tf_dlthesis import data
    from tf_dlthesis.experiments.training import default_pad

    shape = data.info(dataset).image_shape
    return {"pad": default_pad(shape), "flip": dataset != "digits"}


def scale_settings(scale: str, dataset: str = "digits") -> Scale:
    """The protocol's settings at `scale` ("quick": digits on a CPU; "full": the thesis)."""
    img = _image_settings(dataset)
    tta = ("flip", "flip_crop") if img["flip"] else ("crop",)
    if scale == "quick":
        main = TrainSettings(
            dataset=dataset, model="cnn", norm="batch", epochs=10, batch_size=32, learning_rate=0.05,
            model_kwargs=(("filters", (8, 16)),), tta=tta, **img,
        )
        shallow = dataclasses.replace(main, norm="none", model_kwargs=())
        return Scale(
            runs=4,
            runs_all=8,
            runs_ops=2,
            runs_b1=3,
            main=main,
            b1_models=(
                ("linear", dataclasses.replace(shallow, model="linear")),
                ("hidden_fc", dataclasses.replace(shallow, model="mlp", model_kwargs=(("hidden", 64),))),
                ("hidden_conv", dataclasses.replace(shallow, model="conv1", model_kwargs=(("filters", 16),))),
            ),
            onsets=(0, 1, 9),
            sources=("init", "shuffle", "augment", "ops", "all"),
            description=f"{dataset}, small CNN (4 convs, 8/16 filters, BN), SGD+Nesterov, cosine LR 0.05, batch 32, 10 epochs",
        )
    main = TrainSettings(
        dataset=dataset, model="preact_resnet14", norm="batch", epochs=500, batch_size=512, learning_rate=0.4,
        weight_decay=5e-4, tta=tta, **img,
    )
    shallow = dataclasses.replace(main, norm="none")
    return Scale(
        runs=100,
        runs_all=100,
        runs_ops=100,
        runs_b1=100,
        main=main,
        b1_models=(
            ("linear", dataclasses.replace(shallow, model="linear")),
            ("hidden_fc", dataclasses.replace(shallow, model="mlp")),
            ("hidden_conv", dataclasses.replace(shallow, model="conv1")),
            ("resnet10", dataclasses.replace(main, model="preact_resnet10")),
        ),
        onsets=(0, 50, 250, 400, 450, 480, 490, 495, 498),
        sources=("init", "shuffle", "augment", "ops", "shuffle+ops", "shuffle+augment+ops", "all"),
        description=f"{dataset}, pre-activation ResNet-14, SGD+Nesterov, cosine LR 0.4, batch 512, 500 epochs",
    )


def _labels(settings: TrainSettings):
    return _arrays(settings.dataset, settings.image_size)[1][1]


def _protocol(store, settings: TrainSettings, sources, runs: int, *, onset_epoch: int = 0):
    return run_protocol(
        functools.partial(train_run, settings=settings),
        sources=list(sources),
        runs=runs,
        labels=_labels(settings),
        store=store,
        executor="local",
        workers=2,
        experiment=STORE_KEY,
        config=settings.to_config(),
        onset_epoch=onset_epoch,
    )


def _row(metrics: dict) -> dict:
    return {
        "accuracy_sd_pct": 100.0 * metrics["accuracy_sd"],
        "accuracy_sd_err": 100.0 * metrics["accuracy_sd_err"],
        "cross_entropy_sd": metrics["cross_entropy_sd"],
        "cross_entropy_sd_err": metrics["cross_entropy_sd_err"],
        "disagreement_pct": 100.0 * metrics["disagreement"],
        "correlation": metrics["correlation"],
        "ensemble_delta_pct": 100.0 * metrics["ensemble_delta"],
    }


_THESIS_NAME = {"ops": "cudnn", "shuffle+ops": "shuffle+cudnn", "shuffle+augment+ops": "shuffle+augment+cudnn"}


def _main_results(scale, dataset, store):
    """Every source of the main model (Tables 5.1, 5.3 and B.1's deep model share these runs)."""
    cfg = scale_settings(scale, dataset)
    rows, logits = {}, {}
    per_source = [s for s in cfg.sources if s not in ("all", "ops")] + ["bit_change"]
    for sources, runs in ((per_source, cfg.runs), (["ops"], cfg.runs_ops), (["all"], cfg.runs_all)):
        res = _protocol(store, cfg.main, sources, runs)
        rows.update(res.rows)
        logits.update(res.logits)
    return cfg, rows, logits


def _ratio(a: float, b: float) -> float:
    if b == 0:
        return float("inf") if a > 0 else 1.0
    return a / b


@register("5.1", title="Effect of each source of nondeterminism", chapter=5, quick_minutes=2.0)
def table_5_1(scale, dataset, store, *, out=None):
    cfg, rows, _ = _main_results(scale, dataset, store)
    ours = {_THESIS_NAME.get(s, s): _row(rows[s]) for s in cfg.sources}
    table = Table(
        id="5.1",
        title="Variability of trained models per source of nondeterminism",
        setting=f"{cfg.description}; R = {cfg.runs} runs per source ({cfg.runs_all} for all, {cfg.runs_ops} for cudnn); 'cudnn' = TF op "
        f"determinism off (on CPU); scale {scale}",
        columns=COLUMNS,
        rows=ours,
        thesis=thesis_rows("5.1"),
        thesis_setting="CIFAR-10, ResNet-14, 500 epochs, R = 100 per source, cuDNN on 2 V100 GPUs",
    )
    seeded = [s for s in cfg.sources if s not in ("ops",) and "ops" not in s.split("+")]
    sds = {s: rows[s]["accuracy_sd"] for s in seeded}
    ces = {s: rows[s]["cross_entropy_sd"] for s in seeded}
    spread = _ratio(max(sds.values()), min(sds.values()))
    ce_spread = _ratio(max(ces.values()), min(ces.values()))
    findings = [
        Finding.check(
            "Every source of nondeterminism has a similar effect: accuracy SDs within a factor of 2 of each other",
            spread <= 2.0,
            "accuracy SD (%): " + ", ".join(f"{s} {100 * v:.3f}" for s, v in sds.items())
            + f"; max/min = {spread:.2f} (cross-entropy SD max/min = {ce_spread:.2f}); R = {cfg.runs}",
        )
    ]
    ops = rows["ops"]
    ops_active = ops["disagreement"] > 0 or ops["cross_entropy_sd"] > 0
    findings.append(
        Finding.check(
            "Low-level (cuDNN) nondeterminism alone matters as much as the seeded sources (within a factor of 2 of init)",
            0.5 <= _ratio(ops["cross_entropy_sd"], rows["init"]["cross_entropy_sd"]) <= 2.0,
            f"op determinism off: cross-entropy SD {ops['cross_entropy_sd']:.2e}, disagreement "
            f"{100 * ops['disagreement']:.2f}% vs init {rows['init']['cross_entropy_sd']:.2e}"
            + ("" if ops_active else "; all runs bit-identical: the kernels used here are deterministic even with "
               "op determinism off, so this source does not exist at this scale"),
            comparable=ops_active,
        )
    )
    return Output(tables=[table], findings=findings)


@register("5.3", title="Instability: one random bit change", chapter=5, quick_minutes=0.1)
def table_5_3(scale, dataset, store, *, out=None):
    cfg, rows, _ = _main_results(scale, dataset, store)
    table = Table(
        id="5.3",
        title="Variability from changing one first-layer weight by one ULP (float32)",
        setting=f"{cfg.description}; R = {cfg.runs}; scale {scale}",
        columns=COLUMNS,
        rows={"bit_change": _row(rows["bit_change"]), "all": _row(rows["all"])},
        thesis={**thesis_rows("5.3"), "all": thesis_rows("5.1")["all"]},
        thesis_setting="CIFAR-10, ResNet-14, 500 epochs, R = 100",
    )
    bit, every = rows["bit_change"], rows["all"]
    ratio = _ratio(bit["cross_entropy_sd"], every["cross_entropy_sd"])
    finding = Finding.check(
        "A one-bit change to one weight produces roughly as much variability as all sources together "
        "(cross-entropy SD within a factor of 2)",
        0.5 <= ratio <= 2.0,
        f"bit change: CE SD {bit['cross_entropy_sd']:.2e}, accuracy SD {100 * bit['accuracy_sd']:.3f}%, disagreement "
        f"{100 * bit['disagreement']:.2f}%; all sources: CE SD {every['cross_entropy_sd']:.2e}, accuracy SD "
        f"{100 * every['accuracy_sd']:.3f}%, disagreement {100 * every['disagreement']:.2f}%; CE ratio {ratio:.2f}",
    )
    return Output(tables=[table], findings=[finding])


@register("fig5.2", title="Onset of nondeterminism", chapter=5, quick_minutes=0.7)
def figure_5_2(scale, dataset, store, *, out=None):
    import matplotlib.pyplot as plt

    cfg = scale_settings(scale, dataset)
    points = {}
    for onset in cfg.onsets:
        res = _protocol(store, cfg.main, ["shuffle"], cfg.runs, onset_epoch=onset)
        points[onset] = res.rows["shuffle"]
    onsets = list(points)
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.4))
    for ax, key, label in ((axes[0], "accuracy_sd", "accuracy SD (%)"), (axes[1], "cross_entropy_sd", "cross-entropy SD")):
        scale_by = 100.0 if key == "accuracy_sd" else 1.0
        vals = [scale_by * points[o][key] for o in onsets]
        errs = [scale_by * points[o][key + "_err"] for o in onsets]
        ax.errorbar(onsets, vals, yerr=errs, marker="o", capsize=3, label="data shuffling")
        ax.set_xlabel("epoch at which nondeterminism starts")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
    axes[0].legend()
    fig.suptitle(f"Onset of nondeterminism ({cfg.main.model}, {cfg.main.epochs} epochs, R = {cfg.runs})")
    fig.tight_layout()
    first, early, last = points[onsets[0]], points[onsets[1]], points[onsets[-1]]
    findings = [
        Finding.check(
            "The start of training is not especially sensitive: nondeterminism introduced after ~10% of training "
            "still gives most (>= 50%) of the variability",
            early["cross_entropy_sd"] >= 0.5 * first["cross_entropy_sd"],
            f"cross-entropy SD: onset {onsets[0]} {first['cross_entropy_sd']:.2e}, onset {onsets[1]} "
            f"{early['cross_entropy_sd']:.2e}, onset {onsets[-1]} {last['cross_entropy_sd']:.2e} (of {cfg.main.epochs} epochs)",
        ),
        Finding.check(
            "Variability falls as the onset moves toward the end of training",
            last["cross_entropy_sd"] < first["cross_entropy_sd"],
            f"cross-entropy SD onset {onsets[0]}: {first['cross_entropy_sd']:.2e} vs onset {onsets[-1]}: "
            f"{last['cross_entropy_sd']:.2e}",
        ),
    ]
    return Output(figures=[("fig_5_2", fig)], findings=findings)


def _reduction(row: dict, single: dict) -> float:
    """Table 5.5's "variability reduction": mean relative drop over the five metrics (1 - corr for corr)."""
    pairs = [
        (row["accuracy_sd_pct"], single["accuracy_sd_pct"]),
        (row["cross_entropy_sd"], single["cross_entropy_sd"]),
        (row["disagreement_pct"], single["disagreement_pct"]),
        (1.0 - row["correlation"], 1.0 - single["correlation"]),
        (row["ensemble_delta_pct"], single["ensemble_delta_pct"]),
    ]
    drops = [1.0 - a / b for a, b in pairs if b != 0]
    return 100.0 * sum(drops) / len(drops) if drops else float("nan")


@register("5.5", title="Reducing variability: ensembles, snapshot ensembles, TTA", chapter=5, quick_minutes=0.4)
def table_5_5(scale, dataset, store, *, out=None):
    from tf_dlthesis.variability import variability_metrics

    cfg, rows, logits = _main_results(scale, dataset, store)
    labels = _labels(cfg.main)
    single_logits = logits["all"]
    ours = {"single": {"training_cost_x": 1, **_row(rows["all"])}}
    for n in range(2, 6):
        groups = single_logits.shape[0] // n
        if groups < 2:
            continue
        ens = single_logits[: groups * n].reshape(groups, n, *single_logits.shape[1:]).mean(axis=1)
        ours[f"ensemble_{n}"] = {"training_cost_x": n, **_row(variability_metrics(ens, labels))}
    snap_settings = dataclasses.replace(cfg.main, schedule="cyclic", cycles=5)
    snap = _protocol(store, snap_settings, ["all"], cfg.runs)
    ours["snapshot"] = {"training_cost_x": 1, **_row(snap.rows["all"])}
    for mode in cfg.main.tta:
        ours[f"single_{mode}_tta"] = {"training_cost_x": 1, **_row(rows[f"all/{mode}_tta"])}
        ours[f"snapshot_{mode}_tta"] = {"training_cost_x": 1, **_row(snap.rows[f"all/{mode}_tta"])}
    for key, row in ours.items():
        row["variability_reduction_pct"] = None if key == "single" else _reduction(row, ours["single"])
    columns = ["training_cost_x"] + COLUMNS + ["variability_reduction_pct"]
    table = Table(
        id="5.5",
        title="Variability of single models, ensembles, snapshot ensembles and TTA (all sources varied)",
        setting=f"{cfg.description}; single/ensembles from {cfg.runs_all} runs (ensembles = disjoint groups of N), "
        f"snapshot ensembles: 5 cosine cycles, {cfg.runs} runs; TTA views: {', '.join(cfg.main.tta)} "
        f"(pad {cfg.main.pad}{', no flips: digits are not mirror-symmetric' if not cfg.main.flip else ''}); scale {scale}",
        columns=columns,
        rows=ours,
        thesis=thesis_rows("5.5"),
        thesis_setting="CIFAR-10, ResNet-14, 500 epochs, 100 runs per row",
    )
    single = ours["single"]
    tta_key = f"single_{cfg.main.tta[-1]}_tta"
    findings = [
        Finding.check(
            "Snapshot ensembles (1x training cost) lower pairwise disagreement",
            ours["snapshot"]["disagreement_pct"] < single["disagreement_pct"],
            f"disagreement: single {single['disagreement_pct']:.2f}%, snapshot {ours['snapshot']['disagreement_pct']:.2f}%; "
            f"variability reduction {ours['snapshot']['variability_reduction_pct']:.0f}% (thesis 48%)",
        ),
        Finding.check(
            "Test-time augmentation lowers pairwise disagreement",
            ours[tta_key]["disagreement_pct"] < single["disagreement_pct"],
            f"disagreement: single {single['disagreement_pct']:.2f}%, {tta_key} {ours[tta_key]['disagreement_pct']:.2f}%; "
            f"variability reduction {ours[tta_key]['variability_reduction_pct']:.0f}% (thesis 37% for flip-crop)",
        ),
    ]
    if "ensemble_2" in ours:
        findings.append(
            Finding.check(
                "Ensembling independently trained models lowers variability (positive mean reduction for N = 2)",
                ours["ensemble_2"]["variability_reduction_pct"] > 0,
                f"N = 2 reduction {ours['ensemble_2']['variability_reduction_pct']:.0f}% (thesis 39%)",
            )
        )
    return Output(tables=[table], findings=findings)


@register("B.1", title="Linear, one-hidden-layer and deeper models", chapter="B", quick_minutes=1.1)
def table_b_1(scale, dataset, store, *, out=None):
    cfg, main_rows, _ = _main_results(scale, dataset, store)
    sources = ["init", "all", "bit_change"]
    tta_mode = cfg.main.tta[-1]
    ours = {}
    per_model = {}
    for label, settings in cfg.b1_models:
        res = _protocol(store, settings, sources, cfg.runs_b1)
        per_model[label] = res.rows
    deep_label = "resnet10"  # at quick scale: the main CNN's runs stand in (stated in the setting)
    if deep_label not in per_model:
        per_model[deep_label] = main_rows
    for label, rows in per_model.items():
        for source in sources:
            ours[f"{label}/{source}"] = _row(rows[source])
        ours[f"{label}/single_flip_crop_tta" if tta_mode == "flip_crop" else f"{label}/single_{tta_mode}_tta"] = _row(
            rows[f"all/{tta_mode}_tta"]
        )
    thesis = {f"{model}/{row}": vals for model, model_rows in thesis_rows("B.1").items() for row, vals in model_rows.items()}
    shallow = ", ".join(f"{label}: {s.model}" + (f" {dict(s.model_kwargs)}" if s.model_kwargs else "") for label, s in cfg.b1_models)
    table = Table(
        id="B.1",
        title="Nondeterminism and instability for linear, one-hidden-layer and deeper models",
        setting=f"{dataset}; {shallow} (no normalization); deep model (rows 'resnet10') = {cfg.main.model} "
        f"{dict(cfg.main.model_kwargs)} with BN (Table 5.1's runs, R = {cfg.runs}, all: {cfg.runs_all}); "
        f"{cfg.main.epochs} epochs, batch {cfg.main.batch_size}, R = {cfg.runs_b1} for the shallow models; TTA = {tta_mode}; scale {scale}",
        columns=COLUMNS,
        rows=ours,
        thesis=thesis,
        thesis_setting="CIFAR-10, 500 epochs, R = 100; deep model ResNet-10",
    )
    lin = per_model["linear"]["bit_change"]
    deep = per_model[deep_label]["bit_change"]
    fc = per_model["hidden_fc"]["bit_change"]
    conv = per_model["hidden_conv"]["bit_change"]
    findings = [
        Finding.check(
            "A linear model is stable: a bit change leaves every prediction unchanged (accuracy SD 0) and its "
            "cross-entropy SD is orders of magnitude (>= 100x) below a deeper model's",
            lin["accuracy_sd"] == 0 and lin["disagreement"] == 0 and lin["cross_entropy_sd"] * 100 <= deep["cross_entropy_sd"],
            f"linear: accuracy SD {100 * lin['accuracy_sd']:.3f}%, disagreement {100 * lin['disagreement']:.2f}%, "
            f"CE SD {lin['cross_entropy_sd']:.1e}; {deep_label}: CE SD {deep['cross_entropy_sd']:.1e} "
            f"(thesis: 1e-7 vs 0.0065)",
        ),
    ]
    for label, row in (("fully-connected", fc), ("convolutional", conv)):
        findings.append(
            Finding.check(
                f"Instability appears as soon as one {label} hidden layer is added: bit-change cross-entropy SD "
                f">= 100x the linear model's and >= 10% of the deeper model's",
                row["cross_entropy_sd"] >= 100 * lin["cross_entropy_sd"] and row["cross_entropy_sd"] >= 0.1 * deep["cross_entropy_sd"],
                f"{label}: CE SD {row['cross_entropy_sd']:.1e}, disagreement {100 * row['disagreement']:.2f}%; linear "
                f"{lin['cross_entropy_sd']:.1e}; {deep_label} {deep['cross_entropy_sd']:.1e} (thesis: FC 0.0051, conv "
                f"0.0022, linear 1e-7)",
            )
        )
    return Output(tables=[table], findings=findings)
