"""Chapter 4 / Appendix A: improving Batch Normalization.

Items: Fig. 4.1 (inference example weighing on a BN model), Fig. 4.2 (on a
Group-Norm model), Figs. 4.3/4.4 (Ghost BN size and its interaction with alpha),
Sec. 4.3.3 (weight decay on gamma/beta), Sec. 4.3.4 (Batch Group Norm at B = 2),
Table 4.1 (non-i.i.d. minibatches), Fig. 4.5 (all improvements vs BN vs GN
across batch sizes), App. A.2 (the sqrt(B - 1) output bound) and App. A.3
(moving statistics recomputed exactly, "Precise BN", on non-augmented training
data and on test data).

Every model is trained by `experiments.train` from a `TrainSpec`. The inference
weight alpha and the ghost size B' are tuned on the validation split
(`TrainSpec.validation_examples`, held out of the training set as the thesis's
40k/10k CIFAR-100 split) and only then tested; a tuned-vs-untuned alpha comparison
on the same models is paired per test example (and over seeds where there are
several), a comparison of models is paired over seeds x test examples
(`stats.accuracy_difference`: seed and test-set parts). Models that several items use
are the same spec, so they are trained once and shared through the results store
(the shared BN model keeps its weights for the alpha sweep and App. A.2).

Settings per scale (`SETTINGS`), chosen from the thesis's regime before any
verdict was seen:

* quick: the old quick setting (scikit-learn digits, small CNN, batch 64, 8
  epochs, one seed); BN momentum 0.9 because ~150 steps are too few for the
  thesis's 0.99 to forget the (0, 1) initial moving statistics. 20% of the
  training images are the validation split. Table 4.1 uses 2 of the 10 classes
  per batch for the reason given under standard, and peak learning rate 0.02: with
  Nesterov momentum 0.9, 0.05 collapses the layers that do not pool statistics
  across the whole batch (Group Norm, Batch Group Norm with B' = 2) to chance under
  non-i.i.d. batches in a run this short.
* standard (Fashion-MNIST, 28x28, 10 classes):
  - model: a pre-activation ResNet-8 at width 1/4 (16/32/64 filters), the CPU-
    sized member of the thesis's ResNet-18 family: residual paths from BN layers
    to the output are what Sec. 4.3.3's weight-decay argument needs, and the last
    BN layer sits at 7x7 so App. A.2's smallest B (one image) is 49, near the
    thesis's log2(B) = 5.
  - batch 128 (the thesis's B for every CIFAR-100 result), cosine schedule with
    peak 0.05, Nesterov momentum, weight decay 5e-4 on the kernels; BN momentum
    0.99 (the thesis's; the runs take hundreds of steps).
  - a training subset and no augmentation, so that the BN model overfits
    (checked: training accuracy well above test accuracy), because Ghost BN,
    weight decay on gamma/beta and Batch Group Norm are regularizers that the
    thesis finds useful only where models overfit (its SVHN counter-examples).
    Pilots (regime only): with pad-crop + flip this small ResNet does not overfit
    Fashion-MNIST within the budget (88% training vs 86-87% test accuracy on
    10,240 images x 15 epochs and on 5,120 x 24); without augmentation it does
    (99.6% vs 85.6% on 5,120 x 24). 2,560 training images x 24 epochs (480 steps,
    enough for the 0.99 moving averages to settle: checked) then fit the
    chapter's 50-minute budget on 2 cores; 2,500 held-out training images are
    the validation split and the whole 10,000-image test set is the test split.
  - 3 seeds for every comparison of models (Ghost BN, Batch Group Norm, Table
    4.1, weight decay). The thesis measured the gamma/beta weight-decay gain,
    +0.3%, over 10 runs (P = 0.002): an effect that size is below what 3 runs on
    a 10,000-image test set resolve, which the finding states.
  - Fig. 4.3 ghost sizes B' = 128 (plain BN), 32, 8 and 2, a factor-4 grid over
    the thesis's range. Its third finding (added 2026-12-07, statistic fixed
    before any of its numbers was looked at) tests Sec. 4.3.2's "increasing gain
    from inference example weighing as B' is made smaller" as the smallest B''s
    gain minus plain BN's, paired by seed; Group Norm and Batch Group Norm use 8 channel groups
    (2 channels per group in the first stage, like GN-32 on ResNet-18's 64).
  - Sec. 4.3.4 trains at B = 2, which is slow per example on a CPU (~12 ms
    per step): 1,000 training images x 5 epochs (2,500 steps), peak rate scaled
    by sqrt(2 / 128) (square-root scaling).
  - Table 4.1: 2 of the 10 classes per batch (128 = 2 classes x 64). The thesis
    uses 4 of CIFAR-100's 100 classes; on Fashion-MNIST 4 of 10 classes per batch
    cost BN only 3.8 points while 2 of 10 cost 20 (a user's measurement, issue
    13), so few classes relative to the number of classes is the regime, and the
    measured penalty (BN with i.i.d. vs non-i.i.d. batches, same budget) is
    reported as a check. Rows as Table 4.1: BN and Batch Renorm at B' = 128,
    Ghost BN at B' = 64 ... 2, Batch Group Norm at B' = 2; the base setting's
    2,560 images x 24 epochs (480 steps); peak rate 0.02 for the reason given
    under quick, so the i.i.d. reference is its own run. Pilot (regime only, one
    seed): BN 80.2% with i.i.d. vs 67.0% with non-i.i.d. batches, a 13-point
    penalty.
* App. A.3 (every scale): the base model trained *with* augmentation (the
  thesis's question is whether statistics of non-augmented images help a model
  trained on augmented ones; at standard scale the base model has no
  augmentation, so A.3 trains its own with pad-crop + flip, 3 seeds). The
  variants recompute the moving statistics exactly (`update_bn_statistics`,
  batches of the training size, fixed shuffled order) over augmented and
  non-augmented training images and over the test images (no labels); the
  thesis approximated this by extra epochs at learning rate 0.
* Fig. 4.5: training batch sizes B = 2, 8, 64 (quick; 2 / 4 / 8 epochs) and
  2, 8, 32, 128 (standard; B = 2 is Sec. 4.3.4's spec, B = 8 12 epochs, others
  the base setting's 24), peak rate scaled by sqrt(B / base B). At each B: BN
  (alpha = 0), Group Norm (alpha = 1) and "all improvements" = Ghost BN with
  B' = B / 4 (B > 2; fixed, not tuned, to fit the budget) or Batch Group Norm
  (B = 2), L2 on gamma/beta (centre 0) and alpha tuned on validation; the
  idealized BN is BN at the largest B. The B = base and B = 2 BN / GN models are
  the other items' (shared through the store).
* full: the thesis's settings (pre-activation ResNet-18 on CIFAR-100 with its
  40k/10k split, recipe "ch4_cifar100" for 80k steps = 256 epochs at batch 128,
  3 runs, 10 for weight decay, 4 of 100 classes per non-i.i.d. batch, CIFAR-10
  for App. A.2). Fig. 4.1's thesis models are ImageNet networks; at full scale
  the CIFAR-100 ResNet-18 stands in. Never run here.

Reference: C. Summers, *Understanding and Improving Deep Learning*, Ch. 4 and
App. A (2021); https://arxiv.org/abs/1906.03548.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from tf_dlthesis.experiments import stats
from tf_dlthesis.experiments.registry import SCALES, Check, Finding, Output, Table, register, thesis_rows
from tf_dlthesis.experiments.training import TrainSpec, predict_logits, train

#: Inference weights swept on BN-type models (alpha = 0: classical inference first).
BN_ALPHAS = (0.0, 0.02, 0.05, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0)
#: Inference weights swept on Group-Norm models (alpha = 1: plain GN first), Fig. 4.2's range.
GN_ALPHAS = (1.0, 0.98, 0.96, 0.94, 0.92, 0.9, 0.88, 0.86, 0.84, 0.82, 0.8)
#: A model "overfits" (the regime of the regularizers) when training accuracy exceeds test accuracy by this much.
OVERFIT_GAP_PTS = 3.0
#: A non-i.i.d. penalty "large enough to measure": significant and at least this large.
MIN_NON_IID_PENALTY_PTS = 5.0


@dataclasses.dataclass(frozen=True)
class Setting:
    """One scale's Chapter 4 setting.

    Attributes:
        base: the shared BN model (i.i.d. batches, batch B): Fig. 4.1, the
            B' = B column of Figs. 4.3/4.4, the "off" row of the weight-decay
            comparison and App. A.2's model.
        seeds: runs per model wherever models are compared.
        ghost_sizes: Fig. 4.3's ghost sizes B' < B.
        groups: channel groups of Group Norm and Batch Group Norm.
        norm_decay: the L2 rate on gamma/beta (`TrainSpec.norm_weight_decay`).
        wd_seeds: runs per weight-decay variant.
        small_batch: the B = 2 spec of Sec. 4.3.4 (its norm is set per row).
        small_batch_seeds: runs per row there.
        non_iid: Table 4.1's spec (`non_iid_classes` set; norm set per row).
        non_iid_ghost: Table 4.1's ghost sizes.
        non_iid_seeds: runs per row of Table 4.1.
        bound: App. A.2's model (None: `base`, seed 0).
        probe_batches: App. A.2's training-mode batch sizes.
        probe_images: test images run through App. A.2's probe (at least 8 batches).
        precise_bn: App. A.3's model (None: `base` if it trains with
            augmentation, else `base` with augmentation switched on: the
            thesis's question is whether statistics of non-augmented images
            help a model trained on augmented ones).
        batch_sizes: Fig. 4.5's training batch sizes B (empty: the small-batch
            B and the base B).
        batch_ghost: Fig. 4.5's ghost size B' per B for "all improvements"
            (missing B: B // 4 when B >= 8, else B' = B, i.e. no ghost batches).
        batch_epochs: Fig. 4.5's epochs per B (missing B: the base setting's;
            B = the small-batch B uses that spec as it is).
    """

    base: TrainSpec
    seeds: int
    ghost_sizes: tuple
    groups: int
    norm_decay: float
    wd_seeds: int
    small_batch: TrainSpec
    small_batch_seeds: int
    non_iid: TrainSpec
    non_iid_ghost: tuple
    non_iid_seeds: int
    bound: TrainSpec | None = None
    probe_batches: tuple = (1, 2, 4, 8, 32, 128)
    probe_images: int = 128
    precise_bn: TrainSpec | None = None
    batch_sizes: tuple = ()
    batch_ghost: dict = dataclasses.field(default_factory=dict)
    batch_epochs: dict = dataclasses.field(default_factory=dict)

    def with_dataset(self, dataset: str) -> "Setting":
        """The same setting on another dataset."""
        if not isinstance(dataset, str) or not dataset:
            raise TypeError(f"`dataset` must be a dataset name or None. Received: dataset={dataset!r}")
        return dataclasses.replace(
            self, base=self.base.replace(dataset=dataset), small_batch=self.small_batch.replace(dataset=dataset),
            non_iid=self.non_iid.replace(dataset=dataset),
            bound=None if self.bound is None else self.bound.replace(dataset=dataset),
            precise_bn=None if self.precise_bn is None else self.precise_bn.replace(dataset=dataset))

    def precise_bn_spec(self) -> TrainSpec:
        """App. A.3's model (see `precise_bn`)."""
        if self.precise_bn is not None:
            return self.precise_bn
        return self.base if self.base.augment else self.base.replace(augment=True)

    def batch_size_specs(self) -> dict:
        """Fig. 4.5: B -> the BN spec trained at batch size B (norm set per method)."""
        sizes = self.batch_sizes or tuple(sorted({self.small_batch.batch_size, self.base.batch_size}))
        out = {}
        for b in sorted(sizes):
            if b == self.base.batch_size:
                out[b] = self.base
            elif b == self.small_batch.batch_size:
                out[b] = self.small_batch
            else:  # square-root learning-rate scaling, as the small-batch spec
                lr = self.base.learning_rate
                out[b] = self.base.replace(
                    batch_size=b, epochs=self.batch_epochs.get(b, self.base.epochs),
                    learning_rate=None if lr is None else round(lr * (b / self.base.batch_size) ** 0.5, 5))
        return out

    def ghost_for(self, b: int) -> int:
        """Fig. 4.5's ghost size B' at batch size ``b`` (``b``: no ghost batches)."""
        return int(self.batch_ghost.get(b, b // 4 if b >= 8 else b))


def _quick() -> Setting:
    base = TrainSpec(dataset="digits", validation_examples=287, model="cnn", norm="batch",
                     norm_kwargs={"momentum": 0.9}, epochs=8, batch_size=64, recipe="cosine", learning_rate=0.05)
    return Setting(
        base=base, seeds=1, ghost_sizes=(16, 4), groups=8, norm_decay=2.5e-4, wd_seeds=1,
        small_batch=base.replace(batch_size=2, epochs=2, learning_rate=round(0.05 * (2 / 64) ** 0.5, 5)),
        small_batch_seeds=1,
        non_iid=base.replace(non_iid_classes=2, epochs=16, learning_rate=0.02),
        non_iid_ghost=(32, 8, 2), non_iid_seeds=1,
        batch_sizes=(2, 8, 64), batch_ghost={64: 16, 8: 2}, batch_epochs={8: 4})


def _standard() -> Setting:
    base = TrainSpec(dataset="fashion_mnist", train_examples=2560, validation_examples=2500,
                     model="preact_resnet8", model_kwargs={"width_multiplier": 0.25}, norm="batch",
                     epochs=24, batch_size=128, recipe="cosine", learning_rate=0.05, augment=False)
    return Setting(
        base=base, seeds=3, ghost_sizes=(32, 8, 2), groups=8, norm_decay=2.5e-4, wd_seeds=3,
        small_batch=base.replace(train_examples=1000, batch_size=2, epochs=5,
                                 learning_rate=round(0.05 * (2 / 128) ** 0.5, 5)),
        small_batch_seeds=3,
        non_iid=base.replace(non_iid_classes=2, learning_rate=0.02),
        non_iid_ghost=(64, 32, 16, 8, 4, 2), non_iid_seeds=3,
        precise_bn=base.replace(augment=True),
        batch_sizes=(2, 8, 32, 128), batch_ghost={128: 32, 32: 8, 8: 2}, batch_epochs={8: 12, 32: 24})


def _full() -> Setting:
    base = TrainSpec(dataset="cifar100", validation_examples=10000, model="preact_resnet18", norm="batch",
                     epochs=256, batch_size=128, recipe="ch4_cifar100")
    return Setting(
        base=base, seeds=3, ghost_sizes=(64, 32, 16, 8, 4, 2), groups=32, norm_decay=2.5e-4, wd_seeds=10,
        small_batch=base.replace(batch_size=2, learning_rate=round(0.1 * (2 / 128) ** 0.5, 5)), small_batch_seeds=3,
        non_iid=base.replace(non_iid_classes=4), non_iid_ghost=(64, 32, 16, 8, 4, 2), non_iid_seeds=3,
        bound=base.replace(dataset="cifar10"),
        batch_sizes=(2, 4, 8, 16, 32, 64, 128), batch_ghost={128: 32, 64: 16, 32: 8, 16: 4, 8: 2, 4: 2})


#: scale -> `Setting` (frozen; tests swap in tiny ones).
SETTINGS = {"quick": _quick(), "standard": _standard(), "full": _full()}


def _setting(scale: str, dataset: str | None) -> Setting:
    if scale not in SCALES:
        raise ValueError(f"`scale` must be one of {SCALES}. Received: scale={scale!r}")
    setting = SETTINGS[scale]
    return setting if dataset is None else setting.with_dataset(dataset)


# ------------------------------------------------------------------ evaluations
def _alphas_for(norm: str) -> tuple:
    return GN_ALPHAS if str(norm).startswith("ew_group") else BN_ALPHAS


def _per_example_ce(logits: np.ndarray, labels: np.ndarray) -> np.ndarray:
    z = logits.astype(np.float64)
    z = z - z.max(axis=1, keepdims=True)
    log_p = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
    return -log_p[np.arange(len(labels)), labels]


def _alpha_evaluation(alphas: tuple):
    """`(evaluate, name)`: sweep alpha on the validation split, then test the default and the tuned alphas.

    The tuned alphas are the validation-best by accuracy and by cross-entropy
    (the first best in `alphas` order, so ties keep the default `alphas[0]`).
    Test results are per example (correct, cross-entropy), for paired comparisons.
    """
    from tf_dlthesis.normalization import normalization_layers, patch_model, set_example_weight, sweep_example_weight

    def evaluate(ctx):
        model = ctx.model if normalization_layers(ctx.model) else patch_model(ctx.model, alphas[0])
        layers = normalization_layers(model)
        previous = [layer.example_weight for layer in layers]
        xv, yv = ctx.data.validation
        xt, yt = ctx.data.test
        try:
            sweep = sweep_example_weight(model, (xv, yv), alphas, batch_size=256)
            best_acc = float(alphas[int(np.argmax(sweep["accuracy"]))])
            best_ce = float(alphas[int(np.argmin(sweep["cross_entropy"]))])
            tested = sorted({float(alphas[0]), best_acc, best_ce})
            correct, ce = [], []
            for alpha in tested:
                set_example_weight(model, alpha)
                logits = predict_logits(model, xt)
                correct.append(logits.argmax(axis=1) == yt)
                ce.append(_per_example_ce(logits, yt))
        finally:
            for layer, value in zip(layers, previous):
                layer.example_weight_variable.assign(value)
        return {"alphas": np.asarray(alphas, np.float64), "val_accuracy": np.asarray(sweep["accuracy"], np.float64),
                "val_cross_entropy": np.asarray(sweep["cross_entropy"], np.float64),
                "best_accuracy_alpha": best_acc, "best_ce_alpha": best_ce, "test_alphas": np.asarray(tested),
                "test_correct": np.stack(correct).astype(np.int8), "test_ce": np.stack(ce).astype(np.float32)}

    return evaluate, "ch4_alpha:" + ",".join(f"{a:g}" for a in alphas)


def _runs(spec: TrainSpec, seeds: int, store, *, keep_weights: bool = False) -> list:
    """Trains (or reads) `spec` for seeds 0..seeds-1 with its alpha sweep."""
    evaluate, name = _alpha_evaluation(_alphas_for(spec.norm))
    return train(spec, list(range(seeds)), store=store, evaluate=evaluate, evaluation=name, keep_weights=keep_weights)


def _base_runs(s: Setting, store) -> list:
    # The shared model keeps its weights: App. A.2 evaluates it again without retraining.
    return _runs(s.base, s.seeds, store, keep_weights=True)


def _at(run, alpha: float, what: str = "test_correct") -> np.ndarray:
    """Per-test-example correctness (or cross-entropy) of `run` at inference weight `alpha`."""
    ev = run.evaluation
    idx = np.flatnonzero(np.isclose(np.asarray(ev["test_alphas"], np.float64), alpha))
    if idx.size == 0:
        raise ValueError(f"alpha={alpha} was not tested. Tested: {list(ev['test_alphas'])}")
    return np.asarray(ev[what])[idx[0]].astype(np.float64)


def _default(run) -> float:
    return float(np.asarray(run.evaluation["alphas"])[0])


def _stack(runs, alpha_of, what="test_correct") -> np.ndarray:
    return np.stack([_at(r, alpha_of(r), what) for r in runs])


def _tuned_acc(runs) -> np.ndarray:
    return _stack(runs, lambda r: r.evaluation["best_accuracy_alpha"])


def _off(runs) -> np.ndarray:
    return _stack(runs, _default)


def _val_curve(runs, key="val_accuracy") -> np.ndarray:
    return np.mean([np.asarray(r.evaluation[key], np.float64) for r in runs], axis=0)


def _pct(correct: np.ndarray) -> float:
    return 100.0 * float(np.mean(correct))


def _moving_average_check(spec: TrainSpec, steps: int) -> Check:
    momentum = float(spec.norm_kwargs.get("momentum", 0.99))
    left = momentum ** steps
    return Check("BN moving averages settled (initial statistics' weight < 1%)", left < 0.01,
                 f"momentum {momentum} over {steps} steps leaves {left:.2e} of the initial (0, 1) statistics",
                 regime=True)


def _steps(run) -> int:
    spec = run.spec
    n = run.metrics["num_train"]
    per_epoch = n // spec.batch_size if spec.non_iid_classes else -(-n // spec.batch_size)
    return max(1, per_epoch) * spec.epochs


def _overfit_check(name: str, runs, *, regime: bool = True) -> Check:
    train_acc = 100 * float(np.mean([r.metrics["train_accuracy"] for r in runs]))
    test_acc = 100 * float(np.mean([r.metrics["test_accuracy"] for r in runs]))
    return Check(f"{name} overfits (train - test accuracy >= {OVERFIT_GAP_PTS:g} pts; the regime of a regularizer)",
                 train_acc - test_acc >= OVERFIT_GAP_PTS,
                 f"training accuracy {train_acc:.2f}% vs test {test_acc:.2f}% (mean of {len(runs)} run(s))",
                 regime=regime)


# ------------------------------------------------------------------ figures
def _sweep_figure(curves: dict, title: str):
    import matplotlib.pyplot as plt

    fig, (ax_acc, ax_ce) = plt.subplots(1, 2, figsize=(9, 3.5))
    for label, (alphas, acc, ce) in curves.items():
        ax_acc.plot(alphas, 100 * np.asarray(acc), marker="o", label=label)
        ax_ce.plot(alphas, ce, marker="o", label=label)
    for ax in (ax_acc, ax_ce):
        ax.set_xlabel("inference example weight alpha")
    ax_acc.set_ylabel("validation accuracy (%)")
    ax_ce.set_ylabel("validation cross-entropy")
    ax_acc.legend(fontsize=7)
    fig.suptitle(title)
    fig.tight_layout()
    return fig


def _curve(runs):
    return (np.asarray(runs[0].evaluation["alphas"]), _val_curve(runs), _val_curve(runs, "val_cross_entropy"))


def _sweep_rows(runs) -> dict:
    rows = {}
    for r in runs:
        ev = r.evaluation
        default, best = _default(r), ev["best_accuracy_alpha"]
        rows[f"seed {r.plan.init}"] = {
            "alpha_by_accuracy": best, "alpha_by_ce": ev["best_ce_alpha"],
            "test_acc_default": _pct(_at(r, default)), "test_acc_tuned": _pct(_at(r, best)),
            "test_ce_default": float(np.mean(_at(r, default, "test_ce"))),
            "test_ce_tuned": float(np.mean(_at(r, ev["best_ce_alpha"], "test_ce")))}
    return rows


def _tuning_text(runs) -> str:
    return ", ".join(f"seed {r.plan.init}: {r.evaluation['best_accuracy_alpha']:g} (acc) / "
                     f"{r.evaluation['best_ce_alpha']:g} (CE)" for r in runs)


def _tuning_effects(runs, default: str):
    """(accuracy, cross-entropy) effects of the validation-tuned alpha vs `default` on the same models, per example."""
    acc = stats.accuracy_difference(_tuned_acc(runs), _off(runs), what=f"test accuracy, tuned alpha minus {default}")
    ce = stats.accuracy_difference(_stack(runs, lambda r: r.evaluation["best_ce_alpha"], "test_ce"),
                                   _stack(runs, _default, "test_ce"),
                                   what=f"test cross-entropy, tuned alpha minus {default}", unit="nats", scale=1.0)
    return acc, ce


def _sweep_output(item: str, title: str, spec: TrainSpec, runs, scale: str, findings, *, thesis_setting: str,
                  figure_title: str, checks=()) -> Output:
    """Fig. 4.1 / 4.2's table (per seed: tuned alphas, test accuracy and cross-entropy) and validation curves."""
    alphas = [float(a) for a in runs[0].evaluation["alphas"]]
    table = Table(id=item, title=title,
                  setting=f"{spec.describe()}; {len(runs)} seed(s); alpha swept over {alphas} on the "
                          f"{spec.validation_examples} validation images, then tested; scale {scale}",
                  columns=["alpha_by_accuracy", "alpha_by_ce", "test_acc_default", "test_acc_tuned",
                           "test_ce_default", "test_ce_tuned"],
                  rows=_sweep_rows(runs), thesis=None, thesis_setting=thesis_setting)
    fig = _sweep_figure({f"{spec.norm} model (mean over seeds)": _curve(runs)}, figure_title)
    return Output(tables=[table], figures=[("fig_" + item[3:].replace(".", "_"), fig)], findings=findings,
                  checks=list(checks))


# ----------------------------------------------------------------- Fig 4.1
@register("fig4.1", title="Inference example weighing alpha on a BN-trained model (Fig. 4.1)", chapter=4,
          quick_minutes=0.15)
def fig_4_1(scale, dataset, store, *, out=None):
    s = _setting(scale, dataset)
    runs = _base_runs(s, store)
    acc, ce = _tuning_effects(runs, "alpha = 0")
    tuned = f"validation-best alpha per seed: {_tuning_text(runs)}"
    findings = [
        Finding.test("Alpha tuned on validation data improves accuracy over classical BN inference (alpha = 0) "
                     "without retraining", acc, above=0,
                     evidence=f"{tuned}; thesis: ImageNet ResNet-152 +0.6% top-1 (Fig. 4.1)"),
        Finding.test("Alpha tuned on validation data lowers the cross-entropy of classical BN inference", ce, below=0,
                     evidence=f"{tuned}; thesis: ResNet-152 cross-entropy -4.7% relative (Fig. 4.1)"),
    ]
    return _sweep_output("fig4.1", "Inference example weighing on the BN model: alpha tuned on validation, tested",
                         s.base, runs, scale, findings,
                         thesis_setting="ImageNet validation set; ResNet-152, MobileNetV2, NASNet-A Large (Fig. 4.1)",
                         figure_title=f"Fig 4.1 analogue: {s.base.model} on {s.base.dataset}, "
                                      f"batch {s.base.batch_size}",
                         checks=[_moving_average_check(s.base, _steps(runs[0]))])


# ----------------------------------------------------------------- Fig 4.2
@register("fig4.2", title="Example weighing on a Group-Norm-trained model (Fig. 4.2)", chapter=4, quick_minutes=0.15)
def fig_4_2(scale, dataset, store, *, out=None):
    s = _setting(scale, dataset)
    spec = s.base.replace(norm=f"ew_group:{s.groups}")
    runs = _runs(spec, s.seeds, store)
    acc, ce = _tuning_effects(runs, "alpha = 1 (plain GN)")
    tuned = f"validation-best alpha per seed: {_tuning_text(runs)}"
    findings = [
        Finding.test("Blending a little of the moving-average statistics into a Group-Norm model (alpha < 1, tuned on "
                     "validation cross-entropy) lowers test cross-entropy", ce, below=0,
                     evidence=f"{tuned}; thesis: small cross-entropy gains on CIFAR-100 and SVHN (Fig. 4.2)"),
        Finding.test("Blending in moving-average statistics (alpha < 1, tuned on validation accuracy) raises the "
                     "test accuracy of a Group-Norm model", acc, above=0,
                     evidence=f"{tuned}; thesis: the larger accuracy gain is on Caltech-256 (Fig. 4.2)"),
    ]
    return _sweep_output("fig4.2", "Example weighing on the Group-Norm model (alpha = 1 is plain GN)", spec, runs,
                         scale, findings,
                         thesis_setting="CIFAR-100, SVHN (ResNet-18) and Caltech-256 (Inception-v3) with Group Norm "
                                        "(Fig. 4.2)",
                         figure_title=f"Fig 4.2 analogue: {spec.model}, Group Norm ({s.groups} groups) on "
                                      f"{spec.dataset}")


# ------------------------------------------------------------ Fig 4.3 + 4.4
def _ghost_spec(spec: TrainSpec, ghost: int) -> TrainSpec:
    return spec.replace(norm="batch" if ghost >= spec.batch_size else f"ghost:{ghost}")


@register("fig4.3", title="Ghost BN size sweep (Fig. 4.3) and its interaction with alpha (Fig. 4.4)", chapter=4,
          quick_minutes=0.5)
def fig_4_3(scale, dataset, store, *, out=None):
    import matplotlib.pyplot as plt

    s = _setting(scale, dataset)
    full = s.base.batch_size
    ghosts = (full,) + tuple(g for g in s.ghost_sizes if g < full)
    runs = {full: _base_runs(s, store)}
    for g in ghosts[1:]:
        runs[g] = _runs(_ghost_spec(s.base, g), s.seeds, store)
    val0 = {g: 100 * float(np.mean([r.evaluation["val_accuracy"][0] for r in rs])) for g, rs in runs.items()}
    best = max(ghosts, key=lambda g: val0[g])  # first maximum: ties keep plain BN
    gain = stats.accuracy_difference(_off(runs[best]), _off(runs[full]),
                                     what=f"test accuracy, validation-best B' = {best} minus B' = {full} (alpha = 0)")
    smallest = min(ghosts)
    alpha_small = [r.evaluation["best_ce_alpha"] for r in runs[smallest]]
    alpha_full = [r.evaluation["best_ce_alpha"] for r in runs[full]]
    trend = stats.paired_difference(alpha_small, alpha_full, unit="alpha",
                                    what=f"validation-best alpha (by cross-entropy), B' = {smallest} minus B' = {full}")
    per_ghost = "; ".join(f"B'={g}: " + ", ".join(f"{r.evaluation['best_ce_alpha']:g}" for r in runs[g])
                          for g in ghosts)
    # Sec. 4.3.2 on Fig. 4.4: "increasing gain from inference example weighing as B' is made smaller". The gain of
    # a run, per test example: correct at its validation-tuned alpha minus correct at alpha = 0.
    weighing_gain = {g: _tuned_acc(runs[g]) - _off(runs[g]) for g in ghosts}
    growth = stats.accuracy_difference(weighing_gain[smallest], weighing_gain[full],
                                       what=f"test-accuracy gain of the validation-tuned alpha over alpha = 0, "
                                            f"B' = {smallest} minus B' = {full}")
    findings = [
        Finding.test("Ghost BN with B' tuned on validation beats full-batch BN in the medium-batch regime", gain,
                     above=0, evidence="validation accuracy (alpha = 0) per B': "
                     + ", ".join(f"{g}: {val0[g]:.2f}%" for g in ghosts)
                     + "; thesis: CIFAR-100 +0.84%, Caltech-256 +5.8% (Fig. 4.3; no gain on SVHN, which barely "
                       "overfits)"),
        Finding.test("The best alpha grows as the ghost batch shrinks", trend, above=0,
                     evidence=f"validation-best alpha by cross-entropy per seed: {per_ghost}; thesis: Figs. 4.4 / A.4, "
                              "optimal alpha decreasing in B' (except the SVHN loss)"),
        Finding.test("Inference example weighing gains more as the ghost batch shrinks", growth, above=0,
                     evidence="test-accuracy gain of the tuned alpha over alpha = 0 per B' (pts, mean over seeds): "
                     + ", ".join(f"{g}: {_pct(weighing_gain[g]):+.2f}" for g in ghosts)
                     + "; thesis: Sec. 4.3.2, \"increasing gain from inference example weighing as B' is made "
                       "smaller\" (Fig. 4.4)"),
    ]
    rows = {}
    for g in ghosts:
        rs = runs[g]
        rows[f"ghost_{g}"] = {"val_acc_alpha0": val0[g], "test_acc_alpha0": _pct(_off(rs)),
                              "best_alpha_ce": float(np.mean([r.evaluation["best_ce_alpha"] for r in rs])),
                              "best_alpha_acc": float(np.mean([r.evaluation["best_accuracy_alpha"] for r in rs])),
                              "test_acc_tuned": _pct(_tuned_acc(rs)),
                              "train_acc": 100 * float(np.mean([r.metrics["train_accuracy"] for r in rs]))}
    table = Table(id="fig4.3", title="Ghost batch size B' and inference example weighing (accuracy %, alpha means over "
                                     "seeds)",
                  setting=f"{s.base.describe()}; B' in {list(ghosts)} (B' = {full}: plain BN); {s.seeds} seed(s) each; "
                          f"B' and alpha tuned on the validation split; scale {scale}",
                  columns=["val_acc_alpha0", "test_acc_alpha0", "best_alpha_ce", "best_alpha_acc", "test_acc_tuned",
                           "train_acc"], rows=rows, thesis=None,
                  thesis_setting="Figs. 4.3/4.4 are plots (CIFAR-100, SVHN, Caltech-256, batch 128); no table")
    fig3, ax = plt.subplots(figsize=(4.5, 3.2))
    ax.plot(ghosts, [rows[f"ghost_{g}"]["test_acc_alpha0"] for g in ghosts], marker="o", label="test")
    ax.plot(ghosts, [val0[g] for g in ghosts], marker="s", label="validation")
    ax.set_xscale("log", base=2)
    ax.set_xlabel("ghost batch size B'")
    ax.set_ylabel("accuracy (%) at alpha = 0")
    ax.set_title(f"Fig 4.3 analogue: {s.base.model} on {s.base.dataset}, batch {full}", fontsize=9)
    ax.legend(fontsize=7)
    fig3.tight_layout()
    fig4 = _sweep_figure({f"B'={g}": _curve(runs[g]) for g in ghosts}, "Fig 4.4 analogue (validation, mean over seeds)")
    checks = [_overfit_check(f"The full-batch BN model (B' = {full})", runs[full]),
              _moving_average_check(s.base, _steps(runs[full][0]))]
    return Output(tables=[table], figures=[("fig_4_3", fig3), ("fig_4_4", fig4)], findings=findings, checks=checks)


# ---------------------------------------------------------- weight decay
@register("4.wd", title="Weight decay on gamma and beta on/off (Sec. 4.3.3)", chapter=4, quick_minutes=0.15)
def weight_decay_gamma_beta(scale, dataset, store, *, out=None):
    s = _setting(scale, dataset)
    seeds = list(range(s.wd_seeds))
    variants = {"off": s.base, "on_center0": s.base.replace(norm_weight_decay=(s.norm_decay, 0.0)),
                "on_center1": s.base.replace(norm_weight_decay=(s.norm_decay, 1.0))}
    # "off" is the shared BN model (kept weights, same store record as the other items).
    runs = {k: train(v, seeds, store=store, keep_weights=(k == "off")) for k, v in variants.items()}
    correct = {k: np.stack([r.test_correct for r in rs]) for k, rs in runs.items()}
    rows = {k: {"accuracy_pct": _pct(c), "train_accuracy_pct": 100 * float(np.mean([r.metrics["train_accuracy"]
                                                                                    for r in runs[k]]))}
            for k, c in correct.items()}
    on = stats.accuracy_difference(correct["on_center0"], correct["off"],
                                   what="test accuracy, L2 on gamma/beta (centre 0) minus none")
    centre = stats.accuracy_difference(correct["on_center0"], correct["on_center1"],
                                       what="test accuracy, gamma decayed toward 0 minus toward 1")
    resolution = (f"{len(seeds)} run(s) per variant: the thesis's +0.3% (measured over 10 runs) may be below what "
                  f"this many runs resolve (interval half-width here {(on.high - on.low) / 2:.2f} pts)")
    findings = [
        Finding.test("Weight decay on gamma and beta improves the accuracy of a ResNet", on, above=0,
                     evidence=f"off {rows['off']['accuracy_pct']:.2f}%, on (centre 0) "
                              f"{rows['on_center0']['accuracy_pct']:.2f}%; thesis: CIFAR-100 ResNet-18 +0.3% "
                              f"(P = 0.002, 10 runs); {resolution}"),
        Finding.test("Whether gamma is decayed toward 0 or 1 does not matter (|difference| < 0.3 pts, the size of the "
                     "weight-decay gain itself)", centre, above=-0.3, below=0.3,
                     evidence=f"centre 0 {rows['on_center0']['accuracy_pct']:.2f}% vs centre 1 "
                              f"{rows['on_center1']['accuracy_pct']:.2f}%; thesis: no difference (P = 0.46)"),
    ]
    table = Table(id="4.wd", title="Test accuracy (%) with and without L2 on gamma/beta",
                  setting=f"{s.base.describe()}; {len(seeds)} seed(s) per variant; L2 penalty {s.norm_decay:g} x "
                          f"sum (w - centre)^2 on gamma (centre 0 or 1) and beta, i.e. the gradient "
                          f"{2 * s.norm_decay:g} (w - centre) of TF's `{2 * s.norm_decay:g} * l2_loss` weight decay "
                          f"(the thesis-era convention; the kernels here use Keras's decoupled decay); scale {scale}",
                  columns=["accuracy_pct", "train_accuracy_pct"], rows=rows, thesis=None,
                  thesis_setting="CIFAR-100 ResNet-18, 10 runs: +0.3% (P = 0.002); centre 0 vs 1: P = 0.46")
    checks = [_overfit_check("The BN model without gamma/beta decay", runs["off"]),
              Check("the model has residual paths from BN layers to the output (Sec. 4.3.3's condition)",
                    s.base.model.startswith("preact_resnet"), f"model {s.base.model}", regime=True)]
    return Output(tables=[table], findings=findings, checks=checks)


# ---------------------------------------------------------- Batch Group Norm
@register("4.bgn", title="Batch Group Norm vs Group Norm at batch size 2 (Sec. 4.3.4)", chapter=4, quick_minutes=0.4)
def batch_group_b2(scale, dataset, store, *, out=None):
    s = _setting(scale, dataset)
    variants = {"group_norm": s.small_batch.replace(norm=f"ew_group:{s.groups}"),
                "batch_group_norm": s.small_batch.replace(norm=f"batch_group:{s.groups}")}
    runs = {k: _runs(v, s.small_batch_seeds, store) for k, v in variants.items()}
    tuned = {k: _tuned_acc(rs) for k, rs in runs.items()}
    rows = {k: {"accuracy_pct": _pct(tuned[k]), "alpha": float(np.mean([r.evaluation["best_accuracy_alpha"]
                                                                         for r in rs])),
                "accuracy_default_alpha_pct": _pct(_off(rs))} for k, rs in runs.items()}
    diff = stats.accuracy_difference(tuned["batch_group_norm"], tuned["group_norm"],
                                     what="test accuracy at B = 2, Batch Group Norm minus Group Norm (alpha tuned)")
    finding = Finding.test("Batch Group Norm beats Group Norm at batch size B = 2 (both with alpha tuned on "
                           "validation)",
                           diff, above=0,
                           evidence=f"GN {rows['group_norm']['accuracy_pct']:.2f}%, BGN "
                                    f"{rows['batch_group_norm']['accuracy_pct']:.2f}%; thesis: CIFAR-100 +0.69% "
                                    "(73.91 -> 74.60, 3 runs), Caltech-256 +5.0%; slightly worse on SVHN, which "
                                    "barely overfits")
    thesis = {"group_norm": {"accuracy_pct": 73.91}, "batch_group_norm": {"accuracy_pct": 74.60}}
    table = Table(id="4.bgn", title="Test accuracy (%) at batch size B = 2, alpha tuned on validation",
                  setting=f"{variants['group_norm'].describe()} vs the same with norm "
                          f"{variants['batch_group_norm'].norm} (peak rate scaled by sqrt(2 / {s.base.batch_size}) "
                          f"from the base setting); {s.small_batch_seeds} seed(s); alpha swept over "
                          f"{list(GN_ALPHAS)} (GN) and {list(BN_ALPHAS)} (BGN) on the validation split; scale {scale}",
                  columns=["accuracy_pct", "alpha", "accuracy_default_alpha_pct"], rows=rows, thesis=thesis,
                  thesis_setting="CIFAR-100 validation, ResNet-18, mean of 3 runs (Sec. 4.3.4)")
    return Output(tables=[table], findings=[finding],
                  checks=[_overfit_check("The Group-Norm model", runs["group_norm"], regime=False)])


# ----------------------------------------------------------------- Table 4.1
def _non_iid_rows(s: Setting) -> dict:
    spec, b = s.non_iid, s.non_iid.batch_size
    rows = {f"batch_norm_{b}": spec.replace(norm="batch"), f"batch_renorm_{b}": spec.replace(norm="renorm")}
    for g in s.non_iid_ghost:
        if g < b:
            rows[f"ghost_{g}"] = spec.replace(norm=f"ghost:{g}")
    rows["batch_group_2"] = spec.replace(norm=f"batch_group:{s.groups}:2")
    return rows


@register("4.1", title="Non-i.i.d. minibatches (Table 4.1)", chapter=4, quick_minutes=0.8)
def table_4_1(scale, dataset, store, *, out=None):
    s = _setting(scale, dataset)
    spec, b = s.non_iid, s.non_iid.batch_size
    if spec.non_iid_classes is None:
        raise ValueError(f"The Table 4.1 spec needs `non_iid_classes`. Received: {spec}")
    specs = _non_iid_rows(s)
    runs = {k: _runs(v, s.non_iid_seeds, store) for k, v in specs.items()}
    iid = train(spec.replace(norm="batch", non_iid_classes=None), list(range(s.non_iid_seeds)), store=store)
    off = {k: _off(rs) for k, rs in runs.items()}
    on = {k: _tuned_acc(rs) for k, rs in runs.items()}
    val_off = {k: float(np.mean([r.evaluation["val_accuracy"][0] for r in rs])) for k, rs in runs.items()}
    val_on = {k: float(np.mean([np.max(r.evaluation["val_accuracy"]) for r in rs])) for k, rs in runs.items()}
    rows = {k: {"off": _pct(off[k]), "on": _pct(on[k]),
                "alpha": float(np.mean([r.evaluation["best_accuracy_alpha"] for r in runs[k]]))} for k in runs}
    bn = f"batch_norm_{b}"
    rescue = stats.accuracy_difference(on[bn], off[bn], what="test accuracy of BN, tuned alpha minus alpha = 0")
    ghosts = [k for k in runs if k.startswith("ghost_")]
    best_ghost = max(ghosts, key=lambda k: val_off[k])
    ghost_gain = stats.accuracy_difference(off[best_ghost], off[bn],
                                           what=f"test accuracy (alpha = 0), validation-best {best_ghost} minus BN")
    rival = max((k for k in runs if k != "batch_group_2"), key=lambda k: val_on[k])
    bgn_gain = stats.accuracy_difference(on["batch_group_2"], on[rival],
                                         what=f"test accuracy (alpha tuned), Batch Group Norm minus the "
                                              f"validation-best other row ({rival})")
    findings = [
        Finding.test("Inference example weighing rescues BN under non-i.i.d. batches", rescue, above=0,
                     evidence=f"BN off {rows[bn]['off']:.1f}% -> on {rows[bn]['on']:.1f}% (alpha "
                              f"{rows[bn]['alpha']:g}); thesis: 40.1% -> 62.2%"),
        Finding.test("Ghost BN with B' tuned on validation (alpha off) beats plain BN under non-i.i.d. batches",
                     ghost_gain, above=0,
                     evidence=f"{best_ghost} {rows[best_ghost]['off']:.1f}% vs BN {rows[bn]['off']:.1f}%; thesis: "
                              "best B' (4) 70.4% vs 40.1%"),
        Finding.test("Batch Group Norm (B' = 2) is the most accurate method under non-i.i.d. batches", bgn_gain,
                     above=0,
                     evidence=f"batch_group_2 on {rows['batch_group_2']['on']:.1f}% vs {rival} on "
                              f"{rows[rival]['on']:.1f}%; thesis: 75.2% off / 76.1% on vs at most 72.2% for the "
                              "others"),
    ]
    iid_correct = np.stack([r.test_correct for r in iid])
    penalty = stats.accuracy_difference(iid_correct, off[bn],
                                        what="test accuracy of BN, i.i.d. minus non-i.i.d. batches")
    checks = [
        Check(f"non-i.i.d. penalty large enough to measure (significant and >= {MIN_NON_IID_PENALTY_PTS:g} pts)",
              penalty.low > 0 and penalty.estimate >= MIN_NON_IID_PENALTY_PTS,
              f"BN i.i.d. {_pct(iid_correct):.2f}% vs non-i.i.d. {rows[bn]['off']:.2f}% (same budget): penalty "
              f"{penalty.text()} pts ({penalty.statistic}); thesis: CIFAR-100 BN 40.1% with non-i.i.d. batches; "
              "i.i.d. it gives no BN number (its Batch Group Norm: 76.2% i.i.d.)", regime=True),
        _moving_average_check(spec, _steps(runs[bn][0])),
    ]
    thesis = dict(thesis_rows("4.1"))
    for kind in ("batch_norm", "batch_renorm"):  # the thesis's B' = 128 rows beside our full-batch rows
        if f"{kind}_{b}" not in thesis and f"{kind}_128" in thesis:
            thesis[f"{kind}_{b}"] = thesis.pop(f"{kind}_128")
    k = spec.non_iid_classes
    table = Table(id="4.1", title=f"Test accuracy (%) with non-i.i.d. batches ({k} classes per batch); alpha off/on",
                  setting=f"{spec.describe()} (norm per row): batch {b} = {k} classes x {b // k} (a fresh draw every "
                          f"step, examples in random order within the batch, so ghost batches mix the batch's "
                          f"classes); rows as Table 4.1; "
                          f"{s.non_iid_seeds} seed(s) per row; alpha and B' tuned on the i.i.d. validation split; "
                          f"classes per batch chosen as few relative to the number of classes (thesis 4 of 100); "
                          f"scale {scale}",
                  columns=["off", "on", "alpha"], rows=rows, thesis=thesis,
                  thesis_setting="CIFAR-100, ResNet-18, batch 128 = 4 classes x 32 (BN / ReNorm rows: B' = 128, "
                                 "shown beside our full-batch rows)")
    return Output(tables=[table], findings=findings, checks=checks)


# ----------------------------------------------------------------- Fig A.1
def _bound_evaluation(probe_batches: tuple, probe_images: int):
    """`(evaluate, name)`: App. A.2's output range of the last BN layer per training-mode batch size."""

    def evaluate(ctx):
        import keras

        from tf_dlthesis.normalization import measure_output_range

        model = ctx.model
        norms = [layer for layer in model.layers if isinstance(layer, keras.layers.BatchNormalization)]
        if not norms:
            raise ValueError(f"App. A.2 needs a BN model. Received: norm={ctx.spec.norm!r}")
        xt = ctx.data.test[0]
        res = [measure_output_range(model, norms[-1], xt[:max(probe_images, 8 * b)], batch_size=b)
               for b in probe_batches]
        out = {k: np.array([r[k] for r in res], dtype=np.float64) for k in res[0]}
        out["layer"] = norms[-1].name
        return out

    # ":clean": inference passes with the trained moving statistics (earlier stored evaluations, without it, ran
    # them after training-mode passes had moved the statistics)
    return evaluate, "ch4_bound:" + ",".join(str(b) for b in probe_batches) + f":{probe_images}:clean"


def _inference_excess(excess: float, b: int) -> stats.Effect:
    """App. A.2's "inference outputs leave the training bound" at B values per statistic, from layer-wide extremes.

    Eq. 4.2's bound is per channel, beta +/- gamma sqrt(B - 1) with that channel's gamma and beta, but the stored
    measurement (`measure_output_range`) keeps only extremes over channels: the inference output's max and min, the
    widest channel's upper bound (`bound_max`) and lowest lower bound (`bound_min`). `excess` = max(inference_max -
    bound_max, bound_min - inference_min) is then a lower bound of the largest per-channel distance beyond the
    bound: positive, some channel certainly leaves its own bound; negative, every output lies inside the widest
    channel's bound, but a channel with a small gamma may still leave its own. The effect is that exact lower bound
    with no upper bound, so a negative one is inconclusive rather than "not reproduced".
    """
    return stats.Effect(excess, excess, float("inf"),
                        f"largest distance of an inference output beyond its channel's training bound at the smallest "
                        f"B = {b}, bounded below by the layer-wide extremes (inference extreme minus the widest "
                        f"channel's bound; negative: inside that bound) and not above (per-channel extremes not "
                        f"recorded)", 0)


@register("A.2", title="BN output range in training vs inference vs the sqrt(B-1) bound (App. A.2, Fig. A.1)",
          chapter="A", quick_minutes=0.15)
def appendix_a2(scale, dataset, store, *, out=None):
    import matplotlib.pyplot as plt

    s = _setting(scale, dataset)
    spec = s.bound or s.base
    evaluate, name = _bound_evaluation(tuple(s.probe_batches), s.probe_images)
    [run] = train(spec, [0], store=store, evaluate=evaluate, evaluation=name, keep_weights=True)
    r = run.evaluation
    b_values = np.asarray(r["values_per_statistic"]).astype(int)
    logb = np.log2(b_values)
    fig, ax = plt.subplots(figsize=(5.5, 3.6))
    for key, style, label in (("bound", "k--", "bound beta +/- gamma sqrt(B-1)"), ("train", "o-C0", "training range"),
                              ("inference", "s-C3", "inference range")):
        ax.plot(logb, r[f"{key}_max"], style, label=label)
        ax.plot(logb, r[f"{key}_min"], style)
    ax.set_xlabel("log2(B), B = batch x spatial positions")
    ax.set_ylabel(f"output of the last BN layer ({r['layer']})")
    ax.set_title(f"Fig A.1 analogue: {spec.model} on {spec.dataset}", fontsize=9)
    ax.legend(fontsize=7)
    fig.tight_layout()
    within = np.asarray(r["train_within_bound"]).astype(bool)
    violations = stats.exact(float(np.sum(~within)),
                             f"probe batch sizes (of {len(within)}) at which some training-mode output leaves its "
                             "channel's bound, every output checked")
    excess = np.maximum(r["inference_max"] - r["bound_max"], r["bound_min"] - r["inference_min"])
    small = int(np.argmin(b_values))
    leave = _inference_excess(float(excess[small]), int(b_values[small]))
    findings = [
        Finding.test("Training-mode BN outputs never exceed beta +/- gamma sqrt(B-1) (App. A.1)", violations, below=0.5,
                     evidence="per-channel check at B = " + ", ".join(str(b) for b in b_values)
                              + "; thesis: nearly tight at small B (log2 B = 5: bound -5.57, observed -5.30)"),
        Finding.test("Inference outputs are not bounded: they leave the training bound at small B", leave, above=0,
                     evidence=f"inference outside the bound at B = {[int(b) for b in b_values[excess > 0]]}; "
                              "thesis: values fall outside the training bounds at small B (Fig. A.1)"),
    ]
    rows = {f"B={int(b)}": {"train_min": r["train_min"][i], "train_max": r["train_max"][i],
                            "inference_min": r["inference_min"][i], "inference_max": r["inference_max"][i],
                            "bound_min": r["bound_min"][i], "bound_max": r["bound_max"][i]}
            for i, b in enumerate(b_values)}
    table = Table(id="A.2", title=f"Output range of the last BN layer ({r['layer']})",
                  setting=f"{spec.describe()}, seed 0; training-mode probe batches {list(s.probe_batches)} of test "
                          f"images (B = batch x spatial positions); scale {scale}",
                  columns=["train_min", "train_max", "inference_min", "inference_max", "bound_min", "bound_max"],
                  rows=rows, thesis=None,
                  thesis_setting="CIFAR-10, 4x4 last BN layer, B varied by the ghost size: log2(B) = 5 bound -5.57, "
                                 "observed training min -5.30")
    check = Check("the probe reaches small B (<= 64 values per statistic: log2 B <= 6, within one doubling of the "
                  "thesis's log2 B = 5)",
                  int(b_values.min()) <= 64, f"smallest B = {int(b_values.min())}", regime=True)
    return Output(tables=[table], figures=[("fig_A_1", fig)], findings=findings, checks=[check])


# ----------------------------------------------------------------- App. A.3
#: App. A.3's variants: where the moving statistics come from.
PRECISE_BN_VARIANTS = ("ema", "train_augmented", "train_plain", "test")


def _precise_bn_evaluation(seed: int = 0):
    """`(evaluate, name)`: test predictions with the moving statistics recomputed from different data.

    Variants (`PRECISE_BN_VARIANTS`): ``ema`` the training-time exponential
    moving averages; ``train_augmented`` / ``train_plain`` / ``test`` the
    exact averages of the per-batch statistics (`update_bn_statistics`,
    Precise BN) over the training images with the training augmentation (one
    fresh draw), without it, and over the test images (labels unused). Every
    variant starts from the trained weights; batches are the training batch
    size, in a fixed shuffled order (training batches are i.i.d.).
    """
    from tf_dlthesis import data as data_lib
    from tf_dlthesis.normalization import update_bn_statistics

    def evaluate(ctx):
        import tensorflow as tf

        spec, model = ctx.spec, ctx.model
        saved = model.get_weights()
        (x_train, _), (xt, yt) = ctx.data.train, ctx.data.test
        rng = np.random.default_rng(seed)
        x_train = ctx.test_inputs(x_train[rng.permutation(len(x_train))])  # as the model saw them (BC+ centring)
        sources = {"ema": None, "train_plain": x_train, "test": ctx.test_inputs(xt[rng.permutation(len(xt))])}
        if spec.augment:
            aug = data_lib.standard_augment(tf.constant(ctx.data.train[0]), seed=seed + 3, pad=spec.resolved_pad,
                                            flip=spec.resolved_flip)
            sources["train_augmented"] = ctx.test_inputs(np.asarray(aug)[rng.permutation(len(x_train))])
        x_eval = ctx.test_inputs(xt)
        out = {"variants": np.array([v for v in PRECISE_BN_VARIANTS if v in sources])}
        correct, ce = [], []
        try:
            for variant in out["variants"]:
                model.set_weights(saved)
                if sources[variant] is not None:
                    update_bn_statistics(model, sources[variant], batch_size=spec.batch_size)
                logits = predict_logits(model, x_eval)
                correct.append(logits.argmax(axis=1) == yt)
                ce.append(_per_example_ce(logits, yt))
        finally:
            model.set_weights(saved)
        out["test_correct"] = np.stack(correct).astype(np.int8)
        out["test_ce"] = np.stack(ce).astype(np.float32)
        return out

    return evaluate, f"ch4_precise_bn:{seed}"


@register("A.3", title="Precise BN: moving statistics recomputed on non-augmented training data and on test data "
                       "(App. A.3)", chapter="A", quick_minutes=0.1)
def appendix_a3(scale, dataset, store, *, out=None):
    s = _setting(scale, dataset)
    spec = s.precise_bn_spec()
    evaluate, name = _precise_bn_evaluation()
    # keep_weights: the base model's store record is shared with Fig. 4.1 / App. A.2
    runs = train(spec, list(range(s.seeds)), store=store, evaluate=evaluate, evaluation=name, keep_weights=True)
    variants = [str(v) for v in runs[0].evaluation["variants"]]

    def stack(variant, what="test_correct"):
        i = variants.index(variant)
        return np.stack([np.asarray(r.evaluation[what])[i].astype(np.float64) for r in runs])

    rows = {v: {"accuracy_pct": _pct(stack(v)), "cross_entropy": float(np.mean(stack(v, "test_ce")))}
            for v in variants}
    plain_acc = stats.accuracy_difference(stack("train_plain"), stack("ema"),
                                          what="test accuracy, statistics recomputed on non-augmented training "
                                               "images minus training-time moving averages")
    plain_ce = stats.accuracy_difference(stack("train_plain", "test_ce"), stack("ema", "test_ce"),
                                         what="test cross-entropy, recomputed on non-augmented training images minus "
                                              "training-time moving averages", unit="nats", scale=1.0)
    test_acc = stats.accuracy_difference(stack("test"), stack("train_plain"),
                                         what="test accuracy, statistics recomputed on the test images minus on the "
                                              "non-augmented training images")
    evidence = ", ".join(f"{v} {rows[v]['accuracy_pct']:.2f}% / CE {rows[v]['cross_entropy']:.4f}" for v in variants)
    findings = [
        Finding.test("Moving statistics recomputed on non-augmented training data lower test accuracy (a negative "
                     "result: no gain)", plain_acc, below=0,
                     evidence=f"{evidence}; thesis: CIFAR-100 about -0.5% (extra epochs at learning rate 0)"),
        Finding.test("Moving statistics recomputed on non-augmented training data mildly lower the test "
                     "cross-entropy", plain_ce, below=0,
                     evidence=f"{evidence}; thesis: 'mild improvements to the test set cross-entropy'"),
        Finding.test("Moving statistics recomputed on the test set (no labels) perform like those from the training "
                     "data (within 0.1 pts of accuracy)", test_acc, above=-0.1, below=0.1,
                     evidence=f"{evidence}; thesis: within 0.1% accuracy and 1% cross-entropy"),
    ]
    for v in variants:
        rows[v]["vs_ema_pts"] = 100.0 * float(np.mean(stack(v) - stack("ema")))
    table = Table(id="A.3", title="Test accuracy (%) and cross-entropy with moving statistics from different data",
                  setting=f"{spec.describe()}; {len(runs)} seed(s); rows: training-time moving averages (ema) and "
                          f"exact averages of the per-batch statistics (Precise BN, `update_bn_statistics`, batches "
                          f"of {spec.batch_size}) over the augmented training images, the non-augmented ones and the "
                          f"test images; scale {scale}",
                  columns=["accuracy_pct", "cross_entropy", "vs_ema_pts"], rows=rows, thesis=None,
                  thesis_setting="CIFAR-100 ResNet-18: non-augmented recomputation about -0.5% accuracy, mildly "
                                 "lower cross-entropy; test-set statistics within 0.1% / 1% of training ones")
    checks = [Check("the model trains with data augmentation (the thesis's setting: statistics of non-augmented "
                    "images differ from training's)", bool(spec.augment), f"augment={spec.augment}", regime=True),
              _moving_average_check(spec, _steps(runs[0]))]
    return Output(tables=[table], findings=findings, checks=checks)


# ----------------------------------------------------------------- Fig. 4.5
def _all_improvements_spec(s: Setting, spec: TrainSpec) -> TrainSpec:
    """Sec. 4.4.2's "all improvements" at ``spec``'s batch size B: Ghost BN (B' < B, B >= 4) or Batch Group
    Norm (B = 2), weight decay on gamma/beta (centre 0), inference example weighing (alpha tuned later)."""
    b = spec.batch_size
    if b <= 2:
        norm = f"batch_group:{s.groups}"
    else:
        ghost = s.ghost_for(b)
        norm = "batch" if ghost >= b else f"ghost:{ghost}"
    return spec.replace(norm=norm, norm_weight_decay=(s.norm_decay, 0.0))


def _small_batch_check(runs: dict, small: int, large: int, s: Setting) -> Check:
    """Fig. 4.5's small-batch regime: BN loses accuracy at B = `small` beyond what a batch-independent norm loses.

    The B = small runs use another spec (Sec. 4.3.4's: fewer images, fewer epochs), so BN's drop from B = large
    mixes batch size with data and length. Group Norm, which does not depend on the batch, is the control: the
    check is the difference in differences, (BN - GN) at B = large minus at B = small, significantly > 0.

    It is the regime of the B = small finding only (`regime=False`; `fig_4_5` marks that finding not comparable
    when the check fails): the thesis attributes the small-batch gain to BN's small-batch weakness (Sec. 4.3.4,
    "it still suffers when not enough examples are available"), but "for medium to large batch sizes (B >= 4),
    improvements are driven by the combination of Ghost Batch Normalization, Inference Example Weighing, and
    weight decay" (Sec. 4.4.2), regularizers whose regime is an overfitting model (`_overfit_check`).
    """
    bn_l, bn_s, gn_l, gn_s = (_off(runs[b][k]) for b, k in ((large, "bn"), (small, "bn"), (large, "gn"), (small, "gn")))
    degrade = stats.accuracy_difference((bn_l + gn_s) / 2, (bn_s + gn_l) / 2, what=(
        f"test accuracy, (BN - GN) at B = {large} minus (BN - GN) at B = {small}")).scaled(2.0)
    return Check(f"BN degrades at small batch size beyond what the B = {small} setting costs a batch-independent "
                 f"norm (BN's drop from B = {large} to B = {small} significantly larger than Group Norm's: the regime "
                 f"of the small-batch improvements, i.e. of the B = {small} finding)", bool(degrade.low > 0),
                 f"BN {_pct(bn_l):.2f}% -> {_pct(bn_s):.2f}%, GN {_pct(gn_l):.2f}% -> {_pct(gn_s):.2f}% from B = "
                 f"{large} to B = {small} (B = {small} is Sec. 4.3.4's spec: {s.small_batch.train_examples or 'all'} "
                 f"training images, {s.small_batch.epochs} epochs); BN's extra drop {degrade.text()} pts",
                 regime=False)


@register("fig4.5", title="All improvements vs BN vs GN across batch sizes (Fig. 4.5)", chapter=4, quick_minutes=1.1)
def fig_4_5(scale, dataset, store, *, out=None):
    import matplotlib.pyplot as plt

    s = _setting(scale, dataset)
    specs = s.batch_size_specs()
    sizes = list(specs)
    runs = {}
    for b, spec in specs.items():
        runs[b] = {"bn": _runs(spec.replace(norm="batch"), s.seeds, store),
                   "gn": _runs(spec.replace(norm=f"ew_group:{s.groups}"), s.seeds, store),
                   "ours": _runs(_all_improvements_spec(s, spec), s.seeds, store)}
    small, large = min(sizes), max(sizes)
    small_batch = _small_batch_check(runs, small, large, s)
    rows, findings = {}, []
    ideal = _off(runs[large]["bn"])
    for b in sizes:
        r = runs[b]
        acc = {"bn": _off(r["bn"]), "gn": _off(r["gn"]), "ours": _tuned_acc(r["ours"])}
        val = {k: float(np.mean([x.evaluation["val_accuracy"][0] for x in r[k]])) for k in ("bn", "gn")}
        rival = max(("bn", "gn"), key=lambda k: val[k])  # the better baseline on validation (ties: BN)
        ours_spec = _all_improvements_spec(s, specs[b])
        rows[f"B={b}"] = {"bn_pct": _pct(acc["bn"]), "gn_pct": _pct(acc["gn"]), "ours_pct": _pct(acc["ours"]),
                          "ideal_bn_pct": _pct(ideal),
                          "ours_alpha": float(np.mean([x.evaluation["best_accuracy_alpha"] for x in r["ours"]]))}
        gain = stats.accuracy_difference(acc["ours"], acc[rival],
                                         what=f"test accuracy at B = {b}, all improvements ({ours_spec.norm}, L2 on "
                                              f"gamma/beta, alpha tuned) minus {rival.upper()} (validation-best "
                                              "baseline)")
        claim = f"At batch size B = {b}, all improvements together beat the better of BN and GN"
        evidence = (f"BN {rows[f'B={b}']['bn_pct']:.2f}%, GN {rows[f'B={b}']['gn_pct']:.2f}%, all improvements "
                    f"{rows[f'B={b}']['ours_pct']:.2f}% ({ours_spec.norm}); thesis: CIFAR-100 improvements over the "
                    "best baseline at every batch size; Caltech-256 +6.5% over BN and +5.9% over GN at B = 2")
        if b == small and not small_batch.passed:  # only the small-batch finding assumes BN's small-batch loss
            findings.append(Finding.not_comparable(
                claim, f"the thesis's regime was not reached ({small_batch.name}: {small_batch.detail}); measured: "
                       f"{evidence}", gain, above=0))
        else:
            findings.append(Finding.test(claim, gain, above=0, evidence=evidence))
    checks = [small_batch, _overfit_check(f"The BN model at B = {large}", runs[large]["bn"])]
    fig, ax = plt.subplots(figsize=(5, 3.4))
    for key, style, label in (("bn_pct", "o-C0", "Batch Norm"), ("gn_pct", "s-C2", "Group Norm"),
                              ("ours_pct", "^-C3", "all improvements")):
        ax.plot(sizes, [rows[f"B={b}"][key] for b in sizes], style, label=label)
    ax.axhline(rows[f"B={large}"]["ideal_bn_pct"], color="C0", linestyle=":", label=f"idealized BN (B = {large})")
    ax.set_xscale("log", base=2)
    ax.set_xlabel("batch size B")
    ax.set_ylabel("test accuracy (%)")
    ax.set_title(f"Fig 4.5 analogue: {s.base.model} on {s.base.dataset}", fontsize=9)
    ax.legend(fontsize=7)
    fig.tight_layout()
    table = Table(id="fig4.5", title="Test accuracy (%) across batch sizes: BN, GN and all improvements together",
                  setting=f"{s.base.describe()} with batch size B in {sizes} (peak rate scaled by sqrt(B / "
                          f"{s.base.batch_size}); B = {s.small_batch.batch_size}: the Sec. 4.3.4 spec; epochs per B "
                          f"{ {b: sp.epochs for b, sp in specs.items()} }); all improvements = Ghost BN with B' = "
                          f"{ {b: s.ghost_for(b) for b in sizes if b > 2} } (B > 2) or Batch Group Norm with "
                          f"{s.groups} groups (B = 2), L2 {s.norm_decay:g} on gamma/beta, alpha tuned on validation; "
                          f"BN at alpha = 0, GN at alpha = 1 (plain); idealized BN = BN at B = {large}; "
                          f"{s.seeds} seed(s); scale {scale}",
                  columns=["bn_pct", "gn_pct", "ours_pct", "ideal_bn_pct", "ours_alpha"], rows=rows, thesis=None,
                  thesis_setting="Fig. 4.5 is a plot (CIFAR-100 ResNet-18, Caltech-256 Inception-v3; no table)")
    return Output(tables=[table], figures=[("fig_4_5", fig)], findings=findings, checks=checks)
