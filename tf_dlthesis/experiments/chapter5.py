"""Chapter 5 and Appendix B: nondeterminism, instability and reducing variability.

Registers Tables 5.1 (each source of nondeterminism), 5.3 (one random bit change),
5.5 (ensembles, snapshot ensembles, TTA), B.1 (linear / one hidden layer / deeper)
and Fig. 5.2 (onset of nondeterminism). Every run is one `experiments.train` call
made by `protocol_run` inside `variability.run_protocol` (one fresh process per
run, two at a time), stored under ``"ch5.runs"`` keyed by the `TrainSpec`, so a run
trained for one table (e.g. the "all sources" runs) is read back by the others and
a killed `reproduce` resumes. Bit changes are checked against the unperturbed
control run: one that left the model bit-identical is replaced by another bit
position and reported, never counted (`run_protocol`).

Settings per scale (`SETTINGS`), chosen from the thesis's regime before any verdict
was seen:

* quick - digits, the small CNN (8/16 filters, BN), 10 epochs of SGD + Nesterov with
  cosine decay from 0.05, batch 32, pad-1 crops (no flips: digits are not mirror
  symmetric), crop TTA; R = 4 per source (8 for all sources, 2 for ops), Fig. 5.2
  onsets 0, 1, 9. The old quick cost (~4 min); every interval is wide at R = 4.
* standard - Fashion-MNIST, the same CNN, trained as Sec. 5.3.2 trains ResNet-14
  on CIFAR-10: the `ch5_cifar10` recipe's shape (a warm-up of 3/500 of the run,
  cosine decay to 0, momentum 0.9, weight decay 5e-4) with the peak rate scaled
  linearly to batch 64 (0.4 x 64 / 512 = 0.05), crops + flips as augmentation. A
  10,000-image stratified training subset for 20 epochs: 3,120 SGD steps, past the
  2,340 at which a user saw a one-hidden-layer MLP's bit change grow (it had not
  after 390), sized so that all Chapter 5 runs (~200) fit 60 minutes on 2 cores:
  one run measured 43 CPU-s (51 with TTA, 71 as a snapshot ensemble) for the CNN,
  5 / 5 / 11 CPU-s for the linear / MLP / conv models (1 thread, busy machine),
  ~5,700 CPU-s in all, ~48 minutes on 2 workers. Crops use 1-pixel padding, the
  thesis's MNIST setting (Sec. 5.6), so flip-crop TTA has 18 views. Evaluation on
  a stratified 5,000-image test subset. R = 10 per source (issue 13), 20 for all
  sources (Table 5.5's disjoint ensembles of 2-5 models need >= 4 groups), 3 for
  ops (enough to show whether the source exists on this CPU), 10 snapshot
  ensembles; Fig. 5.2 onsets 0, 2, 10, 18 of 20 epochs = the thesis's 0, 10%, 50%,
  90%. Table B.1's shallow models (linear; MLP with 128 hidden units; one 16-filter
  conv layer; no normalization) use the same data and recipe, R = 10.
* full - the thesis: CIFAR-10, pre-activation ResNet-14, `ch5_cifar10` (500 epochs,
  batch 512, peak 0.4), flip and 162-view flip-crop TTA, R = 100, the thesis's
  onsets and source combinations, a separate ResNet-10 for Table B.1. Wired up,
  never run here (~1,000 ResNet trainings of 500 epochs).

Reference: Thesis Ch. 5 and App. B; arXiv:2103.04514.
"""

from __future__ import annotations

import dataclasses
import functools
import time

import numpy as np

from tf_dlthesis.experiments import stats
from tf_dlthesis.experiments.registry import Check, Finding, Output, Table, register, thesis_rows
from tf_dlthesis.experiments.training import DATA_DIR, TrainSpec, data_dir, load_data, predict_logits, train
from tf_dlthesis.variability import (
    per_run_accuracy,
    per_run_cross_entropy,
    predict_tta,
    run_protocol,
    tta_views,
    variability_metrics,
    weights_hash,
)
from tf_dlthesis.variability.tta import TTA_MODES

#: The store namespace of every Chapter 5 run.
STORE_KEY = "ch5.runs"
#: How the protocol runs (`run_protocol`'s executor: one fresh process per run) and how many at a time.
EXECUTOR = "local"
WORKERS = 2
#: The sources whose runs are also evaluated with TTA (the thesis applies TTA to "all sources").
TTA_SOURCES = ("all",)
COLUMNS = ["runs", "accuracy_sd_pct", "accuracy_sd_err", "cross_entropy_sd", "cross_entropy_sd_err",
           "disagreement_pct", "correlation", "ensemble_delta_pct"]
_THESIS_NAME = {"ops": "cudnn", "shuffle+ops": "shuffle+cudnn", "shuffle+augment+ops": "shuffle+augment+cudnn"}


