"""``RobustModel``: adversarial training and logit regularization through ``model.fit``."""

from __future__ import annotations

import keras
import tensorflow as tf

from tf_dlthesis.augment import mix_batch  # robustness may use augment (DESIGN.md: LRM's VH-mixup)

from . import attacks as _attacks
from .losses import decoupled_parts, label_smoothing_cross_entropy, logit_pairing, logit_squeezing

DEFENSES = ("none", "label_smoothing", "pgd", "alp", "logit_squeezing", "clean_logit_pairing", "lrm")
ATTACKS = ("pgd", "fgsm")
MIXINGS = (None, "vh_mixup", "mixup")

# Defense -> default parameters (thesis Sec. 3.5.1 / 3.5.2, CIFAR-10 settings).
_DEFAULTS = {
    "none": {"smoothing": 0.0},
    "label_smoothing": {"smoothing": 0.1},
    "pgd": {"alpha": 0.5, "smoothing": 0.0, "squeeze_weight": 0.0},
    "alp": {"alpha": 0.5, "smoothing": 0.0, "pairing_weight": 0.5, "squeeze_weight": 0.0},
    "logit_squeezing": {"smoothing": 0.0, "squeeze_weight": 0.05},
    "clean_logit_pairing": {"smoothing": 0.0, "pairing_weight": 0.5, "squeeze_weight": 0.0},
    "lrm": {"alpha": 0.0, "smoothing": 0.1, "beta": 1e-3, "ratio": 0.125},
}
_ADVERSARIAL = ("pgd", "alp", "lrm")
_COMMON = ("mixing", "pairing_reduction")


