"""The thesis's training recipes: named optimizer settings and learning-rate schedules.

`recipes.get(name)` returns a `Recipe`; `recipe.optimizer(steps_per_epoch, epochs)`
builds the Keras optimizer with the recipe's serializable schedule. Every recipe
cites the section it is read from and lists the settings the thesis does not state
(`assumed`), so nothing is passed off as the thesis's when it is a guess.

| name | thesis | schedule |
|---|---|---|
| `cosine` | (library default) | SGD + Nesterov 0.9, cosine decay from `learning_rate` |
| `constant` | (library option) | a constant `learning_rate`, no weight decay (e.g. with Adam) |
| `ch2_cifar10_baseline`, `ch2_cifar10_mixing`, `ch2_cifar100` | Sec. 2.4.1 | batch 128; 0.01 for 400 steps, 0.1, /10 after 32k, 48k, 70k steps (80k steps); weight decay 5e-4 / 1e-4 / 5e-4 |
| `ch2_caltech_baseline`, `ch2_caltech_mixing` | Sec. 2.4.1 | batch 64; log-linear warm-up 3e-5 -> 0.03 over 2,000 steps; /10 after 20k, 26k (baseline) or 45k, 57k (mixing) steps; weight decay 4e-5 |
| `ch3_cifar` | Sec. 3.5.1 | batch 128; 5-epoch warm-up to 0.1, /10 at epochs 100, 150; 200 epochs (101 adversarial); momentum 0.9; weight decay 2e-4 |
| `ch3_svhn` | Sec. 3.5.1 | 0.001 for 5 epochs, 0.01 to epoch 80, 0.001 after; 101 epochs |
| `ch4_cifar100` | Sec. 4.4.1 (model only) | the Ch. 2 CIFAR-100 schedule: the thesis states no separate one for Ch. 4 |
| `ch5_cifar10` | Sec. 5.3.2 | batch 512; 3-epoch warm-up to 0.4, cosine decay over 500 epochs; momentum 0.9; weight decay 5e-4 |

Weight decay: the thesis's runs (TF-Slim, Sec. 2.4.1 / 3.5.1; PyTorch, Sec. 5.3.2) add
`weight_decay * w` to the gradient before the momentum step (L2 regularization), so at
momentum 0.9 the weights shrink about 10x more per step than under Keras's *decoupled*
`weight_decay` (`w -= lr * weight_decay * w`) with the same number. The thesis recipes
therefore use `weight_decay_mode="l2"` (`CoupledSGD`); the library's `cosine` default
keeps Keras's decoupled decay. Batch-norm gamma and beta are not decayed (Sec. 4.3.3
makes decaying them an option: `TrainSpec.norm_weight_decay`).

Run lengths: a recipe run for fewer (or more) epochs than the thesis's scales every
milestone by the same factor, so the shape of the schedule is kept. A step-based
recipe run within one epoch of the thesis's step count (e.g. 205 epochs of 391
steps for its 80,000) keeps the thesis's step milestones exactly.

Reference: C. Summers, *Understanding and Improving Deep Learning*, 2021,
Secs. 2.4.1, 3.5.1, 4.4.1, 5.3.2.
"""

from __future__ import annotations

import dataclasses
import difflib
import math

import keras
import numpy as np

from tf_dlthesis._checks import check_int

__all__ = ["CoupledSGD", "DecayAdam", "DecaySGD", "Recipe", "WarmupCosine", "WarmupPiecewiseConstant", "adam", "get", "names",
           "sgd"]

_WARMUPS = ("constant", "linear", "log_linear")
#: How weight decay enters the step: "l2" adds `wd * w` to the gradient (the thesis's TF-Slim and PyTorch
#: runs), "decoupled" shrinks the weights by `lr * wd` after the step (Keras's `weight_decay`).
WEIGHT_DECAY_MODES = ("l2", "decoupled")
#: Variables whose names contain these are never decayed (Sec. 4.3.3 decays gamma/beta only when asked).
NOT_DECAYED = ("gamma", "beta")


def _check_steps(name, value, minimum=0):
    return check_int(name, value, minimum)


def _is_real(value) -> bool:
    return not isinstance(value, (bool, np.bool_)) and isinstance(value, (int, float, np.integer, np.floating))