# ---------------------------------------------------------------------------- settings
@dataclasses.dataclass(frozen=True)
class Setting:
    """The Chapter 5 setting of one scale.

    Attributes:
        spec: the main model's training (Tables 5.1, 5.3, 5.5, Fig. 5.2).
        runs: R per source.
        runs_all: R of "all sources" (Table 5.5's single models and disjoint ensembles).
        runs_ops: R of sources that switch op determinism off.
        runs_snapshot: R of snapshot ensembles.
        runs_b1: R per source of Table B.1's models.
        sources: Table 5.1's rows.
        onsets: Fig. 5.2's onset epochs (the first must be 0).
        b1_models: Table B.1's shallow models: (row label, model name, model kwargs).
        deep_model: Table B.1's deep model (name, kwargs) trained separately, or None:
            the main model's runs stand in for it.
        tta: TTA modes, or None: flip and flip-crop where flips are part of the
            training augmentation, crops otherwise.
        min_runs: the R a regime check asks for.
    """

    spec: TrainSpec
    runs: int
    runs_all: int
    runs_ops: int
    runs_snapshot: int
    runs_b1: int
    sources: tuple
    onsets: tuple
    b1_models: tuple
    deep_model: tuple | None = None
    tta: tuple | None = None
    min_runs: int = 10

    def tta_modes(self, spec: TrainSpec) -> tuple:
        if self.tta is not None:
            return tuple(self.tta)
        return ("flip", "flip_crop") if spec.resolved_flip else ("crop",)


_B1_SMALL = (("linear", "linear", {}), ("hidden_fc", "mlp", {"hidden": 64}), ("hidden_conv", "conv1", {"filters": 16}))
SETTINGS = {
    "quick": Setting(
        spec=TrainSpec(dataset="digits", model="cnn", model_kwargs={"filters": [8, 16]}, norm="batch",
                       recipe="cosine", learning_rate=0.05, epochs=10, batch_size=32),
        runs=4, runs_all=8, runs_ops=2, runs_snapshot=4, runs_b1=4,
        sources=("init", "shuffle", "augment", "ops", "all"), onsets=(0, 1, 9), b1_models=_B1_SMALL, min_runs=4),
    "standard": Setting(
        spec=TrainSpec(dataset="fashion_mnist", train_examples=10_000, test_examples=5_000, model="cnn",
                       model_kwargs={"filters": [8, 16]}, norm="batch", recipe="ch5_cifar10", learning_rate=0.05,
                       epochs=20, batch_size=64, pad=1),
        runs=10, runs_all=20, runs_ops=3, runs_snapshot=10, runs_b1=10,
        sources=("init", "shuffle", "augment", "ops", "all"), onsets=(0, 2, 10, 18),
        b1_models=(("linear", "linear", {}), ("hidden_fc", "mlp", {"hidden": 128}),
                   ("hidden_conv", "conv1", {"filters": 16}))),
    "full": Setting(
        spec=TrainSpec(dataset="cifar10", model="preact_resnet14", norm="batch", recipe="ch5_cifar10", epochs=500,
                       batch_size=512),
        runs=100, runs_all=100, runs_ops=100, runs_snapshot=100, runs_b1=100,
        sources=("init", "shuffle", "augment", "ops", "shuffle+ops", "shuffle+augment+ops", "all"),
        onsets=(0, 50, 250, 400, 450, 480, 490, 495, 498),
        b1_models=(("linear", "linear", {}), ("hidden_fc", "mlp", {}), ("hidden_conv", "conv1", {})),
        deep_model=("preact_resnet10", {})),
}


def settings(scale: str, dataset: str | None = None) -> Setting:
    """The setting of `scale`, on `dataset` (default: the scale's own).

    Raises:
        ValueError: unknown scale.
    """
    if scale not in SETTINGS:
        raise ValueError(f"`scale` must be one of {tuple(SETTINGS)}. Received: scale={scale!r}")
    cfg = SETTINGS[scale]
    if dataset is None or dataset == cfg.spec.dataset:
        return cfg
    from tf_dlthesis import data

    splits = data.info(dataset).splits
    spec = cfg.spec.replace(dataset=dataset, pad=None)
    if spec.train_examples and spec.train_examples > splits.get("train", 0):
        spec = spec.replace(train_examples=None)
    if spec.test_examples and spec.test_examples > splits.get("test", 0):
        spec = spec.replace(test_examples=None)
    return dataclasses.replace(cfg, spec=spec)


