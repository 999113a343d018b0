"""``RobustModel``: adversarial training and logit regularization through ``model.fit``."""

from __future__ import annotations

import types
import warnings

import keras
import numpy as np
import tensorflow as tf

from tf_dlthesis._checks import check_bool
from tf_dlthesis._seeds import check_int_seed, fresh_seed
from tf_dlthesis.augment import mix_batch  # robustness may use augment (DESIGN.md: LRM's VH-mixup)

from . import attacks as _attacks
from .losses import (
    CLASS_REDUCTIONS,
    H_GRADIENTS,
    DecoupledLogitPairing,
    LabelSmoothingCrossEntropy,
    LogitPairing,
    LogitSqueezing,
    _check_integer_labels,
    _check_ratio,
    _real,
)

DEFENSES = ("none", "label_smoothing", "pgd", "alp", "logit_squeezing", "clean_logit_pairing", "lrm")
MIXINGS = (None, "vh_mixup", "mixup")
#: Adversaries RobustModel can train against (evaluation attacks: ``attacks.ATTACK_NAMES``).
_TRAIN_ATTACKS = ("pgd", "fgsm")

# Defense -> default parameters.  "pgd"/"alp" default to Eq. 3.1's even clean/adversarial mix
# (Madry et al. / Kannan et al.); the thesis's own runs (PRESETS) train on adversarial examples only.
# "lrm" defaults to the thesis's CIFAR-10 composition (Sec. 3.5.2).
_DEFAULTS = {
    "none": {"smoothing": 0.0},
    "label_smoothing": {"smoothing": 0.1},
    "pgd": {"clean_weight": 0.5, "smoothing": 0.0, "squeeze_weight": 0.0},
    "alp": {"clean_weight": 0.5, "smoothing": 0.0, "pairing_weight": 0.5, "squeeze_weight": 0.0},
    "logit_squeezing": {"smoothing": 0.0, "squeeze_weight": 0.05},
    "clean_logit_pairing": {"smoothing": 0.0, "pairing_weight": 0.5, "squeeze_weight": 0.0},
    "lrm": {"clean_weight": 0.0, "smoothing": 0.1, "mixing": "vh_mixup", "beta": 1e-3, "ratio": 0.125,
            "h_gradient": "adversarial"},
}
_ADVERSARIAL = ("pgd", "alp", "lrm")
_COMMON = {"mixing": None, "class_reduction": None}
#: Deprecated keyword -> new keyword (accepted for one release with a DeprecationWarning).
_RENAMED = {"alpha": "clean_weight", "pairing_reduction": "class_reduction"}
#: The loss-term metrics, in the order they appear in the logs.
_TERMS = ("clean_loss", "adversarial_loss", "pairing_loss", "logit_norm_loss", "squeezing_loss")


def _freeze(mapping):
    return types.MappingProxyType({k: _freeze(v) if isinstance(v, dict) else v for k, v in mapping.items()})


#: The thesis's per-dataset settings (Sec. 3.5.1-3.5.2), read-only.  ``"attack"`` holds the
#: training/evaluation attack (L-inf epsilon, PGD step); each defense key holds that defense's
#: parameters.  All baselines train on adversarial examples only (``clean_weight=0``, Sec. 3.5.2).
#: The thesis gives no ALP weight for SVHN, so ``"svhn"`` keeps ALP's default 0.5.
PRESETS = _freeze({
    "cifar10": {
        "attack": {"epsilon": 0.03, "step_size": 0.0078},
        "pgd": {"clean_weight": 0.0},
        "alp": {"clean_weight": 0.0, "pairing_weight": 0.5},
        "lrm": {"clean_weight": 0.0, "smoothing": 0.1, "mixing": "vh_mixup", "beta": 1e-3, "ratio": 0.125},
    },
    "cifar100": {
        "attack": {"epsilon": 0.03, "step_size": 0.0078},
        "pgd": {"clean_weight": 0.0},
        "alp": {"clean_weight": 0.0, "pairing_weight": 5.0},
        "lrm": {"clean_weight": 0.0, "smoothing": 0.1, "mixing": "vh_mixup", "beta": 3e-5, "ratio": 0.95},
    },
    "svhn": {
        "attack": {"epsilon": 12 / 255, "step_size": 3 / 255},
        "pgd": {"clean_weight": 0.0},
        "alp": {"clean_weight": 0.0},
        "lrm": {"clean_weight": 0.0, "smoothing": 0.2, "mixing": "mixup", "beta": 1e-4, "ratio": 0.95},
    },
})


def _replica_share(value):
    """``value / replicas`` under a distribution strategy (identity on one device).

    What the Keras losses do to each replica's value (the replicas' gradients are summed).
    """
    replicas = tf.distribute.get_strategy().num_replicas_in_sync
    return value * tf.cast(1.0 / replicas, value.dtype) if replicas > 1 else value


