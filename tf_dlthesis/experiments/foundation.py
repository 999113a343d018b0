"""Foundation experiments: baseline accuracy of the model zoo."""

from __future__ import annotations

from tf_dlthesis.experiments.registry import Finding, Output, Table, register
from tf_dlthesis.experiments.training import train_classifier

# Thesis baselines for the models it trains without any of its methods:
# pre-activation ResNet-18 on CIFAR-10 has 5.4% error (Table 2.1), ResNet-14 reaches
# 90.0% (Sec. 5.4).
_THESIS_BASELINE = {"preact_resnet18": 94.6, "preact_resnet14": 90.0}

_SETTINGS = {
    # scale -> (models, epochs, runs)
    "quick": (("linear", "mlp", "cnn", "preact_resnet6"), 15, 1),
    "full": (("linear", "mlp", "cnn", "preact_resnet6", "preact_resnet14", "preact_resnet18"), 200, 3),
}


@register("base", title="Baseline test accuracy of the model zoo", chapter=1, quick_minutes=0.8)
def baseline_accuracy(scale, dataset, store, *, out=None):
    names, epochs, runs = _SETTINGS[scale]
    image_size = None if dataset == "digits" or scale == "quick" else None
    rows = {}
    for name in names:
        accs = []
        for run in range(runs):
            config = {"dataset": dataset, "model": name, "epochs": epochs, "scale": scale}
            result = store.get("base", config, run)
            if result is None:
                _, result = train_classifier(name, dataset, epochs=epochs, seed=run, image_size=image_size, run_name=f"base-{name}-{run}")
                store.record("base", config, run, result)
            accs.append(100.0 * result["test_accuracy"])
        rows[name] = {"accuracy_pct": sum(accs) / len(accs)}
    thesis = {k: {"accuracy_pct": v} for k, v in _THESIS_BASELINE.items()}
    table = Table(
        id="base",
        title="Test accuracy (%) without any of the thesis's methods",
        setting=f"{dataset}, SGD+Nesterov, cosine LR, pad-crop augmentation, {epochs} epochs, mean of {runs} run(s), scale {scale}",
        columns=["accuracy_pct"],
        rows=rows,
        thesis=thesis,
        thesis_setting="CIFAR-10: pre-activation ResNet-18 (Table 2.1 baseline), ResNet-14 (Sec. 5.4)",
    )
    best = max(rows, key=lambda k: rows[k]["accuracy_pct"])
    finding = Finding.check(
        "Convolutional models beat the linear model",
        rows["cnn"]["accuracy_pct"] > rows["linear"]["accuracy_pct"],
        f"cnn {rows['cnn']['accuracy_pct']:.1f}% vs linear {rows['linear']['accuracy_pct']:.1f}% (best: {best})",
    )
    return Output(tables=[table], findings=[finding])
