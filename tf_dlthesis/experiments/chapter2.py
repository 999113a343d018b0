"""Chapter 2: mixed-example data augmentation - Tables 2.1-2.3 and Figure 2.2.

Every table trains the baseline (standard augmentation only) and models trained on
mixed examples: the shuffled, pad-crop(-flip) augmented stream is mixed in pair mode
(consecutive examples paired, each used once, `mix_dataset`), i.e. mixing *after*
standard augmentation as in the thesis (Sec. 2.4.1). Runs are stored in one
namespace (``"ch2.runs"``) keyed by their full setting, so a run trained for one
table is reused by another with the same setting and a killed `reproduce` resumes.

Quick scale (digits, 2 CPU cores): small CNN, 8 epochs, k = 2 runs per method;
Tables 2.2 (CIFAR-100) and 2.3 (Caltech-256) cannot be run at this scale: they reuse
the digits runs and their dataset-specific claims are reported as "not comparable at
this scale". Full scale (GPU, never run here): pre-activation ResNet-18 on CIFAR-10 /
CIFAR-100 with the thesis's step schedule (batch 128, 0.01 warm-up for 400 steps,
0.1, /10 at 32k, 48k, 70k steps; 80k steps = 205 epochs), weight decay 1e-4 for
mixing / 5e-4 baseline on CIFAR-10 and 5e-4 everywhere on CIFAR-100, 3 runs, and the
thesis's stabilisation: 20 copies trained for 3 epochs, the 3 with the lowest loss
continued: about 3.3 full-run equivalents per method, i.e. ~6.6 GPU-hours per method at the
thesis's 2 h per ResNet-18 run, ~120 GPU-hours per table. Caltech-256 is not in
tensorflow-datasets, so Table 2.3 at full scale uses tfds "caltech101" at 299 px with a
pre-activation ResNet-18 (Inception-v3 is not in `models.build`); the table states this.

Reference: Thesis Ch. 2; Summers & Dinneen, WACV 2019, arXiv:1805.11272.
"""

from __future__ import annotations

import dataclasses

import keras
import numpy as np
import tensorflow as tf

from tf_dlthesis import data, models, runtime
from tf_dlthesis.augment import DISPLAY_NAMES, METHODS, mix_dataset, plot_methods
from tf_dlthesis.experiments.registry import (Finding, Output, Table, fit_callbacks, register,
                                              thesis_rows)

STORE_KEY = "ch2.runs"
COLUMN = "error_pct"
ROWS_2_1 = ("baseline",) + tuple(m for m in METHODS if m != "bc")
ROWS_2_3 = ("baseline", "mixup", "bc_plus", "vh_mixup", "vh_bc_plus")
NON_LINEAR = ("vertical_concat", "horizontal_concat", "mixed_concat", "random_2x2",
              "random_square", "random_column_interval", "random_row_interval", "random_rows",
              "random_columns", "random_pixels", "random_elements")


@dataclasses.dataclass(frozen=True)
class Setting:
    """One training setting (hashable; its dict is part of the store key)."""

    dataset: str = "digits"
    model: str = "cnn"
    image_size: int | None = None
    epochs: int = 8
    batch_size: int = 64
    learning_rate: float = 0.05
    schedule: str = "cosine"            # or "thesis" (warm-up + step decays, Sec. 2.4.1)
    weight_decay_mix: float = 5e-4
    weight_decay_base: float = 5e-4
    flip: bool = False
    runs: int = 2
    select_from: int = 0                # > 0: train this many copies for `select_epochs`,
    select_epochs: int = 3              # continue the `runs` with the lowest loss
    bn_momentum: float = 0.99           # quick scale: 0.9, so the moving statistics
    model_kwargs: tuple = ()            # settle within a few hundred steps

    def config(self, method) -> dict:
        out = dataclasses.asdict(self)
        out.pop("runs")
        out["model_kwargs"] = [list(kv) for kv in self.model_kwargs]
        out["method"] = method
        return out


def _setting(table: str, scale: str, dataset: str) -> Setting:
    if scale == "quick":
        return Setting(dataset=dataset, bn_momentum=0.9, model_kwargs=(("filters", (16, 32)),))
    if table == "2.3":
        return Setting(dataset=dataset if dataset != "digits" else "caltech101", model="preact_resnet18",
                       image_size=299 if dataset != "digits" else None, epochs=60, batch_size=64,
                       learning_rate=0.03, schedule="thesis", weight_decay_mix=4e-5,
                       weight_decay_base=4e-5, flip=True, runs=1)
    full_ds = dataset if dataset != "digits" else ("cifar10" if table == "2.1" else "cifar100")
    mix_wd = 1e-4 if full_ds == "cifar10" else 5e-4
    return Setting(dataset=full_ds, model="preact_resnet18", epochs=205, batch_size=128,
                   learning_rate=0.1, schedule="thesis", weight_decay_mix=mix_wd,
                   weight_decay_base=5e-4, flip=True, runs=3, select_from=20, select_epochs=3)