def _check_rate(name, value):
    if not _is_real(value) or not 0 < value < math.inf:
        raise ValueError(f"`{name}` must be a finite number > 0. Received: {name}={value!r}")
    return float(value)


def _check_decay(name, value):
    if not _is_real(value) or not 0 <= value < math.inf:
        raise ValueError(f"`{name}` must be a finite number >= 0. Received: {name}={value!r}")
    return float(value)


def _check_boundaries(boundaries, warmup_steps):
    if isinstance(boundaries, (str, bytes)) or not isinstance(boundaries, (list, tuple, np.ndarray)):
        raise TypeError(f"`boundaries` must be a list of step counts. Received: boundaries={boundaries!r}")
    bad = [b for b in boundaries if isinstance(b, (bool, np.bool_)) or not isinstance(b, (int, np.integer))]
    if bad:
        raise TypeError(f"`boundaries` must be ints (step counts). Received: boundaries={list(boundaries)!r}")
    out = [int(b) for b in boundaries]
    if any(b2 <= b1 for b1, b2 in zip(out, out[1:])):
        raise ValueError(f"`boundaries` must be increasing. Received: boundaries={out!r}")
    if out and out[0] <= warmup_steps:
        raise ValueError(f"`boundaries` must lie after the warm-up (> warmup_steps={warmup_steps}): a rate change "
                         f"inside the warm-up would not be seen. Received: boundaries={out!r}")
    return out


@keras.saving.register_keras_serializable(package="tf_dlthesis")
class WarmupPiecewiseConstant(keras.optimizers.schedules.LearningRateSchedule):
    """A warm-up phase, then piecewise-constant rates.

    For `step < warmup_steps` the rate is `warmup_start` (`warmup="constant"`),
    rises linearly from `warmup_start` to `values[0]` (`"linear"`) or
    geometrically (`"log_linear"`, a straight line in log-rate). From
    `warmup_steps` on it is `values[i]`, where `i` counts the `boundaries` that
    `step` has reached (`step >= boundary`).

    Example:

    >>> s = WarmupPiecewiseConstant(400, 0.01, [32000, 48000, 70000], [0.1, 0.01, 0.001, 1e-4])
    >>> [round(float(s(t)), 6) for t in (0, 399, 400, 32000)]
    [0.01, 0.01, 0.1, 0.01]

    Args:
        warmup_steps: length of the warm-up (0: none).
        warmup_start: rate at step 0.
        boundaries: increasing step counts at which the rate changes.
        values: `len(boundaries) + 1` rates; `values[0]` is the peak after warm-up.
        warmup: `"constant"`, `"linear"` or `"log_linear"`.

    Raises:
        ValueError: for non-increasing boundaries or boundaries inside the
            warm-up, a wrong number of values, rates that are not finite and
            positive, or an unknown warm-up kind.
        TypeError: boundaries that are not a list of ints.
    """

    def __init__(self, warmup_steps, warmup_start, boundaries, values, warmup="constant", name=None):
        self.warmup_steps = _check_steps("warmup_steps", warmup_steps)
        self.warmup_start = _check_decay("warmup_start", warmup_start)
        self.boundaries = _check_boundaries(boundaries, self.warmup_steps)
        if isinstance(values, (str, bytes)) or not isinstance(values, (list, tuple, np.ndarray)):
            raise TypeError(f"`values` must be a list of rates. Received: values={values!r}")
        self.values = [_check_rate("values", v) for v in values]
        if len(self.values) != len(self.boundaries) + 1:
            raise ValueError(f"`values` needs len(boundaries) + 1 = {len(self.boundaries) + 1} entries. "
                             f"Received: values={values!r}")
        if warmup not in _WARMUPS:
            raise ValueError(f"`warmup` must be one of {_WARMUPS}. Received: warmup={warmup!r}")
        if warmup == "log_linear" and self.warmup_start == 0:
            raise ValueError("A log-linear warm-up needs `warmup_start` > 0. Received: warmup_start=0")
        self.warmup = warmup
        self.name = name

    def __call__(self, step):
        step = keras.ops.cast(step, "float32")
        lr = keras.ops.convert_to_tensor(self.values[0], "float32")
        for boundary, value in zip(self.boundaries, self.values[1:]):
            lr = keras.ops.where(step >= float(boundary), value, lr)
        if self.warmup_steps:
            frac = step / float(self.warmup_steps)
            start, peak = self.warmup_start, self.values[0]
            if self.warmup == "constant":
                warm = keras.ops.convert_to_tensor(start, "float32") + 0.0 * step
            elif self.warmup == "linear":
                warm = start + (peak - start) * frac
            else:
                warm = keras.ops.exp(math.log(start) + (math.log(peak) - math.log(start)) * frac)
            lr = keras.ops.where(step < float(self.warmup_steps), warm, lr)
        return lr

    def get_config(self):
        return {"warmup_steps": self.warmup_steps, "warmup_start": self.warmup_start,
                "boundaries": list(self.boundaries), "values": list(self.values), "warmup": self.warmup,
                "name": self.name}


