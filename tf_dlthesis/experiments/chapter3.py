"""Chapter 3: logit regularization and adversarial robustness (Tables 3.1-3.6, Figures 3.1-3.2).

Every model is trained by `experiments.train` from a `TrainSpec` whose `defense`
holds the `robustness.RobustModel` settings, with the thesis's per-dataset
hyperparameters as `robustness.PRESETS` ("cifar10", "cifar100", "svhn": the ALP
weight, LRM's smoothing / mixing / beta / ratio). Rows: regular training (no
defense), label smoothing (clean examples only), PGD adversarial training, ALP and
LRM, the three adversarial defenses trained on adversarial examples only
(`clean_weight=0`, Sec. 3.5.2: the section makes "a model (and comparable baselines)
as robust as possible"). Each adversarial row's spec names every defense parameter as
`RobustModel` resolves it from the preset (`resolved_defense`), so a changed value
gets its own store key and identical defenses under different presets are one spec:
a model is trained once and shared by every item that uses it (weights kept in the
results store). Every evaluation is per example and stored with its model
(resumable):

* white-box: natural, FGSM, PGD-5/10/20 (random start) on the spec's test
  subset, plus `robustness.sanity_report` on its first `sanity_examples` images.
  The report (attack sanity checks of Carlini et al. and the collapse check) is
  printed with every table as one `Check` per model: a model predicting fewer
  than half of the classes is flagged collapsed; a failure stays a failed check,
  never "not comparable".
* strong (Table 3.6): PGD-1000 on a stratified subset and SPSA on a stratified
  subset of that subset; PGD-20 there is the white-box result of those images.
* black-box (Tables 3.2/3.4): PGD-10 examples from each source evaluated on
  independently trained targets, in both directions (sources of seed 0 on
  targets of seed 1, and seed 1 on seed 0).

Statistics: a comparison of two defenses on one test set is paired per example
(`stats.accuracy_difference`); with both seeds the interval has a seed part and a
test-set part. A claim the thesis makes for every member of a group ("uniformly" on
every target, "at all levels" of squeezing, "any label smoothing at all", "for all
methods" under PGD-1000) takes the smallest (or largest) per-member difference with an
interval valid for it (`stats.smallest_difference`), never the group's mean, which
passes with one member failing. Logit variances and dynamic ranges get a paired bootstrap
over test examples. SPSA verdicts are drawn only when SPSA is strong enough: on
the undefended model its accuracy must come within `SPSA_MAX_GAP_PTS` points of
PGD-1000's on the same images (issue 11); otherwise those findings are "not
comparable" with the measured gap as the reason.

Tables 3.3/3.4 (CIFAR-100) and 3.5 (SVHN) run on the scale's dataset with that
table's preset. Claims the thesis makes as general ones ("LRM >= ALP >= PGD",
"LRM is the most robust", "PGD sources transfer poorly to a regular target") are
tested; claims about the dataset itself (label smoothing failing completely on
CIFAR-100, the small black-box spread on CIFAR-100) are "not comparable" on
10-class data at quick/standard scale, with the measured effect shown.

Settings per scale (`SETTINGS`), chosen from the thesis's regime before any verdict
was seen:

* quick (scikit-learn digits, 8x8, 1,433 / 364 images): the old quick setting,
  kept for its cost: small CNN (filters 16/32), Adam 3e-3 at a constant rate
  (recipe "constant"), batch 128, no augmentation, 20 epochs for adversarially
  trained models and 25 for clean ones, PGD-5 adversarial training. The
  adversarial models trained 10 epochs until 2026-12-04: on the Intel Xeon
  class that left one LRM seed fitting 75.1% of its training set (failing the
  regime check "each adversarial defense fits its training set") and
  predicting 9 of the 10 classes; a pilot of eight seeds, training fit only
  with no attack run, had LRM fit 87.5-92.5% at 20 epochs, every model
  predicting all 10 classes (README, "Quick scale"). The
  thesis's epsilon 0.03 (~8/255) barely moves a digit whose pixels come in 1/16
  steps, so epsilon is scaled to the data: 0.15, PGD step 0.0375 (step/epsilon
  0.25, near the thesis's 0.0078/0.03 = 0.26). Two seeds (the black-box targets are the seed-1
  models, which also serve as a second seed for the white-box comparisons).
  PGD-1000 and SPSA (100 steps x 128 samples, CleverHans's learning rate and
  delta) on the same 128 stratified test images. SPSA's steps and samples come
  from a strength pilot on the undefended model (issue 11), the only model it
  looked at: on 64 images, 20 steps x 64 samples (the old setting) left 43.8%
  against PGD-1000's 1.6%; 100 x 64 and 100 x 128 left 9.4%, 200 x 128 7.8%.
* standard (Fashion-MNIST, 28x28, 10 classes):
  - attack: L-inf epsilon 0.1, the common Fashion-MNIST radius of the
    robustness literature (e.g. Wong & Kolter 2018, https://arxiv.org/abs/1711.00851),
    PGD step 0.026 (the thesis's step/epsilon ratio 0.0078/0.03 = 0.26), random
    start (Madry et al.); PGD-5/10/20 as the thesis's columns.
  - model: the small CNN at filters 16/32 (two blocks of two 3x3 convs), the
    size of Wong & Kolter's Fashion-MNIST network; batch 128 (the thesis's).
  - schedule: the thesis's recipe "ch3_cifar" (SGD momentum 0.9, warm-up then
    /10 at 50% and 75% of the run), scaled to the run length, with weight
    decay 2e-4 as Keras's decoupled decay (`weight_decay_mode="decoupled"`: the
    weights shrink by lr x 2e-4 a step, ~1/10 of the thesis's L2 at momentum
    0.9; the runs were stored before the recipes took the thesis's L2);
    pad-and-crop + flip augmentation as the thesis's "random crops and flips".
  - length: 10,000 stratified training images, PGD-5 adversarial training
    (the thesis's smallest PGD; a step costs ~(k+1)x a clean one), 30 epochs
    adversarial / 60 clean (the thesis's 101 / 200 ratio), ~3.3 h for the
    chapter on 2 cores (Tables 3.1-3.5 measured 127 min; one PGD-5 model
    ~6.5 min, one clean model ~3.3 min). The first standard run used 10 / 20
    epochs (sized to a 90-minute budget): there LRM fit only 37-45% of its
    training set against PGD
    training's 74.5%, failing the regime check "each adversarial defense fits
    its training set"; a pilot of LRM alone at 30 epochs (regime only, no
    attack run) fit 72%. Every row trains that long, so the comparison stays
    fair; the setting was fixed from that regime check, before any verdict of
    the 30-epoch models was seen.
  - evaluation: white-box on 2,000 stratified test images, PGD-1000 on 500 of
    them, SPSA (100 steps x 128 samples, CleverHans's learning rate and delta)
    on 200 of those; two seeds as at quick. Pilots (regime only): the regular
    model reached 87.4% natural, 4.8% FGSM and 0.0% PGD-5/10/20 (thesis 87.4,
    6.1, 0.0), a PGD-5-trained one 73.8% natural and 54.8% PGD-10 (thesis 75.8,
    46.1), an ALP one 73.7% and 56.7% (thesis 74.0, 49.1); SPSA at 100 x 64 already took the regular model to 0.0% (PGD-1000
    0.0%) on 100 images, 100 x 128 keeps a margin for the defended models.
  - Fig. 3.1 squeezing weights 0.01 and 0.03 (the two smallest of the full
    grid), Fig. 3.2 smoothing grid 0, 0.01 (the thesis's FGSM example), 0.1,
    0.3, 0.5, 0.75 (the thesis's histogram value); one seed for those sweeps.
* full: the thesis's settings (Sec. 3.5.1): pre-activation ResNet-18 on
  CIFAR-10/100 (ResNet-8 on SVHN, crops only), recipes "ch3_cifar" /
  "ch3_svhn"; clean models run the 200-epoch schedule, adversarially trained ones
  stop at its epoch 101 (one epoch after the first decay; SVHN: 101 epochs), batch 128, epsilon
  and step from the preset (0.03 / 0.0078; SVHN 12/255, 3/255), PGD-10
  training (the thesis does not state k), SPSA on 1,000 test images with
  100 steps x 8,192 samples (Uesato et al.), PGD-1000 on the whole test set.
  Never run here (~10 GPU-days).

Reference: C. Summers, *Understanding and Improving Deep Learning*, Ch. 3 (2021);
https://arxiv.org/abs/1906.03749.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import tempfile

import numpy as np

from tf_dlthesis.experiments import stats
from tf_dlthesis.experiments.registry import (
    SCALES,
    Check,
    Finding,
    Output,
    Table,
    register,
    thesis_rows,
)
from tf_dlthesis.experiments.results_store import ResultsStore, config_hash
from tf_dlthesis.experiments.training import (
    TrainSpec,
    load_data,
    predict_logits,
    stratified_indices,
    train,
)

#: Table rows, in the thesis's order.
ROWS = ("regular", "label_smoothing", "pgd", "alp", "lrm")
#: The white-box columns of Tables 3.1/3.3/3.5.
WHITE_BOX = ("natural", "fgsm", "pgd5", "pgd10", "pgd20")
#: Thesis presets (robustness.PRESETS keys) and the thesis dataset of each.
THESIS_DATASETS = {"cifar10": "cifar10", "cifar100": "cifar100", "svhn": "svhn_cropped"}
#: SPSA is "strong enough" when, on the undefended model, it leaves at most this many
#: accuracy points more than PGD-1000 on the same images (issue 11).
SPSA_MAX_GAP_PTS = 10.0
#: "Barely stronger": PGD-1000 takes at most this many points more than PGD-20.
LONG_PGD_MAX_DROP_PTS = 3.0
#: SPSA runs `spsa_samples` perturbed copies of each image of a batch in one model call: the
#: batch is capped so that one call sees at most this many images (full scale: 2 images x 8,192).
SPSA_IMAGES_PER_CALL = 16384
_ADVERSARIAL = ("pgd", "alp", "lrm")
_LABELS = {"regular": "regular", "label_smoothing": "label smoothing", "pgd": "PGD", "alp": "ALP", "lrm": "LRM"}


@dataclasses.dataclass(frozen=True)
class Setting:
    """One scale's Chapter 3 setting.

    Attributes:
        base: the adversarially trained models' spec without a defense (dataset
            and subsets, model, recipe, epochs, batch, augmentation).
        clean_epochs: epochs of the models trained without an adversary.
        epsilon, step_size: the L-inf radius and PGD step (training and evaluation).
        train_steps: PGD steps of adversarial training.
        seeds: the runs per model (2: black-box targets are the second seed).
        smoothing: label smoothing s of the label-smoothing row (CIFAR presets).
        svhn_smoothing: its s under the SVHN preset.
        long_steps: steps of the long PGD attack (Table 3.6).
        long_examples: test images for it (None: the whole test split).
        spsa_examples: test images for SPSA (a stratified subset of those).
        spsa_steps, spsa_samples: SPSA's iterations and perturbation samples.
        ls_sweep: Fig. 3.2's smoothing strengths (0 = the regular model).
        squeeze: Fig. 3.1's logit-squeezing weights (> 0).
        sanity_examples: images of each model's `sanity_report`.
    """

    base: TrainSpec
    clean_epochs: int
    epsilon: float
    step_size: float
    train_steps: int
    seeds: tuple = (0, 1)
    smoothing: float = 0.5
    svhn_smoothing: float = 0.2
    long_steps: int = 1000
    long_examples: int | None = 500
    spsa_examples: int = 200
    spsa_steps: int = 100
    spsa_samples: int = 128
    ls_sweep: tuple = (0.0, 0.01, 0.1, 0.3, 0.5, 0.75)
    squeeze: tuple = (0.01, 0.03)
    sanity_examples: int = 200

    def __post_init__(self):
        if not isinstance(self.base, TrainSpec):
            raise TypeError(f"`base` must be a TrainSpec. Received: base={self.base!r}")
        if self.base.defense is not None:
            raise ValueError(f"`base` must have no defense (set per row). Received: defense={self.base.defense!r}")
        if not 0 < self.step_size <= self.epsilon:
            raise ValueError(f"Need 0 < step_size <= epsilon. Received: epsilon={self.epsilon}, "
                             f"step_size={self.step_size}")
        if len(self.seeds) < 2:
            raise ValueError(f"Black-box tables need 2 seeds (independent targets). Received: seeds={self.seeds!r}")
        if 0.0 not in self.ls_sweep or not all(0 <= s < 1 for s in self.ls_sweep):
            raise ValueError(f"`ls_sweep` must contain 0 and values in [0, 1). Received: {self.ls_sweep!r}")
        if not self.squeeze or not all(w > 0 for w in self.squeeze):
            raise ValueError(f"`squeeze` must hold weights > 0. Received: squeeze={self.squeeze!r}")

    @property
    def spsa_params(self) -> dict:
        return {"num_steps": int(self.spsa_steps), "spsa_samples": int(self.spsa_samples)}

    def attack_text(self) -> str:
        return (f"L-inf epsilon {self.epsilon:g}, PGD step {self.step_size:g} with random start, "
                f"PGD-{self.train_steps} adversarial training on adversarial examples only")


def _quick() -> Setting:
    base = TrainSpec(dataset="digits", model="cnn", model_kwargs={"filters": [16, 32]}, epochs=20, batch_size=128,
                     recipe="constant", optimizer="adam", learning_rate=3e-3, augment=False)
    return Setting(base=base, clean_epochs=25, epsilon=0.15, step_size=0.0375, train_steps=5, long_examples=128,
                   spsa_examples=128, spsa_steps=100, spsa_samples=128, sanity_examples=128)


def _standard() -> Setting:
    base = TrainSpec(dataset="fashion_mnist", train_examples=10000, test_examples=2000, model="cnn",
                     model_kwargs={"filters": [16, 32]}, epochs=30, batch_size=128, recipe="ch3_cifar",
                     weight_decay_mode="decoupled")
    return Setting(base=base, clean_epochs=60, epsilon=0.1, step_size=0.026, train_steps=5, long_examples=500,
                   spsa_examples=200, spsa_steps=100, spsa_samples=128, sanity_examples=200)


def _full() -> Setting:
    # Adversarially trained models stop at epoch 101 of the 200-epoch schedule (one epoch after its first decay).
    base = TrainSpec(dataset="cifar10", model="preact_resnet18", epochs=200, stop_epoch=101, batch_size=128,
                     recipe="ch3_cifar")
    return Setting(base=base, clean_epochs=200, epsilon=0.03, step_size=0.0078, train_steps=10, long_examples=None,
                   spsa_examples=1000, spsa_steps=100, spsa_samples=8192, squeeze=(0.01, 0.03, 0.1, 0.3),
                   sanity_examples=1000)


#: scale -> Setting (the full one is CIFAR-10's; `setting_for` adapts it per preset).
SETTINGS = {"quick": _quick(), "standard": _standard(), "full": _full()}


def setting_for(scale: str, preset: str = "cifar10", dataset: str | None = None) -> Setting:
    """The setting of a table with the thesis's `preset` at `scale` (on `dataset`, default the scale's).

    At quick/standard scale every preset runs on the scale's dataset with its
    attack radius (the radius is a property of the data); at full scale each
    preset runs on its thesis dataset (SVHN: ResNet-8, recipe "ch3_svhn",
    crops only, 101 epochs, epsilon 12/255 and step 3/255).

    Raises:
        ValueError: unknown scale or preset.
        TypeError: a dataset that is not a name.
    """
    if scale not in SCALES:
        raise ValueError(f"`scale` must be one of {SCALES}. Received: scale={scale!r}")
    if preset not in THESIS_DATASETS:
        raise ValueError(f"`preset` must be one of {tuple(THESIS_DATASETS)}. Received: preset={preset!r}")
    if dataset is not None and (not isinstance(dataset, str) or not dataset):
        raise TypeError(f"`dataset` must be a dataset name or None. Received: dataset={dataset!r}")
    setting = SETTINGS[scale]
    if scale == "full":
        from tf_dlthesis.robustness import PRESETS

        attack = PRESETS[preset]["attack"]
        setting = dataclasses.replace(setting, epsilon=attack["epsilon"], step_size=attack["step_size"])
        if preset == "svhn":
            setting = dataclasses.replace(
                setting, clean_epochs=101,
                base=setting.base.replace(dataset=THESIS_DATASETS[preset], model="preact_resnet8", recipe="ch3_svhn",
                                          epochs=101, stop_epoch=None, pad=4, flip=False))
        elif dataset is None:
            setting = dataclasses.replace(setting, base=setting.base.replace(dataset=THESIS_DATASETS[preset]))
    if dataset is not None:
        setting = dataclasses.replace(setting, base=setting.base.replace(dataset=dataset))
    return setting


def resolved_defense(defense: str, preset: str, **overrides) -> dict:
    """`defense`'s parameters as `RobustModel` resolves them (defaults < `preset` < `overrides`).

    The training spec holds these values, not the preset's name, so its store key
    changes whenever a value changes (a corrected preset, a different default) and
    identical defenses under different presets are one spec, trained once.
    """
    import keras

    from tf_dlthesis.robustness import RobustModel

    # a throw-away unbuilt model: RobustModel validates and merges the parameters
    return dict(RobustModel(keras.Sequential([keras.layers.Dense(2)]), defense, preset=preset,
                            **overrides).defense_params)


def spec_for(setting: Setting, row: str, preset: str = "cifar10", **overrides) -> TrainSpec:
    """The `TrainSpec` of one table row under `preset` (`overrides`: extra RobustModel settings).

    Adversarial rows name every resolved defense parameter (`resolved_defense`),
    with the setting's attack (epsilon, step, PGD steps).

    Raises:
        ValueError: unknown row, or overrides for the regular row.
    """
    if row not in ROWS:
        raise ValueError(f"`row` must be one of {ROWS}. Received: row={row!r}")
    if row == "regular":
        if overrides:
            raise ValueError(f"The regular row takes no defense settings. Received: {overrides!r}")
        return setting.base.replace(epochs=setting.clean_epochs, stop_epoch=None)
    if row == "label_smoothing":
        s = setting.svhn_smoothing if preset == "svhn" else setting.smoothing
        defense = {"defense": "label_smoothing", "smoothing": s, **overrides}
        return setting.base.replace(epochs=setting.clean_epochs, stop_epoch=None, defense=defense)
    defense = {"defense": row, **resolved_defense(row, preset, **overrides), "epsilon": setting.epsilon,
               "step_size": setting.step_size, "num_steps": setting.train_steps}
    return setting.base.replace(defense=defense)


# ---------------------------------------------------------------------------- stored evaluations
@contextlib.contextmanager
def _results(store):
    """`store`, or a temporary one for this call (so nothing is trained twice within an item)."""
    if store is not None:
        yield store
        return
    with tempfile.TemporaryDirectory(prefix="tf_dlthesis_ch3_") as tmp:
        yield ResultsStore(os.path.join(tmp, "results.sqlite"))


def _report_dict(report):
    return {"passed": bool(report.passed),
            "checks": [{"name": c.name, "passed": bool(c.passed), "detail": c.detail} for c in report.checks],
            "distinct": int(report.details.get("distinct_predicted_classes", -1)),
            "num_classes": int(report.details.get("num_classes", -1))}


def _white_box_hook(setting: Setting):
    def evaluate(ctx):
        from tf_dlthesis.robustness import evaluate_white_box, sanity_report

        x, y = ctx.data.test
        seed = ctx.plan.stochastic
        _, details = evaluate_white_box(ctx.model, (x, y), WHITE_BOX, epsilon=setting.epsilon,
                                        step_size=setting.step_size, seed=seed, return_details=True)
        report = sanity_report(ctx.model, (x, y), epsilon=setting.epsilon, step_size=setting.step_size,
                               max_examples=setting.sanity_examples, seed=seed)
        return {"correct": {a: details[a].astype(np.int8) for a in WHITE_BOX}, "sanity": _report_dict(report)}

    return evaluate


def _strong_subsets(setting: Setting, labels):
    """(PGD-1000 indices into the test subset, SPSA indices into those): stratified, no RNG."""
    n = len(labels)
    long_idx = np.arange(n) if setting.long_examples is None or setting.long_examples >= n else \
        stratified_indices(labels, setting.long_examples)
    m = len(long_idx)
    spsa_idx = np.arange(m) if setting.spsa_examples >= m else stratified_indices(labels[long_idx], setting.spsa_examples)
    return long_idx, spsa_idx


def _strong_hook(setting: Setting, store):
    def evaluate(ctx):
        from tf_dlthesis.robustness import evaluate_white_box, make_attack

        x, y = ctx.data.test
        long_idx, spsa_idx = _strong_subsets(setting, y)
        xl, yl = x[long_idx], y[long_idx]
        key = f"ch3/{ctx.spec.key()}/{config_hash(ctx.plan.to_config())}"  # per-batch resume of long attacks
        seed = ctx.plan.stochastic
        long_name = f"pgd{setting.long_steps}"
        attacks = {long_name: make_attack(long_name, epsilon=setting.epsilon, step_size=setting.step_size)}
        _, long = evaluate_white_box(ctx.model, (xl, yl), attacks, seed=seed, store=store, store_key=key,
                                     return_details=True)
        spsa = make_attack("spsa", epsilon=setting.epsilon, spsa_params=setting.spsa_params)
        batch = max(1, min(128, SPSA_IMAGES_PER_CALL // setting.spsa_samples))
        _, sp = evaluate_white_box(ctx.model, (xl[spsa_idx], yl[spsa_idx]), {"spsa": spsa}, seed=seed, store=store,
                                   store_key=key, batch_size=batch, return_details=True)
        return {"long": long[long_name].astype(np.int8), "spsa": sp["spsa"].astype(np.int8)}

    return evaluate


def _logits_hook(setting: Setting):
    def evaluate(ctx):
        from tf_dlthesis.robustness import logit_statistics

        x, y = ctx.data.test
        adv = logit_statistics(ctx.model, (x, y), attack="pgd10", epsilon=setting.epsilon,
                               step_size=setting.step_size, seed=ctx.plan.stochastic)
        return {"clean": predict_logits(ctx.model, x), "pgd10": adv["logits"].astype(np.float32)}

    return evaluate


def _trained(spec, seeds, store, kind, settings, hook):
    """`train` with the stored per-model evaluation `kind` (named by its settings' hash)."""
    name = f"ch3/{kind}/{config_hash(settings)[:16]}"
    return train(spec, list(seeds), store=store, keep_weights=True, evaluate=hook, evaluation=name)


@dataclasses.dataclass
class Evaluated:
    """The runs of one spec and their white-box results.

    Attributes:
        spec: the trained spec.
        runs: one `Run` per seed.
        correct: attack -> (seeds, N) bool correctness on the test subset.
        sanity: one `_report_dict` per seed.
    """

    spec: TrainSpec
    runs: list
    correct: dict
    sanity: list

    def pct(self, attack) -> float:
        return 100.0 * float(self.correct[attack].mean())


def evaluated(setting: Setting, spec: TrainSpec, seeds, store) -> Evaluated:
    """Trains `spec` (or reads it back) and returns its white-box results and sanity reports."""
    settings = {"attacks": list(WHITE_BOX), "epsilon": setting.epsilon, "step_size": setting.step_size,
                "sanity_examples": setting.sanity_examples}
    runs = _trained(spec, seeds, store, "white_box", settings, _white_box_hook(setting))
    correct = {a: np.stack([np.asarray(r.evaluation["correct"][a]).astype(bool) for r in runs]) for a in WHITE_BOX}
    return Evaluated(spec, runs, correct, [r.evaluation["sanity"] for r in runs])


def _strong(setting: Setting, spec: TrainSpec, seed, store) -> dict:
    settings = {"epsilon": setting.epsilon, "step_size": setting.step_size, "long_steps": setting.long_steps,
                "long_examples": setting.long_examples, "spsa_examples": setting.spsa_examples,
                "spsa": setting.spsa_params}
    [run] = _trained(spec, [seed], store, "strong", settings, _strong_hook(setting, store))
    return {k: np.asarray(v).astype(bool) for k, v in run.evaluation.items()}


def _logits(setting: Setting, spec: TrainSpec, seeds, store) -> dict:
    settings = {"epsilon": setting.epsilon, "step_size": setting.step_size, "attack": "pgd10"}
    runs = _trained(spec, seeds, store, "logits", settings, _logits_hook(setting))
    return {k: np.stack([np.asarray(r.evaluation[k], np.float64) for r in runs]) for k in ("clean", "pgd10")}


def _stored(store, experiment, config, compute):
    """A stored result (computed and recorded once)."""
    return store.get_or_compute(experiment, config, 0, compute)


def _rows(setting: Setting, preset: str, store, rows=ROWS) -> dict:
    return {row: evaluated(setting, spec_for(setting, row, preset), setting.seeds, store) for row in rows}


# ---------------------------------------------------------------------------- checks
def sanity_checks(label: str, ev: Evaluated) -> list:
    """One `Check` per model: its sanity report (collapse included) with the distinct predicted classes."""
    checks = []
    for run, rep in zip(ev.runs, ev.sanity):
        failed = [f"{c['name']} ({c['detail']})" for c in rep["checks"] if not c["passed"]]
        detail = (f"predicts {rep['distinct']} of {rep['num_classes']} classes; "
                  + ("all attack sanity checks pass" if not failed else "failed: " + "; ".join(failed)))
        checks.append(Check(f"sanity report: {label}, seed {run.plan.init}", rep["passed"], detail))
    return checks


def _sanity_for(rows: dict, suffix: str = "") -> list:
    return [c for row, ev in rows.items() for c in sanity_checks(_LABELS.get(row, row) + suffix, ev)]


#: A defense "fits its training set" when every seed's clean training accuracy is within this many points of
#: the PGD model's (mean over seeds): twice the largest natural-accuracy cost of LRM vs PGD in the thesis (7.3
#: points, Table 3.1). A first version checked the final adversarial cross-entropy against chance and was
#: dropped: on mixed inputs it stays near 2.0 (chance 2.30) even for an LRM that was the most robust row (quick,
#: clean_weight 0.5: 87.5% natural).
FIT_MAX_GAP_PTS = 15.0


def _training_fits(rows: dict) -> dict:
    """Adversarial row -> the worst seed's clean training accuracy (%); empty without a PGD row."""
    if "pgd" not in rows:
        return {}
    return {row: 100.0 * min(r.metrics["train_accuracy"] for r in ev.runs)
            for row, ev in rows.items() if row in _ADVERSARIAL and ev.runs}


def _regime_checks(rows: dict, num_classes: int) -> list:
    """The thesis's regime: an attack that breaks the undefended model, adversarial training that works,
    every adversarial defense fitting its training set about as well as PGD training, and no row at
    chance accuracy."""
    chance = 100.0 / num_classes
    checks = []
    if "regular" in rows:
        r = rows["regular"]
        checks.append(Check("the attack breaks the undefended model (PGD-20 accuracy <= 5%; thesis 0.0%)",
                            r.pct("pgd20") <= 5.0, f"regular: natural {r.pct('natural'):.1f}%, "
                            f"PGD-20 {r.pct('pgd20'):.1f}%", regime=True))
    if "regular" in rows and "pgd" in rows:
        gain = rows["pgd"].pct("pgd10") - rows["regular"].pct("pgd10")
        checks.append(Check("adversarial training works (PGD model's PGD-10 accuracy >= 20 points above the "
                            "regular model's; thesis 46.1 vs 0.0)", gain >= 20.0,
                            f"PGD-10: PGD {rows['pgd'].pct('pgd10'):.1f}% vs regular "
                            f"{rows['regular'].pct('pgd10'):.1f}%", regime=True))
    fits = _training_fits(rows)
    if fits:
        pgd = 100.0 * float(np.mean([r.metrics["train_accuracy"] for r in rows["pgd"].runs]))
        checks.append(Check(f"each adversarial defense fits its training set (every seed's clean training accuracy "
                            f"within {FIT_MAX_GAP_PTS:g} points of PGD training's {pgd:.1f}%)",
                            min(fits.values()) >= pgd - FIT_MAX_GAP_PTS,
                            "clean training accuracy, worst seed (%): "
                            + ", ".join(f"{_LABELS.get(k, k)} {v:.1f}" for k, v in fits.items())))
    low = {row: ev.pct("natural") for row, ev in rows.items()}
    checks.append(Check(f"no row at chance (natural accuracy >= 2 x chance = {2 * chance:.0f}%)",
                        min(low.values()) >= 2 * chance,
                        "natural accuracy (%): " + ", ".join(f"{_LABELS.get(k, k)} {v:.1f}" for k, v in low.items())))
    return checks


# ---------------------------------------------------------------------------- tables
def _setting_text(setting: Setting, preset: str, scale: str, extra: str = "", seeds=None) -> str:
    seeds = list(setting.seeds) if seeds is None else list(seeds)
    n_test = setting.base.test_examples or "all"
    text = (f"scale {scale}, {preset.upper()} hyperparameters (robustness.PRESETS['{preset}'], identical defenses "
            f"shared across presets); {setting.base.describe()} ({setting.clean_epochs} epochs without an "
            f"adversary); {setting.attack_text()}; label smoothing s = "
            f"{setting.svhn_smoothing if preset == 'svhn' else setting.smoothing}; white-box on {n_test} stratified "
            f"test images; seed(s) {seeds}" + (" (table: mean over seeds)" if len(seeds) > 1 else "")
            + "; settings chosen from the thesis's regime before any verdict (module docstring)")
    return text + (f"; {extra}" if extra else "")


def _white_box_table(table_id, title, setting, preset, scale, rows):
    thesis_setting = {"cifar10": "CIFAR-10, ResNet-18, eps 0.03", "cifar100": "CIFAR-100, ResNet-18, eps 0.03",
                      "svhn": "SVHN, ResNet-8, eps 12/255"}[preset]
    return Table(id=table_id, title=title, setting=_setting_text(setting, preset, scale),
                 columns=list(WHITE_BOX), rows={row: {a: ev.pct(a) for a in WHITE_BOX} for row, ev in rows.items()},
                 thesis=thesis_rows(table_id), thesis_setting=thesis_setting + ", accuracy %")


def _diff(a, b, what):
    return stats.accuracy_difference(a, b, what=what)


def _runner_up(rows: dict, best: str, attack: str) -> str:
    others = {k: ev.pct(attack) for k, ev in rows.items() if k != best}
    return max(others, key=others.get)


def _num_classes(setting: Setting) -> int:
    from tf_dlthesis import data

    return int(data.info(setting.base.dataset, image_size=setting.base.image_size).num_classes)


def _thesis_source_mean(table_id, source):
    """The thesis's mean accuracy over all targets of one black-box source column."""
    return float(np.mean([row[source] for row in thesis_rows(table_id).values()]))


@register("3.1", title="White-box accuracy (%), CIFAR-10 settings", chapter=3, quick_minutes=2.8)
def table_3_1(scale, dataset, store, *, out=None):
    setting = setting_for(scale, "cifar10", dataset)
    with _results(store) as db:
        r = _rows(setting, "cifar10", db)
    table = _white_box_table("3.1", "White-box accuracy (%) under FGSM and PGD", setting, "cifar10", scale, r)
    c = {row: ev.correct for row, ev in r.items()}
    up = _runner_up(r, "lrm", "pgd20")
    findings = [
        Finding.test("Label smoothing alone lifts FGSM accuracy over regular training",
                     _diff(c["label_smoothing"]["fgsm"], c["regular"]["fgsm"], "FGSM accuracy, label smoothing minus "
                           "regular"), above=0,
                     evidence=f"FGSM {r['label_smoothing'].pct('fgsm'):.1f}% vs {r['regular'].pct('fgsm'):.1f}% "
                              f"(thesis 54.7 vs 6.1)"),
        Finding.test("Label smoothing alone lifts PGD-10 accuracy over regular training (clean examples only)",
                     _diff(c["label_smoothing"]["pgd10"], c["regular"]["pgd10"], "PGD-10 accuracy, label smoothing "
                           "minus regular"), above=0,
                     evidence=f"PGD-10 {r['label_smoothing'].pct('pgd10'):.1f}% vs {r['regular'].pct('pgd10'):.1f}% "
                              f"(thesis 41.7 vs 0.0)"),
        Finding.test("ALP is more robust to PGD-10 than PGD adversarial training",
                     _diff(c["alp"]["pgd10"], c["pgd"]["pgd10"], "PGD-10 accuracy, ALP minus PGD"), above=0,
                     evidence=f"PGD-10 {r['alp'].pct('pgd10'):.1f}% vs {r['pgd'].pct('pgd10'):.1f}% (thesis 49.1 vs 46.1)"),
        Finding.test("LRM is more robust to PGD-10 than PGD adversarial training",
                     _diff(c["lrm"]["pgd10"], c["pgd"]["pgd10"], "PGD-10 accuracy, LRM minus PGD"), above=0,
                     evidence=f"PGD-10 {r['lrm'].pct('pgd10'):.1f}% vs {r['pgd'].pct('pgd10'):.1f}% (thesis 51.4 vs "
                              f"46.1, +5.3 points)"),
        Finding.test("LRM is more robust to PGD-10 than ALP",
                     _diff(c["lrm"]["pgd10"], c["alp"]["pgd10"], "PGD-10 accuracy, LRM minus ALP"), above=0,
                     evidence=f"PGD-10 {r['lrm'].pct('pgd10'):.1f}% vs {r['alp'].pct('pgd10'):.1f}% (thesis 51.4 vs "
                              f"49.1, +2.3 points)"),
        Finding.test("LRM is the most robust defense to PGD-20 (compared with the runner-up)",
                     _diff(c["lrm"]["pgd20"], c[up]["pgd20"], f"PGD-20 accuracy, LRM minus the runner-up ({up})"),
                     above=0, evidence="PGD-20: " + ", ".join(f"{_LABELS[k]} {ev.pct('pgd20'):.1f}%"
                                                             for k, ev in r.items()) + " (thesis LRM 51.0, ALP 48.5)"),
        Finding.test("Adversarial defenses trade clean accuracy for robustness (LRM natural < regular natural)",
                     _diff(c["regular"]["natural"], c["lrm"]["natural"], "natural accuracy, regular minus LRM"),
                     above=0, evidence=f"natural {r['lrm'].pct('natural'):.1f}% vs {r['regular'].pct('natural'):.1f}% "
                                       f"(thesis 68.5 vs 87.4)"),
    ]
    checks = _regime_checks(r, _num_classes(setting)) + _sanity_for(r)
    return Output(tables=[table], findings=findings, checks=checks)


def _black_box_results(setting: Setting, preset: str, rows: dict, store) -> dict:
    """target -> source -> (2, N) bool: PGD-10 examples from each source evaluated on the other seed's targets."""
    from tf_dlthesis.robustness import make_attack

    x, y = load_data(next(iter(rows.values())).spec).test
    attack = make_attack("pgd10", epsilon=setting.epsilon, step_size=setting.step_size)
    out = {t: {s: [] for s in rows} for t in rows}
    for src_i, tgt_i in ((0, 1), (1, 0)):
        for s_row, s_ev in rows.items():
            source = s_ev.runs[src_i]
            targets = {t: ev.runs[tgt_i] for t, ev in rows.items()}
            config = {"source": {"spec": source.spec.to_config(), "plan": source.plan.to_config()},
                      "targets": {t: {"spec": run.spec.to_config(), "plan": run.plan.to_config()}
                                  for t, run in targets.items()},
                      "attack": attack.get_config(), "seed": source.plan.stochastic}

            def compute(source=source, targets=targets):
                import tensorflow as tf

                adv = np.concatenate([
                    np.asarray(attack(source.model, x[i:i + 128], y[i:i + 128],
                                      seed=tf.constant([source.plan.stochastic, b], tf.int64)))
                    for b, i in enumerate(range(0, len(x), 128))])
                return {"correct": {t: (predict_logits(run.model, adv).argmax(1) == y).astype(np.int8)
                                    for t, run in targets.items()}}

            res = _stored(store, "ch3/black_box", config, compute)
            for t in rows:
                out[t][s_row].append(np.asarray(res["correct"][t]).astype(bool))
    return {t: {s: np.stack(v) for s, v in srcs.items()} for t, srcs in out.items()}


def _black_box_table(table_id, title, setting, preset, scale, bb):
    rows = {t: {s: 100.0 * float(v.mean()) for s, v in srcs.items()} for t, srcs in bb.items()}
    thesis_setting = {"cifar10": "CIFAR-10", "cifar100": "CIFAR-100"}[preset] + ", ResNet-18, PGD-10, accuracy %"
    return Table(id=table_id, title=title, setting=_setting_text(
        setting, preset, scale, "PGD-10 examples from the source (columns) evaluated on an independently trained "
        "target (rows): seed-0 sources on seed-1 targets and seed-1 sources on seed-0 targets (table: mean of the "
        "two directions)"), columns=list(ROWS), rows=rows, thesis=thesis_rows(table_id),
        thesis_setting=thesis_setting)


def _source_strength(bb, stronger, weaker, what: str):
    """"`stronger` is uniformly a stronger black-box source than `weaker`" (thesis Sec. 3.5.2): the smallest over the
    targets of (target's accuracy from `weaker` - from `stronger`), with an interval valid for that minimum
    (`stats.smallest_difference`)."""
    return stats.smallest_difference([(bb[t][weaker], bb[t][stronger]) for t in bb],
                                     what=f"{what}, smallest over the {len(bb)} targets")


def _largest_drop(before: dict, after: dict, rows, what: str):
    """"Nearly no difference ... for all methods" (Sec. 3.5.3): the largest over `rows` of (accuracy on
    `before` - on `after`), from `stats.smallest_difference` of the negated drops: the high end is the largest
    per-row 95% high (every row's drop below a bound is then significant), the low end the largest per-row
    low at the Bonferroni level."""
    rows = tuple(rows)
    smallest = stats.smallest_difference([(after[k], before[k]) for k in rows], what=what)
    n = np.asarray(before[rows[0]]).shape[-1]
    level = 1 - (1 - stats.CONFIDENCE) / len(rows)
    return smallest.scaled(-1.0, statistic=(
        f"{what} (pts): the largest of {len(rows)} per-model drops ({', '.join(_LABELS.get(k, k) for k in rows)}), "
        f"each a paired difference over {n} test examples (stats.accuracy_difference); high: the largest per-model "
        f"95% high; low: the largest per-model low at {level:.2%} (Bonferroni over the {len(rows)} models)"))


def _black_box_item(table_id, preset, scale, dataset, store):
    setting = setting_for(scale, preset, dataset)
    with _results(store) as db:
        rows = _rows(setting, preset, db)
        bb = _black_box_results(setting, preset, rows, db)
    title = f"Black-box (transfer) accuracy (%), PGD-10, {preset.upper()} hyperparameters"
    return setting, rows, bb, _black_box_table(table_id, title, setting, preset, scale, bb)


def _pgd_source_finding(bb, pct, claim_suffix: str, thesis: str) -> Finding:
    """Tables 3.2 / 3.4: adversarial examples from PGD-trained sources fool a regular target less."""
    return Finding.test("Examples from PGD-trained sources transfer poorly to a regular target" + claim_suffix,
                        _diff(bb["regular"]["pgd"], bb["regular"]["regular"], "regular target's accuracy, PGD source "
                              "minus regular source"), above=0,
                        evidence=f"regular target: from PGD {pct['regular']['pgd']:.1f}% vs from regular "
                                 f"{pct['regular']['regular']:.1f}% (thesis {thesis})")


@register("3.2", title="Black-box accuracy (%), CIFAR-10 settings", chapter=3, quick_minutes=0.3)
def table_3_2(scale, dataset, store, *, out=None):
    setting, rows, bb, table = _black_box_item("3.2", "cifar10", scale, dataset, store)
    pct = {t: {s: 100 * float(v.mean()) for s, v in srcs.items()} for t, srcs in bb.items()}
    worst = {t: min(v, key=v.get) for t, v in pct.items()}  # each target's strongest source
    up = max((t for t in ROWS if t != "label_smoothing"), key=lambda t: pct[t][worst[t]])
    findings = [
        Finding.test("Label smoothing has the highest minimum black-box accuracy across sources (vs the runner-up "
                     "target)", _diff(bb["label_smoothing"][worst["label_smoothing"]], bb[up][worst[up]],
                                      f"minimum black-box accuracy, label smoothing minus {up}"), above=0,
                     evidence="minimum over sources: " + ", ".join(f"{_LABELS[t]} {pct[t][worst[t]]:.1f}% "
                                                                   f"(from {_LABELS[worst[t]]})" for t in ROWS)
                              + " (thesis: label smoothing 66.7%, over 10 points above any other)"),
        _pgd_source_finding(bb, pct, "", "75.1 vs 26.8"),
        Finding.test("LRM is uniformly a stronger black-box source than ALP (on every target)",
                     _source_strength(bb, "lrm", "alp", "target accuracy, ALP source minus LRM source"),
                     above=0, evidence="per target, from ALP vs from LRM: " + ", ".join(
                         f"{_LABELS[t]} {pct[t]['alp']:.1f} vs {pct[t]['lrm']:.1f}%" for t in ROWS)
                     + "; mean over targets: ALP source "
                     f"{np.mean([pct[t]['alp'] for t in ROWS]):.1f}% vs LRM source "
                     f"{np.mean([pct[t]['lrm'] for t in ROWS]):.1f}% (thesis {_thesis_source_mean('3.2', 'alp'):.1f} vs "
                     f"{_thesis_source_mean('3.2', 'lrm'):.1f})"),
        Finding.test("ALP is uniformly a stronger black-box source than PGD (on every target)",
                     _source_strength(bb, "alp", "pgd", "target accuracy, PGD source minus ALP source"),
                     above=0, evidence="per target, from PGD vs from ALP: " + ", ".join(
                         f"{_LABELS[t]} {pct[t]['pgd']:.1f} vs {pct[t]['alp']:.1f}%" for t in ROWS)
                     + "; mean over targets: PGD source "
                     f"{np.mean([pct[t]['pgd'] for t in ROWS]):.1f}% vs ALP source "
                     f"{np.mean([pct[t]['alp'] for t in ROWS]):.1f}% (thesis {_thesis_source_mean('3.2', 'pgd'):.1f} vs "
                     f"{_thesis_source_mean('3.2', 'alp'):.1f})"),
    ]
    checks = _regime_checks(rows, _num_classes(setting)) + _sanity_for(rows)
    return Output(tables=[table], findings=findings, checks=checks)


@register("3.3", title="White-box accuracy (%), CIFAR-100 settings", chapter=3, quick_minutes=1.1)
def table_3_3(scale, dataset, store, *, out=None):
    setting = setting_for(scale, "cifar100", dataset)
    with _results(store) as db:
        r = _rows(setting, "cifar100", db)
    table = _white_box_table("3.3", "White-box accuracy (%), CIFAR-100 hyperparameters (ALP weight 5.0; LRM beta "
                             "3e-5, ratio 0.95)", setting, "cifar100", scale, r)
    c = {row: ev.correct for row, ev in r.items()}
    on_thesis_data = setting.base.dataset == "cifar100"
    ls = stats.proportion(c["label_smoothing"]["pgd10"], what="PGD-10 accuracy of label smoothing")
    fail_claim = "Label smoothing fails completely against PGD on CIFAR-100 (PGD-10 accuracy < 5%)"
    fail_evidence = f"PGD-10 {r['label_smoothing'].pct('pgd10'):.1f}% (thesis 0.9%; CIFAR-10's Table 3.1: 41.7%)"
    findings = [
        Finding.test("LRM is more robust to PGD-10 than ALP (CIFAR-100 hyperparameters)",
                     _diff(c["lrm"]["pgd10"], c["alp"]["pgd10"], "PGD-10 accuracy, LRM minus ALP"), above=0,
                     evidence=f"PGD-10 {r['lrm'].pct('pgd10'):.1f}% vs {r['alp'].pct('pgd10'):.1f}% (thesis 26.8 vs 26.0)"),
        Finding.test("ALP is more robust to PGD-10 than PGD adversarial training (CIFAR-100 hyperparameters)",
                     _diff(c["alp"]["pgd10"], c["pgd"]["pgd10"], "PGD-10 accuracy, ALP minus PGD"), above=0,
                     evidence=f"PGD-10 {r['alp'].pct('pgd10'):.1f}% vs {r['pgd'].pct('pgd10'):.1f}% (thesis 26.0 vs 23.9)"),
        Finding.test(fail_claim, ls, below=5.0, evidence=fail_evidence) if on_thesis_data else Finding.not_comparable(
            fail_claim, "a claim about CIFAR-100 itself: the thesis contrasts it with CIFAR-10, where label smoothing "
            f"keeps 41.7% under PGD-10; on 10-class {setting.base.dataset} it cannot be tested. Measured: "
            + fail_evidence, ls, below=5.0),
    ]
    checks = _regime_checks(r, _num_classes(setting)) + _sanity_for(r)
    return Output(tables=[table], findings=findings, checks=checks)


@register("3.4", title="Black-box accuracy (%), CIFAR-100 settings", chapter=3, quick_minutes=0.3)
def table_3_4(scale, dataset, store, *, out=None):
    setting, rows, bb, table = _black_box_item("3.4", "cifar100", scale, dataset, store)
    pct = {t: {s: 100 * float(v.mean()) for s, v in srcs.items()} for t, srcs in bb.items()}
    spreads = {t: max(pct[t].values()) - min(pct[t].values()) for t in _ADVERSARIAL}
    widest = max(spreads, key=spreads.get)
    hi, lo = max(pct[widest], key=pct[widest].get), min(pct[widest], key=pct[widest].get)
    spread = _diff(bb[widest][hi], bb[widest][lo], f"largest spread over sources ({widest} target, {hi} minus {lo} "
                                                   "source)")
    claim = "On CIFAR-100 adversarially trained targets perform similarly across sources (spread < 10 points)"
    evidence = ("spread over sources (points): " + ", ".join(f"{_LABELS[t]} {v:.1f}" for t, v in spreads.items())
                + " (thesis: ALP target 8.2, the largest)")
    findings = [
        Finding.test(claim, spread, below=10.0, evidence=evidence) if setting.base.dataset == "cifar100" else
        Finding.not_comparable(claim, "a claim about CIFAR-100 itself (\"again clear differences across datasets\"): "
                               f"on 10-class {setting.base.dataset} it cannot be tested. Measured: " + evidence,
                               spread, below=10.0),
        _pgd_source_finding(bb, pct, " (CIFAR-100 hyperparameters)", "50.1 vs 33.3"),
    ]
    cifar10 = setting_for(scale, "cifar10", dataset)
    if (cifar10.seeds == setting.seeds and cifar10.epsilon == setting.epsilon
            and all(spec_for(cifar10, r) == spec_for(setting, r, "cifar100") for r in ("regular", "pgd"))):
        # one measurement is one finding: Table 3.2's test of the same claim counts it
        first = findings[1]
        findings[1] = Finding.not_comparable(
            first.claim, "the same regular and PGD models and the same examples as Table 3.2's finding (at this scale "
            "the CIFAR-100 hyperparameters give them the CIFAR-10 specs), so it is not a second test; it is counted "
            "there. Measured: " + first.evidence, first.effect, above=0)
    checks = _regime_checks(rows, _num_classes(setting)) + _sanity_for(rows)
    return Output(tables=[table], findings=findings, checks=checks)


@register("3.5", title="White-box accuracy (%), SVHN settings", chapter=3, quick_minutes=1.0)
def table_3_5(scale, dataset, store, *, out=None):
    setting = setting_for(scale, "svhn", dataset)
    with _results(store) as db:
        r = _rows(setting, "svhn", db)
    table = _white_box_table("3.5", "White-box accuracy (%), SVHN hyperparameters (label smoothing 0.2; LRM with "
                             "mixup, beta 1e-4, ratio 0.95)", setting, "svhn", scale, r)
    c = {row: ev.correct for row, ev in r.items()}
    up10, up20 = _runner_up(r, "lrm", "pgd10"), _runner_up(r, "lrm", "pgd20")
    findings = [
        Finding.test("LRM is the most robust defense to PGD-10 (SVHN hyperparameters; vs the runner-up)",
                     _diff(c["lrm"]["pgd10"], c[up10]["pgd10"], f"PGD-10 accuracy, LRM minus the runner-up ({up10})"),
                     above=0, evidence="PGD-10: " + ", ".join(f"{_LABELS[k]} {ev.pct('pgd10'):.1f}%"
                                                             for k, ev in r.items()) + " (thesis LRM 40.9, ALP 40.0)"),
        Finding.test("LRM is the most robust defense to PGD-20 (SVHN hyperparameters; vs the runner-up)",
                     _diff(c["lrm"]["pgd20"], c[up20]["pgd20"], f"PGD-20 accuracy, LRM minus the runner-up ({up20})"),
                     above=0, evidence="PGD-20: " + ", ".join(f"{_LABELS[k]} {ev.pct('pgd20'):.1f}%"
                                                             for k, ev in r.items()) + " (thesis LRM 39.4, ALP 38.6)"),
    ]
    checks = _regime_checks(r, _num_classes(setting)) + _sanity_for(r)
    return Output(tables=[table], findings=findings, checks=checks)


@register("3.6", title="Strongest white-box attacks: PGD-1000 and SPSA", chapter=3, quick_minutes=1.5)
def table_3_6(scale, dataset, store, *, out=None):
    setting = setting_for(scale, "cifar10", dataset)
    seed = setting.seeds[0]
    with _results(store) as db:
        r = {row: evaluated(setting, spec_for(setting, row), [seed], db) for row in ROWS}
        strong = {row: _strong(setting, ev.spec, seed, db) for row, ev in r.items()}
    labels = load_data(r["regular"].spec).test[1]
    long_idx, spsa_idx = _strong_subsets(setting, labels)
    pgd20 = {row: ev.correct["pgd20"][0][long_idx] for row, ev in r.items()}
    long = {row: s["long"] for row, s in strong.items()}
    spsa = {row: s["spsa"] for row, s in strong.items()}
    L = setting.long_steps
    rows = {row: {"pgd20": 100 * pgd20[row].mean(), "pgd1000": 100 * long[row].mean(),
                  "spsa": 100 * spsa[row].mean()} for row in ROWS}
    table = Table(id="3.6", title="White-box accuracy (%) under the strongest attacks", setting=_setting_text(
        setting, "cifar10", scale, f"PGD-20 and PGD-{L} on the same {len(long_idx)} stratified test "
        f"images, SPSA ({setting.spsa_steps} steps x {setting.spsa_samples} samples, CleverHans's learning rate "
        f"0.01 and delta 0.01) on {len(spsa_idx)} of them", seeds=[seed]),
        columns=["pgd20", "pgd1000", "spsa"], rows=rows, thesis=thesis_rows("3.6"),
        thesis_setting="CIFAR-10, ResNet-18; SPSA on 1,000 images (100 steps x 8,192 samples)")
    # SPSA strength on the undefended model (issue 11): SPSA vs PGD-L on the SPSA images
    reg_long = long["regular"][spsa_idx]
    gap = stats.accuracy_difference(spsa["regular"], reg_long, what=f"SPSA minus PGD-{L} accuracy, regular model")
    strong_enough = gap.estimate <= SPSA_MAX_GAP_PTS
    gap_text = (f"regular model on the {len(spsa_idx)} SPSA images: SPSA {100 * spsa['regular'].mean():.1f}% vs "
                f"PGD-{L} {100 * reg_long.mean():.1f}% (gap {gap.text()} points; allowed {SPSA_MAX_GAP_PTS:g})")
    checks = [Check(f"SPSA strong enough (on the undefended model within {SPSA_MAX_GAP_PTS:g} points of PGD-{L})",
                    strong_enough, gap_text),
              Check(f"PGD-{L} at least as strong as PGD-20 on the undefended model",
                    long["regular"].mean() <= pgd20["regular"].mean() + 0.02,
                    f"PGD-20 {rows['regular']['pgd20']:.1f}% vs PGD-{L} {rows['regular']['pgd1000']:.1f}%")]
    drop = {row: rows[row]["pgd20"] - rows[row]["pgd1000"] for row in ROWS}
    findings = [
        Finding.test(f"PGD-{L} is barely stronger than PGD-20 on every adversarially trained model (drop < "
                     f"{LONG_PGD_MAX_DROP_PTS:g} points for each of PGD, ALP, LRM)",
                     _largest_drop(pgd20, long, _ADVERSARIAL, f"accuracy drop PGD-20 -> PGD-{L}"),
                     below=LONG_PGD_MAX_DROP_PTS,
                     evidence=f"PGD-20 minus PGD-{L} (points): " + ", ".join(f"{_LABELS[k]} {drop[k]:.1f}" for k in ROWS)
                              + " (thesis PGD 0.1, ALP 0.2, LRM -0.1)"),
        Finding.test(f"Label smoothing loses more robustness from PGD-20 to PGD-{L} than PGD training",
                     stats.accuracy_difference(pgd20["label_smoothing"].astype(float) - long["label_smoothing"],
                                               pgd20["pgd"].astype(float) - long["pgd"],
                                               what=f"drop PGD-20 -> PGD-{L}, label smoothing minus PGD"), above=0,
                     evidence=f"drop: label smoothing {drop['label_smoothing']:.1f} vs PGD {drop['pgd']:.1f} points "
                              f"(thesis 27.2 vs 0.1)"),
    ]
    spsa_findings = [
        ("SPSA (gradient-free) is no stronger than PGD-1000 against PGD training (SPSA accuracy > PGD-1000's - 3 points)",
         stats.accuracy_difference(spsa["pgd"], long["pgd"][spsa_idx], what=f"SPSA minus PGD-{L} accuracy, PGD model"),
         {"above": -3.0},
         (f"PGD model: SPSA {100 * spsa['pgd'].mean():.1f}% vs PGD-{L} {100 * long['pgd'][spsa_idx].mean():.1f}% "
          f"on the SPSA images (thesis 45.4 vs 45.2)")),
        ("SPSA lowers ALP's and LRM's accuracy below PGD-1000's (some gradient masking; mean of ALP and LRM)",
         stats.accuracy_difference(np.mean([long[k][spsa_idx].astype(float) for k in ("alp", "lrm")], axis=0),
                                   np.mean([spsa[k].astype(float) for k in ("alp", "lrm")], axis=0),
                                   what=f"PGD-{L} minus SPSA accuracy, mean of ALP and LRM"), {"above": 0.0},
         (f"SPSA vs PGD-{L}: ALP {100 * spsa['alp'].mean():.1f}% vs {100 * long['alp'][spsa_idx].mean():.1f}%, LRM "
          f"{100 * spsa['lrm'].mean():.1f}% vs {100 * long['lrm'][spsa_idx].mean():.1f}% (thesis ALP 46.1 vs 48.3, "
          f"LRM 47.9 vs 51.1)")),
        ("LRM keeps a real gain over PGD training under SPSA",
         stats.accuracy_difference(spsa["lrm"], spsa["pgd"], what="SPSA accuracy, LRM minus PGD"), {"above": 0.0},
         f"SPSA: LRM {100 * spsa['lrm'].mean():.1f}% vs PGD {100 * spsa['pgd'].mean():.1f}% (thesis 47.9 vs 45.4)"),
    ]
    for claim, effect, region, evidence in spsa_findings:
        if strong_enough:
            findings.append(Finding.test(claim, effect, evidence=evidence, **region))
        else:
            findings.append(Finding.not_comparable(
                claim, f"SPSA too weak at this scale to support a verdict: {gap_text}. Measured: {evidence}",
                effect, **region))
    # the thesis's regime (an attack that breaks the undefended model, adversarial training that works), on the
    # seed whose models the strong attacks ran on: without it "PGD-1000 barely stronger" / "SPSA no stronger"
    # would pass vacuously on adversarially trained models with no robustness at all (0% vs 0%)
    checks += _regime_checks(r, _num_classes(setting)) + _sanity_for(r)
    return Output(tables=[table], findings=findings, checks=checks)


# ---------------------------------------------------------------------------- figures
def _hist(ax, values, edges, label, **kw):
    counts, _ = np.histogram(values.reshape(-1), bins=edges)
    ax.stairs(counts / max(counts.sum(), 1), edges, label=label, **kw)


def _variance_ratio(a, b, what):
    """Bootstrap over test examples of var(a) / var(b); a, b: (seeds, N, C) logits, all seeds pooled."""
    fa = np.concatenate(list(a), axis=1)  # (N, seeds * C): each example keeps its logits of every seed
    fb = np.concatenate(list(b), axis=1)
    return stats.bootstrap(lambda u, v: u.var() / v.var(), fa, fb, paired=True, what=what)


def _range_ratio(a, b, what):
    """Bootstrap over test examples of (max - min)(a) / (max - min)(b); a, b: (N, C) logits."""
    return stats.bootstrap(lambda u, v: (u.max() - u.min()) / max(v.max() - v.min(), 1e-12), a, b, paired=True,
                           what=what)


@register("fig3.1", title="Logit pairing regularizes logits; logit squeezing with and without ALP", chapter=3,
          quick_minutes=1.1)
def figure_3_1(scale, dataset, store, *, out=None):
    import matplotlib.pyplot as plt

    setting = setting_for(scale, "cifar10", dataset)
    seed = setting.seeds[0]
    with _results(store) as db:
        base = {row: evaluated(setting, spec_for(setting, row), setting.seeds, db) for row in ("pgd", "alp")}
        logits = {row: _logits(setting, ev.spec, setting.seeds, db) for row, ev in base.items()}
        squeezed = {(row, w): evaluated(setting, spec_for(setting, row, squeeze_weight=w), [seed], db)
                    for row in ("pgd", "alp") for w in setting.squeeze}
    var = {row: float(np.mean([lg.var() for lg in logits[row]["clean"]])) for row in base}
    rng = {row: float(np.mean([lg.max() - lg.min() for lg in logits[row]["clean"]])) for row in base}
    ratio = _variance_ratio(logits["alp"]["clean"], logits["pgd"]["clean"],
                            what="variance of clean-test logits, ALP / PGD (seeds pooled)")
    stats_table = Table(
        id="fig3.1", title="Clean-test logit statistics (Fig. 3.1 left): variance and dynamic range",
        setting=_setting_text(setting, "cifar10", scale, "variance of all N x C logits, mean over seeds"),
        columns=["variance", "dynamic_range"], rows={r: {"variance": var[r], "dynamic_range": rng[r]} for r in base},
        thesis={"pgd": {"variance": 8.31}, "alp": {"variance": 4.02}},
        thesis_setting="CIFAR-10, ResNet-18 (Sec. 3.3.1): variance 8.31 (PGD) vs 4.02 (ALP)")
    acc = {row: {0.0: base[row].correct["pgd10"][0]} for row in base}
    for (row, w), ev in squeezed.items():
        acc[row][w] = ev.correct["pgd10"][0]
    weights = [0.0, *setting.squeeze]
    curve_table = Table(
        id="fig3.1", title="PGD-10 accuracy (%) vs logit-squeezing weight (Fig. 3.1 right)",
        setting=_setting_text(setting, "cifar10", scale, "squeezing = squeeze_weight x squared L2 "
                              "norm of every logit vector in the loss", seeds=[seed]),
        columns=[f"w={w:g}" for w in weights],
        rows={row: {f"w={w:g}": 100 * float(acc[row][w].mean()) for w in weights} for row in base})
    gain = {row: np.mean([acc[row][w].astype(float) for w in setting.squeeze], axis=0) - acc[row][0.0]
            for row in base}
    curves = "; ".join(f"{row.upper()} " + " / ".join(f"{100 * acc[row][w].mean():.1f}%" for w in weights)
                       for row in base)
    findings = [
        Finding.test("ALP's clean-test logits have smaller variance than PGD training's (ratio ALP / PGD < 1)",
                     ratio, below=1.0,
                     evidence=f"variance ALP {var['alp']:.2f} vs PGD {var['pgd']:.2f} (thesis 4.02 vs 8.31, ratio 0.48)"),
        Finding.test("Logit squeezing improves PGD adversarial training (mean over the squeezing weights)",
                     stats.accuracy_difference(gain["pgd"], np.zeros_like(gain["pgd"]),
                                               what="PGD-10 accuracy gain from squeezing, PGD"), above=0,
                     evidence=f"PGD-10 at weights {', '.join(f'{w:g}' for w in weights)}: {curves} (thesis: recovers "
                              f"slightly more than half of ALP's gain)"),
        Finding.test("Logit squeezing does not help ALP (it hurts at every weight)",
                     stats.smallest_difference([(acc["alp"][0.0], acc["alp"][w]) for w in setting.squeeze],
                                               what="PGD-10 accuracy lost to squeezing, ALP without minus ALP with "
                                                    "squeezing, smallest over the weights"),
                     above=0, evidence=f"PGD-10: {curves} (thesis: \"hurts performance at all levels of "
                                       f"regularization strength\")"),
        Finding.test("Logit squeezing helps PGD training more than ALP (difference of the mean gains)",
                     stats.accuracy_difference(gain["pgd"], gain["alp"], what="squeezing gain, PGD minus ALP"),
                     above=0, evidence=f"PGD-10: {curves}"),
    ]
    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 3.6))
    both = np.concatenate([logits[r]["clean"][0].reshape(-1) for r in base])
    edges = np.linspace(both.min(), both.max(), 61)
    for row in base:
        _hist(a, logits[row]["clean"][0], edges, f"{row.upper()} (var {var[row]:.2f})")
    a.set(title="Clean test logits", xlabel="logit", ylabel="fraction")
    a.legend()
    for row, color in (("pgd", "C0"), ("alp", "C1")):
        b.plot(setting.squeeze, [100 * acc[row][w].mean() for w in setting.squeeze], "o-", color=color,
               label=f"{row.upper()} + logit squeezing")
        b.axhline(100 * acc[row][0.0].mean(), color=color, ls="--", label=f"{row.upper()}, no squeezing")
    b.set(xscale="log", title="PGD-10 accuracy", xlabel="squeeze weight", ylabel="accuracy (%)")
    b.legend(fontsize=7)
    fig.tight_layout()
    checks = _sanity_for(base) + [c for (row, w), ev in squeezed.items()
                                  for c in sanity_checks(f"{_LABELS[row]} + squeezing {w:g}", ev)]
    return Output(tables=[stats_table, curve_table], figures=[("fig_3_1", fig)], findings=findings, checks=checks)