def _schedule(setting: Setting, steps_per_epoch: int):
    total = max(1, setting.epochs * steps_per_epoch)
    if setting.schedule == "cosine":
        return keras.optimizers.schedules.CosineDecay(setting.learning_rate, decay_steps=total)
    # Sec. 2.4.1: 0.01 for 400 warm-up steps, then 0.1, /10 after 32k, 48k, 70k steps
    # (boundaries scaled with the run length when it is not the thesis's 80k steps).
    scale = total / 80000.0
    bounds = [max(1, int(b * scale)) for b in (400, 32000, 48000, 70000)]
    lr = setting.learning_rate
    return keras.optimizers.schedules.PiecewiseConstantDecay(
        bounds, [lr / 10, lr, lr / 10, lr / 100, lr / 1000])


def _stream(x, y, setting: Setting, method, seed: int, start_epoch: int, end_epoch: int):
    """Standard-augmented shuffled stream, then pair-mode mixing (Sec. 2.4.1)."""
    pad = max(1, x.shape[1] // 8)
    if method == "baseline":
        return data.training_dataset(x, y, batch_size=setting.batch_size, shuffle_seed=seed,
                                     augment_seed=seed + 1, epochs=end_epoch,
                                     start_epoch=start_epoch, pad=pad, flip=setting.flip)
    # Pair mode reads the stream twice per epoch (N examples in, N mixed out).
    stream = data.training_dataset(x, y, batch_size=256, shuffle_seed=seed,
                                   augment_seed=seed + 1, epochs=2 * end_epoch,
                                   start_epoch=2 * start_epoch, pad=pad,
                                   flip=setting.flip).unbatch()
    return mix_dataset(stream, method, seed=[seed, 2], epoch=start_epoch, mode="pair",
                       batch_size=setting.batch_size, preserve_length=False).prefetch(2)


def _steps(setting: Setting, method, n: int) -> int:
    # The mixed stream is continuous (N pairs per epoch): use whole batches only.
    return data.steps_per_epoch(n, setting.batch_size, drop_remainder=method != "baseline")


_COMPILED: dict = {}


def _build(setting: Setting, method, x, num_classes, seed):
    """A compiled model with fresh weights for `seed`.

    One compiled model per (setting, weight decay, shape) is reused across runs and
    methods - its weights are replaced by a freshly seeded `models.build` and its
    optimizer state is zeroed - so Keras traces the train/predict functions once per
    table instead of once per run (most of a quick-scale run's cost).
    """
    wd = setting.weight_decay_base if method == "baseline" else setting.weight_decay_mix
    steps = _steps(setting, method, len(x))
    norm = "batch"
    if setting.bn_momentum != 0.99:
        def norm(name):
            return keras.layers.BatchNormalization(momentum=setting.bn_momentum, name=name)
    fresh = models.build(setting.model, x.shape[1:], num_classes, norm=norm, seed=seed,
                         **dict(setting.model_kwargs))
    key = (setting, wd, steps, tuple(x.shape[1:]), num_classes)
    model = _COMPILED.get(key)
    if model is None:
        model = fresh
        model.compile(
            optimizer=keras.optimizers.SGD(_schedule(setting, steps), momentum=0.9,
                                           nesterov=True, weight_decay=wd or None),
            loss=keras.losses.CategoricalCrossentropy(from_logits=True),
            metrics=["accuracy"], jit_compile=runtime.jit_compile())
        if len(_COMPILED) > 8:
            _COMPILED.clear()
        _COMPILED[key] = model
        return model, steps
    model.set_weights(fresh.get_weights())
    for v in model.optimizer.variables:
        v.assign(tf.zeros_like(v))
    return model, steps


def _fit(model, setting, method, x, y, seed, start, end, steps, run_name):
    ds = _stream(x, y, setting, method, seed, start, end)
    hist = model.fit(ds, epochs=end, initial_epoch=start, steps_per_epoch=steps, verbose=0,
                     callbacks=fit_callbacks(run_name))
    return float(hist.history["loss"][-1])


def _arrays(setting: Setting):
    (x, y) = data.load_arrays(setting.dataset, "train", image_size=setting.image_size)
    (xt, yt) = data.load_arrays(setting.dataset, "test", image_size=setting.image_size)
    k = int(max(y.max(), yt.max()) + 1)
    return x, np.eye(k, dtype=np.float32)[y], xt, yt, k


def _evaluate(model, xt, yt, method) -> float:
    if method in ("bc_plus", "vh_bc_plus"):
        # BC+ trains on per-image zero-mean inputs, so test images are zero-meaned too
        # (as in the authors' preprocessing).
        xt = xt - xt.mean(axis=(1, 2, 3), keepdims=True)
    logits = model.predict(xt, batch_size=512, verbose=0)
    return float(100.0 * np.mean(np.argmax(logits, 1) != yt))


def train_runs(setting: Setting, method: str, store, arrays=None) -> list:
    """Test error (%) of `setting.runs` runs of `method` (stored; resumed from the store).

    With `select_from > 0` (the thesis's stabilisation, Sec. 2.4.1), `select_from`
    copies are trained for `select_epochs` epochs and the `runs` with the lowest
    training loss are continued to `epochs`.
    """
    config = setting.config(method)
    if all(store.has(STORE_KEY, config, r) for r in range(setting.runs)):
        return [store.get(STORE_KEY, config, r)["error_pct"] for r in range(setting.runs)]
    x, y, xt, yt, k = arrays if arrays is not None else _arrays(setting)
    name = f"ch2-{setting.dataset}-{method}"
    if setting.select_from > 0:
        candidates = []
        for c in range(setting.select_from):
            model, steps = _build(setting, method, x, k, seed=c)
            loss = _fit(model, setting, method, x, y, c, 0, setting.select_epochs, steps,
                        f"{name}-cand{c}")
            state = (model.get_weights(), [v.numpy() for v in model.optimizer.variables])
            candidates.append((loss if np.isfinite(loss) else np.inf, c, state))
        chosen = sorted(candidates, key=lambda t: t[:2])[: setting.runs]
        plan = [(c, state, setting.select_epochs) for _, c, state in chosen]
    else:
        plan = [(r, None, 0) for r in range(setting.runs)]
    errors = []
    for run, (seed, state, start) in enumerate(plan):
        result = store.get(STORE_KEY, config, run)
        if result is None:
            model, steps = _build(setting, method, x, k, seed=seed)
            if state is not None:
                model.set_weights(state[0])
                for v, value in zip(model.optimizer.variables, state[1]):
                    v.assign(value)
            loss = _fit(model, setting, method, x, y, seed, start, setting.epochs, steps,
                        f"{name}-{run}")
            result = {"error_pct": _evaluate(model, xt, yt, method), "train_loss": loss,
                      "seed": seed}
            store.record(STORE_KEY, config, run, result)
        errors.append(result["error_pct"])
    return errors


def _table(table_id, title, setting, rows_wanted, store, thesis_setting):
    arrays = None
    rows, spread = {}, {}
    for method in rows_wanted:
        config = setting.config(method)
        if arrays is None and not all(store.has(STORE_KEY, config, r)
                                      for r in range(setting.runs)):
            arrays = _arrays(setting)
        errs = train_runs(setting, method, store, arrays)
        rows[method] = {COLUMN: float(np.mean(errs))}
        spread[method] = float(np.std(errs))
    model = setting.model + (f"{dict(setting.model_kwargs)}" if setting.model_kwargs else "")
    sel = (f", best {setting.runs} of {setting.select_from} copies after "
           f"{setting.select_epochs} epochs" if setting.select_from else "")
    table = Table(
        id=table_id, title=title,
        setting=(f"{setting.dataset}, {model}, {setting.epochs} epochs, batch "
                 f"{setting.batch_size}, {setting.schedule} LR, pair-mode mixing after "
                 f"pad-crop augmentation, mean of {setting.runs} run(s){sel}"),
        columns=[COLUMN], rows=rows, thesis=thesis_rows(table_id),
        thesis_setting=thesis_setting)
    return table, rows, spread


def _err(rows, m):
    return rows[m][COLUMN]


def _noise(spread):
    return float(np.mean(list(spread.values())))


@register("2.1", title="Error of the baseline and every mixing method", chapter=2,
          quick_minutes=3.5)
def table_2_1(scale, dataset, store, *, out=None) -> Output:
    setting = _setting("2.1", scale, dataset)
    table, rows, spread = _table(
        "2.1", "Test error (%) of the baseline and every mixed-example method", setting,
        ROWS_2_1, store, "CIFAR-10, pre-activation ResNet-18, mean of 3 runs")
    base = _err(rows, "baseline")
    better = [m for m in NON_LINEAR if _err(rows, m) < base]
    vh_best = min(_err(rows, "vh_mixup"), _err(rows, "vh_bc_plus"))
    findings = [
        Finding.check("Linearity is not required: most non-linear methods beat the baseline",
                      len(better) > len(NON_LINEAR) / 2,
                      f"{len(better)}/{len(NON_LINEAR)} non-linear methods below the baseline's "
                      f"{base:.2f}% ({', '.join(DISPLAY_NAMES[m] for m in better) or 'none'}); "
                      f"mean run SD {_noise(spread):.2f} pts"),
        Finding.check("VH-Mixup / VH-BC+ beat mixup and BC+",
                      vh_best < min(_err(rows, "mixup"), _err(rows, "bc_plus")),
                      f"best VH {vh_best:.2f}% vs mixup {_err(rows, 'mixup'):.2f}%, "
                      f"BC+ {_err(rows, 'bc_plus'):.2f}%"),
        Finding.check("Rand. Pixels and Rand. Elems. are worse than the baseline",
                      _err(rows, "random_pixels") > base and _err(rows, "random_elements") > base,
                      f"pixels {_err(rows, 'random_pixels'):.2f}%, elements "
                      f"{_err(rows, 'random_elements'):.2f}%, baseline {base:.2f}%"),
    ]
    return Output(tables=[table], findings=findings)


@register("2.2", title="Error of every mixing method (CIFAR-100 setting)", chapter=2,
          quick_minutes=0.2)
def table_2_2(scale, dataset, store, *, out=None) -> Output:
    setting = _setting("2.2", scale, dataset)
    table, rows, spread = _table(
        "2.2", "Test error (%) of every mixed-example method (thesis: CIFAR-100)", setting,
        ROWS_2_1, store, "CIFAR-100, pre-activation ResNet-18, mean of 3 runs")
    comparable = setting.dataset.startswith("cifar100")
    if not comparable:
        table.setting += " (same runs as Table 2.1: CIFAR-100 is not run at this scale)"
    pairs = [("vertical_concat", "horizontal_concat"), ("random_rows", "random_columns"),
             ("random_row_interval", "random_column_interval")]
    wins = [r for r, c in pairs if _err(rows, r) < _err(rows, c)]
    base = _err(rows, "baseline")
    vh = _err(rows, "vh_mixup")
    findings = [
        Finding.check("Row-based methods beat their column-based counterparts",
                      len(wins) >= 2,
                      f"{len(wins)}/3 row variants better: " + "; ".join(
                          f"{DISPLAY_NAMES[r]} {_err(rows, r):.2f}% vs {DISPLAY_NAMES[c]} "
                          f"{_err(rows, c):.2f}%" for r, c in pairs)),
        Finding.check("VH-Mixup has the lowest error of all methods on CIFAR-100",
                      vh <= min(v[COLUMN] for v in rows.values()),
                      f"VH-Mixup {vh:.2f}%, best {min(rows, key=lambda m: _err(rows, m))} "
                      f"{min(v[COLUMN] for v in rows.values()):.2f}%, baseline {base:.2f}%",
                      comparable=comparable),
    ]
    return Output(tables=[table], findings=findings)


@register("2.3", title="Baseline, mixup, BC+, VH-Mixup, VH-BC+ (Caltech-256 setting)",
          chapter=2, quick_minutes=0.1)
def table_2_3(scale, dataset, store, *, out=None) -> Output:
    setting = _setting("2.3", scale, dataset)
    title = "Test error (%) of the best mixing methods (thesis: Caltech-256, Inception-v3)"
    table, rows, spread = _table("2.3", title, setting, ROWS_2_3, store,
                                 "Caltech-256 (40/10/30 per class), Inception-v3, single run")
    if scale == "full" and setting.dataset == "caltech101":
        table.setting += " (Caltech-101 and a ResNet-18 stand in for Caltech-256 / Inception-v3)"
    comparable = "caltech" in setting.dataset
    if not comparable:
        table.setting += " (Caltech-256 / Inception-v3 are not run at this scale)"
    base = _err(rows, "baseline")
    mixed = [m for m in ROWS_2_3 if m != "baseline"]
    findings = [
        Finding.check("Every mixed-example method improves on the baseline",
                      all(_err(rows, m) < base for m in mixed),
                      ", ".join(f"{DISPLAY_NAMES[m]} {_err(rows, m):.2f}%" for m in mixed)
                      + f" vs baseline {base:.2f}%"),
        Finding.check("VH-BC+ is the best method on large natural images",
                      _err(rows, "vh_bc_plus") <= min(_err(rows, m) for m in mixed),
                      f"VH-BC+ {_err(rows, 'vh_bc_plus'):.2f}%, best "
                      f"{min(_err(rows, m) for m in mixed):.2f}%", comparable=comparable),
    ]
    return Output(tables=[table], findings=findings)


@register("fig2.2", title="Example output of every mixing method", chapter=2,
          quick_minutes=0.1)
def figure_2_2(scale, dataset, store, *, out=None) -> Output:
    x, y = data.load_arrays(dataset, "train")
    first = int(np.argmax(y == y[0]))
    second = int(np.argmax(y != y[0]))
    fig = plot_methods(x[first], x[second], METHODS, seed=0)
    return Output(figures=[("fig_2_2", fig)])