@keras.saving.register_keras_serializable(package="tf_dlthesis")
class WarmupCosine(keras.optimizers.schedules.LearningRateSchedule):
    """Linear warm-up from 0 to `peak` over `warmup_steps`, then cosine decay to 0 at `total_steps`.

    Example:

    >>> s = WarmupCosine(0.4, total_steps=1000, warmup_steps=100)
    >>> [round(float(s(t)), 4) for t in (0, 100, 550, 1000)]
    [0.0, 0.4, 0.2, 0.0]

    Args:
        peak: the maximum rate, reached at `warmup_steps`.
        total_steps: step at which the rate reaches 0.
        warmup_steps: linear warm-up length (0: start at `peak`).

    Raises:
        ValueError: a peak that is not finite and positive, a non-positive total,
            a warm-up not shorter than the run.
    """

    def __init__(self, peak, total_steps, warmup_steps=0, name=None):
        self.peak = _check_rate("peak", peak)
        self.total_steps = _check_steps("total_steps", total_steps, 1)
        self.warmup_steps = _check_steps("warmup_steps", warmup_steps)
        if self.warmup_steps >= self.total_steps:
            raise ValueError(f"`warmup_steps` must be < `total_steps`. Received: warmup_steps={warmup_steps}, "
                             f"total_steps={total_steps}")
        self.name = name

    def __call__(self, step):
        step = keras.ops.cast(step, "float32")
        span = float(self.total_steps - self.warmup_steps)
        progress = keras.ops.clip((step - self.warmup_steps) / span, 0.0, 1.0)
        lr = 0.5 * self.peak * (1.0 + keras.ops.cos(math.pi * progress))
        if self.warmup_steps:
            lr = keras.ops.where(step < float(self.warmup_steps), self.peak * step / float(self.warmup_steps), lr)
        return lr

    def get_config(self):
        return {"peak": self.peak, "total_steps": self.total_steps, "warmup_steps": self.warmup_steps,
                "name": self.name}


class _SavesDecayExclusions:
    """Keeps the names given to `exclude_from_weight_decay` through `get_config` / `from_config`.

    Keras 3 saves neither the names nor the variables excluded from weight decay,
    so a model saved and loaded again (`model.save`, `load_model`) would start
    decaying the batch-norm gamma and beta a recipe excludes (Sec. 4.3.3).
    Variables excluded by `var_list` cannot be saved by name and are not kept.
    """

    def __init__(self, *args, not_decayed=None, **kwargs):
        super().__init__(*args, **kwargs)
        self.not_decayed = None
        if not_decayed:
            self.exclude_from_weight_decay(var_names=list(not_decayed))

    def exclude_from_weight_decay(self, var_list=None, var_names=None):
        super().exclude_from_weight_decay(var_list=var_list, var_names=var_names)
        self.not_decayed = list(var_names) if var_names else None

    def get_config(self):
        return {**super().get_config(), "not_decayed": self.not_decayed}


@keras.saving.register_keras_serializable(package="tf_dlthesis")
class DecaySGD(_SavesDecayExclusions, keras.optimizers.SGD):
    """`keras.optimizers.SGD` (decoupled `weight_decay`) whose decay exclusions survive saving."""