# ---------------------------------------------------------------------------- one run
def protocol_run(plan, *, spec: TrainSpec, tta: tuple = (), tta_sources: tuple | None = None,
                 data_path: str | None = None) -> dict:
    """Trains `spec` under `plan` (`experiments.train`) and returns what `run_protocol` expects.

    The `evaluate` hook computes the test logits (a snapshot ensemble's mean logits
    when `spec.snapshots`), one TTA variant per mode in `tta` (`"<mode>_tta"`,
    through the snapshots for a snapshot ensemble) and the hash of the trained
    weights (the bit-change effectiveness check). Module-level, so a process pool
    can pickle it: `functools.partial(protocol_run, spec=..., tta=...)`.

    Args:
        plan: a `variability.SeedPlan` (or an int seed).
        spec: the training setting.
        tta: TTA modes (`variability.TTA_MODES`), with the spec's crop padding.
        tta_sources: compute the TTA variants only for runs of these sources
            (`plan.source`); None: for every run.
        data_path: where the datasets are (`experiments.training.data_dir`).

    Returns:
        {"logits", "variants", "init_hash", "order_hash", "weights_hash", "info"}.

    Raises:
        ValueError: an unknown TTA mode.
    """
    tta = tuple(tta)
    bad = [m for m in tta if m not in TTA_MODES or m == "none"]
    if bad:
        raise ValueError(f"`tta` modes must be in {TTA_MODES[1:]}. Received: tta={tta!r}")
    if tta_sources is not None and getattr(plan, "source", None) not in tuple(tta_sources):
        tta = ()

    def evaluate(ctx):
        x = ctx.test_inputs(ctx.data.test[0])
        pad = ctx.spec.resolved_pad
        if ctx.snapshots is not None:
            logits = ctx.snapshots.predict(x)
            variants = {f"{m}_tta": ctx.snapshots.predict(x, tta=m, pad=pad) for m in tta}
        else:
            logits = predict_logits(ctx.model, x)
            variants = {f"{m}_tta": predict_tta(ctx.model, x, mode=m, pad=pad) for m in tta}
        return {"logits": logits, "variants": variants, "weights_hash": weights_hash(ctx.model),
                "loss_history": list((ctx.history or {}).get("loss", []))}

    with data_dir(data_path):
        [run] = train(spec, plan, evaluate=evaluate)
    ev = run.evaluation
    keep = ("test_accuracy", "test_loss", "train_accuracy", "train_loss", "seconds", "snapshot_test_accuracy")
    info = {k: run.metrics[k] for k in keep if k in run.metrics}
    info.update(bit_change=run.info["bit_change"], distinct_predictions=run.info["distinct_predictions"],
                num_classes=run.info["num_classes"], loss_history=ev["loss_history"],
                process_cpu_seconds=time.process_time())  # a fresh worker process: the run's whole CPU cost
    return {"logits": ev["logits"], "variants": ev["variants"], "init_hash": run.info["init_hash"],
            "order_hash": run.info["order_hash"], "weights_hash": ev["weights_hash"], "info": info}


def _protocol(store, spec: TrainSpec, tta, sources, runs, *, onset_epoch: int = 0):
    """`run_protocol` over `protocol_run`; TTA variants only for the "all sources" runs (Tables 5.5, B.1)."""
    bundle = load_data(spec)
    fn = functools.partial(protocol_run, spec=spec, tta=tuple(tta), tta_sources=TTA_SOURCES, data_path=DATA_DIR.get())
    return run_protocol(fn, sources=list(sources), runs=runs, labels=bundle.test[1], num_classes=bundle.num_classes,
                        store=store, executor=EXECUTOR, workers=WORKERS, experiment=STORE_KEY,
                        config={"spec": spec.to_config(), "tta": list(tta), "tta_sources": list(TTA_SOURCES)},
                        onset_epoch=onset_epoch)


def _main_results(cfg: Setting, store):
    """Every source of the main model in one protocol (Tables 5.1, 5.3, B.1's deep rows)."""
    sources = list(cfg.sources) + ["bit_change"]
    runs = {s: cfg.runs_all if s == "all" else cfg.runs_ops if "ops" in s.split("+") else cfg.runs for s in sources}
    return _protocol(store, cfg.spec, cfg.tta_modes(cfg.spec), sources, runs)


def _snapshot_results(cfg: Setting, spec: TrainSpec, store):
    return _protocol(store, spec.replace(snapshots=5), cfg.tta_modes(spec), ["all"], cfg.runs_snapshot)


# ---------------------------------------------------------------------------- statistics
def _row(metrics: dict) -> dict:
    return {
        "runs": metrics["runs"],
        "accuracy_sd_pct": 100.0 * metrics["accuracy_sd"],
        "accuracy_sd_err": 100.0 * metrics["accuracy_sd_err"],
        "cross_entropy_sd": metrics["cross_entropy_sd"],
        "cross_entropy_sd_err": metrics["cross_entropy_sd_err"],
        "disagreement_pct": 100.0 * metrics["disagreement"],
        "correlation": metrics["correlation"],
        "ensemble_delta_pct": 100.0 * metrics["ensemble_delta"],
    }


def _values(stack, labels, metric: str) -> np.ndarray:
    return per_run_accuracy(stack, labels) if metric == "accuracy" else per_run_cross_entropy(stack, labels)


def _sd_ratio(stack_a, stack_b, labels, metric: str, what: str) -> stats.Effect:
    """SD of `metric` over runs A / over runs B, bootstrap over the runs of each."""
    return stats.sd_ratio(_values(stack_a, labels, metric), _values(stack_b, labels, metric),
                          what=f"{metric} SD ratio, {what}")


def _disagreement_matrix(stack) -> np.ndarray:
    """(R, R): fraction of test examples on which runs i and j predict different classes."""
    preds = np.asarray(stack).argmax(axis=-1)
    return np.stack([(preds != p).mean(axis=1) for p in preds])


