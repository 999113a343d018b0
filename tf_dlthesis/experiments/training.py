"""The one training path: `TrainSpec` says what to train, `train(spec, seeds)` trains it.

Every experiment, `tf-dlthesis train`, the notebooks and README's examples build a
`TrainSpec` and call `train`. A spec is a frozen, JSON-able description of one
training setting - data (and subset), model, normalization, mixing stage, defense,
recipe, epochs, batch size - whose hash is the results store's config key, so a
run recorded once is read back instead of retrained.

Seeds: an int `s` seeds initialization (`s`), data order (`s`), augmentation and
mixing (`s + 1`) and stochastic ops / attacks (`s + 2`); a `variability.SeedPlan`
gives each source its own seed (Thesis Sec. 5.3.1), including a one-ULP bit change
and the onset epoch of Fig. 5.2. Nothing else is random: no global seed, no
op-seed counter, so a run does not depend on what ran before it in the process.
"""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
import functools
import json
import time
from typing import Callable

import numpy as np

from tf_dlthesis._checks import check_bool, check_int
from tf_dlthesis._seeds import check_int_seed

#: The store namespace of training runs.
RUNS = "runs"
_FLIP_FREE = ("digits", "mnist")  # classes that mirroring changes (digits)


def _jsonable(name, value):
    """A deep copy through JSON (tuples become lists); a clear error for anything else."""
    try:
        return json.loads(json.dumps(value, sort_keys=True))
    except TypeError:
        raise TypeError(f"`{name}` must be JSON-able (numbers, strings, lists, dicts). Received: {name}={value!r}") from None


def _callable_name(fn, what: str) -> str:
    """`module.qualname` of a module-level function or class: the only callables a name identifies."""
    qualname, module = getattr(fn, "__qualname__", None), getattr(fn, "__module__", None)
    if not isinstance(qualname, str) or not module or "<lambda>" in qualname or "<locals>" in qualname:
        raise TypeError(f"`norm` must be a norm string, a module-level function or class returning a layer, or a "
                        f"functools.partial of one: the store keys a spec by name, so a lambda, a closure or a "
                        f"callable object would share the key of any other with the same name. Received: {what}")
    return f"{module}.{qualname}"


def _norm_config(norm):
    if norm is None or isinstance(norm, str):
        return norm or "none"
    if callable(norm):
        if isinstance(norm, functools.partial):
            return {"callable": _callable_name(norm.func, f"norm={norm!r}"),
                    "args": _jsonable("norm", list(norm.args)), "kwargs": _jsonable("norm", norm.keywords)}
        return {"callable": _callable_name(norm, f"norm={norm!r}")}
    raise TypeError(f"`norm` must be a norm string (e.g. 'ghost:16') or a callable returning a layer. Received: norm={norm!r}")


def _is_number(value) -> bool:
    return (not isinstance(value, bool) and isinstance(value, (int, float, np.integer, np.floating))
            and bool(np.isfinite(value)))


def _swa_settings(swa, epochs) -> dict:
    """`TrainSpec.swa` normalized: mode, start_epoch and (mode "swa") swa_lr (None: peak / 10)."""
    from tf_dlthesis.variability.swa import MODES

    if isinstance(swa, str):
        swa = {"mode": swa}
    if not isinstance(swa, dict):
        raise TypeError(f"`swa` must be a dict of settings, a mode name or None. Received: swa={swa!r}")
    unknown = sorted(set(swa) - {"mode", "start_epoch", "swa_lr"})
    if unknown:
        raise ValueError(f"Unknown `swa` settings {unknown}; known: mode, start_epoch, swa_lr. Received: swa={swa!r}")
    mode = swa.get("mode", "swa")
    if mode not in MODES:
        raise ValueError(f"`swa['mode']` must be one of {MODES}. Received: swa={swa!r}")
    start = swa.get("start_epoch", int(0.75 * epochs) if mode == "swa" else 0)
    start = check_int("swa['start_epoch']", start, 0)
    if start >= epochs:
        raise ValueError(f"`swa['start_epoch']` must be an int in [0, epochs={epochs}). Received: swa={swa!r}")
    out = {"mode": mode, "start_epoch": int(start)}
    if mode == "swa":
        rate = swa.get("swa_lr")
        if rate is not None and (not _is_number(rate) or not rate > 0):
            raise ValueError(f"`swa['swa_lr']` must be a number > 0. Received: swa={swa!r}")
        out["swa_lr"] = None if rate is None else float(rate)
    elif "swa_lr" in swa:
        raise ValueError(f"`swa_lr` applies to mode 'swa' only (aggressive SWA keeps the recipe's schedule). "
                         f"Received: swa={swa!r}")
    return out


#: TrainSpec's int fields: (name, minimum, None allowed).
_INT_FIELDS = (("train_examples", 2, True), ("validation_examples", 0, False), ("test_examples", 1, True),
               ("image_size", 1, True), ("epochs", 1, False), ("batch_size", 1, False),
               ("non_iid_classes", 1, True), ("snapshots", 0, False), ("stop_epoch", 1, True), ("pad", 0, True))
#: TrainSpec's float fields (None allowed): (name, test, what the test says).
_FLOAT_FIELDS = (("learning_rate", lambda v: v > 0, "> 0"), ("weight_decay", lambda v: v >= 0, ">= 0"),
                 ("momentum", lambda v: 0 <= v < 1, "in [0, 1)"), ("gradient_clip_norm", lambda v: v > 0, "> 0"),
                 ("weight_noise", lambda v: v > 0, "> 0"))
#: `train`'s int seed s also seeds s + 1 and s + 2, all as TF int64 seeds.
MAX_SEED = 2**63 - 3


#: In the key of non-i.i.d. specs with `augment`: their batches are augmented since 2026-12-05 (before, the
#: non-i.i.d. stream ignored `augment`, so earlier stored runs under the plain key were not augmented).
_NON_IID_AUGMENTED = "non_iid_augmented"
#: TrainSpec fields added after results were stored: left out of the store key at their default.
ADDED_FIELDS = ("momentum", "gradient_clip_norm", "swa", "weight_noise")