@keras.saving.register_keras_serializable(package="tf_dlthesis")
class DecayAdam(_SavesDecayExclusions, keras.optimizers.Adam):
    """`keras.optimizers.Adam` (decoupled `weight_decay`) whose decay exclusions survive saving."""


@keras.saving.register_keras_serializable(package="tf_dlthesis")
class CoupledSGD(_SavesDecayExclusions, keras.optimizers.SGD):
    """SGD whose weight decay is L2 regularization: `l2 * w` joins the gradient before momentum.

    This is the convention of the thesis's TF-Slim runs (an L2 loss term) and of
    PyTorch's `SGD(weight_decay=...)`: with momentum `m` the weights shrink by
    about `lr * l2 / (1 - m)` per step. Keras's own `weight_decay` is decoupled
    (`w -= lr * weight_decay * w` after the step), about `1 - m` times weaker
    with the same number. Variables excluded through `exclude_from_weight_decay`
    get no decay, also after `model.save` and `keras.models.load_model` (Keras
    itself does not save the exclusions).

    Example:

    >>> opt = CoupledSGD(0.1, momentum=0.9, l2=5e-4)
    >>> opt.exclude_from_weight_decay(var_names=["gamma", "beta"])

    Args:
        learning_rate: a rate or a schedule.
        momentum, nesterov: as `keras.optimizers.SGD`.
        l2: the L2 coefficient (the thesis's "weight decay"), >= 0.
        **kwargs: other `keras.optimizers.Optimizer` options except `weight_decay`.

    Raises:
        ValueError: `l2` is not a finite number >= 0, or `weight_decay` is given too.
    """

    def __init__(self, learning_rate=0.01, momentum=0.0, nesterov=False, l2=0.0, name="coupled_sgd", **kwargs):
        if kwargs.get("weight_decay") is not None:
            raise ValueError("CoupledSGD takes its decay as `l2` (added to the gradient); `weight_decay` is Keras's "
                             f"decoupled decay. Received: weight_decay={kwargs['weight_decay']!r}")
        kwargs.pop("weight_decay", None)
        super().__init__(learning_rate, momentum=momentum, nesterov=nesterov, name=name, **kwargs)
        self.l2 = _check_decay("l2", l2)

    def update_step(self, gradient, variable, learning_rate):
        if self.l2 and self._use_weight_decay(variable):
            gradient = gradient + keras.ops.cast(self.l2, variable.dtype) * variable
        super().update_step(gradient, variable, learning_rate)

    def get_config(self):
        return {**super().get_config(), "l2": self.l2}


def sgd(learning_rate, *, momentum: float = 0.9, nesterov: bool = False, weight_decay: float = 0.0,
        weight_decay_mode: str = "l2", **kwargs):
    """An SGD optimizer with weight decay in the given mode, gamma/beta never decayed.

    Args:
        learning_rate: a rate or a schedule.
        momentum, nesterov: SGD's momentum settings.
        weight_decay: the decay coefficient (0: none).
        weight_decay_mode: `"l2"` (`CoupledSGD`: the thesis's convention) or
            `"decoupled"` (Keras's `SGD(weight_decay=...)`).
        **kwargs: other optimizer options (e.g. `global_clipnorm`).

    Returns:
        A `keras.optimizers.SGD`: a `CoupledSGD` for a non-zero `"l2"` decay, a
        `DecaySGD` for a non-zero `"decoupled"` one (both keep gamma and beta out of
        the decay through `model.save` / `load_model`).

    Raises:
        ValueError: unknown mode, or a decay that is not a finite number >= 0.
    """
    wd = _check_decay("weight_decay", weight_decay)
    if weight_decay_mode not in WEIGHT_DECAY_MODES:
        raise ValueError(f"`weight_decay_mode` must be one of {WEIGHT_DECAY_MODES}. "
                         f"Received: weight_decay_mode={weight_decay_mode!r}")
    if wd and weight_decay_mode == "l2":
        opt = CoupledSGD(learning_rate, momentum=momentum, nesterov=nesterov, l2=wd, **kwargs)
    elif wd:
        opt = DecaySGD(learning_rate, momentum=momentum, nesterov=nesterov, weight_decay=wd, **kwargs)
    else:
        opt = keras.optimizers.SGD(learning_rate, momentum=momentum, nesterov=nesterov, **kwargs)
    return _norm_params_not_decayed(opt, wd)