def _unscaled(value):
    """A replica's loss value as Keras logs it: times the number of replicas (identity on one device).

    Keras's own train / test steps undo the Keras losses' ``1 / replicas`` before updating the loss metric.
    """
    replicas = tf.distribute.get_strategy().num_replicas_in_sync
    return value * tf.cast(replicas, value.dtype) if replicas > 1 else value


def _number(name, value, lo, hi, *, lo_open=False, hi_open=False):
    value = _real(name, value)
    if not ((value > lo if lo_open else value >= lo) and (value < hi if hi_open else value <= hi)):
        interval = f"{'(' if lo_open else '['}{lo}, {hi}{')' if hi_open else ']'}"
        raise ValueError(f"`{name}` must be a number in {interval}. Received: {name}={value!r}")
    return value


@keras.saving.register_keras_serializable(package="tf_dlthesis")
class RobustModel(keras.Model):
    """A Keras model that trains a Chapter-3 defense through ``fit``.

    Wraps a model returning logits.  Each training step (traced once, attack
    included) optionally mixes the batch (``mixing``), builds the adversarial
    batch in-graph with the inner model in inference mode, runs the forward
    pass(es) and minimises the defense's loss:

    * ``"none"``: cross-entropy (optionally smoothed, ``smoothing``).
    * ``"label_smoothing"``: cross-entropy to the Eq. 3.8 targets (``smoothing`` s, default 0.1).
    * ``"pgd"``: Eq. 3.1, ``clean_weight CE(x) + (1 - clean_weight) CE(g(x))``
      (default 0.5; ``clean_weight=0`` trains on adversarial examples only, as
      the thesis's baselines do, Sec. 3.5.2).
    * ``"alp"``: Eq. 3.2, the above plus ``pairing_weight`` times the logit
      pairing of Eq. 3.9 (:class:`LogitPairing`).  Its default class reduction
      is the *mean* over logits of Kannan et al.'s ``mean_squared_error``, so
      ``pairing_weight=0.5`` (CIFAR-10) and 5.0 (CIFAR-100) mean what they mean
      in their paper and the thesis; ``class_reduction="sum"`` uses the squared
      norm of Eq. 3.9 (``C`` times stronger).
    * ``"logit_squeezing"``: clean CE plus ``squeeze_weight ||f(x)||^2`` (squared
      norm, :class:`LogitSqueezing`).
    * ``"clean_logit_pairing"``: clean CE plus ``pairing_weight`` times the
      logit pairing of randomly paired clean examples (Kannan et al.).
    * ``"lrm"``: the thesis's combination (Sec. 3.5.2).  Defaults are its
      CIFAR-10 settings: label smoothing ``smoothing=0.1`` on VH-mixup inputs
      (``mixing="vh_mixup"``), adversarial examples only (``clean_weight=0``),
      and the decoupled pairing of Eq. 3.11 (:class:`DecoupledLogitPairing`)
      with ``beta=1e-3`` on the logit norms and the pairing cross-entropy ``h``
      weighted ``stop_gradient(adv_loss / h) / ratio`` with ``ratio=0.125``, so
      the pairing term equals ``adv_loss / ratio``: ``ratio`` is the thesis's
      "ratio between the adversarial training loss and the pairing loss"
      (``adv_loss`` is the adversarial training loss of Eq. 3.1, the CE terms).
      ``h`` trains only the adversarial logits by default
      (``h_gradient="adversarial"``, the TF1 ``softmax_cross_entropy``
      semantics of the thesis's code); ``h_gradient="both"`` lets gradients into
      the clean distribution too, which adds an entropy-minimising term and
      collapses training to one predicted class (kept to document that).

    ``preset`` selects the thesis's per-dataset settings (:data:`PRESETS`:
    ``"cifar10"``, ``"cifar100"``, ``"svhn"``): the attack's epsilon / step and
    the defense's parameters (e.g. LRM on CIFAR-100: beta 3e-5, ratio 0.95;
    ALP on CIFAR-100: pairing weight 5.0).  Any explicit keyword overrides the
    preset, which overrides the defaults.

    ``squeeze_weight`` may be added to ``"pgd"``/``"alp"`` too (Fig. 3.1 right):
    it penalises the squared norm of every logit vector the loss is computed on.
    ``class_reduction`` (``"sum"`` or ``"mean"`` over classes) applies to every
    squared-norm term of the defense; ``None`` keeps each term's own default
    (ALP / clean pairing: mean; squeezing and LRM norms: sum).

    Design (Keras 3): the loss lives in :meth:`compute_loss` and each
    regularizer is a Keras ``Loss`` object.  ``train_step`` is overridden only
    to run the forward passes the defense needs (Keras's default step would
    first compute ``y_pred = self(x)`` on clean inputs, a wasted pass for
    defenses that train on adversarial examples only): it mixes, attacks, runs
    one forward pass (clean and adversarial batches concatenated into one pass
    when both are needed, so batch normalization sees them together, as in
    Kannan et al.'s code) and hands the logits to ``compute_loss`` as
    ``y_pred = {"clean": ..., "adversarial": ...}``.  ``compute_loss`` also
    accepts ``y_pred=None`` (it then runs those passes itself) and, for
    defenses without an adversary, plain clean logits.  ``evaluate`` /
    ``test_step`` report the *plain* cross-entropy on clean inputs (no
    smoothing, no regularizers) with the compiled metrics.

    Metrics: besides ``loss`` and the compiled metrics (computed on the
    adversarial logits of adversarial defenses and on the clean logits
    otherwise, against the possibly mixed labels), ``fit`` logs each loss term
    as it enters the total (``keras.metrics.Mean`` trackers, in ``metrics``):

    * ``clean_loss``: ``clean_weight * CE(f(x))`` (weight 1 for the
      non-adversarial defenses); absent when ``clean_weight=0``.
    * ``adversarial_loss``: ``(1 - clean_weight) * CE(f(g(x)))`` (adversarial
      defenses; CE on the mixed inputs when ``mixing`` is set).
    * ``pairing_loss``: ALP / clean pairing: ``pairing_weight`` times the
      pairing; LRM: ``stop_gradient(adv_loss / h) / ratio * h``, so per batch
      ``pairing_loss / (clean_loss + adversarial_loss) == 1 / ratio``.
    * ``logit_norm_loss``: LRM's ``beta (||f(x)||^2 + ||f(g(x))||^2)``.
    * ``squeezing_loss``: ``squeeze_weight ||.||^2`` when ``squeeze_weight > 0``.

    Example:
        >>> robust = RobustModel(models.build("preact_resnet18", (32, 32, 3), 100), "lrm",
        ...                      preset="cifar100", num_steps=10)
        >>> robust.compile(keras.optimizers.SGD(0.1, momentum=0.9), metrics=["accuracy"])
        >>> history = robust.fit(train_ds, epochs=101)
        >>> history.history["pairing_loss"], history.history["adversarial_loss"]

    Args:
        model: Keras model returning logits.
        defense: one of ``DEFENSES``.
        attack: ``"pgd"`` or ``"fgsm"`` (adversary used during training).
        epsilon: L-inf radius (default: the preset's, else 0.03 as in the thesis).
        step_size: PGD step (default: the preset's, else 0.0078). PGD only: FGSM takes
            one step of size ``epsilon``, so ``attack="fgsm"`` refuses a ``step_size``.
        num_steps: PGD iterations in training (default 10; the thesis gives epsilon 0.03 and step
            0.0078, Sec. 3.5.1, but no training step count; its 5/10/20/1000 steps are evaluation
            attacks). PGD only, like ``step_size``.
        random_start: PGD random start (Madry et al.; FGSM has none).
        clip_range: valid input range.
        seed: base seed; the per-step mixing / attack / pairing seeds derive
            from ``fold_in(seed, optimizer.iterations)`` (stateless, resumes
            exactly; under a distribution strategy also folded with the
            replica id, so replicas draw differently).  ``None`` draws a fresh
            seed once, at construction.
        preset: ``None`` or a key of :data:`PRESETS`.
        check_numerics: fail with an error naming the tensor (input images,
            logits ``y_pred``, soft labels) when NaN or Inf enter a training
            step (off by default: it adds checks to every step).
        **defense_params: ``clean_weight``, ``smoothing``, ``pairing_weight``,
            ``squeeze_weight``, ``beta``, ``ratio`` (> 0), ``h_gradient``,
            ``mixing`` (``None``, ``"vh_mixup"``, ``"mixup"``),
            ``class_reduction``, as applicable to ``defense``.  The deprecated
            names ``alpha`` (now ``clean_weight``, which no longer collides with
            the mixing methods' Beta concentration) and ``pairing_reduction``
            (now ``class_reduction``) still work for one release.

    Labels may be sparse ``(N,)`` or ``(N, 1)`` (as ``keras.datasets``
    returns them), or one-hot / soft ``(N, C)``.  They are checked once,
    eagerly, when ``fit`` / ``evaluate`` start (not inside the compiled step):
    in-memory ``y`` arrays against ``[0, C - 1]`` (``C`` the model's logits;
    for a subclassed or unbuilt inner model, whose output shape Keras does not
    know, from one inference pass on one example) and one-hot widths against
    ``C``; for a
    ``tf.data.Dataset`` only what its ``element_spec`` shows (label rank and
    one-hot width) can be checked without reading it, so sparse label *values*
    of a dataset are not range-checked (an out-of-range value then fails inside
    the step, or is one-hot encoded to zeros by the smoothed loss).

    Raises:
        ValueError: unknown defense / attack / mixing / preset, a parameter the
            defense does not take, ``num_steps`` or ``step_size`` with
            ``attack="fgsm"``, or an out-of-range value (e.g. ``ratio <= 0``);
            at ``fit`` / ``evaluate``: labels ``y`` out of range, not integers
            or of the wrong width (see above); at ``fit`` of an adversarial
            defense: in-memory images ``x`` outside ``clip_range``.
        TypeError: ``model`` is not a Keras model; a parameter that is not a
            real number.

    Reference:
        Thesis Sec. 3.2-3.5 (Eqs. 3.1, 3.2, 3.8, 3.9, 3.11); https://arxiv.org/abs/1906.03749;
        Kannan et al., https://arxiv.org/abs/1803.06373.
    """

    def __init__(self, model, defense: str = "none", attack: str = "pgd", *, epsilon: float | None = None,
                 step_size: float | None = None, num_steps: int | None = None, random_start: bool = True,
                 clip_range=(0.0, 1.0), seed: int | None = 0, preset: str | None = None,
                 check_numerics: bool = False, **defense_params):
        keras_kwargs = {k: defense_params.pop(k) for k in ("name", "trainable", "dtype") if k in defense_params}
        super().__init__(**keras_kwargs)
        if not isinstance(model, keras.Model):
            raise TypeError(f"`model` must be a keras.Model returning logits. Received: {model!r}")
        if defense not in DEFENSES:
            raise ValueError(f"Unknown defense {defense!r}. Expected one of {DEFENSES}.")
        if attack not in _TRAIN_ATTACKS:
            raise ValueError(f"Unknown attack {attack!r}. Expected one of {_TRAIN_ATTACKS}.")
        if preset is not None and preset not in PRESETS:
            raise ValueError(f"Unknown preset {preset!r}. Known presets: {tuple(PRESETS)}.")
        for old, new in _RENAMED.items():
            if old in defense_params:
                value = defense_params.pop(old)
                warnings.warn(f"`{old}` is deprecated and will be removed in the next release; use `{new}` "
                              f"instead. Received: {old}={value!r}", DeprecationWarning, stacklevel=2)
                if new in defense_params and defense_params[new] != value:
                    raise ValueError(f"Pass either `{new}` or the deprecated `{old}`, not both. "
                                     f"Received: {new}={defense_params[new]!r}, {old}={value!r}")
                defense_params[new] = value
        allowed = set(_DEFAULTS[defense]) | set(_COMMON)
        unknown = set(defense_params) - allowed
        if unknown:
            raise ValueError(f"Defense {defense!r} does not take {sorted(unknown)}. Allowed: {sorted(allowed)}.")
        preset_cfg = PRESETS[preset] if preset is not None else {}
        params = {**_COMMON, **_DEFAULTS[defense], **preset_cfg.get(defense, {}), **defense_params}
        self._check_params(params)
        attack_cfg = preset_cfg.get("attack", {})
        epsilon = attack_cfg.get("epsilon", 0.03) if epsilon is None else epsilon
        # validate the attack settings once, eagerly (same checks as the attack functions)
        epsilon = _attacks._check_float("epsilon", epsilon, minimum=0.0)
        if attack == "fgsm":  # one step of size epsilon: a PGD step size or count would be ignored
            given = {k: v for k, v in (("num_steps", num_steps), ("step_size", step_size)) if v is not None}
            if given:
                raise ValueError(
                    "attack='fgsm' takes one step of size `epsilon`; `num_steps` and `step_size` are settings of "
                    "attack='pgd'. Received: " + ", ".join(f"{k}={v!r}" for k, v in given.items()))
        else:
            step_size = attack_cfg.get("step_size", 0.0078) if step_size is None else step_size
            step_size = _attacks._check_float("step_size", step_size, minimum=0.0)
            num_steps = _attacks._check_steps(10 if num_steps is None else num_steps)
        lo, hi = _attacks._check_clip_range(clip_range)
        seed = check_int_seed(seed, "seed")
        self.check_numerics = check_bool("check_numerics", check_numerics)
        self.model = model
        self.defense = defense
        self.attack = attack
        self.preset = preset
        self.epsilon, self.step_size, self.num_steps = epsilon, step_size, num_steps
        self.random_start = check_bool("random_start", random_start)
        self.clip_range = None if lo is None else (lo, hi)
        self.seed = fresh_seed() if seed is None else seed
        self.defense_params = params
        self._train_attack = _attacks.make_attack(
            "fgsm" if attack == "fgsm" else f"pgd{num_steps}", epsilon=epsilon, step_size=step_size,
            clip_range=self.clip_range, random_start=self.random_start)
        # the defense's losses (Keras Loss objects)
        reduction = params["class_reduction"]
        self._train_ce = LabelSmoothingCrossEntropy(params.get("smoothing", 0.0), name="train_cross_entropy",
                                                    check_numerics=check_numerics)
        self._eval_ce = LabelSmoothingCrossEntropy(0.0, name="cross_entropy")
        if defense in ("alp", "clean_logit_pairing"):
            self._pairing = LogitPairing(reduction)
        elif defense == "lrm":
            self._pairing = DecoupledLogitPairing(params["beta"], params["ratio"], params["h_gradient"], reduction)
        else:
            self._pairing = None
        squeeze = params.get("squeeze_weight", 0.0)
        self._squeezing = LogitSqueezing(reduction) if squeeze > 0 else None
        self._term_names = self._terms_logged()
        self._term_trackers = [keras.metrics.Mean(name=n) for n in self._term_names]
        self._attack_trace_count = 0  # incremented when the attack is traced (Python side effect); tests read it
        if model.built:
            self.built = True

    @staticmethod
    def _check_params(params):
        if params["mixing"] not in MIXINGS:
            raise ValueError(f"Unknown mixing {params['mixing']!r}. Expected one of {MIXINGS}.")
        if params["class_reduction"] is not None and params["class_reduction"] not in CLASS_REDUCTIONS:
            raise ValueError(f"`class_reduction` must be None or one of {CLASS_REDUCTIONS}. "
                             f"Received: class_reduction={params['class_reduction']!r}")
        if "clean_weight" in params:
            params["clean_weight"] = _number("clean_weight", params["clean_weight"], 0.0, 1.0)
        params["smoothing"] = _number("smoothing", params.get("smoothing", 0.0), 0.0, 1.0, hi_open=True)
        for k in ("pairing_weight", "squeeze_weight", "beta"):
            if k in params:
                params[k] = _number(k, params[k], 0.0, float("inf"), hi_open=True)
        if "ratio" in params:
            params["ratio"] = _check_ratio(params["ratio"])
        if "h_gradient" in params and params["h_gradient"] not in H_GRADIENTS:
            raise ValueError(f"`h_gradient` must be one of {H_GRADIENTS}. "
                             f"Received: h_gradient={params['h_gradient']!r}")

    def _terms_logged(self):
        d, p = self.defense, self.defense_params
        names = set()
        if d in _ADVERSARIAL:
            names.add("adversarial_loss")
            if p["clean_weight"] > 0:
                names.add("clean_loss")
        else:
            names.add("clean_loss")
        if self._pairing is not None:
            names.add("pairing_loss")
        if d == "lrm":
            names.add("logit_norm_loss")
        if self._squeezing is not None:
            names.add("squeezing_loss")
        return tuple(n for n in _TERMS if n in names)

    @property
    def attack_trace_count(self):
        """Deprecated: how often the training attack was traced (a test counter, now private)."""
        warnings.warn("`RobustModel.attack_trace_count` is deprecated and will be removed in the next release "
                      "(it is a test-only counter).", DeprecationWarning, stacklevel=2)
        return self._attack_trace_count

    # ------------------------------------------------------------------ label checks
    def _num_classes(self, x=None):
        """The inner model's number of logits ``C``.

        Keras's output shape when it is known without a forward pass; else
        (a subclassed or not yet built model) the width of one inference-mode
        pass on the first example of the images ``x`` (eager or traced), or
        ``None`` without ``x``.
        """
        width = _attacks._num_classes(self.model)
        if width is None and x is not None:
            width = self.model(_attacks.as_images(x[:1]), training=False).shape[-1]
        return width

    @staticmethod
    def _check_one_image_input(x):
        """Refuses the inputs of a multi-input model (a dict, or a list / tuple of arrays, also as a dataset's
        inputs): the attacks perturb one image tensor. Keras would fail later with an unnamed TypeError."""
        images = x
        if isinstance(x, tf.data.Dataset):
            spec = x.element_spec
            images = spec[0] if isinstance(spec, tuple) and spec else spec
        several = isinstance(images, dict) or (
            isinstance(images, (list, tuple)) and any(isinstance(v, (np.ndarray, tf.TensorSpec)) or tf.is_tensor(v)
                                                      for v in images))
        if several:
            kind = f"a dict with keys {sorted(map(str, images))}" if isinstance(images, dict) else \
                f"a {type(images).__name__} of {len(images)} inputs"
            raise TypeError(f"RobustModel trains and attacks a model with one image input: `x` must be images "
                            f"(N, H, W, C) as an array or tensor, or a tf.data.Dataset of (images, labels). "
                            f"Received: x as {kind}")

    def _check_labels(self, x, y):
        """Checks labels once at the API boundary (``fit`` / ``evaluate``), never per batch."""
        self._check_one_image_input(x)
        if isinstance(x, tf.data.Dataset):
            spec = x.element_spec
            images, labels = spec[:2] if isinstance(spec, (tuple, list)) and len(spec) >= 2 else (spec, None)
            probe = None  # one zero image of the dataset's shape: the width of a model Keras cannot tell
            if isinstance(images, tf.TensorSpec) and images.shape.rank and images.shape[1:].is_fully_defined():
                probe = tf.zeros([1, *images.shape[1:]], images.dtype)
            num_classes = self._num_classes(probe)
            if num_classes is not None and labels is not None:
                self._check_label_spec(labels.shape, labels.dtype, num_classes)
            return
        if y is None or isinstance(y, tf.data.Dataset) or not hasattr(y, "__len__"):
            return
        num_classes = self._num_classes(x if hasattr(x, "__len__") and len(x) else None)
        if num_classes is None:
            return
        y = np.asarray(y)
        if y.ndim == 2 and y.shape[-1] != 1:
            if y.shape[-1] != num_classes:
                raise ValueError(f"One-hot/soft `y` must have {num_classes} columns (the model's logits). "
                                 f"Received: y.shape={y.shape}")
            return
        if y.ndim not in (1, 2):
            raise ValueError(f"`y` must be sparse labels (N,) or one-hot labels (N, {num_classes}). "
                             f"Received: y.shape={y.shape}")
        _check_integer_labels(y)
        values = y.reshape(-1)
        bad = np.unique(values[(values < 0) | (values >= num_classes)])
        if bad.size:
            raise ValueError(f"`y` has labels outside [0, {num_classes - 1}] for a model with {num_classes} "
                             f"logits. Received out-of-range labels: {bad[:10].tolist()}")

    @staticmethod
    def _check_label_spec(shape, dtype, num_classes):
        if (dtype.is_floating and shape.rank is not None and shape.rank >= 2
                and shape[-1] not in (None, 1, num_classes)):
            raise ValueError(f"The dataset's one-hot/soft labels `y` must have {num_classes} columns (the model's "
                             f"logits). Received: labels of shape {shape}")

    def _refuse_compiled_loss(self):
        if getattr(self, "loss", None) is not None:
            raise ValueError(f"RobustModel trains with its defense's own loss ({self.defense!r}: Eqs. 3.1-3.11) and "
                             f"evaluates the plain cross-entropy, so the `loss` given to compile would be ignored; "
                             f"compile a RobustModel without it (Keras keeps a compiled loss through later compile "
                             f"calls). Received: loss={self.loss!r}")

    def fit(self, x=None, y=None, *args, **kwargs):
        """``keras.Model.fit``, after checking the labels (and in-memory images) once (see the class docstring)."""
        self._refuse_compiled_loss()
        self._check_labels(x, y)
        if self.defense in _ADVERSARIAL and (isinstance(x, np.ndarray) or tf.is_tensor(x)):
            _attacks._check_clip_range_values(x, self.clip_range)  # the training attack clips into clip_range
        return super().fit(x, y, *args, **kwargs)

    def evaluate(self, x=None, y=None, *args, **kwargs):
        """``keras.Model.evaluate``, after checking the labels once (see the class docstring)."""
        self._refuse_compiled_loss()
        self._check_labels(x, y)
        return super().evaluate(x, y, *args, **kwargs)

    # ------------------------------------------------------------------ keras plumbing
    def call(self, inputs, training=None):
        # integer (e.g. uint8) images are scaled by 1/255 here too, as in training and `evaluate`
        return self.model(_attacks.as_images(inputs), training=training)

    def build(self, input_shape):
        if not self.model.built:
            self.model.build(input_shape)
        self.built = True

    def get_config(self):
        return {
            "model": keras.saving.serialize_keras_object(self.model),
            "defense": self.defense, "attack": self.attack, "epsilon": self.epsilon,
            "step_size": self.step_size, "num_steps": self.num_steps, "random_start": self.random_start,
            "clip_range": self.clip_range, "seed": self.seed, "preset": self.preset, "name": self.name,
            "trainable": self.trainable, "dtype": keras.saving.serialize_keras_object(self.dtype_policy),
            "check_numerics": self.check_numerics, **self.defense_params,
        }

    @classmethod
    def from_config(cls, config):
        """Rebuild from :meth:`get_config`; configs saved with ``alpha`` / ``pairing_reduction`` still load.

        So do FGSM configs of earlier releases, which stored the (unused) PGD
        ``num_steps`` / ``step_size``: they are dropped.
        """
        config = dict(config)
        if config.get("attack") == "fgsm":
            for pgd_only in ("num_steps", "step_size"):
                config.pop(pgd_only, None)
        model = keras.saving.deserialize_keras_object(config.pop("model"))
        return cls(model, **config)

    # ------------------------------------------------------------------ the defense
    def adversarial_examples(self, x, y, seed):
        """Build the training-time adversarial batch (inner model in inference mode).

        Args:
            x: float images. y: sparse or (soft) one-hot labels.
            seed: shape-[2] int stateless seed.

        Returns:
            Adversarial images.
        """
        self._attack_trace_count += 1
        return self._train_attack.generate(self.model, x, y, seed)

    def _step_seeds(self, step):
        """(mixing, attack, pairing) stateless seeds of training step ``step``."""
        base = tf.random.experimental.stateless_fold_in(tf.constant([self.seed, 0], tf.int64), step)
        context = tf.distribute.get_replica_context()
        if context is not None and context.num_replicas_in_sync > 1:  # each replica its own draws
            replica = tf.cast(context.replica_id_in_sync_group, tf.int64)
            base = tf.random.experimental.stateless_fold_in(base, replica)
        return tf.unstack(tf.random.experimental.stateless_split(base, 3))

    def _current_step(self):
        return self.optimizer.iterations if getattr(self, "optimizer", None) is not None else 0

    def _mix(self, x, y, seed):
        method = self.defense_params["mixing"]
        if method is None:
            return x, y
        if y.shape.rank == 1 or (y.shape.rank == 2 and y.shape[-1] == 1):
            y = tf.one_hot(tf.reshape(tf.cast(y, tf.int64), [-1]), self._num_classes(x))
        return mix_batch(x, tf.cast(y, tf.float32), method, seed=seed)

    def _partner(self, logits, seed):
        """Logits of a random partner per example (clean logit pairing): another example of the batch.

        Each example is paired with the next one in a random order of the batch (a random
        cyclic derangement), so no example is its own partner (a random permutation pairs
        about one example per batch with itself, which adds nothing to the pairing loss).
        """
        n = tf.shape(logits)[0]
        order = tf.argsort(tf.random.stateless_uniform([n], seed))
        partner = tf.scatter_nd(order[:, None], tf.roll(order, shift=-1, axis=0), [n])
        return tf.gather(logits, partner)

    def _forward(self, x, y, step, training=True):
        """Mixing, attack and forward pass(es) of one training step.

        Returns:
            ``(x, y, y_pred)``: the (mixed) inputs and labels the loss uses and
            ``y_pred = {"clean": logits or None, "adversarial": logits or None}``
            (plus ``"partner"`` for clean logit pairing).
        """
        mix_seed, attack_seed, pair_seed = self._step_seeds(step)
        x, y = _attacks.as_images(x), tf.convert_to_tensor(y)
        if self.check_numerics:
            x = tf.debugging.check_numerics(x, "RobustModel: the input images `x` have NaN or Inf")
        x, y = self._mix(x, y, mix_seed)
        out = {"clean": None, "adversarial": None}
        if self.defense in _ADVERSARIAL:
            x_adv = self.adversarial_examples(x, y, attack_seed)
            if self.defense_params["clean_weight"] > 0 or self.defense in ("alp", "lrm"):
                both = self.model(tf.concat([x, x_adv], 0), training=training)  # one pass: shared BN statistics
                out["clean"], out["adversarial"] = tf.split(both, 2, axis=0)
            else:  # adversarial examples only: no clean pass at all
                out["adversarial"] = self.model(x_adv, training=training)
        else:
            out["clean"] = self.model(x, training=training)
            if self.defense == "clean_logit_pairing":
                out["partner"] = self._partner(out["clean"], pair_seed)
        return x, y, out

    def _loss_terms(self, y, y_pred, sample_weight=None):
        """``{term name: scalar}`` of the defense; the total loss is their sum."""
        d, p = self.defense, self.defense_params
        clean, adv = y_pred.get("clean"), y_pred.get("adversarial")
        terms = {}
        if d in _ADVERSARIAL:
            w = p["clean_weight"]
            if w > 0:
                terms["clean_loss"] = w * self._train_ce(y, clean, sample_weight)
            terms["adversarial_loss"] = (1.0 - w) * self._train_ce(y, adv, sample_weight)
            if d == "alp":
                terms["pairing_loss"] = p["pairing_weight"] * self._pairing(clean, adv, sample_weight)
            elif d == "lrm":
                training_loss = terms["adversarial_loss"] + terms.get("clean_loss", 0.0)  # Eq. 3.1
                terms.update(self._pairing.terms(clean, adv, training_loss, sample_weight))
            if clean is None:
                squeezed, sq_weight = adv, sample_weight
            else:
                squeezed = tf.concat([clean, adv], 0)
                sq_weight = None if sample_weight is None else tf.concat([sample_weight] * 2, 0)
        else:
            terms["clean_loss"] = self._train_ce(y, clean, sample_weight)
            if d == "clean_logit_pairing":
                partner = y_pred.get("partner")
                if partner is None:
                    partner = self._partner(clean, self._step_seeds(self._current_step())[2])
                terms["pairing_loss"] = p["pairing_weight"] * self._pairing(clean, partner, sample_weight)
            squeezed, sq_weight = clean, sample_weight
        if self._squeezing is not None:
            terms["squeezing_loss"] = p["squeeze_weight"] * self._squeezing(squeezed, squeezed, sq_weight)
        return {n: terms[n] for n in self._term_names}

    def _with_regularization(self, loss):
        # as in Keras's `compute_loss`: under a distribution strategy the regularization losses are scaled
        # by 1 / replicas like the Loss objects' terms (the replicas' gradients are summed)
        return loss + _replica_share(tf.add_n(self.losses)) if self.losses else loss

    def compute_loss(self, x=None, y=None, y_pred=None, sample_weight=None, training=True):
        """The defense's loss (training) or the plain cross-entropy (evaluation).

        Args:
            x: input images (used only when ``y_pred`` is None).
            y: sparse or (soft) one-hot labels (the mixed labels when ``y_pred``
                comes from the training forward pass).
            y_pred: ``None`` (the forward passes the defense needs are run
                here), the dict ``{"clean": ..., "adversarial": ...}`` of logits
                that ``train_step`` builds, or plain clean logits (evaluation,
                and training of defenses without an adversary).
            sample_weight: optional per-example weights.
            training: ``True``: the defense's total loss (and its loss-term
                metrics are updated); ``False``: the plain cross-entropy
                (no smoothing) of the clean logits.

        Returns:
            Scalar loss, including the inner model's regularization losses.

        Raises:
            ValueError: plain logits for an adversarial defense in training.
        """
        if not training:
            if y_pred is None:
                y_pred = self(x, training=False)
            if isinstance(y_pred, dict):
                y_pred = y_pred["clean"]
            return self._with_regularization(self._eval_ce(y, y_pred, sample_weight))
        if y_pred is None:
            x, y, y_pred = self._forward(x, y, self._current_step(), training=True)
        elif not isinstance(y_pred, dict):
            if self.defense in _ADVERSARIAL:
                raise ValueError(f"Defense {self.defense!r} needs adversarial logits: call compute_loss with "
                                 "y_pred=None (the forward passes are then run here) or with the dict "
                                 "{'clean': ..., 'adversarial': ...}. Received: a tensor.")
            y_pred = {"clean": y_pred, "adversarial": None}
        terms = self._loss_terms(y, y_pred, sample_weight)
        logits = y_pred["adversarial"] if y_pred.get("adversarial") is not None else y_pred["clean"]
        batch = tf.shape(logits)[0]
        for tracker in self._term_trackers:
            tracker.update_state(_unscaled(terms[tracker.name]), sample_weight=batch)
        return self._with_regularization(tf.add_n(list(terms.values())))

    def defense_loss(self, x, y, step, training=True):
        """The defense's loss on one batch, for inspection (no metric updates).

        Args:
            x: images. y: sparse or one-hot labels.
            step: int scalar (seeds derive from ``fold_in(seed, step)``).
            training: passed to the inner model (``False``: inference-mode BN).

        Returns:
            ``(loss, logits, labels)``: the total loss, the logits the metrics
            use (adversarial for adversarial defenses) and the (mixed) labels.
        """
        x, y, y_pred = self._forward(x, y, step, training=training)
        terms = self._loss_terms(y, y_pred)
        logits = y_pred["adversarial"] if y_pred.get("adversarial") is not None else y_pred["clean"]
        return self._with_regularization(tf.add_n(list(terms.values()))), logits, y

    # ------------------------------------------------------------------ steps
    @staticmethod
    def _metric_labels(y_used, y_given):
        """Labels for the compiled metrics in the format of the data's labels (sparse stays sparse)."""
        given_dense = y_given.shape.rank == 2 and y_given.shape[-1] != 1
        if y_used.shape.rank == 2 and y_used.shape[-1] != 1 and not given_dense:
            return tf.argmax(y_used, axis=-1)
        return y_used

    def _update_loss_metric(self, loss, batch):
        for metric in self.metrics:
            if metric.name == "loss":
                metric.update_state(_unscaled(loss), sample_weight=batch)

    def train_step(self, data):
        x, y, sample_weight = keras.utils.unpack_x_y_sample_weight(data)
        y_given = tf.convert_to_tensor(y)
        with tf.GradientTape() as tape:
            x, y, y_pred = self._forward(x, y_given, self.optimizer.iterations, training=True)
            loss = self.compute_loss(x, y, y_pred, sample_weight, training=True)
            scaled = self.optimizer.scale_loss(loss)
        grads = tape.gradient(scaled, self.trainable_variables)
        self.optimizer.apply_gradients(zip(grads, self.trainable_variables))
        logits = y_pred["adversarial"] if y_pred["adversarial"] is not None else y_pred["clean"]
        self._update_loss_metric(loss, tf.shape(logits)[0])
        return self.compute_metrics(x, self._metric_labels(y, y_given), logits, sample_weight)

    def test_step(self, data):
        x, y, sample_weight = keras.utils.unpack_x_y_sample_weight(data)
        y = tf.convert_to_tensor(y)
        logits = self(x, training=False)
        loss = self.compute_loss(x, y, logits, sample_weight, training=False)
        self._update_loss_metric(loss, tf.shape(logits)[0])
        logs = self.compute_metrics(x, y, logits, sample_weight)
        return {k: v for k, v in logs.items() if k not in self._term_names}
