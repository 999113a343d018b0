"""Logit-regularizing losses of thesis Chapter 3.

Reduction convention
--------------------
Every function here returns one value **per example** (shape ``(B,)``); the
Keras ``Loss`` classes average those over the batch (Keras's default
``"sum_over_batch_size"``).  Within an example the thesis's formulas sum over
the classes: Eq. 3.9 is the squared L2 *norm* ``||f(x) - f(g(x))||^2``, and the
regularizers of Eq. 3.11 are squared norms as well.  The original ALP code
(Kannan et al. 2018, ``tf.losses.mean_squared_error``) instead averaged over
every logit element, i.e. it divided the per-example sum by the number of
classes ``C``.  Pass ``reduction="mean"`` to ``logit_pairing`` /
``logit_squeezing`` to use that convention (the ALP weight 0.5 recommended by
Kannan et al. was tuned for it); the default ``"sum"`` follows the thesis.

Reference:
    C. Summers, *Understanding and Improving Deep Learning*, 2021, Ch. 3;
    C. Summers and M. J. Dinneen, "Logit Regularization Methods for
    Adversarial Robustness", https://arxiv.org/abs/1906.03749;
    H. Kannan, A. Kurakin, I. Goodfellow, "Adversarial Logit Pairing",
    https://arxiv.org/abs/1803.06373.
"""

from __future__ import annotations

import keras
import tensorflow as tf

_REDUCTIONS = ("sum", "mean")


def _check_reduction(reduction):
    if reduction not in _REDUCTIONS:
        raise ValueError(
            f"`reduction` must be one of {_REDUCTIONS}. Received: reduction={reduction!r}"
        )


def _as_logits(x, name):
    x = tf.convert_to_tensor(x)
    if not x.dtype.is_floating:
        x = tf.cast(x, tf.float32)
    if x.shape.rank is not None and x.shape.rank != 2:
        raise ValueError(
            f"`{name}` must have shape (batch, num_classes). Received: {name}.shape={x.shape}"
        )
    return x


def _check_same_shape(a, b, name_a, name_b):
    if a.shape.is_fully_defined() and b.shape.is_fully_defined() and a.shape != b.shape:
        raise ValueError(
            f"`{name_a}` and `{name_b}` must have the same shape. "
            f"Received: {name_a}.shape={a.shape}, {name_b}.shape={b.shape}"
        )


def _squared_norm(logits, reduction):
    sq = tf.reduce_sum(tf.square(logits), axis=-1)
    if reduction == "mean":
        sq = sq / tf.cast(tf.shape(logits)[-1], logits.dtype)
    return sq


def smoothed_targets(y_true, num_classes: int, smoothing: float, dtype=tf.float32):
    """Label-smoothing targets of Eq. 3.8 (``1 - s`` true class, ``s/(C-1)`` others).

    Sparse labels ``(B,)`` are one-hot encoded first; one-hot or soft labels
    ``(B, C)`` (e.g. from mixup) are smoothed linearly,
    ``p = (1 - s) y + s / (C - 1) (1 - y)``, which reduces to Eq. 3.8 for one-hot
    labels.

    Args:
        y_true: sparse integer labels ``(B,)`` or (soft) one-hot labels ``(B, C)``.
        num_classes: ``C``.
        smoothing: ``s`` in ``[0, 1 - 1/C]``.
        dtype: output dtype.

    Returns:
        ``(B, C)`` target distribution.

    Raises:
        ValueError: if ``smoothing`` is out of range or ``num_classes < 2``.
    """
    if num_classes is None or int(num_classes) < 2:
        raise ValueError(f"`num_classes` must be >= 2. Received: num_classes={num_classes}")
    num_classes = int(num_classes)
    if not 0.0 <= smoothing <= 1.0 - 1.0 / num_classes + 1e-12:
        raise ValueError(
            "`smoothing` must be in [0, 1 - 1/C] (thesis Eq. 3.8). "
            f"Received: smoothing={smoothing}, C={num_classes}"
        )
    y_true = tf.convert_to_tensor(y_true)
    if y_true.shape.rank == 2 and y_true.shape[-1] == num_classes:
        onehot = tf.cast(y_true, dtype)
    else:
        if y_true.dtype.is_floating:
            y_true = tf.cast(y_true, tf.int64)
        onehot = tf.one_hot(tf.reshape(y_true, [-1]), num_classes, dtype=dtype)
    s = tf.cast(smoothing, dtype)
    return (1.0 - s) * onehot + s / (num_classes - 1.0) * (1.0 - onehot)