def _mean_pairs(matrix: np.ndarray, idx) -> float:
    """Mean of `matrix` over the pairs of a (bootstrap) index sample, pairs of one run twice left out."""
    idx = np.asarray(idx)
    i, j = np.triu_indices(len(idx), 1)
    a, b = idx[i], idx[j]
    keep = a != b
    return float(matrix[a[keep], b[keep]].mean()) if keep.any() else float("nan")


def _pct(value: float) -> str:
    return f"{100 * value:.2f}%"


def _collapse_check(results: dict, num_classes: int) -> Check:
    """Fewest predicted classes of any run (the registry cannot see runs made in worker processes)."""
    fewest, where, total = None, "", 0
    for label, stack in results.items():
        for r, logits in enumerate(stack):
            k = len(np.unique(np.asarray(logits).argmax(axis=1)))
            total += 1
            if fewest is None or k < fewest:
                fewest, where = k, f"{label} run {r}"
    return Check("no collapsed model", fewest is not None and fewest >= num_classes / 2,
                 f"{total} trained model(s); the fewest classes predicted on the test set: {fewest} of {num_classes} "
                 f"({where})")


def _bit_change_checks(res, source: str, model: str, *, growth: bool = True) -> list:
    """Did the bit changes take effect, and (`growth`) did they grow into different models?

    Table B.1's shallow models test whether they grow, so their findings say it, not a check.
    """
    bc = res.bit_changes.get(source)
    if bc is None:
        return []
    replaced = "; ".join(f"run {d['run']} draw {d['attempt']}: {d['reason']}" for d in bc["details"][:4])
    checks = [Check(f"{model}: the bit changes took effect", not bc["exhausted"] and bc["effective"] >= 2,
                    f"{bc['effective']} of {bc['runs']} runs differ from the unperturbed control; {bc['replaced']} "
                    f"draw(s) left the model bit-identical to it and were replaced by another bit position"
                    + (f" ({replaced}{'; ...' if len(bc['details']) > 4 else ''})" if replaced else "")
                    + (f"; runs {bc['exhausted']} never took effect and are left out" if bc["exhausted"] else ""),
                    regime=True)]
    if growth and source in res.logits and res.control_logits is not None:
        control = res.control_logits.argmax(axis=1)
        flips = [(s.argmax(axis=1) != control).mean() for s in res.logits[source]]
        checks.append(Check(f"{model}: instability appeared (the one-ULP change grew into other predictions)",
                            min(flips) > 0,
                            f"test predictions that differ from the control: min {_pct(min(flips))}, mean "
                            f"{_pct(float(np.mean(flips)))} over {len(flips)} bit-change runs"))
    return checks