def adam(learning_rate, *, weight_decay: float = 0.0, **kwargs):
    """A Keras Adam optimizer with decoupled weight decay, gamma/beta never decayed.

    Args:
        learning_rate: a rate or a schedule.
        weight_decay: Keras's decoupled decay coefficient (0: none).
        **kwargs: other `keras.optimizers.Adam` options (e.g. `beta_1`, `global_clipnorm`).

    Raises:
        ValueError: a decay that is not a finite number >= 0.
    """
    wd = _check_decay("weight_decay", weight_decay)
    opt = DecayAdam(learning_rate, weight_decay=wd, **kwargs) if wd else keras.optimizers.Adam(learning_rate, **kwargs)
    return _norm_params_not_decayed(opt, wd)


def _norm_params_not_decayed(opt, weight_decay):
    if weight_decay:  # Sec. 4.3.3: gamma and beta are not decayed unless asked for
        opt.exclude_from_weight_decay(var_names=list(NOT_DECAYED))
    return opt


@dataclasses.dataclass(frozen=True)
class Recipe:
    """A named training recipe: optimizer, its settings and a learning-rate schedule.

    Attributes:
        name: the registry name.
        reference: the thesis section it is read from.
        schedule_kind: `"cosine"`, `"steps"` (milestones in steps) or `"epochs"`
            (milestones in epochs).
        learning_rate: the peak rate.
        warmup: warm-up length (steps or epochs, as the milestones) and kind.
        milestones: where the rate changes (steps or epochs).
        values: the rates from the end of the warm-up on (`schedule_kind` steps/epochs).
        epochs: the thesis's run length in epochs (`None`: given by steps).
        total_steps: the thesis's run length in steps (step-based recipes).
        batch_size: the thesis's batch size.
        momentum, nesterov, weight_decay: optimizer settings.
        weight_decay_mode: `"l2"`: the decay joins the gradient before momentum,
            as in the thesis's runs (`CoupledSGD`); `"decoupled"`: Keras's
            `weight_decay` (the weights shrink by `lr * weight_decay` after each
            step; about 10x weaker at momentum 0.9).
        assumed: settings the thesis does not state (documented guesses).
    """

    name: str
    reference: str
    schedule_kind: str
    learning_rate: float
    warmup: float = 0
    warmup_kind: str = "linear"
    warmup_start: float = 0.0
    milestones: tuple = ()
    values: tuple = ()
    epochs: int | None = None
    total_steps: int | None = None
    batch_size: int | None = None
    momentum: float = 0.9
    nesterov: bool = False
    weight_decay: float = 0.0
    weight_decay_mode: str = "l2"
    assumed: tuple = ()

    def __post_init__(self):
        if self.weight_decay_mode not in WEIGHT_DECAY_MODES:
            raise ValueError(f"`weight_decay_mode` must be one of {WEIGHT_DECAY_MODES}. "
                             f"Received: weight_decay_mode={self.weight_decay_mode!r}")
        _check_decay("weight_decay", self.weight_decay)

    def _factor(self, steps_per_epoch: int, epochs: int) -> float:
        """How much longer (or shorter) this run is than the thesis's (1 within an epoch of its step count)."""
        if self.schedule_kind == "steps" and self.total_steps:
            total = epochs * steps_per_epoch
            # whole epochs rarely add up to the thesis's steps: that rounding is not a longer run
            return 1.0 if abs(total - self.total_steps) < steps_per_epoch else total / self.total_steps
        if self.epochs:
            return epochs / self.epochs
        return 1.0

    @property
    def _length_free(self) -> bool:
        """Whether the schedule does not depend on the run's length (one constant rate: no warm-up, no milestones)."""
        return self.schedule_kind != "cosine" and not self.milestones and not self.warmup

    def schedule(self, steps_per_epoch: int, epochs: int | None = None, *, learning_rate: float | None = None):
        """The Keras learning-rate schedule for a run of `epochs` x `steps_per_epoch` steps.

        Args:
            steps_per_epoch: optimizer steps per epoch.
            epochs: run length; default the thesis's (not needed for a constant rate, e.g.
                recipe "constant"). Milestones scale with it, except
                that a step-based recipe run within one epoch of the thesis's step
                count keeps the thesis's step milestones.
            learning_rate: override the peak rate (the other rates scale with it).

        Returns:
            A serializable `keras.optimizers.schedules.LearningRateSchedule`.
        """
        steps_per_epoch = _check_steps("steps_per_epoch", steps_per_epoch, 1)
        if epochs is None:
            if self.epochs is None and not self.total_steps:
                if not self._length_free:
                    raise ValueError(f"Recipe {self.name!r} has no default length: pass `epochs`.")
                epochs = 1  # a constant rate: the schedule is the same for any length
            else:
                epochs = self.epochs or max(1, round(self.total_steps / steps_per_epoch))
        epochs = _check_steps("epochs", epochs, 1)
        peak = self.learning_rate if learning_rate is None else _check_rate("learning_rate", learning_rate)
        ratio = peak / self.learning_rate
        total = epochs * steps_per_epoch
        unit = 1 if self.schedule_kind == "steps" else steps_per_epoch
        factor = self._factor(steps_per_epoch, epochs)
        warm = int(round(self.warmup * unit * factor))
        if self.schedule_kind == "cosine":
            return WarmupCosine(peak, total, min(warm, total - 1))
        bounds = [max(warm + 1, int(round(m * unit * factor))) for m in self.milestones]
        for i in range(1, len(bounds)):  # keep them increasing after rounding
            bounds[i] = max(bounds[i], bounds[i - 1] + 1)
        start = self.warmup_start * ratio
        return WarmupPiecewiseConstant(warm, start, bounds, [v * ratio for v in self.values],
                                       warmup=self.warmup_kind if warm else "constant")

    def optimizer(self, steps_per_epoch: int, epochs: int | None = None, *, learning_rate: float | None = None,
                  weight_decay: float | None = None):
        """A Keras SGD optimizer with this recipe's momentum, weight decay (in its mode) and schedule.

        Batch-norm gamma and beta are not decayed (`NOT_DECAYED`), as in `experiments.train`.
        """
        wd = self.weight_decay if weight_decay is None else _check_decay("weight_decay", weight_decay)
        return sgd(self.schedule(steps_per_epoch, epochs, learning_rate=learning_rate), momentum=self.momentum,
                   nesterov=self.nesterov, weight_decay=wd, weight_decay_mode=self.weight_decay_mode)

    def to_config(self) -> dict:
        return dataclasses.asdict(self)