@keras.saving.register_keras_serializable(package="tf_dlthesis")
def label_smoothing_cross_entropy(y_true, y_pred, smoothing: float = 0.1, from_logits: bool = True):
    """Cross-entropy against the label-smoothing targets of thesis Eq. 3.8.

    Unlike Keras's ``label_smoothing`` (which puts ``s/C`` on every class), the
    thesis assigns ``1 - s`` to the true class and ``s/(C-1)`` to each other one.

    Example:
        >>> label_smoothing_cross_entropy([0], [[2.0, 0.0, 0.0]], smoothing=0.2)

    Args:
        y_true: sparse labels ``(B,)`` or one-hot / soft labels ``(B, C)``.
        y_pred: logits (or probabilities when ``from_logits=False``), ``(B, C)``.
        smoothing: ``s``.
        from_logits: whether ``y_pred`` are logits.

    Returns:
        Per-example cross-entropy, shape ``(B,)``.

    Reference:
        Thesis Sec. 3.4, Eq. 3.8; https://arxiv.org/abs/1906.03749.
    """
    y_pred = _as_logits(y_pred, "y_pred")
    targets = smoothed_targets(y_true, y_pred.shape[-1], smoothing, dtype=y_pred.dtype)
    if from_logits:
        log_p = tf.nn.log_softmax(y_pred, axis=-1)
    else:
        log_p = tf.math.log(tf.clip_by_value(y_pred, keras.config.epsilon(), 1.0))
    return -tf.reduce_sum(targets * log_p, axis=-1)


@keras.saving.register_keras_serializable(package="tf_dlthesis")
def logit_squeezing(logits, reduction: str = "sum"):
    """Logit squeezing: squared L2 norm of the logits, ``||f(x)||^2``.

    Args:
        logits: ``(B, C)``.
        reduction: ``"sum"`` over classes (thesis) or ``"mean"`` (original ALP code).

    Returns:
        ``(B,)`` per-example values.

    Reference:
        Thesis Sec. 3.2-3.3; Kannan et al., https://arxiv.org/abs/1803.06373.
    """
    _check_reduction(reduction)
    return _squared_norm(_as_logits(logits, "logits"), reduction)


@keras.saving.register_keras_serializable(package="tf_dlthesis")
def logit_pairing(clean_logits, adv_logits, reduction: str = "sum"):
    """Adversarial logit pairing term, thesis Eq. 3.9: ``||f(x) - f(g(x))||^2``.

    Args:
        clean_logits: logits of the original examples, ``(B, C)``.
        adv_logits: logits of their adversarial versions, ``(B, C)``.
        reduction: ``"sum"`` over classes (thesis Eq. 3.9) or ``"mean"`` over
            classes (Kannan et al.'s code, ``mean_squared_error``).

    Returns:
        ``(B,)`` per-example values.

    Raises:
        ValueError: on mismatched shapes or an unknown reduction.

    Reference:
        Thesis Sec. 3.4.1, Eq. 3.9; https://arxiv.org/abs/1803.06373.
    """
    _check_reduction(reduction)
    a = _as_logits(clean_logits, "clean_logits")
    b = _as_logits(adv_logits, "adv_logits")
    _check_same_shape(a, b, "clean_logits", "adv_logits")
    return _squared_norm(a - b, reduction)


def _pairing_cross_entropy(clean_logits, adv_logits):
    """``h`` of Eq. 3.11: cross-entropy H(softmax(clean), softmax(adv)), per example."""
    p_clean = tf.nn.softmax(clean_logits, axis=-1)
    return -tf.reduce_sum(p_clean * tf.nn.log_softmax(adv_logits, axis=-1), axis=-1)


def decoupled_parts(clean_logits, adv_logits):
    """Return ``(h, ||f(x)||^2 + ||f(g(x))||^2)`` per example (the two parts of Eq. 3.11)."""
    a = _as_logits(clean_logits, "clean_logits")
    b = _as_logits(adv_logits, "adv_logits")
    _check_same_shape(a, b, "clean_logits", "adv_logits")
    h = _pairing_cross_entropy(a, b)
    reg = tf.reduce_sum(tf.square(a), axis=-1) + tf.reduce_sum(tf.square(b), axis=-1)
    return h, reg