def _regime_checks(cfg: Setting, res, scale: str) -> list:
    counts = {row: m["runs"] for row, m in res.rows.items() if "/" not in row}
    info = res.info.get("init") or next(iter(res.info.values()))
    tail = max(1, len(info[0]["loss_history"]) // 10)
    shares = []  # share of the training loss's total decrease made in the last 10% of the epochs
    for run in info:
        loss = run["loss_history"]
        total = loss[0] - loss[-1] if len(loss) > tail else 0.0
        shares.append((loss[-1 - tail] - loss[-1]) / total if total > 0 else 1.0)
    train_acc = float(np.mean([run["train_accuracy"] for run in info]))
    test_acc = float(np.mean([run["test_accuracy"] for run in info]))
    return [
        Check(f"runs per source (>= {cfg.min_runs} at scale {scale})", min(counts.values()) >= min(cfg.min_runs, 2)
              and all(r >= cfg.min_runs for s, r in counts.items() if "ops" not in s.split("+")),
              ", ".join(f"{_THESIS_NAME.get(s, s)} {r}" for s, r in counts.items())
              + " (sources with op determinism off need only show whether that source exists here)", regime=True),
        Check("models trained to convergence (the thesis's regime): the schedule ran to its end and the last 10% "
              "of the epochs made < 5% of the training loss's decrease",
              max(shares) < 0.05,
              f"share of the decrease in the last {tail} epoch(s): at most {100 * max(shares):.1f}% (init runs); "
              f"mean training accuracy {100 * train_acc:.1f}%, test accuracy {100 * test_acc:.1f}%", regime=True),
    ]


# ---------------------------------------------------------------------------- Table 5.1
@register("5.1", title="Effect of each source of nondeterminism", chapter=5, quick_minutes=2.0)
def table_5_1(scale, dataset, store, *, out=None):
    cfg = settings(scale, dataset)
    res = _main_results(cfg, store)
    labels, rows = res.labels, res.rows
    table = Table(
        id="5.1",
        title="Variability of trained models per source of nondeterminism",
        setting=f"{cfg.spec.describe()}; R = {cfg.runs} per source ({cfg.runs_all} for all sources, {cfg.runs_ops} "
                f"with op determinism off); 'cudnn' = TF op determinism off on this machine's kernels; "
                f"settings chosen from the thesis's regime (module docstring); scale {scale}",
        columns=COLUMNS,
        rows={_THESIS_NAME.get(s, s): _row(rows[s]) for s in cfg.sources},
        thesis=thesis_rows("5.1"),
        thesis_setting="CIFAR-10, ResNet-14, 500 epochs, R = 100 per source, cuDNN on 2 V100 GPUs",
    )
    thesis = thesis_rows("5.1")
    findings = []
    ops_like = [s for s in cfg.sources if "ops" in s.split("+") and s != "all"]
    for source in cfg.sources:
        if source == "init" or source in ops_like:
            continue
        effect = _sd_ratio(res.logits[source], res.logits["init"], labels, "accuracy", f"{source} / init")
        findings.append(Finding.test(
            f"{source} has an effect similar to parameter initialization: accuracy SDs within a factor of 2",
            effect, above=0.5, below=2.0,
            evidence=f"accuracy SD {_pct(rows[source]['accuracy_sd'])} vs init {_pct(rows['init']['accuracy_sd'])} "
                     f"(CE SD {rows[source]['cross_entropy_sd']:.2e} vs {rows['init']['cross_entropy_sd']:.2e}); R = "
                     f"{rows[source]['runs']} / {rows['init']['runs']}; thesis: "
                     f"{thesis[_THESIS_NAME.get(source, source)]['accuracy_sd_pct']}% vs "
                     f"{thesis['init']['accuracy_sd_pct']}% (all sources within 20%)"))
    for source in ops_like:
        stack = res.logits[source]
        identical = all(np.array_equal(s, stack[0]) for s in stack)
        same_as_control = res.control_logits is not None and np.array_equal(stack[0], res.control_logits)
        claim = (f"Low-level nondeterminism ({_THESIS_NAME[source]}) matters as much as parameter initialization "
                 "(accuracy SDs within a factor of 2)")
        effect = _sd_ratio(stack, res.logits["init"], labels, "accuracy", f"{source} / init")
        if identical and source == "ops":
            findings.append(Finding.not_comparable(
                claim, f"this source does not exist here: the {len(stack)} runs with op determinism off gave test "
                       f"logits bit-identical to each other"
                       + (" and to the deterministic control run" if same_as_control else "")
                       + " (the kernels used on this machine are deterministic; the thesis measured cuDNN on GPUs)",
                effect, above=0.5, below=2.0))
        else:
            findings.append(Finding.test(
                claim, effect, above=0.5, below=2.0,
                evidence=f"accuracy SD {_pct(rows[source]['accuracy_sd'])} vs init "
                         f"{_pct(rows['init']['accuracy_sd'])}; runs bit-identical: {identical}; "
                         f"thesis: cuDNN 0.22% vs init 0.23%"))
    checks = _regime_checks(cfg, res, scale) + _bit_change_checks(res, "bit_change", cfg.spec.model)
    checks.append(_collapse_check({s: res.logits[s] for s in res.rows if "/" not in s},
                                  int(res.logits["init"].shape[2])))
    return Output(tables=[table], findings=findings, checks=checks)


# ---------------------------------------------------------------------------- Table 5.3
@register("5.3", title="Instability: one random bit change", chapter=5, quick_minutes=0.1)
def table_5_3(scale, dataset, store, *, out=None):
    cfg = settings(scale, dataset)
    res = _main_results(cfg, store)
    bc = res.bit_changes["bit_change"]
    rows = {"all": _row(res.rows["all"])}
    if "bit_change" in res.rows:
        rows = {"bit_change": _row(res.rows["bit_change"]), **rows}
    table = Table(
        id="5.3",
        title="Variability from changing one first-layer weight by one ULP (float32)",
        setting=f"{cfg.spec.describe()}; R = {cfg.runs} bit changes, each checked against the unperturbed control run "
                f"({bc['replaced']} draw(s) that left the model bit-identical were replaced by another bit position); "
                f"'all' = all sources, R = {cfg.runs_all}; scale {scale}",
        columns=COLUMNS,
        rows=rows,
        thesis={**thesis_rows("5.3"), "all": thesis_rows("5.1")["all"]},
        thesis_setting="CIFAR-10, ResNet-14, 500 epochs, R = 100",
    )
    claim = ("A one-bit change to one weight produces roughly as much variability as all sources together "
             "(accuracy SDs within a factor of 2)")
    if "bit_change" not in res.rows:
        finding = Finding.not_comparable(
            claim, f"fewer than 2 bit changes took effect ({bc['effective']} of {bc['runs']} runs; {bc['replaced']} "
                   f"draws left the model bit-identical to the control)")
    else:
        bit, every = res.rows["bit_change"], res.rows["all"]
        effect = _sd_ratio(res.logits["bit_change"], res.logits["all"], res.labels, "accuracy",
                           "bit change / all sources")
        finding = Finding.test(
            claim, effect, above=0.5, below=2.0,
            evidence=f"bit change: accuracy SD {_pct(bit['accuracy_sd'])}, CE SD {bit['cross_entropy_sd']:.2e}, "
                     f"disagreement {_pct(bit['disagreement'])}; all sources: {_pct(every['accuracy_sd'])}, "
                     f"{every['cross_entropy_sd']:.2e}, {_pct(every['disagreement'])} (thesis: 0.21% vs 0.26%, "
                     f"disagreement 10.6% vs 10.7%)")
    checks = _bit_change_checks(res, "bit_change", cfg.spec.model)
    checks.append(_collapse_check({s: res.logits[s] for s in ("bit_change", "all") if s in res.logits},
                                  int(res.logits["all"].shape[2])))
    return Output(tables=[table], findings=[finding], checks=checks)


# ---------------------------------------------------------------------------- Fig. 5.2
@register("fig5.2", title="Onset of nondeterminism", chapter=5, quick_minutes=0.7)
def figure_5_2(scale, dataset, store, *, out=None):
    import matplotlib.pyplot as plt

    cfg = settings(scale, dataset)
    if cfg.onsets[0] != 0 or len(cfg.onsets) < 3:
        raise ValueError(f"Fig. 5.2 needs onset 0 and at least two later onsets. Received: onsets={cfg.onsets}")
    tta = cfg.tta_modes(cfg.spec)
    points = {o: _protocol(store, cfg.spec, tta, ["shuffle"], cfg.runs, onset_epoch=o) for o in cfg.onsets}
    labels = points[0].labels
    onsets = list(points)
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.4))
    for ax, key, label, factor in ((axes[0], "accuracy_sd", "accuracy SD (%)", 100.0),
                                   (axes[1], "cross_entropy_sd", "cross-entropy SD", 1.0)):
        vals = [factor * points[o].rows["shuffle"][key] for o in onsets]
        errs = [factor * points[o].rows["shuffle"][key + "_err"] for o in onsets]
        ax.errorbar(onsets, vals, yerr=errs, marker="o", capsize=3, label="data shuffling")
        ax.set_xlabel("epoch at which nondeterminism starts")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
    axes[0].legend()
    fig.suptitle(f"Onset of nondeterminism ({cfg.spec.model}, {cfg.spec.dataset}, {cfg.spec.epochs} epochs, "
                 f"R = {cfg.runs})")
    fig.tight_layout()
    first, early, last = onsets[0], onsets[1], onsets[-1]
    sd = {o: points[o].rows["shuffle"]["accuracy_sd"] for o in onsets}
    curve = ", ".join(f"onset {o}: {_pct(sd[o])}" for o in onsets)
    early_effect = _sd_ratio(points[early].logits["shuffle"], points[first].logits["shuffle"], labels, "accuracy",
                             f"onset {early} / onset 0")
    late_effect = _sd_ratio(points[last].logits["shuffle"], points[first].logits["shuffle"], labels, "accuracy",
                            f"onset {last} / onset 0")
    findings = [
        Finding.test(
            f"The start of training is not especially sensitive: shuffling nondeterminism introduced after "
            f"{100 * early / cfg.spec.epochs:.0f}% of training still gives most (> 50%) of the variability",
            early_effect, above=0.5,
            evidence=f"accuracy SD {curve} (of {cfg.spec.epochs} epochs); thesis: nearly as high at epoch 50 of 500"),
        Finding.test(
            f"Variability falls as the onset moves toward the end of training (onset {last} of {cfg.spec.epochs} "
            f"below onset 0)",
            late_effect, below=1.0,
            evidence=f"accuracy SD {curve}; thesis: a gradual reduction toward epoch 498 of 500"),
    ]
    table = Table(
        id="fig5.2",
        title="Variability when data-shuffling nondeterminism starts at a given epoch",
        setting=f"{cfg.spec.describe()}; R = {cfg.runs} per onset (onset 0 = Table 5.1's shuffle runs); onsets at "
                f"0, 10%, 50%, 90% of training as the thesis's 0, 50, 250, 450 of 500; scale {scale}",
        columns=["onset_epoch"] + COLUMNS,
        rows={f"onset {o}": {"onset_epoch": o, **_row(points[o].rows["shuffle"])} for o in onsets},
    )
    checks = [_collapse_check({f"onset {o}": points[o].logits["shuffle"] for o in onsets},
                              int(points[0].logits["shuffle"].shape[2]))]
    return Output(tables=[table], figures=[("fig_5_2", fig)], findings=findings, checks=checks)