@keras.saving.register_keras_serializable(package="tf_dlthesis")
class RobustModel(keras.Model):
    """A Keras model whose ``train_step`` applies a Chapter-3 defense.

    The adversarial batch is built inside the traced train step (the attack is
    traced once with the step, not per batch) with the inner model in inference
    mode, then the defense's loss is minimised:

    * ``"none"``: cross-entropy (optionally smoothed, ``smoothing``).
    * ``"label_smoothing"``: cross-entropy to the Eq. 3.8 targets (``smoothing`` s).
    * ``"pgd"``: Eq. 3.1, ``alpha CE(x) + (1 - alpha) CE(g(x))``; ``alpha = 0``
      trains on adversarial examples only (thesis Sec. 3.5.2).
    * ``"alp"``: Eq. 3.2, the above plus ``pairing_weight ||f(x) - f(g(x))||^2``.
    * ``"logit_squeezing"``: clean CE plus ``squeeze_weight ||f(x)||^2`` (Kannan et al.).
    * ``"clean_logit_pairing"``: clean CE plus ``pairing_weight`` times the L2
      pairing of randomly paired clean examples (Kannan et al.).
    * ``"lrm"``: label smoothing (``smoothing``, default 0.1) on ``alpha``-mixed
      clean/adversarial CE, plus the decoupled pairing of Eq. 3.11 where ``h``
      (cross-entropy between the two logit distributions) gets the coefficient
      ``ratio * stop_gradient(adv_loss / h)`` and the squared norms get ``beta``;
      ``mixing="vh_mixup"`` trains on VH-mixup inputs (needs
      ``tf_dlthesis.augment``).

    ``squeeze_weight`` may be added to ``"pgd"``/``"alp"`` too (Fig. 3.1 right):
    it penalises the squared norm of every logit vector the loss is computed on.
    All pairing/squeezing terms are per-example sums over classes
    (``pairing_reduction="mean"`` divides by C like the original ALP code).

    Example:
        >>> robust = RobustModel(models.build("cnn", (32, 32, 3), 10), "pgd", alpha=0.0,
        ...                      epsilon=0.03, step_size=0.0078, num_steps=10)
        >>> robust.compile(keras.optimizers.SGD(0.1, momentum=0.9), metrics=["accuracy"])
        >>> robust.fit(train_ds, epochs=101)

    Args:
        model: Keras model returning logits.
        defense: one of ``DEFENSES``.
        attack: ``"pgd"`` or ``"fgsm"`` (adversary used during training).
        epsilon: L-inf radius (thesis: 0.03).
        step_size: PGD step (thesis: 0.0078).
        num_steps: PGD iterations (thesis: 10 in training).
        random_start: PGD random start (Madry et al.).
        clip_range: valid input range.
        seed: base seed; the per-step attack / mixing seed is
            ``fold_in(seed, optimizer.iterations)`` (stateless, resumes exactly).
        **defense_params: ``alpha``, ``smoothing``, ``pairing_weight``,
            ``squeeze_weight``, ``beta``, ``ratio``, ``mixing``,
            ``pairing_reduction`` as applicable to ``defense``.

    Raises:
        ValueError: unknown defense/attack/mixing or a parameter the defense
            does not use, or an out-of-range value.

    Reference:
        Thesis Sec. 3.2-3.5 (Eqs. 3.1, 3.2, 3.8, 3.9, 3.11); https://arxiv.org/abs/1906.03749.
    """

    def __init__(self, model, defense: str = "none", attack: str = "pgd", *, epsilon: float = 0.03,
                 step_size: float = 0.0078, num_steps: int = 10, random_start: bool = True,
                 clip_range=(0.0, 1.0), seed: int = 0, **defense_params):
        keras_kwargs = {k: defense_params.pop(k) for k in ("name", "trainable", "dtype") if k in defense_params}
        super().__init__(**keras_kwargs)
        if not isinstance(model, keras.Model):
            raise TypeError(f"`model` must be a keras.Model returning logits. Received: {model!r}")
        if defense not in DEFENSES:
            raise ValueError(f"Unknown defense {defense!r}. Expected one of {DEFENSES}.")
        if attack not in ATTACKS:
            raise ValueError(f"Unknown attack {attack!r}. Expected one of {ATTACKS}.")
        allowed = set(_DEFAULTS[defense]) | set(_COMMON)
        unknown = set(defense_params) - allowed
        if unknown:
            raise ValueError(f"Defense {defense!r} does not take {sorted(unknown)}. Allowed: {sorted(allowed)}.")
        params = {**_DEFAULTS[defense], "mixing": None, "pairing_reduction": "sum", **defense_params}
        if params["mixing"] not in MIXINGS:
            raise ValueError(f"Unknown mixing {params['mixing']!r}. Expected one of {MIXINGS}.")
        if "alpha" in params and not 0.0 <= params["alpha"] <= 1.0:
            raise ValueError(f"`alpha` must be in [0, 1]. Received: alpha={params['alpha']}")
        if not 0.0 <= params.get("smoothing", 0.0) < 1.0:
            raise ValueError(f"`smoothing` must be in [0, 1). Received: smoothing={params['smoothing']}")
        for k in ("pairing_weight", "squeeze_weight", "beta", "ratio"):
            if k in params and params[k] < 0:
                raise ValueError(f"`{k}` must be >= 0. Received: {k}={params[k]}")
        if params["pairing_reduction"] not in ("sum", "mean"):
            raise ValueError(f"`pairing_reduction` must be 'sum' or 'mean'. Received: {params['pairing_reduction']!r}")
        # validate the attack settings once, eagerly (same checks as the attack functions)
        epsilon = _attacks._check_float("epsilon", epsilon, minimum=0.0)
        step_size = _attacks._check_float("step_size", step_size, minimum=0.0)
        if attack == "pgd" and step_size > epsilon:
            raise ValueError(f"`step_size` must be <= `epsilon`. Received: step_size={step_size}, epsilon={epsilon}")
        num_steps = _attacks._check_steps(num_steps)
        lo, hi = _attacks._check_clip_range(clip_range)
        self.model = model
        self.defense = defense
        self.attack = attack
        self.epsilon, self.step_size, self.num_steps = epsilon, step_size, num_steps
        self.random_start = bool(random_start)
        self.clip_range = None if lo is None else (lo, hi)
        self.seed = int(seed)
        self.defense_params = params
        self.attack_trace_count = 0  # incremented only when the attack is traced (Python side effect)
        if model.built:
            self.built = True

    # ------------------------------------------------------------------ keras plumbing
    def call(self, inputs, training=None):
        return self.model(inputs, training=training)

    def build(self, input_shape):
        if not self.model.built:
            self.model.build(input_shape)
        self.built = True

    def get_config(self):
        params = dict(self.defense_params)
        return {
            "model": keras.saving.serialize_keras_object(self.model),
            "defense": self.defense, "attack": self.attack, "epsilon": self.epsilon,
            "step_size": self.step_size, "num_steps": self.num_steps, "random_start": self.random_start,
            "clip_range": self.clip_range, "seed": self.seed, "name": self.name, **params,
        }

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        model = keras.saving.deserialize_keras_object(config.pop("model"))
        return cls(model, **config)

    # ------------------------------------------------------------------ the defense
    def adversarial_examples(self, x, y, seed):
        """Build the training-time adversarial batch (inner model in inference mode)."""
        self.attack_trace_count += 1
        if self.attack == "fgsm":
            return _attacks.fgsm(self.model, x, y, epsilon=self.epsilon, clip_range=self.clip_range)
        return _attacks.pgd(self.model, x, y, epsilon=self.epsilon, step_size=self.step_size,
                            num_steps=self.num_steps, random_start=self.random_start,
                            clip_range=self.clip_range, seed=seed)

    def _ce(self, y, logits):
        return tf.reduce_mean(label_smoothing_cross_entropy(y, logits, self.defense_params.get("smoothing", 0.0)))

    def _mix(self, x, y, seed):
        method = self.defense_params["mixing"]
        if method is None:
            return x, y
        num_classes = self.model.output_shape[-1]
        if y.shape.rank == 1 or (y.shape.rank == 2 and y.shape[-1] == 1):
            y = tf.one_hot(tf.reshape(tf.cast(y, tf.int64), [-1]), num_classes)
        return mix_batch(x, tf.cast(y, tf.float32), method, seed=seed)

    def defense_loss(self, x, y, step, training=True):
        """Return ``(loss, logits, labels)`` of the defense on one batch (logits/labels for metrics).

        Args:
            x: images. y: sparse or one-hot labels. step: int scalar tensor
            (seeds derive from ``fold_in(seed, step)``).
        """
        d, p = self.defense, self.defense_params
        base = tf.random.experimental.stateless_fold_in(tf.constant([self.seed, 0], tf.int64), step)
        mix_seed, attack_seed, pair_seed = tf.unstack(tf.random.experimental.stateless_split(base, 3))
        x = _attacks.as_images(x)
        x, y = self._mix(x, y, mix_seed)
        red = p["pairing_reduction"]
        squeeze = p.get("squeeze_weight", 0.0)
        if d in _ADVERSARIAL:
            x_adv = self.adversarial_examples(x, y, attack_seed)
            alpha = p["alpha"]
            need_clean = alpha > 0 or d in ("alp", "lrm")
            if need_clean:
                both = self.model(tf.concat([x, x_adv], 0), training=training)
                clean, adv = tf.split(both, 2, axis=0)
            else:
                clean, adv = None, self.model(x_adv, training=training)
            ce = self._ce(y, adv) if alpha == 0 else alpha * self._ce(y, clean) + (1 - alpha) * self._ce(y, adv)
            loss = ce
            if d == "alp":
                loss += p["pairing_weight"] * tf.reduce_mean(logit_pairing(clean, adv, red))
            if d == "lrm":
                h, reg = decoupled_parts(clean, adv)
                h = tf.reduce_mean(h)
                coef = p["ratio"] * tf.stop_gradient(tf.math.divide_no_nan(ce, h))
                loss += coef * h + p["beta"] * tf.reduce_mean(reg)
            if squeeze:
                used = adv if clean is None else tf.concat([clean, adv], 0)
                loss += squeeze * tf.reduce_mean(logit_squeezing(used, red))
            return loss, adv, y
        logits = self.model(x, training=training)
        loss = self._ce(y, logits)
        if d == "clean_logit_pairing":
            perm = tf.argsort(tf.random.stateless_uniform([tf.shape(logits)[0]], pair_seed))
            loss += p["pairing_weight"] * tf.reduce_mean(logit_pairing(logits, tf.gather(logits, perm), red))
        if squeeze:
            loss += squeeze * tf.reduce_mean(logit_squeezing(logits, red))
        return loss, logits, y

    def _metric_labels(self, y):
        return tf.argmax(y, axis=-1) if y.shape.rank == 2 and y.shape[-1] != 1 else y

    def train_step(self, data):
        x, y = data[0], data[1]
        with tf.GradientTape() as tape:
            loss, logits, y = self.defense_loss(x, y, self.optimizer.iterations, training=True)
            if self.losses:
                loss += tf.add_n(self.losses)
        grads = tape.gradient(loss, self.trainable_variables)
        self.optimizer.apply_gradients(zip(grads, self.trainable_variables))
        return self._update_metrics(loss, y, logits)

    def test_step(self, data):
        x, y = data[0], data[1]
        logits = self.model(_attacks.as_images(x), training=False)
        return self._update_metrics(self._ce(y, logits), y, logits)

    def _update_metrics(self, loss, y, logits):
        for metric in self.metrics:
            if metric.name == "loss":
                metric.update_state(loss)
            else:
                metric.update_state(self._metric_labels(y), logits)
        return {m.name: m.result() for m in self.metrics}