@keras.saving.register_keras_serializable(package="tf_dlthesis")
def decoupled_logit_pairing(clean_logits, adv_logits, beta: float = 1e-3):
    """Decoupled logit pairing, thesis Eq. 3.11.

    ``L = h(f(x), f(g(x))) + beta (||f(x)||^2 + ||f(g(x))||^2)`` with
    ``h`` = cross-entropy between the distributions induced by the logits,
    ``-sum_c softmax(f(x))_c log softmax(f(g(x)))_c`` (gradients flow into both
    logit sets, like ALP's L2 term).

    Args:
        clean_logits: ``(B, C)``.
        adv_logits: ``(B, C)``.
        beta: weight of the logit-regularization part (``>= 0``).

    Returns:
        ``(B,)`` per-example values.

    Raises:
        ValueError: on negative ``beta`` or mismatched shapes.

    Reference:
        Thesis Sec. 3.4.1, Eq. 3.11; https://arxiv.org/abs/1906.03749.
    """
    if beta < 0:
        raise ValueError(f"`beta` must be >= 0. Received: beta={beta}")
    h, reg = decoupled_parts(clean_logits, adv_logits)
    return h + tf.cast(beta, h.dtype) * reg


@keras.saving.register_keras_serializable(package="tf_dlthesis")
class LabelSmoothingCrossEntropy(keras.losses.Loss):
    """Keras loss for :func:`label_smoothing_cross_entropy` (thesis Eq. 3.8).

    Example:
        >>> model.compile("sgd", loss=LabelSmoothingCrossEntropy(0.1))

    Args:
        smoothing: ``s`` in ``[0, 1)`` (checked against ``1 - 1/C`` at call time).
        from_logits: whether predictions are logits.
        reduction, name: as for ``keras.losses.Loss``.

    Raises:
        ValueError: if ``smoothing`` is outside ``[0, 1)``.
    """

    def __init__(self, smoothing: float = 0.1, from_logits: bool = True,
                 reduction="sum_over_batch_size", name="label_smoothing_cross_entropy", dtype=None):
        super().__init__(reduction=reduction, name=name, dtype=dtype)
        if not isinstance(smoothing, (int, float)) or not 0.0 <= smoothing < 1.0:
            raise ValueError(f"`smoothing` must be a float in [0, 1). Received: smoothing={smoothing!r}")
        self.smoothing = float(smoothing)
        self.from_logits = bool(from_logits)

    def call(self, y_true, y_pred):
        return label_smoothing_cross_entropy(y_true, y_pred, self.smoothing, self.from_logits)

    def get_config(self):
        return {**super().get_config(), "smoothing": self.smoothing, "from_logits": self.from_logits}


class _PairLoss(keras.losses.Loss):
    """Base for losses of a pair of logit tensors: ``y_true`` = clean logits, ``y_pred`` = adversarial logits."""


@keras.saving.register_keras_serializable(package="tf_dlthesis")
class LogitSqueezing(keras.losses.Loss):
    """Keras loss for :func:`logit_squeezing` (``y_true`` is ignored).

    Args:
        reduction_over_classes: ``"sum"`` (thesis) or ``"mean"`` (original ALP code).
    """

    def __init__(self, reduction_over_classes: str = "sum", name="logit_squeezing", **kwargs):
        super().__init__(name=name, **kwargs)
        _check_reduction(reduction_over_classes)
        self.reduction_over_classes = reduction_over_classes

    def call(self, y_true, y_pred):
        return logit_squeezing(y_pred, self.reduction_over_classes)

    def get_config(self):
        return {**super().get_config(), "reduction_over_classes": self.reduction_over_classes}


@keras.saving.register_keras_serializable(package="tf_dlthesis")
class LogitPairing(_PairLoss):
    """Keras loss for :func:`logit_pairing`: ``y_true`` = clean logits, ``y_pred`` = adversarial logits."""

    def __init__(self, reduction_over_classes: str = "sum", name="logit_pairing", **kwargs):
        super().__init__(name=name, **kwargs)
        _check_reduction(reduction_over_classes)
        self.reduction_over_classes = reduction_over_classes

    def call(self, y_true, y_pred):
        return logit_pairing(y_true, y_pred, self.reduction_over_classes)

    def get_config(self):
        return {**super().get_config(), "reduction_over_classes": self.reduction_over_classes}


@keras.saving.register_keras_serializable(package="tf_dlthesis")
class DecoupledLogitPairing(_PairLoss):
    """Keras loss for :func:`decoupled_logit_pairing`: ``y_true`` = clean logits, ``y_pred`` = adversarial logits."""

    def __init__(self, beta: float = 1e-3, name="decoupled_logit_pairing", **kwargs):
        super().__init__(name=name, **kwargs)
        if beta < 0:
            raise ValueError(f"`beta` must be >= 0. Received: beta={beta}")
        self.beta = float(beta)

    def call(self, y_true, y_pred):
        return decoupled_logit_pairing(y_true, y_pred, self.beta)

    def get_config(self):
        return {**super().get_config(), "beta": self.beta}
