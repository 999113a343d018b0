"""Foundation experiment: baseline test accuracy of the model zoo.

Settings per scale (chosen from the thesis's setting before any result was seen):
quick = digits, 15 epochs, 1 seed; standard = Fashion-MNIST (all 60k training
images), 10 epochs, 2 seeds; full = CIFAR-10, 200 epochs, 3 seeds (thesis Sec. 2.4 / 5.3).
"""

from __future__ import annotations

import numpy as np

from tf_dlthesis.experiments import stats
from tf_dlthesis.experiments.registry import Check, Finding, Output, Table, register
from tf_dlthesis.experiments.training import TrainSpec, train

# Thesis baselines for the models it trains without any of its methods:
# pre-activation ResNet-18 on CIFAR-10 has 5.4% error (Table 2.1), ResNet-14 reaches
# 90.0% (Sec. 5.4).
_THESIS_BASELINE = {"preact_resnet18": 94.6, "preact_resnet14": 90.0}

_SETTINGS = {
    # scale -> (dataset, models, epochs, seeds)
    "quick": ("digits", ("linear", "mlp", "cnn", "preact_resnet6"), 15, 1),
    "standard": ("fashion_mnist", ("linear", "mlp", "cnn", "preact_resnet6"), 10, 2),
    "full": ("cifar10", ("linear", "mlp", "cnn", "preact_resnet6", "preact_resnet14", "preact_resnet18"), 200, 3),
}
_WIDTH = {"preact_resnet6": {"width_multiplier": 0.25}}  # a CPU-sized ResNet at quick/standard scale


def spec_for(scale: str, dataset: str, model: str) -> TrainSpec:
    """The baseline spec of one model at `scale`."""
    _, _, epochs, _ = _SETTINGS[scale]
    kwargs = {} if scale == "full" else _WIDTH.get(model, {})
    return TrainSpec(dataset=dataset, model=model, model_kwargs=kwargs, norm="none" if model == "linear" else "batch",
                     epochs=epochs, batch_size=128 if scale != "quick" else 64,
                     learning_rate=0.05, recipe="cosine")


@register("base", title="Baseline test accuracy of the model zoo", chapter=1, quick_minutes=0.8)
def baseline_accuracy(scale, dataset, store, *, out=None):
    default_dataset, names, epochs, n_seeds = _SETTINGS[scale]
    dataset = dataset or default_dataset
    seeds = list(range(n_seeds))
    runs = {name: train(spec_for(scale, dataset, name), seeds, store=store) for name in names}
    rows = {}
    for name, rs in runs.items():
        acc = stats.proportion(np.stack([r.test_correct for r in rs]))
        rows[name] = {"accuracy_pct": acc.estimate, "ci_low": acc.low, "ci_high": acc.high,
                      "train_accuracy_pct": 100 * float(np.mean([r.metrics["train_accuracy"] for r in rs]))}
    thesis = {k: {"accuracy_pct": v} for k, v in _THESIS_BASELINE.items()}
    spec = spec_for(scale, dataset, "cnn")
    table = Table(
        id="base",
        title="Test accuracy (%) without any of the thesis's methods (95% Wilson interval)",
        setting=f"{spec.describe()} (per model: norm 'none' for linear); {len(seeds)} seed(s) per model; scale {scale}",
        columns=["accuracy_pct", "ci_low", "ci_high", "train_accuracy_pct"],
        rows=rows,
        thesis=thesis,
        thesis_setting="CIFAR-10: pre-activation ResNet-18 (Table 2.1 baseline), ResNet-14 (Sec. 5.4)",
    )
    correct = {name: np.stack([r.test_correct for r in rs]) for name, rs in runs.items()}
    effect = stats.accuracy_difference(correct["cnn"], correct["linear"], what="test accuracy, CNN minus linear")
    finding = Finding.test("Convolutional models beat the linear model", effect, above=0,
                           evidence=f"cnn {rows['cnn']['accuracy_pct']:.1f}% vs linear {rows['linear']['accuracy_pct']:.1f}%")
    best_train = max(rows.values(), key=lambda r: r["train_accuracy_pct"])["train_accuracy_pct"]
    check = Check("models learn the training set", best_train > 90.0,
                  "training accuracy (%): " + ", ".join(f"{k} {v['train_accuracy_pct']:.1f}" for k, v in rows.items()))
    return Output(tables=[table], findings=[finding], checks=[check])