def _ch2_cifar(name, weight_decay, which):
    return Recipe(
        name=name, reference="Thesis Sec. 2.4.1 (schedule of He et al. [36])", schedule_kind="steps",
        learning_rate=0.1, warmup=400, warmup_kind="constant", warmup_start=0.01,
        milestones=(32000, 48000, 70000), values=(0.1, 0.01, 0.001, 1e-4), total_steps=80000, batch_size=128,
        momentum=0.9, weight_decay=weight_decay,
        assumed=("momentum 0.9 (He et al.'s setting; the thesis names only the schedule)",
                 "80,000 steps in all (He et al.'s length; the thesis gives only the decay points)",
                 f"weight decay {weight_decay} is the thesis's for {which}, as L2 in the gradient"),
    )


def _ch2_caltech(name, milestones, total):
    return Recipe(
        name=name, reference="Thesis Sec. 2.4.1 (Caltech-256, Inception-v3)", schedule_kind="steps",
        learning_rate=0.03, warmup=2000, warmup_kind="log_linear", warmup_start=3e-5, milestones=milestones,
        values=(0.03, 0.003, 3e-4), total_steps=total, batch_size=64, momentum=0.9, weight_decay=4e-5,
        assumed=("optimizer: momentum SGD 0.9 (the thesis does not name it)",
                 f"run length {total} steps (the thesis gives only the decay points)"),
    )