# ---------------------------------------------------------------------------- Table 5.5
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
    cfg = settings(scale, dataset)
    res = _main_results(cfg, store)
    snap = _snapshot_results(cfg, cfg.spec, store)
    labels = res.labels
    tta = cfg.tta_modes(cfg.spec)
    single_logits = res.logits["all"]
    ours = {"single": {"training_cost_x": 1, **_row(res.rows["all"])}}
    ensembles = {}
    for n in range(2, 6):
        groups = single_logits.shape[0] // n
        if groups < 2:
            continue
        ensembles[n] = single_logits[: groups * n].reshape(groups, n, *single_logits.shape[1:]).mean(axis=1)
        ours[f"ensemble_{n}"] = {"training_cost_x": n, **_row(variability_metrics(ensembles[n], labels))}
    ours["snapshot"] = {"training_cost_x": 1, **_row(snap.rows["all"])}
    for mode in tta:
        ours[f"single_{mode}_tta"] = {"training_cost_x": 1, **_row(res.rows[f"all/{mode}_tta"])}
        ours[f"snapshot_{mode}_tta"] = {"training_cost_x": 1, **_row(snap.rows[f"all/{mode}_tta"])}
    for key, row in ours.items():
        row["variability_reduction_pct"] = None if key == "single" else _reduction(row, ours["single"])
    table = Table(
        id="5.5",
        title="Variability of single models, ensembles, snapshot ensembles and TTA (all sources varied)",
        setting=f"{cfg.spec.describe()}; single models and ensembles from {cfg.runs_all} runs (ensembles of N = "
                f"disjoint groups of N runs), snapshot ensembles (5 cosine cycles, mean of the 5 snapshots' logits): "
                f"{cfg.runs_snapshot} runs; TTA: {', '.join(tta)} (crop padding {cfg.spec.resolved_pad}"
                f"{'' if cfg.spec.resolved_flip else '; no flips: not a training augmentation here'}); scale {scale}",
        columns=["training_cost_x"] + COLUMNS + ["variability_reduction_pct"],
        rows=ours,
        thesis=thesis_rows("5.5"),
        thesis_setting="CIFAR-10, ResNet-14, 500 epochs, 100 runs per row",
    )
    d_single = _disagreement_matrix(single_logits)
    d_snap = _disagreement_matrix(snap.logits["all"])
    r_single, r_snap = len(single_logits), len(snap.logits["all"])
    single = ours["single"]
    snap_effect = stats.bootstrap(lambda a, b: 100 * (_mean_pairs(d_snap, a) - _mean_pairs(d_single, b)),
                                  np.arange(r_snap), np.arange(r_single),
                                  what="pairwise disagreement, snapshot ensembles minus single models (pts)")
    findings = [Finding.test(
        "Snapshot ensembles (1x training cost) lower pairwise disagreement", snap_effect, below=0.0,
        evidence=f"disagreement: single {single['disagreement_pct']:.2f}%, snapshot "
                 f"{ours['snapshot']['disagreement_pct']:.2f}%; mean variability reduction "
                 f"{ours['snapshot']['variability_reduction_pct']:.0f}% (thesis: 10.7% -> 6.1%, reduction 48%)")]
    best = tta[-1]
    d_tta = _disagreement_matrix(res.logits[f"all/{best}_tta"])
    tta_effect = stats.bootstrap(lambda i: 100 * (_mean_pairs(d_tta, i) - _mean_pairs(d_single, i)),
                                 np.arange(r_single), what=f"pairwise disagreement, {best} TTA minus none on the "
                                                           f"same runs (pts)")
    key = f"single_{best}_tta"
    findings.append(Finding.test(
        "Test-time augmentation lowers pairwise disagreement", tta_effect, below=0.0,
        evidence=f"disagreement: single {single['disagreement_pct']:.2f}%, {best} TTA "
                 f"{ours[key]['disagreement_pct']:.2f}% "
                 f"({len(tta_views(best, pad=cfg.spec.resolved_pad))} views); reduction "
                 f"{ours[key]['variability_reduction_pct']:.0f}% (thesis: flip-crop 10.7% -> 6.9%, reduction 37%)"))
    if 2 in ensembles:
        d_ens = _disagreement_matrix(ensembles[2])

        def ens_stat(g):
            return 100 * (_mean_pairs(d_ens, g) - _mean_pairs(d_single, np.concatenate([2 * g, 2 * g + 1])))

        ens_effect = stats.bootstrap(ens_stat, np.arange(len(ensembles[2])),
                                     what="pairwise disagreement, ensembles of 2 minus their single members (pts), "
                                          "bootstrap over groups")
        findings.append(Finding.test(
            "Ensembling independently trained models lowers variability (ensembles of 2: lower pairwise disagreement)",
            ens_effect, below=0.0,
            evidence=f"disagreement: single {single['disagreement_pct']:.2f}%, ensembles of 2 "
                     f"{ours['ensemble_2']['disagreement_pct']:.2f}% ({len(ensembles[2])} groups); reduction "
                     f"{ours['ensemble_2']['variability_reduction_pct']:.0f}% (thesis: 10.7% -> 6.9%, reduction 39%)"))
    checks = [_collapse_check({"all": single_logits, "snapshot": snap.logits["all"]}, int(single_logits.shape[2]))]
    return Output(tables=[table], findings=findings, checks=checks)