@register("fig3.2", title="Label smoothing: robustness and logit distribution", chapter=3, quick_minutes=0.7)
def figure_3_2(scale, dataset, store, *, out=None):
    import matplotlib.pyplot as plt

    setting = setting_for(scale, "cifar10", dataset)
    seed = setting.seeds[0]
    sweep = sorted(setting.ls_sweep)
    s_max, s_min = sweep[-1], min(s for s in sweep if s > 0)

    def spec(s):
        if s == 0:
            return spec_for(setting, "regular")
        return spec_for(setting, "label_smoothing", smoothing=float(s))

    with _results(store) as db:
        ev = {s: evaluated(setting, spec(s), [seed], db) for s in sweep}
        logits = {s: _logits(setting, spec(s), [seed], db) for s in (0.0, s_max)}
    acc = {s: {a: ev[s].pct(a) for a in ("natural", "fgsm", "pgd10")} for s in sweep}
    c = {s: {a: ev[s].correct[a][0] for a in ("natural", "fgsm", "pgd10")} for s in sweep}
    clean = {s: logits[s]["clean"][0] for s in logits}
    adv = {s: logits[s]["pgd10"][0] for s in logits}
    dyn = {s: float(clean[s].max() - clean[s].min()) for s in clean}
    dyn_adv = {s: float(adv[s].max() - adv[s].min()) for s in adv}
    costly = max((s for s in sweep if s > 0), key=lambda s: acc[0.0]["natural"] - acc[s]["natural"])
    findings = [
        Finding.test(f"Label smoothing (s={s_max:g}) shrinks the clean logits' dynamic range several-fold (>= 3x)",
                     _range_ratio(clean[0.0], clean[s_max], f"dynamic range of clean-test logits, s=0 / s={s_max:g}"),
                     above=3.0, evidence=f"{dyn[0.0]:.1f} -> {dyn[s_max]:.1f} ({dyn[0.0] / max(dyn[s_max], 1e-12):.1f}x;"
                                         f" thesis ~20 -> ~1.2, 16x)"),
        Finding.test("The shrinkage also holds on PGD-10 adversarial examples (ratio > 1)",
                     _range_ratio(adv[0.0], adv[s_max], f"dynamic range of PGD-10 logits, s=0 / s={s_max:g}"),
                     above=1.0, evidence=f"{dyn_adv[0.0]:.1f} -> {dyn_adv[s_max]:.1f}"),
        Finding.test(f"Any label smoothing lifts FGSM accuracy (every s > 0 vs none, down to s = {s_min:g})",
                     stats.smallest_difference([(c[s]["fgsm"], c[0.0]["fgsm"]) for s in sweep if s > 0],
                                               what="FGSM accuracy, s minus s=0, smallest over the s > 0"), above=0,
                     evidence="FGSM: " + ", ".join(f"s={s:g}: {acc[s]['fgsm']:.1f}%" for s in sweep)
                              + " (thesis s=0.01: 38.3% vs 6.1%)"),
        Finding.test("Label smoothing costs little clean accuracy (< 3 points, at the costliest s)",
                     _diff(c[0.0]["natural"], c[costly]["natural"], f"natural accuracy, s=0 minus s={costly:g}"),
                     below=3.0, evidence="natural: " + ", ".join(f"s={s:g}: {acc[s]['natural']:.1f}%" for s in sweep)
                                         + " (thesis: no significant loss)"),
    ]
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.6))
    for col, name in (("natural", "original test"), ("fgsm", "FGSM"), ("pgd10", "PGD-10")):
        axes[0].plot(sweep, [acc[s][col] for s in sweep], "o-", label=name)
    axes[0].set(title="Accuracy vs label smoothing", xlabel="smoothing s", ylabel="accuracy (%)")
    axes[0].legend()
    for ax, values, title in ((axes[1], clean, "clean test logits"), (axes[2], adv, "PGD-10 adversarial logits")):
        edges = np.linspace(min(v.min() for v in values.values()), max(v.max() for v in values.values()), 61)
        for s in (0.0, s_max):
            _hist(ax, values[s], edges, f"s={s:g} (range {values[s].max() - values[s].min():.1f})")
        ax.set(title=title, xlabel="logit", ylabel="fraction")
        ax.legend()
    fig.tight_layout()
    table = Table(id="fig3.2", title="Accuracy (%) vs label smoothing strength (clean training only)",
                  setting=_setting_text(setting, "cifar10", scale, "clean-trained models only", seeds=[seed]),
                  columns=["natural", "fgsm", "pgd10"], rows={f"s={s:g}": acc[s] for s in sweep})
    checks = [c for s in sweep for c in sanity_checks(f"label smoothing s={s:g}", ev[s])]
    return Output(tables=[table], figures=[("fig_3_2", fig)], findings=findings, checks=checks)