_RECIPES = {
    "cosine": Recipe(
        name="cosine", reference="library default (cosine decay: Loshchilov & Hutter, as in Thesis Sec. 5.3.2)",
        schedule_kind="cosine", learning_rate=0.05, nesterov=True, weight_decay=5e-4, weight_decay_mode="decoupled",
        assumed=("not a thesis recipe: the short-run default of the quick and standard scales",
                 "Keras's decoupled weight decay")),
    "constant": Recipe(
        name="constant", reference="library option (a constant rate, e.g. for Adam)", schedule_kind="epochs",
        learning_rate=1e-3, values=(1e-3,), weight_decay=0.0, weight_decay_mode="decoupled",
        assumed=("not a thesis recipe: a constant rate (set `learning_rate`)",)),
    "ch2_cifar10_baseline": _ch2_cifar("ch2_cifar10_baseline", 5e-4, "the CIFAR-10 baseline"),
    "ch2_cifar10_mixing": _ch2_cifar("ch2_cifar10_mixing", 1e-4, "CIFAR-10 mixed-example methods"),
    "ch2_cifar100": _ch2_cifar("ch2_cifar100", 5e-4, "every method on CIFAR-100"),
    "ch2_caltech_baseline": _ch2_caltech("ch2_caltech_baseline", (20000, 26000), 30000),
    "ch2_caltech_mixing": _ch2_caltech("ch2_caltech_mixing", (45000, 57000), 60000),
    "ch3_cifar": Recipe(
        name="ch3_cifar", reference="Thesis Sec. 3.5.1", schedule_kind="epochs", learning_rate=0.1, warmup=5,
        warmup_kind="linear", milestones=(100, 150), values=(0.1, 0.01, 0.001), epochs=200, batch_size=128,
        momentum=0.9, weight_decay=2e-4,
        assumed=("linear warm-up from 0 (the thesis says only 'a warm up period of 5 epochs')",
                 "adversarially trained models stop at epoch 101 of this 200-epoch schedule: "
                 "TrainSpec(recipe='ch3_cifar', epochs=200, stop_epoch=101)")),
    "ch3_svhn": Recipe(
        name="ch3_svhn", reference="Thesis Sec. 3.5.1 (SVHN, ResNet-8)", schedule_kind="epochs", learning_rate=0.01,
        warmup=5, warmup_kind="constant", warmup_start=0.001, milestones=(80,), values=(0.01, 0.001), epochs=101,
        batch_size=128, momentum=0.9, weight_decay=2e-4,
        assumed=("momentum 0.9 and weight decay 2e-4 carried over from the chapter's CIFAR setting",
                 "batch size 128 carried over from the chapter's CIFAR setting")),
    "ch5_cifar10": Recipe(
        name="ch5_cifar10", reference="Thesis Sec. 5.3.2 (ResNet-14, CIFAR-10)", schedule_kind="cosine",
        learning_rate=0.4, warmup=3, warmup_kind="linear", epochs=500, batch_size=512, momentum=0.9,
        weight_decay=5e-4, assumed=("plain (not Nesterov) momentum: PyTorch's default, which the authors used",)),
}
_RECIPES["ch4_cifar100"] = dataclasses.replace(
    _RECIPES["ch2_cifar100"], name="ch4_cifar100",
    reference="Thesis Sec. 4.4.1 names the model (ResNet-18, CIFAR-100 40k/10k) but no schedule",
    assumed=_RECIPES["ch2_cifar100"].assumed + ("the Ch. 2 CIFAR-100 schedule, reused for Ch. 4",))


def names() -> tuple:
    """The registered recipe names."""
    return tuple(_RECIPES)


def get(name: str) -> Recipe:
    """The recipe registered under `name`.

    Example:

    >>> from tf_dlthesis import recipes
    >>> opt = recipes.get("ch3_cifar").optimizer(steps_per_epoch=391)

    Raises:
        ValueError: unknown name (with the closest names).
        TypeError: `name` is not a string.
    """
    if isinstance(name, Recipe):
        return name
    if not isinstance(name, str):
        raise TypeError(f"`name` must be a recipe name string. Received: name={name!r}")
    if name not in _RECIPES:
        close = difflib.get_close_matches(name, list(_RECIPES), n=3)
        hint = f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""
        raise ValueError(f"Unknown recipe {name!r}. Known: {', '.join(_RECIPES)}.{hint}")
    return _RECIPES[name]