# ---------------------------------------------------------------------------- Table B.1
@register("B.1", title="Linear, one-hidden-layer and deeper models", chapter="B", quick_minutes=1.5)
def table_b_1(scale, dataset, store, *, out=None):
    cfg = settings(scale, dataset)
    main_tta = cfg.tta_modes(cfg.spec)
    best = main_tta[-1]
    sources = ["init", "all", "bit_change"]
    per_model, specs = {}, {}
    for label, model, kwargs in cfg.b1_models:
        specs[label] = cfg.spec.replace(model=model, model_kwargs=dict(kwargs), norm="none", norm_kwargs={})
        per_model[label] = _protocol(store, specs[label], (best,), sources, cfg.runs_b1)
    if cfg.deep_model is not None:
        deep_label = "resnet10"
        specs[deep_label] = cfg.spec.replace(model=cfg.deep_model[0], model_kwargs=dict(cfg.deep_model[1]))
        per_model[deep_label] = _protocol(store, specs[deep_label], main_tta, sources, cfg.runs_b1)
        deep_snap = _snapshot_results(cfg, specs[deep_label], store)
    else:
        deep_label = "resnet10"  # the thesis's row name; the main model's runs stand in (stated in the setting)
        specs[deep_label] = cfg.spec
        per_model[deep_label] = _main_results(cfg, store)
        deep_snap = _snapshot_results(cfg, cfg.spec, store)
    ours = {}
    for label, res in per_model.items():
        for source in sources:
            if source in res.rows:
                ours[f"{label}/{source}"] = _row(res.rows[source])
        ours[f"{label}/single_{best}_tta"] = _row(res.rows[f"all/{best}_tta"])
    ours[f"{deep_label}/snapshot"] = _row(deep_snap.rows["all"])
    ours[f"{deep_label}/snapshot_{best}_tta"] = _row(deep_snap.rows[f"all/{best}_tta"])
    thesis = {f"{model}/{row}": vals for model, model_rows in thesis_rows("B.1").items()
              for row, vals in model_rows.items()}
    shallow = ", ".join(f"{label} = {model}" + (f" {kwargs}" if kwargs else "")
                        for label, model, kwargs in cfg.b1_models)
    deep_text = (f"{cfg.deep_model[0]} (BN)" if cfg.deep_model else
                 f"rows 'resnet10' = the main model ({cfg.spec.model} {cfg.spec.model_kwargs}, BN; Table 5.1's runs)")
    table = Table(
        id="B.1",
        title="Nondeterminism and instability for linear, one-hidden-layer and deeper models",
        setting=f"{cfg.spec.describe()}; shallow models {shallow}, no normalization, R = {cfg.runs_b1} per source; "
                f"deep model: {deep_text}; bit changes checked against each model's unperturbed control; TTA = {best}; "
                f"scale {scale}",
        columns=COLUMNS,
        rows=ours,
        thesis=thesis,
        thesis_setting="CIFAR-10, 500 epochs, R = 100; deep model ResNet-10",
    )
    labels = per_model["linear"].labels
    findings = []
    lin = per_model["linear"]
    deep = per_model[deep_label]

    def bit_ce(res):
        return res.rows["bit_change"]["cross_entropy_sd"] if "bit_change" in res.rows else float("nan")

    comparisons = [
        (deep_label, "A linear model is stable: a bit change moves its cross-entropy SD orders of magnitude "
                     "(>= 100x) below a deeper model's (and leaves its accuracy SD at 0)"),
        ("hidden_fc", "Instability appears with one fully-connected hidden layer: the linear model's bit-change "
                      "cross-entropy SD is orders of magnitude (>= 100x) below it"),
        ("hidden_conv", "Instability appears with one convolutional hidden layer: the linear model's bit-change "
                        "cross-entropy SD is orders of magnitude (>= 100x) below it"),
    ]
    thesis_ce = {deep_label: 0.0065, "hidden_fc": 0.0051, "hidden_conv": 0.0022}
    for other, claim in comparisons:
        res = per_model[other]
        if "bit_change" not in lin.rows or "bit_change" not in res.rows:
            missing = "linear" if "bit_change" not in lin.rows else other
            bc = per_model[missing].bit_changes["bit_change"]
            findings.append(Finding.not_comparable(
                claim, f"fewer than 2 {missing} bit changes took effect ({bc['effective']} of {bc['runs']} runs; "
                       f"{bc['replaced']} draws left the model bit-identical to its control)"))
            continue
        effect = _sd_ratio(lin.logits["bit_change"], res.logits["bit_change"], labels, "cross_entropy",
                           f"linear / {other} (bit change)")
        findings.append(Finding.test(
            claim, effect, below=0.01,
            evidence=f"bit-change CE SD: linear {bit_ce(lin):.1e} (accuracy SD "
                     f"{_pct(lin.rows['bit_change']['accuracy_sd'])}, disagreement "
                     f"{_pct(lin.rows['bit_change']['disagreement'])}), {other} {bit_ce(res):.1e} (accuracy SD "
                     f"{_pct(res.rows['bit_change']['accuracy_sd'])}); thesis: linear 1e-7 (accuracy SD 0.00%), "
                     f"{other} {thesis_ce[other]}"))
    checks = []
    for label, res in per_model.items():
        checks += _bit_change_checks(res, "bit_change", label, growth=False)
    checks.append(_collapse_check({f"{label}/{s}": res.logits[s] for label, res in per_model.items()
                                   for s in sources if s in res.logits}, int(deep.logits["init"].shape[2])))
    return Output(tables=[table], findings=findings, checks=checks)