@dataclasses.dataclass(frozen=True)
class TrainSpec:
    """One training setting, frozen and JSON-able; its hash is the results store's key.

    Two specs are equal exactly when their store keys are (numbers are stored as
    plain int / float, so `learning_rate=1` and `learning_rate=1.0` are one spec).

    Example:

    >>> from tf_dlthesis.experiments import TrainSpec, train
    >>> spec = TrainSpec(dataset="digits", model="cnn", model_kwargs={"filters": [16, 32]}, epochs=10,
    ...                  mixing={"method": "vh_mixup"})
    >>> [run] = train(spec, seeds=0)
    >>> run.metrics["test_accuracy"] > 0.9
    True

    Attributes:
        dataset: a `data.load` name ("digits", "fashion_mnist", "mnist", tfds names).
        train_examples: use a stratified subset of this many training examples
            (the first ones of each class, in the dataset's order; no RNG).
        validation_examples: hold out this many training examples (stratified,
            the last ones of each class) as a validation split.
        test_examples: evaluate on a stratified subset of the test split.
        image_size: resize images (`data.load(image_size=...)`).
        model, model_kwargs: `models.build` name and options.
        norm, norm_kwargs: the `norm=` kind (string, or a module-level function
            or class returning a layer, or a `functools.partial` of one: the key
            names it, so lambdas and closures are refused) and the options of
            every normalization layer (e.g. momentum).
        norm_weight_decay: `(rate, gamma_center)` L2 on gamma/beta (Sec. 4.3.3),
            or None (gamma and beta are excluded from weight decay).
        mixing: `augment.MixStage` settings, e.g. `{"method": "vh_mixup", "mode":
            "pair", "alpha": 1.0}`, or None.
        defense: `robustness.RobustModel` settings, e.g. `{"defense": "lrm",
            "epsilon": 0.1, "step_size": 0.025, "num_steps": 5}`, or None.
        non_iid_classes: draw each batch from this many classes (Table 4.1's
            sampler, `data.non_iid_batches`) instead of shuffled epochs; the
            batches are augmented as the i.i.d. ones when `augment` is set.
        recipe: a `recipes.get` name (optimizer, schedule, weight decay); a
            registered `recipes.Recipe` is stored as its name.
        optimizer: "sgd" (the recipe's) or "adam" (the recipe's schedule, Adam).
        learning_rate, weight_decay: override the recipe's peak rate / decay.
        weight_decay_mode: how the decay enters the step: `"l2"` (added to the
            gradient before momentum, the thesis's convention) or `"decoupled"`
            (Keras's `weight_decay`, about 10x weaker at momentum 0.9). None: the
            recipe's (`recipes.Recipe.weight_decay_mode`; Adam: decoupled). It is
            `"decoupled"` whenever there is no decay, so it never splits keys
            of runs without one.
        epochs, batch_size: the run length and batch size.
        augment: standard pad-and-crop (+ flip) augmentation.
        pad, flip: its settings (default: pad H // 8 >= 1; flips except on digits/MNIST).
        snapshots: > 0 trains a snapshot ensemble with that many cosine cycles
            (Thesis Sec. 5.5); the run then also reports the ensemble's accuracy.
        stop_epoch: stop after this many epochs of the run's own schedule (the
            thesis's Ch. 2 stabilisation trains 20 candidates for 3 epochs and
            continues the 3 with the lowest loss: under op determinism a
            candidate's first epochs are the full run's). None: train `epochs`.
        momentum: override the recipe's SGD momentum (Thesis App. B.4 tried 0 to
            0.999); with `optimizer="adam"` it is Adam's beta_1.
        gradient_clip_norm: clip the global norm of the gradient (all variables
            together) to this value before each step, as PyTorch's
            `clip_grad_norm_` does in App. B.4 (Keras `global_clipnorm`).
        swa: stochastic weight averaging (App. B.4, `variability.
            StochasticWeightAveraging`): `{"mode": "swa" | "aswa", "start_epoch":
            e, "swa_lr": r}`. Mode "swa" uses Izmailov et al.'s schedule
            (`SWASchedule`, peak = the recipe's rate, `swa_lr` default peak / 10,
            start default 75% of the epochs) and recomputes batch-norm statistics
            on the training images; "aswa" (the thesis's aggressive SWA, Madhyastha
            & Jain) keeps the recipe's schedule and averages after every step
            from `start_epoch` (default 0).
        weight_noise: "weight augmentation" (App. B.4, `variability.WeightNoise`):
            the standard deviation of the Gaussian offset at which each step's
            gradient is taken; seeded by the plan's stochastic seed.

    Fields added after results were first stored (`momentum`, `gradient_clip_norm`,
    `swa`, `weight_noise`) are left out of `to_config` while at their default, so
    the store key of every earlier spec is unchanged. Every run stored before
    `weight_decay_mode` existed trained with decoupled decay, so the key names the
    mode only when it is `"l2"`, and a config without it means `"decoupled"`.
    """

    dataset: str = "digits"
    train_examples: int | None = None
    validation_examples: int = 0
    test_examples: int | None = None
    image_size: int | None = None
    model: str = "cnn"
    model_kwargs: dict = dataclasses.field(default_factory=dict)
    norm: object = "batch"
    norm_kwargs: dict = dataclasses.field(default_factory=dict)
    norm_weight_decay: tuple | None = None
    mixing: dict | None = None
    defense: dict | None = None
    non_iid_classes: int | None = None
    recipe: str = "cosine"
    optimizer: str = "sgd"
    learning_rate: float | None = None
    weight_decay: float | None = None
    epochs: int = 10
    batch_size: int = 64
    augment: bool = True
    pad: int | None = None
    flip: bool | None = None
    snapshots: int = 0
    stop_epoch: int | None = None
    momentum: float | None = None
    gradient_clip_norm: float | None = None
    swa: dict | None = None
    weight_noise: float | None = None
    weight_decay_mode: str | None = None

    def __post_init__(self):
        if not isinstance(self.dataset, str) or not self.dataset:
            raise TypeError(f"`dataset` must be a dataset name. Received: dataset={self.dataset!r}")
        if not isinstance(self.model, str):
            raise TypeError(f"`model` must be a models.build name. Received: model={self.model!r}")
        # numbers become plain int / float, so equal settings have one key (1 and 1.0, NumPy scalars)
        for name, minimum, allow_none in _INT_FIELDS:
            object.__setattr__(self, name, check_int(name, getattr(self, name), minimum, allow_none=allow_none))
        for name, test, what in _FLOAT_FIELDS:
            value = getattr(self, name)
            if value is not None:
                if not _is_number(value) or not test(value):
                    raise ValueError(f"`{name}` must be a number {what} or None. Received: {name}={value!r}")
                object.__setattr__(self, name, float(value))
        if self.stop_epoch is not None and self.stop_epoch > self.epochs:
            raise ValueError(f"`stop_epoch` must be <= `epochs`. Received: stop_epoch={self.stop_epoch}, "
                             f"epochs={self.epochs}")
        if self.snapshots and self.epochs % self.snapshots:
            raise ValueError(f"`epochs` must be a multiple of `snapshots` (each cosine cycle is a whole number of "
                             f"epochs, a snapshot at its end). Received: epochs={self.epochs}, "
                             f"snapshots={self.snapshots}")
        if self.snapshots and self.stop_epoch is not None and self.stop_epoch < self.epochs:
            raise ValueError(f"`snapshots` cannot be combined with `stop_epoch` < `epochs`: the snapshots' cosine "
                             f"cycles span `epochs`, so stopping early would take snapshots mid-cycle at a high "
                             f"learning rate (thesis Sec. 5.5: members are taken where the rate reaches 0). "
                             f"Received: snapshots={self.snapshots}, stop_epoch={self.stop_epoch}, epochs={self.epochs}")
        for name, allow_none in (("augment", False), ("flip", True)):
            object.__setattr__(self, name, check_bool(name, getattr(self, name), allow_none=allow_none))
        for name in ("model_kwargs", "norm_kwargs"):
            value = getattr(self, name)
            if not isinstance(value, dict):
                raise TypeError(f"`{name}` must be a dict. Received: {name}={value!r}")
            object.__setattr__(self, name, _jsonable(name, value))
        for name in ("mixing", "defense"):
            value = getattr(self, name)
            if value is not None:
                if isinstance(value, str):
                    value = {"method": value} if name == "mixing" else {"defense": value}
                if not isinstance(value, dict):
                    raise TypeError(f"`{name}` must be a dict of settings or None. Received: {name}={value!r}")
                object.__setattr__(self, name, _jsonable(name, value))
        if self.mixing is not None and "method" not in self.mixing:
            raise ValueError(f"`mixing` needs a 'method'. Received: mixing={self.mixing!r}")
        if self.defense is not None and "defense" not in self.defense:
            raise ValueError(f"`defense` needs a 'defense' name. Received: defense={self.defense!r}")
        nwd = self.norm_weight_decay
        if nwd is not None:
            if (not isinstance(nwd, (list, tuple)) or len(nwd) != 2 or not all(_is_number(v) for v in nwd)
                    or nwd[0] < 0):
                raise ValueError(f"`norm_weight_decay` must be a pair (rate >= 0, gamma_center) of numbers or None. "
                                 f"Received: norm_weight_decay={nwd!r}")
            object.__setattr__(self, "norm_weight_decay", (float(nwd[0]), float(nwd[1])))
        _norm_config(self.norm)
        if self.optimizer not in ("sgd", "adam"):
            raise ValueError(f"`optimizer` must be 'sgd' or 'adam'. Received: optimizer={self.optimizer!r}")
        from tf_dlthesis import recipes

        if isinstance(self.recipe, recipes.Recipe):  # a registered recipe is stored by its name
            if self.recipe.name not in recipes.names() or recipes.get(self.recipe.name) != self.recipe:
                raise TypeError(f"`recipe` must be a registered recipe (a spec stores its name; `recipes.names()`). "
                                f"Received: recipe={self.recipe.name!r}, a custom Recipe")
            object.__setattr__(self, "recipe", self.recipe.name)
        if not isinstance(self.recipe, str):
            raise TypeError(f"`recipe` must be a recipe name (`recipes.names()`). Received: recipe={self.recipe!r}")
        recipes.get(self.recipe)
        self.resolved_weight_decay_mode  # noqa: B018 (validates the mode against the recipe and optimizer)
        if self.non_iid_classes is not None and self.mixing is not None:
            raise ValueError("`non_iid_classes` and `mixing` cannot be combined.")
        if self.swa is not None:
            # a start epoch derived from `epochs` (not given) is derived again by `replace(epochs=...)`
            object.__setattr__(self, "_swa_start_derived",
                               isinstance(self.swa, str) or (isinstance(self.swa, dict) and "start_epoch" not in self.swa))
            object.__setattr__(self, "swa", _swa_settings(self.swa, self.epochs))
            if self.stop_epoch is not None and self.swa["start_epoch"] >= self.stop_epoch:
                raise ValueError(f"`swa['start_epoch']` must be < `stop_epoch`: averaging would never start. "
                                 f"Received: swa={self.swa}, stop_epoch={self.stop_epoch}")
            if self.snapshots:
                raise ValueError("`swa` and `snapshots` cannot be combined (both set the learning-rate schedule).")

    @property
    def resolved_weight_decay(self) -> float:
        """The decay coefficient the run uses: `weight_decay`, or the recipe's when None."""
        from tf_dlthesis import recipes

        return recipes.get(self.recipe).weight_decay if self.weight_decay is None else self.weight_decay

    @property
    def resolved_weight_decay_mode(self) -> str:
        """`weight_decay_mode`, with None resolved (the recipe's; Adam and no decay: `"decoupled"`)."""
        from tf_dlthesis import recipes

        recipe, mode = recipes.get(self.recipe), self.weight_decay_mode
        if mode is not None and mode not in recipes.WEIGHT_DECAY_MODES:
            raise ValueError(f"`weight_decay_mode` must be one of {recipes.WEIGHT_DECAY_MODES} or None. "
                             f"Received: weight_decay_mode={mode!r}")
        if not self.resolved_weight_decay:
            return "decoupled"  # no decay: the mode changes nothing
        if self.optimizer == "adam":
            if mode == "l2":
                raise ValueError("`weight_decay_mode='l2'` is for SGD; Adam takes Keras's decoupled weight decay. "
                                 "Received: optimizer='adam', weight_decay_mode='l2'")
            return "decoupled"
        return recipe.weight_decay_mode if mode is None else mode

    # ------------------------------------------------------------------ config / key
    def to_config(self) -> dict:
        """The JSON-able dict the store keys on (and `from_config` reads).

        Fields in `ADDED_FIELDS` are left out while at their default (keys of
        earlier specs stay the same); `weight_decay_mode` only while it is
        `"decoupled"`, as every run stored before it existed trained.
        """
        out = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)
               if not (f.name in ADDED_FIELDS and getattr(self, f.name) == f.default)}
        out["weight_decay_mode"] = self.resolved_weight_decay_mode
        if out["weight_decay_mode"] == "decoupled":
            del out["weight_decay_mode"]
        if self.non_iid_classes is not None and self.augment:
            out[_NON_IID_AUGMENTED] = True  # non-i.i.d. runs stored before 2026-12-05 ignored `augment`
        out["norm"] = _norm_config(self.norm)
        out["norm_weight_decay"] = None if self.norm_weight_decay is None else list(self.norm_weight_decay)
        return out

    @classmethod
    def from_config(cls, config: dict) -> "TrainSpec":
        """The spec of a `to_config` dict (a config without `weight_decay_mode` means `"decoupled"`)."""
        if isinstance(config.get("norm"), dict):
            raise ValueError("A spec with a callable `norm` cannot be rebuilt from its config; pass the callable.")
        config = {k: v for k, v in config.items() if k != _NON_IID_AUGMENTED}
        return cls(**{"weight_decay_mode": "decoupled", **config})

    def key(self) -> str:
        """The results store's config hash of this spec."""
        from tf_dlthesis.experiments.results_store import config_hash

        return config_hash(self.to_config())

    def __eq__(self, other):
        # equal exactly when the store keys are (consistent with __hash__: learning_rate 1 == 1.0)
        return self.key() == other.key() if isinstance(other, TrainSpec) else NotImplemented

    def __hash__(self):
        return hash(self.key())

    def replace(self, **changes) -> "TrainSpec":
        """A copy with some fields changed (`dataclasses.replace`).

        A SWA start epoch that was derived from `epochs` (`swa` given without
        `start_epoch`) is derived again from a changed `epochs`; a given one is kept.
        """
        if "epochs" in changes and "swa" not in changes and getattr(self, "_swa_start_derived", False):
            changes["swa"] = {k: v for k, v in self.swa.items() if k != "start_epoch"}
        return dataclasses.replace(self, **changes)

    # ------------------------------------------------------------------ derived settings
    @property
    def resolved_pad(self) -> int:
        if self.pad is not None:
            return self.pad
        from tf_dlthesis import data

        return max(1, int(data.info(self.dataset, image_size=self.image_size).image_shape[0]) // 8)

    @property
    def resolved_flip(self) -> bool:
        return (self.dataset not in _FLIP_FREE) if self.flip is None else bool(self.flip)

    def _decay_mode_text(self) -> str:
        from tf_dlthesis import recipes

        mode = self.resolved_weight_decay_mode
        if mode == recipes.get(self.recipe).weight_decay_mode or not self.resolved_weight_decay:
            return ""
        return (" (Keras's decoupled weight decay, ~1/10 of the thesis's L2 at momentum 0.9)" if mode == "decoupled"
                else " (weight decay as L2 in the gradient)")

    def describe(self) -> str:
        """A one-line human description for report settings."""
        parts = [self.dataset + (f" ({self.train_examples} training examples)" if self.train_examples else ""),
                 self.model + (f" {self.model_kwargs}" if self.model_kwargs else ""),
                 f"norm {self.norm if isinstance(self.norm, str) else _norm_config(self.norm)}"
                 + (f" {self.norm_kwargs}" if self.norm_kwargs else ""),
                 f"recipe {self.recipe}" + (f" ({self.optimizer})" if self.optimizer != "sgd" else "")
                 + (f", peak LR {self.learning_rate}" if self.learning_rate is not None else "")
                 + (f", weight decay {self.weight_decay}" if self.weight_decay is not None else "")
                 + self._decay_mode_text(),
                 f"{self.epochs} epochs, batch {self.batch_size}"
                 + (f" (stopped after {self.stop_epoch})" if self.stop_epoch else "")]
        if self.augment:
            parts.append(f"pad-crop {self.resolved_pad}" + (" + flip" if self.resolved_flip else ""))
        if self.mixing:
            parts.append(f"mixing {self.mixing}")
        if self.defense:
            parts.append(f"defense {self.defense}")
        if self.non_iid_classes:
            parts.append(f"non-i.i.d. batches of {self.non_iid_classes} classes")
        if self.snapshots:
            parts.append(f"snapshot ensemble of {self.snapshots} cycles")
        if self.momentum is not None:
            parts.append(f"momentum {self.momentum}")
        if self.gradient_clip_norm is not None:
            parts.append(f"gradient norm clipped to {self.gradient_clip_norm}")
        if self.swa is not None:
            parts.append(f"{self.swa['mode'].upper()} from epoch {self.swa['start_epoch']}"
                         + (f" (SWA rate {self.swa['swa_lr']})" if self.swa.get("swa_lr") is not None else ""))
        if self.weight_noise is not None:
            parts.append(f"weight noise sd {self.weight_noise}")
        return ", ".join(parts)


# ---------------------------------------------------------------------------- data
@dataclasses.dataclass(frozen=True)
class DataBundle:
    """The arrays of one spec: training (subset), validation, test; and the class count.

    `source` holds the spec's data fields it was loaded for (`load_data` sets it),
    so `train(data=...)` can refuse a bundle of other data.
    """

    train: tuple
    validation: tuple | None
    test: tuple
    num_classes: int
    source: dict | None = None


#: The TrainSpec fields that decide a DataBundle.
_DATA_FIELDS = ("dataset", "train_examples", "validation_examples", "test_examples", "image_size")


def _data_source(spec) -> dict:
    return {name: getattr(spec, name) for name in _DATA_FIELDS}


def stratified_indices(labels, n: int, *, from_end: bool = False) -> np.ndarray:
    """`n` indices spread over the classes in proportion to their sizes, without RNG.

    The first (or, with `from_end`, the last) examples of each class in the
    dataset's order are taken; largest-remainder rounding makes the total exactly `n`.

    Raises:
        ValueError: `n` larger than the number of examples.
    """
    labels = np.asarray(labels)
    if not 0 <= n <= len(labels):
        raise ValueError(f"Cannot take {n} examples from {len(labels)}.")
    classes, counts = np.unique(labels, return_counts=True)
    exact = counts * n / len(labels)
    take = np.floor(exact).astype(int)
    order = np.argsort(-(exact - take), kind="stable")
    take[order[: n - take.sum()]] += 1
    picked = []
    for c, k in zip(classes, take):
        idx = np.flatnonzero(labels == c)
        picked.append(idx[len(idx) - k:] if from_end else idx[:k])
    return np.sort(np.concatenate(picked)) if picked else np.zeros(0, np.int64)


def load_data(spec: TrainSpec) -> DataBundle:
    """The training / validation / test arrays of `spec` (stratified subsets, no RNG)."""
    from tf_dlthesis import data

    folder = _data_dir_of(spec.dataset)
    x, y = data.load_arrays(spec.dataset, "train", image_size=spec.image_size, data_dir=folder)
    xt, yt = data.load_arrays(spec.dataset, "test", image_size=spec.image_size, data_dir=folder)
    num_classes = int(data.info(spec.dataset, image_size=spec.image_size).num_classes)
    validation = None
    if spec.validation_examples:
        if spec.validation_examples >= len(y):
            raise ValueError(f"`validation_examples`={spec.validation_examples} leaves no training data "
                             f"({len(y)} examples).")
        val = stratified_indices(y, spec.validation_examples, from_end=True)
        keep = np.setdiff1d(np.arange(len(y)), val)
        validation = (x[val], y[val])
        x, y = x[keep], y[keep]
    if spec.train_examples is not None:
        if spec.train_examples > len(y):
            raise ValueError(f"`train_examples`={spec.train_examples} exceeds the {len(y)} training examples.")
        sub = stratified_indices(y, spec.train_examples)
        x, y = x[sub], y[sub]
    if spec.mixing is not None:  # mixed batches are full batches only (pair mode: 2 x floor(N / 2) per epoch)
        per_epoch = 2 * (len(y) // 2) if spec.mixing.get("mode", "pair") == "pair" else len(y)
        if spec.batch_size > per_epoch:
            raise ValueError(f"`batch_size` must be <= the {len(y)} training examples with `mixing` (only full "
                             f"batches are mixed; {per_epoch} per epoch). Received: batch_size={spec.batch_size}")
    if spec.test_examples is not None and spec.test_examples < len(yt):
        sub = stratified_indices(yt, spec.test_examples)
        xt, yt = xt[sub], yt[sub]
    return DataBundle((x, y), validation, (xt, yt), num_classes, _data_source(spec))


# ---------------------------------------------------------------------------- runs
@dataclasses.dataclass
class RunContext:
    """What an `evaluate` hook sees: the trained model and everything about its run."""

    model: object
    spec: TrainSpec
    plan: object
    data: DataBundle
    stage: object = None
    snapshots: object = None
    history: dict | None = None

    def test_inputs(self, images):
        """Images as the model saw them in training (BC+ stages centre each image)."""
        return images if self.stage is None else np.asarray(self.stage.test_transform(images))


@dataclasses.dataclass
class Run:
    """One trained (or stored) run of a spec.

    Attributes:
        spec, plan: what was trained, with which seeds (`SeedPlan`).
        metrics: test/train/validation accuracy and loss, training loss, time.
        test_correct: (N,) bool, per test example.
        test_pred: (N,) predicted class per test example.
        info: init / data-order hashes, the bit change, distinct predictions and
            `machine`, the `runtime.machine()` id of the machine that trained it
            (absent from runs stored before it was recorded).
        evaluation: what the `evaluate` hook returned (or None).
        from_store: whether the run was read from the results store.
        history: the per-epoch `fit` logs (loss, accuracy, defense terms).
    """

    spec: TrainSpec
    plan: object
    metrics: dict
    test_correct: np.ndarray
    test_pred: np.ndarray
    info: dict
    evaluation: dict | None = None
    from_store: bool = False
    history: dict | None = None
    _model: object = None
    _weights: list | None = None
    _retrain: Callable | None = dataclasses.field(default=None, repr=False)

    @property
    def model(self):
        """The trained Keras model (rebuilt from stored weights when read from the store).

        A run that `train(..., keep_weights=True)` read from a row an earlier call
        stored without weights is retrained here once and its row replaced by one with
        them; the run's metrics, predictions, info and history become the retrained
        run's (bit-identical on a machine like the one that stored it).

        Raises:
            RuntimeError: the run came from the store without weights
                (train with `keep_weights=True` to keep them).
        """
        if self._model is None and self._weights is None and self._retrain is not None:
            record, context = self._retrain()
            self._retrain = None
            self.metrics, self.info, self.history = dict(record["metrics"]), dict(record["info"]), record["history"]
            self.test_correct = np.asarray(record["test_correct"]).astype(bool)
            self.test_pred = np.asarray(record["test_pred"]).astype(np.int64)
            self.from_store, self._model, self._weights = False, context.model, _weights(record)
        if self._model is None:
            if self._weights is None:
                raise RuntimeError("This run was read from the results store without its weights; "
                                   "train it with `keep_weights=True` to reuse the model.")
            self._model = _build_model(self.spec, _num_classes(self.spec), self.plan)
            self._model.set_weights(self._weights)
        return self._model

    @property
    def collapsed(self) -> bool:
        """True when the test predictions cover fewer than half of the classes."""
        return self.info["distinct_predictions"] < self.info["num_classes"] / 2


#: The runs trained or read during one registered experiment (for the report's health checks).
RUN_LOG: contextvars.ContextVar = contextvars.ContextVar("tf_dlthesis_run_log", default=None)
#: TensorBoard folder of the current `reproduce` call (None: off).
TENSORBOARD_DIR: contextvars.ContextVar = contextvars.ContextVar("tf_dlthesis_tensorboard", default=None)
#: Where `load_data` finds dataset files (`data.load_arrays(data_dir=...)`); machine-specific, so not in a spec.
DATA_DIR: contextvars.ContextVar = contextvars.ContextVar("tf_dlthesis_data_dir", default=None)


@contextlib.contextmanager
def data_dir(path):
    """Within the block, `load_data` (and so `train`) reads datasets from `path` (`data.load_arrays(data_dir=)`).

    One folder serves every dataset of a run (`--data-dir`): each is read from
    `path/<name>/` or `path` where it holds that dataset's files (`data.holds`),
    and from its default source otherwise (Fashion-MNIST: the Debian package); a
    dataset found in neither raises the error that names `path`.
    """
    token = DATA_DIR.set(path)
    try:
        yield
    finally:
        DATA_DIR.reset(token)


def _run_folder(holds, elsewhere):
    """The run's `--data-dir` where `holds(folder)`, else None (the default source) where `elsewhere()`.

    The rule of `data_dir` for any data a run reads: a folder that lacks the data leaves
    it to its default source; found in neither, the folder is returned, so the error names it.
    """
    folder = DATA_DIR.get()
    if folder is None or holds(folder) or not elsewhere():
        return folder
    return None


def _data_dir_of(name):
    """The `data_dir` to read dataset `name` with in this context (see `data_dir`)."""
    from tf_dlthesis import data

    def elsewhere():
        try:
            data.load_arrays(name, "test[:1]")  # its default source (cached in-process: the real load is free)
        except data.DatasetNotFoundError:
            return False
        return True

    return _run_folder(lambda folder: data.holds(name, folder), elsewhere)


def as_plan(seed):
    """An int seed or a `SeedPlan` -> `SeedPlan` (int s: init s, shuffle s, augment s + 1, stochastic s + 2)."""
    from tf_dlthesis.variability import SeedPlan

    if isinstance(seed, SeedPlan):
        return seed
    s = check_int_seed(seed, "seeds", allow_none=False)
    if s > MAX_SEED:  # s, s + 1 and s + 2 must fit TF's int64 seeds
        raise ValueError(f"`seeds` must be ints in [0, 2**63 - 3]. Received: seeds={seed!r}")
    return SeedPlan(init=s, shuffle=s, augment=s + 1, stochastic=s + 2)


def _num_classes(spec):
    from tf_dlthesis import data

    return int(data.info(spec.dataset, image_size=spec.image_size).num_classes)


def _build_model(spec, num_classes, plan):
    from tf_dlthesis import data, models

    shape = data.info(spec.dataset, image_size=spec.image_size).image_shape
    return models.build(spec.model, shape, num_classes, norm=spec.norm, norm_kwargs=spec.norm_kwargs or None,
                        seed=plan.init, **spec.model_kwargs)


def _stage(spec, num_classes, plan):
    if spec.mixing is None:
        return None
    from tf_dlthesis.augment import MixStage
    from tf_dlthesis.variability import derive_seed

    settings = dict(spec.mixing)
    method = settings.pop("method")
    return MixStage(method, num_classes=num_classes, seed=derive_seed(plan.augment, 1), **settings)


def _stream(spec, bundle, plan, stage):
    """(dataset, steps per epoch, data-order fingerprint source)."""
    from tf_dlthesis import data

    x, y = bundle.train
    if spec.non_iid_classes is not None:
        steps = max(1, len(x) // spec.batch_size)
        ds = data.non_iid_batches((x, y), batch_size=spec.batch_size, classes_per_batch=spec.non_iid_classes,
                                  seed=plan.shuffle, num_batches=spec.epochs * steps,
                                  augment_seed=plan.augment if spec.augment else None, pad=spec.resolved_pad,
                                  flip=spec.resolved_flip)
        return ds, steps
    epochs = spec.epochs
    onset = plan.base is not None and plan.onset_epoch > 0
    shuffle = data.EpochSeeds([plan.epoch_seed("shuffle", e) for e in range(epochs)]) if onset else plan.shuffle
    augment = None
    if spec.augment:
        augment = data.EpochSeeds([plan.epoch_seed("augment", e) for e in range(epochs)]) if onset else plan.augment
    ds = data.training_dataset(x, y, batch_size=spec.batch_size, shuffle_seed=shuffle, augment_seed=augment,
                               epochs=epochs, pad=spec.resolved_pad, flip=spec.resolved_flip, mix=stage,
                               drop_remainder=stage is not None)
    steps = data.steps_per_epoch_of(len(x), spec.batch_size, drop_remainder=stage is not None, mix=stage)
    return ds, steps


def data_order_hash(spec, plan, num_examples):
    """SHA-256 of the example order the run's stream visits (all epochs)."""
    from tf_dlthesis import data
    from tf_dlthesis.variability import order_hash

    if spec.non_iid_classes is not None:
        return None
    orders = []
    for e in range(spec.stop_epoch or spec.epochs):
        seed = plan.epoch_seed("shuffle", e)
        orders.append(data.epoch_pairs(num_examples, seed, e).reshape(-1) if spec.mixing and
                      spec.mixing.get("mode", "pair") == "pair" else data.epoch_permutation(num_examples, seed, e))
    return order_hash(np.concatenate(orders))


def _optimizer(spec, steps):
    from tf_dlthesis import recipes

    recipe = recipes.get(spec.recipe)
    if spec.snapshots:
        from tf_dlthesis.variability import CyclicCosineSchedule

        schedule = CyclicCosineSchedule(spec.learning_rate or recipe.learning_rate,
                                        total_steps=spec.epochs * steps, cycles=spec.snapshots)
    elif spec.swa is not None and spec.swa["mode"] == "swa":
        from tf_dlthesis.variability import SWASchedule

        peak = spec.learning_rate or recipe.learning_rate
        swa_lr = spec.swa["swa_lr"] if spec.swa["swa_lr"] is not None else peak / 10
        schedule = SWASchedule(peak, swa_lr, swa_start_step=max(1, spec.swa["start_epoch"] * steps))
    else:
        schedule = recipe.schedule(steps, spec.epochs, learning_rate=spec.learning_rate)
    wd = spec.resolved_weight_decay
    clip = {} if spec.gradient_clip_norm is None else {"global_clipnorm": spec.gradient_clip_norm}
    if spec.optimizer == "adam":
        beta = {} if spec.momentum is None else {"beta_1": spec.momentum}
        return recipes.adam(schedule, weight_decay=wd, **beta, **clip)
    momentum = recipe.momentum if spec.momentum is None else spec.momentum
    return recipes.sgd(schedule, momentum=momentum, nesterov=recipe.nesterov and momentum > 0, weight_decay=wd,
                       weight_decay_mode=spec.resolved_weight_decay_mode, **clip)


def predict_logits(model, x, batch_size: int = 512) -> np.ndarray:
    """Logits of `model` on `x` in inference mode, as float32 NumPy."""
    import tensorflow as tf

    from tf_dlthesis import runtime

    x = np.asarray(x)
    if len(x) == 0:
        raise ValueError("`x` is empty: nothing to predict.")
    fn = runtime.inference_function(model)
    # Not pre-traced with a None batch dimension (one trace instead of two): that graph gave logits a
    # float32 ULP away for example-weighed BN (Table 4.1's test cross-entropies), breaking bit-identity.
    out = [np.asarray(fn(tf.constant(x[i:i + batch_size]))) for i in range(0, len(x), batch_size)]
    return np.concatenate(out).astype(np.float32)


def _cross_entropy(logits, labels):
    z = logits.astype(np.float64)
    z = z - z.max(axis=1, keepdims=True)
    log_p = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
    return float(-log_p[np.arange(len(labels)), labels].mean())


def _evaluate_split(model, images, labels, stage):
    x = images if stage is None else np.asarray(stage.test_transform(images))
    logits = predict_logits(model, x)
    pred = logits.argmax(axis=1)
    return logits, pred, pred == labels, _cross_entropy(logits, labels)


def _train_one(spec: TrainSpec, plan, bundle: DataBundle, *, callbacks, verbose, run_name):
    import keras

    from tf_dlthesis import runtime
    from tf_dlthesis.variability import SnapshotEnsemble, bit_change, reseed_stochastic_layers, weights_hash

    k = bundle.num_classes
    model = _build_model(spec, k, plan)
    reseed_stochastic_layers(model, plan.stochastic)
    init_hash = weights_hash(model)
    change = bit_change(model, seed=plan.bit_change) if plan.bit_change is not None else None
    if spec.norm_weight_decay is not None:
        from tf_dlthesis.normalization import apply_normalization_weight_decay

        apply_normalization_weight_decay(model, spec.norm_weight_decay[0], gamma_center=spec.norm_weight_decay[1])
    stage = _stage(spec, k, plan)
    ds, steps = _stream(spec, bundle, plan, stage)
    optimizer = _optimizer(spec, steps)
    callbacks = list(callbacks or [])
    snapshots = None
    if spec.snapshots:
        snapshots = SnapshotEnsemble(cycles=spec.snapshots)
        callbacks.append(snapshots)
    if spec.weight_noise is not None:
        from tf_dlthesis.variability import WeightNoise, derive_seed

        callbacks.append(WeightNoise(spec.weight_noise, seed=derive_seed(plan.stochastic, 5)))
    if spec.swa is not None:
        from tf_dlthesis.variability import StochasticWeightAveraging

        x_train = bundle.train[0] if stage is None else np.asarray(stage.test_transform(bundle.train[0]))
        bn_data = [x_train[i:i + spec.batch_size] for i in range(0, len(x_train), spec.batch_size)]
        callbacks.append(StochasticWeightAveraging(spec.swa["mode"], spec.swa["start_epoch"], bn_data=bn_data))
    log_dir = TENSORBOARD_DIR.get()
    if log_dir is not None:
        import os

        safe = "".join(c if (c.isalnum() or c in "-_.") else "_" for c in run_name)
        callbacks.append(keras.callbacks.TensorBoard(log_dir=os.path.join(log_dir, safe), update_freq="epoch"))
    soft = stage is not None
    if spec.defense is not None:
        from tf_dlthesis.robustness import RobustModel

        settings = dict(spec.defense)
        fitted = RobustModel(model, settings.pop("defense"), seed=plan.stochastic, **settings)
        fitted.compile(optimizer, metrics=["accuracy"], jit_compile=runtime.jit_compile())
    else:
        fitted = model
        loss = (keras.losses.CategoricalCrossentropy(from_logits=True) if soft
                else keras.losses.SparseCategoricalCrossentropy(from_logits=True))
        model.compile(optimizer=optimizer, loss=loss, metrics=["accuracy"], jit_compile=runtime.jit_compile())
    _build_before_fit(fitted, optimizer, ds)
    start = time.perf_counter()
    history = fitted.fit(ds, epochs=spec.stop_epoch or spec.epochs, steps_per_epoch=steps, verbose=verbose,
                         callbacks=callbacks,
                         shuffle=False)  # the stream is already shuffled, reproducibly
    seconds = time.perf_counter() - start
    hist = {key: [float(v) for v in values] for key, values in history.history.items()}
    return model, stage, snapshots, hist, seconds, init_hash, change


def _build_before_fit(model, optimizer, ds) -> None:
    """Creates the optimizer's slots and the compiled metrics' and loss's state now.

    Keras without a distribution strategy creates them inside the first trace of the
    train step, and a variable created while tracing makes TF trace the whole step a
    second time (the quick scale's Table 2.1 took 202 s instead of 159 s). This is the symbolic
    build Keras itself runs under a distribution strategy: shapes only, no data, no
    random state touched, so the numbers are unchanged (checked bit for bit).
    """
    optimizer.build(model.trainable_variables)
    symbolic_build = getattr(model, "_symbolic_build", None)  # Keras 3's own; absent elsewhere: two traces
    if symbolic_build is not None:
        symbolic_build(data_batch=ds.element_spec)


def _metrics_of(model, spec, bundle, stage, snapshots, hist, seconds):
    (x, y), (xt, yt) = bundle.train, bundle.test
    _, test_pred, test_correct, test_loss = _evaluate_split(model, xt, yt, stage)
    _, _, train_correct, train_loss = _evaluate_split(model, x, y, stage)
    metrics = {"test_accuracy": float(test_correct.mean()), "test_loss": test_loss,
               "train_accuracy": float(train_correct.mean()), "train_loss": train_loss,
               "fit_loss": hist.get("loss", [float("nan")])[-1], "epochs": spec.epochs, "seconds": seconds,
               "num_train": int(len(y)), "num_test": int(len(yt))}
    if bundle.validation is not None:
        xv, yv = bundle.validation
        _, _, val_correct, val_loss = _evaluate_split(model, xv, yv, stage)
        metrics.update(validation_accuracy=float(val_correct.mean()), validation_loss=val_loss)
    if snapshots is not None:
        x_eval = xt if stage is None else np.asarray(stage.test_transform(xt))
        ens = np.asarray(snapshots.predict(x_eval))
        metrics["snapshot_test_accuracy"] = float((ens.argmax(1) == yt).mean())
    return metrics, test_pred, test_correct


def train(spec: TrainSpec, seeds, *, store=None, evaluate: Callable | None = None, evaluation: str | None = None,
          keep_weights: bool = False, callbacks=None, verbose: int | str = 0, data: DataBundle | None = None) -> list:
    """Trains `spec` once per seed (or reads the runs back from `store`).

    Example:

    >>> runs = train(TrainSpec(dataset="digits", epochs=5), seeds=[0, 1], store=ResultsStore("runs.sqlite"))
    >>> [r.metrics["test_accuracy"] for r in runs]

    Args:
        spec: the training setting.
        seeds: an int, a `variability.SeedPlan`, or a list of them.
        store: a `ResultsStore` (or None): finished runs are recorded under
            `("runs", {"spec": ..., "plan": ...}, 0)` and read back instead of retrained
            (`ResultsStore.get_or_compute`).
        evaluate: optional `evaluate(RunContext) -> dict` computed on the trained
            model (e.g. an attack, an alpha sweep); stored under `"runs/<evaluation>"`.
        evaluation: the name of that evaluation (required with `store` and `evaluate`).
        keep_weights: store the final weights too, so `run.model` works after a
            resume and other evaluations need no retraining (a run an earlier call
            stored without them is retrained once when `run.model` is first used).
        callbacks: extra Keras callbacks for `fit` (not with `store`: a callback
            can change a run, e.g. stop it early, and is not part of its key).
        verbose: Keras `fit` verbosity (1: progress bar).
        data: a preloaded `DataBundle` of this spec's data (default:
            `load_data(spec)`); with `store`, one that `load_data` made.

    Returns:
        A list of `Run`, one per seed.

    Raises:
        TypeError / ValueError: bad spec, seeds or arguments.
    """
    if not isinstance(spec, TrainSpec):
        raise TypeError(f"`spec` must be a TrainSpec. Received: {type(spec).__name__}")
    seed_list = list(seeds) if isinstance(seeds, (list, tuple, range)) else [seeds]
    if not seed_list:
        raise ValueError("`seeds` is empty: give at least one seed.")
    if evaluate is not None and not callable(evaluate):
        raise TypeError(f"`evaluate` must be callable. Received: evaluate={evaluate!r}")
    if evaluate is not None and store is not None and not evaluation:
        raise ValueError("`evaluation` (a name for the stored evaluation) is required with `store` and `evaluate`.")
    if callbacks and store is not None:
        raise ValueError("`callbacks` cannot be combined with `store`: a callback can change a run (stop it early, "
                         "change its rate) but is not part of the store key, so a later call without it would read "
                         f"that run back as the spec's. Train without `store`, or put the setting in the spec. "
                         f"Received: callbacks={callbacks!r}")
    if data is not None:
        if not isinstance(data, DataBundle):
            raise TypeError(f"`data` must be a DataBundle (`load_data(spec)`). Received: {type(data).__name__}")
        if data.source is None and store is not None:
            raise ValueError("`data` must come from `load_data(spec)` when `store` is given: the store keys the run "
                             "by the spec, so the data must be the spec's.")
        if data.source is not None and data.source != _data_source(spec):
            raise ValueError(f"`data` was loaded for {data.source}, but the spec asks for {_data_source(spec)}: pass "
                             f"`load_data(spec)`.")
    plans = [as_plan(s) for s in seed_list]
    for plan in plans:
        if plan.base is not None and plan.onset_epoch and plan.stochastic != plan.base.stochastic:
            raise ValueError("`train` seeds dropout, attacks and weight noise once per run, so it cannot delay the "
                             "'stochastic' source to an onset epoch (it would vary from epoch 0). Vary 'shuffle' / "
                             f"'augment' with an onset, or 'stochastic' without one. Received: a plan varying "
                             f"{plan.source!r} with onset_epoch={plan.onset_epoch}")
    runs = []
    bundle = data
    log = RUN_LOG.get()
    files = []  # the data's fingerprint, computed once

    def data_files():
        if not files:
            from tf_dlthesis.data._registry import source_fingerprint

            files.append(source_fingerprint(spec.dataset, _data_dir_of(spec.dataset)))
        return files[0]

    for plan in plans:
        config = {"spec": spec.to_config(), "plan": plan.to_config()}
        fresh: dict = {}  # what this call trained: {"context": RunContext}

        def train_now():
            nonlocal bundle
            bundle = bundle or load_data(spec)
            record, fresh["context"] = _train_record(spec, plan, bundle, callbacks=callbacks, verbose=verbose,
                                                     keep_weights=keep_weights, data_files=data_files)
            return record

        record = store.get_or_compute(RUNS, config, 0, train_now) if store is not None else train_now()
        if "context" not in fresh:
            _check_same_data(record, data_files, spec)
        evaluated = None
        if evaluate is not None:
            def evaluate_now():
                nonlocal bundle, record
                if "context" not in fresh:
                    if "weights" in record:  # a stored model: rebuild it, no retraining
                        bundle = bundle or load_data(spec)
                        model = _build_model(spec, bundle.num_classes, plan)
                        model.set_weights(_weights(record))
                        fresh["rebuilt"] = RunContext(model, spec, plan, bundle, _stage(spec, bundle.num_classes, plan),
                                                      None, record.get("history"))
                    else:  # stored without weights: train again to evaluate; the run is the retrained one
                        # (bit-identical on a machine like the one that stored it, not on another)
                        record = _rerecord(store, config, train_now())
                return evaluate(fresh.get("context") or fresh["rebuilt"])

            evaluated = (store.get_or_compute(f"{RUNS}/{evaluation}", config, 0, evaluate_now) if store is not None
                         else evaluate_now())
        context = fresh.get("context") or fresh.get("rebuilt")
        run = Run(spec, plan, dict(record["metrics"]), np.asarray(record["test_correct"]).astype(bool),
                  np.asarray(record["test_pred"]).astype(np.int64), dict(record["info"]), evaluated,
                  from_store="context" not in fresh, history=record.get("history"),
                  _model=None if context is None else context.model,
                  _weights=_weights(record) if "weights" in record else None)
        if keep_weights and context is None and "weights" not in record:
            # stored by an earlier call without `keep_weights`: `run.model` retrains it once, keeping the weights
            run._retrain = functools.partial(_retrain_with_weights, store, config, spec, plan, bundle, data_files)
        runs.append(run)
        if log is not None:
            log.append(run)
    return runs


def _train_record(spec, plan, bundle, *, callbacks, verbose, keep_weights, data_files):
    """Trains one run: its store record (metrics, predictions, info, history, weights) and its `RunContext`."""
    from tf_dlthesis import runtime

    run_name = f"{spec.dataset}-{spec.model}-{plan.source}-{plan.run}-{spec.key()[:8]}"
    model, stage, snapshots, hist, seconds, init_hash, change = _train_one(
        spec, plan, bundle, callbacks=callbacks, verbose=verbose, run_name=run_name)
    metrics, test_pred, test_correct = _metrics_of(model, spec, bundle, stage, snapshots, hist, seconds)
    info = {"init_hash": init_hash, "order_hash": data_order_hash(spec, plan, len(bundle.train[1])),
            "bit_change": None if change is None else change.to_config(),
            "distinct_predictions": int(len(np.unique(test_pred))), "num_classes": bundle.num_classes,
            "machine": runtime.machine()["id"],  # results are bit-exact on one machine only
            "data_files": data_files()}
    record = {"metrics": metrics, "test_correct": test_correct.astype(np.int8),
              "test_pred": test_pred.astype(np.int16), "info": info, "history": hist}
    if keep_weights:
        record["weights"] = {f"w{i}": np.asarray(w) for i, w in enumerate(model.get_weights())}
    return record, RunContext(model, spec, plan, bundle, stage, snapshots, hist)


def _retrain_with_weights(store, config, spec, plan, bundle, data_files):
    """Retrains a run stored without weights, replaces its row with one that keeps them: (record, context).

    As `train(evaluate=...)` does for such a run: bit-identical on a machine like the
    one that stored it, not on another (the run is then the retrained one).
    """
    record, context = _train_record(spec, plan, bundle or load_data(spec), callbacks=None, verbose=0,
                                    keep_weights=True, data_files=data_files)
    return _rerecord(store, config, record), context


def _rerecord(store, config, record) -> dict:
    """Replaces a run's stored row (one stored without weights, now retrained) by `record`: the row as stored."""
    store.record(RUNS, config, 0, record)
    return store.get(RUNS, config, 0)


def _check_same_data(record, data_files, spec) -> None:
    """Refuse a stored run trained on other data files than those this spec reads now.

    The store key is the spec and the seeds, not the files: a `--data-dir` holding
    another copy (a subset, another version) would otherwise read back the first
    data's runs. Runs stored before the fingerprint (2026-12-07) and data that cannot
    be fingerprinted here (tfds, files absent) are not checked.
    """
    stored = (record.get("info") or {}).get("data_files")
    if stored is None:
        return
    now = data_files()
    if now is not None and now != stored:
        raise ValueError(
            f"The results store holds a run of this spec ({spec.dataset}, {spec.model}) trained on other "
            f"{spec.dataset} files (fingerprint {stored}) than those found now ({now}): the store keys a run by its "
            "spec and seeds, not by its data files. Use another store (output folder) for these files, or the files "
            "the store's runs were trained on.")


def _weights(record):
    weights = record["weights"]
    return [np.asarray(weights[f"w{i}"]) for i in range(len(weights))]


__all__ = ["DataBundle", "Run", "RunContext", "TrainSpec", "as_plan", "load_data", "predict_logits",
           "stratified_indices", "train"]
