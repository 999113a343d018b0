"""Logit-regularizing losses of thesis Chapter 3.

Reductions
----------
Every function here returns one value **per example** (shape ``(B,)``); the
Keras ``Loss`` classes reduce those over the batch with Keras's own
``reduction`` argument (default ``"sum_over_batch_size"``).

Within an example, the squared-norm terms reduce over the classes with
``class_reduction``:

* ``"sum"``: the squared L2 *norm* ``||z||^2``, as the thesis writes Eq. 3.9
  and the regularizers of Eq. 3.11.
* ``"mean"``: ``||z||^2 / C``, the mean over logit elements of Kannan et al.'s
  released code (``tf.losses.mean_squared_error``).  The ALP weights the thesis
  uses (0.5 on CIFAR-10, 5.0 on CIFAR-100, recommended by Kannan et al.) were
  tuned for this form, so it is :func:`logit_pairing`'s default: with
  ``"sum"`` the same weight is ``C`` times stronger (10x on CIFAR-10, 100x on
  CIFAR-100).

Logit squeezing and the decoupled pairing's norm terms default to ``"sum"``: the
thesis describes logit squeezing as "L2-regularization on the logits" and Eq.
3.11 writes squared norms, and neither Kannan et al.'s paper nor the thesis gives
a weight tuned for a mean.  (Kannan et al.'s released training code has no
logit-squeezing term to copy a convention from.)

The old keyword names ``reduction`` (functions) and ``reduction_over_classes``
(``Loss`` classes) still work for one release and emit a ``DeprecationWarning``
naming ``class_reduction``.

Reference:
    C. Summers, *Understanding and Improving Deep Learning*, 2021, Ch. 3;
    C. Summers and M. J. Dinneen, "Logit Regularization Methods for
    Adversarial Robustness", https://arxiv.org/abs/1906.03749;
    H. Kannan, A. Kurakin, I. Goodfellow, "Adversarial Logit Pairing",
    https://arxiv.org/abs/1803.06373.
"""

from __future__ import annotations

import abc
import numbers
import warnings

import keras
import numpy as np
import tensorflow as tf

from tf_dlthesis._checks import check_bool

#: Accepted values of ``class_reduction``.
CLASS_REDUCTIONS = ("sum", "mean")
#: Accepted values of ``h_gradient`` (which logits the pairing cross-entropy trains).
H_GRADIENTS = ("adversarial", "both")


# --------------------------------------------------------------------------- validation
def _check_class_reduction(class_reduction):
    if class_reduction not in CLASS_REDUCTIONS:
        raise ValueError(
            f"`class_reduction` must be one of {CLASS_REDUCTIONS}. Received: class_reduction={class_reduction!r}"
        )
    return class_reduction


def _resolve_class_reduction(class_reduction, old_value, old_name, *, stacklevel=3):
    """Return the class reduction, mapping the deprecated keyword ``old_name`` onto it."""
    if old_value is not None:
        warnings.warn(
            f"`{old_name}` is deprecated and will be removed in the next release; use `class_reduction` "
            f"instead. Received: {old_name}={old_value!r}",
            DeprecationWarning, stacklevel=stacklevel,
        )
        if class_reduction is not None and class_reduction != old_value:
            raise ValueError(
                f"Pass either `class_reduction` or the deprecated `{old_name}`, not both. "
                f"Received: class_reduction={class_reduction!r}, {old_name}={old_value!r}"
            )
        class_reduction = old_value
    return class_reduction


def _check_h_gradient(h_gradient):
    if h_gradient not in H_GRADIENTS:
        raise ValueError(f"`h_gradient` must be one of {H_GRADIENTS}. Received: h_gradient={h_gradient!r}")
    return h_gradient


def _real(name, value):
    """``float(value)`` for any real number (Python or NumPy, e.g. ``np.float32(1e-3)``) except a bool.

    Raises:
        TypeError: ``value`` is a bool or not a real number.
    """
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real):
        raise TypeError(f"`{name}` must be a real number. Received: {name}={value!r}")
    return float(value)


def _check_beta(beta):
    beta = _real("beta", beta)
    if not beta >= 0:
        raise ValueError(f"`beta` must be a number >= 0. Received: beta={beta!r}")
    return beta


def _check_ratio(ratio):
    ratio = _real("ratio", ratio)
    if not 0 < ratio < float("inf"):
        raise ValueError(
            "`ratio` (adversarial training loss / pairing loss, thesis Sec. 3.4.1) must be a finite number > 0. "
            f"Received: ratio={ratio!r}"
        )
    return ratio


def _check_integer_labels(labels, name="y"):
    """Raise if concrete sparse labels (an array or eager tensor) hold non-integer values; no-op when traced.

    A float label such as 0.6 would otherwise be truncated to class 0 without a word.
    """
    if tf.is_tensor(labels) and not (tf.executing_eagerly() and hasattr(labels, "numpy")):
        return
    values = np.asarray(labels.numpy() if tf.is_tensor(labels) else labels)
    if values.dtype.kind != "f":
        return
    bad = values[values != np.round(values)]
    if bad.size:
        raise ValueError(f"`{name}` must hold integer class indices (sparse labels). "
                         f"Received non-integer labels: {sorted({v.item() for v in bad})[:10]}")


def _as_logits(x, name):
    x = tf.convert_to_tensor(x)
    if not x.dtype.is_floating:
        x = tf.cast(x, tf.float32)
    if x.shape.rank is not None and x.shape.rank != 2:
        raise ValueError(
            f"`{name}` must have shape (batch, num_classes). Received: {name}.shape={x.shape}"
        )
    return x


def _logit_pair(clean_logits, adv_logits):
    """Validate a (clean, adversarial) pair of logit tensors: both (B, C), same shape."""
    a = _as_logits(clean_logits, "clean_logits")
    b = _as_logits(adv_logits, "adv_logits")
    if a.shape.is_fully_defined() and b.shape.is_fully_defined() and a.shape != b.shape:
        raise ValueError(
            "`clean_logits` and `adv_logits` must have the same shape. "
            f"Received: clean_logits.shape={a.shape}, adv_logits.shape={b.shape}"
        )
    if a.dtype != b.dtype:
        b = tf.cast(b, a.dtype)
    return a, b


def _squared_norm(logits, class_reduction):
    sq = tf.reduce_sum(tf.square(logits), axis=-1)
    if class_reduction == "mean":
        sq = sq / tf.cast(tf.shape(logits)[-1], logits.dtype)
    return sq


# --------------------------------------------------------------------------- functions
def _sparse_out_of_range(labels, num_classes):
    """The distinct out-of-range values of eager sparse labels (an empty list when all are valid or traced)."""
    if not (tf.executing_eagerly() and hasattr(labels, "numpy")):
        return []
    values = labels.numpy().reshape(-1)
    bad = values[(values < 0) | (values >= num_classes)]
    return sorted({v.item() for v in bad})


def smoothed_targets(y_true, num_classes: int, smoothing: float, dtype=tf.float32):
    """Label-smoothing targets of Eq. 3.8 (``1 - s`` true class, ``s/(C-1)`` others).

    Sparse labels ``(B,)`` (or ``(B, 1)``) are one-hot encoded first; one-hot or
    soft labels ``(B, C)`` (e.g. from mixup) are smoothed linearly,
    ``p = (1 - s) y + s / (C - 1) (1 - y)``, which reduces to Eq. 3.8 for one-hot
    labels.

    Sparse labels are checked against ``[0, C - 1]`` when they are eager tensors
    or arrays (a label outside it would one-hot encode to a row of zeros, i.e.
    targets with no true class); inside a traced graph the check is left to the
    API boundary (``RobustModel.fit`` checks in-memory labels once, eagerly).

    Example:
        >>> smoothed_targets([2], 3, 0.2)        # [[0.1, 0.1, 0.8]]

    Args:
        y_true: sparse integer labels ``(B,)`` or (soft) one-hot labels ``(B, C)``.
        num_classes: ``C``.
        smoothing: ``s`` in ``[0, 1 - 1/C]``.
        dtype: output dtype.

    Returns:
        ``(B, C)`` target distribution.

    Raises:
        ValueError: ``smoothing`` out of range, ``num_classes < 2``, sparse
            ``y_true`` outside ``[0, C - 1]`` or not integers (eager), or float
            ``(B, K)`` labels whose width ``K`` is not ``C``.
        TypeError: ``num_classes`` not an int (a float such as 2.9 is not truncated).
    """
    if num_classes is not None and (isinstance(num_classes, (bool, np.bool_))
                                    or not isinstance(num_classes, (int, np.integer))):  # int() would truncate 2.9
        raise TypeError(f"`num_classes` must be an int >= 2. Received: num_classes={num_classes!r}")
    if num_classes is None or int(num_classes) < 2:
        raise ValueError(f"`num_classes` must be >= 2. Received: num_classes={num_classes}")
    num_classes = int(num_classes)
    smoothing = _real("smoothing", smoothing)
    if not 0.0 <= smoothing <= 1.0 - 1.0 / num_classes + 1e-12:
        raise ValueError(
            "`smoothing` must be in [0, 1 - 1/C] (thesis Eq. 3.8). "
            f"Received: smoothing={smoothing}, C={num_classes}"
        )
    y_true = tf.convert_to_tensor(y_true)
    rank = y_true.shape.rank
    width = y_true.shape[-1] if rank else None
    if rank == 2 and width == num_classes:
        return _smooth(tf.cast(y_true, dtype), num_classes, smoothing, dtype)
    if rank is None or (rank == 2 and width is None):  # traced with an unknown width: one-hot or (B, 1)?
        return _smooth_unknown_width(y_true, num_classes, smoothing, dtype)
    if rank is not None and (rank > 2 or (rank == 2 and width not in (None, 1))):
        raise ValueError(
            f"`y_true` must be sparse labels (B,) or one-hot/soft labels (B, {num_classes}) matching the "
            f"{num_classes} logits. Received: y_true.shape={y_true.shape}"
        )
    bad = _sparse_out_of_range(y_true, num_classes)
    if bad:
        raise ValueError(
            f"`y_true` has sparse labels outside [0, {num_classes - 1}] for num_classes={num_classes}. "
            f"Received out-of-range labels: {bad[:10]}"
        )
    if y_true.dtype.is_floating:
        _check_integer_labels(y_true, "y_true")
        y_true = tf.cast(y_true, tf.int64)
    onehot = tf.one_hot(tf.reshape(y_true, [-1]), num_classes, dtype=dtype)
    return _smooth(onehot, num_classes, smoothing, dtype)


def _smooth_unknown_width(y_true, num_classes, smoothing, dtype):
    """`smoothed_targets` for labels whose width is only known when the graph runs.

    (B, C) labels are one-hot / soft, anything else sparse class indices: read as
    sparse, a (B, C) one-hot matrix became B * C "labels" (a wrong loss at B = 1, a
    shape error above).
    """
    def dense():
        return _smooth(tf.cast(tf.reshape(y_true, [-1, num_classes]), dtype), num_classes, smoothing, dtype)

    def sparse():
        ids = tf.cast(tf.reshape(y_true, [-1]), tf.int64)
        return _smooth(tf.one_hot(ids, num_classes, dtype=dtype), num_classes, smoothing, dtype)

    shape = tf.shape(y_true)
    is_dense = tf.logical_and(tf.equal(tf.size(shape), 2), tf.equal(tf.reduce_prod(shape[-1:]), num_classes))
    return tf.cond(is_dense, dense, sparse)


def _smooth(onehot, num_classes, smoothing, dtype):
    s = tf.cast(smoothing, dtype)
    return (1.0 - s) * onehot + s / (num_classes - 1.0) * (1.0 - onehot)


@keras.saving.register_keras_serializable(package="tf_dlthesis")
def label_smoothing_cross_entropy(y_true, y_pred, smoothing: float = 0.1, from_logits: bool = True, *,
                                  check_numerics: bool = False):
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
        check_numerics: raise ``tf.errors.InvalidArgumentError`` naming
            ``y_pred`` / ``y_true`` when they hold NaN or Inf (off by default:
            it adds a check per call; turn it on to find where NaNs enter).

    Returns:
        Per-example cross-entropy, shape ``(B,)``.

    Raises:
        ValueError: as :func:`smoothed_targets`; in particular one-hot/soft
            ``y_true`` whose width is not the number of logits (it is not
            re-read as sparse labels); ``y_true`` and ``y_pred`` with different
            (static) batch sizes.

    Reference:
        Thesis Sec. 3.4, Eq. 3.8; https://arxiv.org/abs/1906.03749.
    """
    y_pred = _as_logits(y_pred, "y_pred")
    if check_numerics:
        y_pred = tf.debugging.check_numerics(y_pred, "label_smoothing_cross_entropy: `y_pred` has NaN or Inf")
        y_true = tf.convert_to_tensor(y_true)
        if y_true.dtype.is_floating:
            y_true = tf.debugging.check_numerics(y_true, "label_smoothing_cross_entropy: `y_true` has NaN or Inf")
    targets = smoothed_targets(y_true, y_pred.shape[-1], smoothing, dtype=y_pred.dtype)
    if targets.shape[0] is not None and y_pred.shape[0] is not None and targets.shape[0] != y_pred.shape[0]:
        raise ValueError("`y_true` and `y_pred` must have the same batch size (they would broadcast). "
                         f"Received: y_true.shape={tf.convert_to_tensor(y_true).shape}, y_pred.shape={y_pred.shape}")
    if from_logits:
        log_p = tf.nn.log_softmax(y_pred, axis=-1)
    else:
        log_p = tf.math.log(tf.clip_by_value(y_pred, keras.config.epsilon(), 1.0))
    return -tf.reduce_sum(targets * log_p, axis=-1)


@keras.saving.register_keras_serializable(package="tf_dlthesis")
def logit_squeezing(logits, class_reduction: str | None = None, *, reduction: str | None = None):
    """Logit squeezing: the squared L2 norm of the logits, ``||f(x)||^2``.

    Example:
        >>> logit_squeezing([[1.0, 2.0]])             # 1 + 4
        >>> logit_squeezing([[1.0, 2.0]], "mean")     # (1 + 4) / 2

    Args:
        logits: ``(B, C)``.
        class_reduction: ``"sum"`` over classes (the default, also when
            ``None``: the thesis's "L2 regularization on the logits") or
            ``"mean"`` (divides by ``C``).
        reduction: deprecated alias of ``class_reduction``.

    Returns:
        ``(B,)`` per-example values.

    Raises:
        ValueError: an unknown ``class_reduction``, or both ``class_reduction``
            and ``reduction`` passed with different values.

    Reference:
        Thesis Sec. 3.3.1 (Fig. 3.1 right); Kannan et al., https://arxiv.org/abs/1803.06373.
    """
    class_reduction = _resolve_class_reduction(class_reduction, reduction, "reduction")
    return _squared_norm(_as_logits(logits, "logits"), _check_class_reduction(class_reduction or "sum"))


@keras.saving.register_keras_serializable(package="tf_dlthesis")
def logit_pairing(clean_logits, adv_logits, class_reduction: str | None = None, *, reduction: str | None = None):
    """Adversarial logit pairing term, thesis Eq. 3.9: ``||f(x) - f(g(x))||^2``.

    The default ``class_reduction="mean"`` divides the squared norm by the
    number of classes ``C``: it is Kannan et al.'s ``mean_squared_error``, for
    which their (and the thesis's) pairing weights 0.5 (CIFAR-10) and 5.0
    (CIFAR-100) were tuned.  ``"sum"`` is the squared norm exactly as Eq. 3.9
    writes it (``C`` times larger).

    Example:
        >>> logit_pairing([[1.0, 2.0]], [[0.0, 0.0]])           # (1 + 4) / 2
        >>> logit_pairing([[1.0, 2.0]], [[0.0, 0.0]], "sum")    # 1 + 4

    Args:
        clean_logits: logits of the original examples, ``(B, C)``.
        adv_logits: logits of their adversarial versions, ``(B, C)``.
        class_reduction: ``"mean"`` over classes (Kannan et al.'s code; the
            default, also when ``None``) or ``"sum"`` (the squared norm of Eq. 3.9).
        reduction: deprecated alias of ``class_reduction``.

    Returns:
        ``(B,)`` per-example values.

    Raises:
        ValueError: on mismatched shapes, an unknown ``class_reduction``, or
            both ``class_reduction`` and ``reduction`` passed with different values.

    Reference:
        Thesis Sec. 3.4.1, Eq. 3.9; https://arxiv.org/abs/1803.06373.
    """
    class_reduction = _resolve_class_reduction(class_reduction, reduction, "reduction")
    class_reduction = _check_class_reduction(class_reduction or "mean")
    a, b = _logit_pair(clean_logits, adv_logits)
    return _squared_norm(a - b, class_reduction)


def pairing_cross_entropy(clean_logits, adv_logits, h_gradient: str = "adversarial"):
    """``h`` of Eq. 3.11: the cross-entropy ``H(softmax(f(x)), softmax(f(g(x))))`` per example.

    ``h = -sum_c softmax(f(x))_c log softmax(f(g(x)))_c``.  With the default
    ``h_gradient="adversarial"`` the clean distribution is the *target*: no
    gradient flows into ``f(x)`` through ``h``, as with the thesis-era TF1
    ``tf.losses.softmax_cross_entropy(onehot_labels=..., logits=...)``, which
    stops gradients into its label argument.  ``h_gradient="both"`` lets
    gradients flow into both logit sets.  That symmetric form is *not* what the
    thesis trained: its gradient with respect to ``f(x)`` adds an
    entropy-minimising term on the clean distribution, and in LRM, where ``h``
    is weighted by ``stop_gradient(adversarial_loss / h) / ratio`` (a weight
    that grows as ``h -> 0``), "both outputs one-hot on the same class" becomes
    an attractor: measured on digits at ratio 0.95, training collapses to a
    single predicted class.

    Args:
        clean_logits: ``(B, C)``.
        adv_logits: ``(B, C)``.
        h_gradient: ``"adversarial"`` (default) or ``"both"``.

    Returns:
        ``(B,)`` per-example values.

    Raises:
        ValueError: mismatched shapes or an unknown ``h_gradient``.

    Reference:
        Thesis Sec. 3.4.1, Eq. 3.11; https://arxiv.org/abs/1906.03749.
    """
    _check_h_gradient(h_gradient)
    a, b = _logit_pair(clean_logits, adv_logits)
    p_clean = tf.nn.softmax(a, axis=-1)
    if h_gradient == "adversarial":
        p_clean = tf.stop_gradient(p_clean)
    return -tf.reduce_sum(p_clean * tf.nn.log_softmax(b, axis=-1), axis=-1)


def decoupled_parts(clean_logits, adv_logits, *, h_gradient: str = "adversarial", class_reduction: str = "sum"):
    """Return ``(h, ||f(x)||^2 + ||f(g(x))||^2)`` per example: the two parts of Eq. 3.11.

    Args:
        clean_logits: ``(B, C)``.
        adv_logits: ``(B, C)``.
        h_gradient: see :func:`pairing_cross_entropy` (default
            ``"adversarial"``: no gradient into the clean distribution).
        class_reduction: reduction of the squared norms over classes,
            ``"sum"`` (Eq. 3.11, default) or ``"mean"``.

    Returns:
        Two ``(B,)`` tensors.

    Raises:
        ValueError: mismatched shapes, unknown ``h_gradient`` / ``class_reduction``.
    """
    _check_class_reduction(class_reduction)
    a, b = _logit_pair(clean_logits, adv_logits)
    h = pairing_cross_entropy(a, b, h_gradient)
    return h, _squared_norm(a, class_reduction) + _squared_norm(b, class_reduction)


@keras.saving.register_keras_serializable(package="tf_dlthesis")
def decoupled_logit_pairing(clean_logits, adv_logits, beta: float = 1e-3, *, h_gradient: str = "adversarial",
                            class_reduction: str = "sum"):
    """Decoupled logit pairing, thesis Eq. 3.11.

    ``L = h(f(x), f(g(x))) + beta (||f(x)||^2 + ||f(g(x))||^2)`` with ``h`` the
    cross-entropy between the distributions the logits induce,
    ``-sum_c softmax(f(x))_c log softmax(f(g(x)))_c`` (:func:`pairing_cross_entropy`).
    By default gradients do not flow into the clean distribution through ``h``
    (the TF1 ``softmax_cross_entropy`` semantics of the thesis's code);
    ``h_gradient="both"`` is the symmetric form, which collapses LRM training
    (see :func:`pairing_cross_entropy`).  LRM additionally weights ``h`` so that
    the pairing term equals the adversarial training loss divided by ``ratio``:
    see :meth:`DecoupledLogitPairing.terms` and :func:`scale_to_ratio`.

    Example:
        >>> decoupled_logit_pairing(clean_logits, adv_logits, beta=1e-3)

    Args:
        clean_logits: ``(B, C)``.
        adv_logits: ``(B, C)``.
        beta: weight of the logit-norm part (``>= 0``; thesis: 1e-3 CIFAR-10,
            3e-5 CIFAR-100, 1e-4 SVHN).
        h_gradient: ``"adversarial"`` (default) or ``"both"``.
        class_reduction: ``"sum"`` (squared norms, Eq. 3.11, default) or ``"mean"``.

    Returns:
        ``(B,)`` per-example values.

    Raises:
        ValueError: on negative ``beta``, mismatched shapes, unknown
            ``h_gradient`` / ``class_reduction``.

    Reference:
        Thesis Sec. 3.4.1, Eq. 3.11; https://arxiv.org/abs/1906.03749.
    """
    beta = _check_beta(beta)
    h, reg = decoupled_parts(clean_logits, adv_logits, h_gradient=h_gradient, class_reduction=class_reduction)
    return h + tf.cast(beta, h.dtype) * reg


def scale_to_ratio(term, reference, ratio: float):
    """``stop_gradient(reference / term) / ratio * term``: ``term`` rescaled to ``reference / ratio``.

    The value is ``reference / ratio`` while the gradient is that of ``term``
    times the constant ``reference / (ratio * term)``.  This is how the thesis
    sets "the strength of the pairing loss h as a constant fraction of the
    adversarial loss ... a constant multiplied by a non-differentiable version of
    the ratio between the losses" (Sec. 3.4.1), with ``ratio`` = adversarial
    training loss / pairing loss (Sec. 3.5.2: 0.125 on CIFAR-10, which
    "focuses the loss on keeping adversarial and original examples similar",
    0.95 on CIFAR-100 and SVHN).  A zero ``term`` gives 0.

    Example:
        >>> scale_to_ratio(term=tf.constant(2.0), reference=tf.constant(1.0), ratio=0.125)  # 8.0

    Args:
        term: scalar tensor (e.g. the batch mean of ``h``).
        reference: scalar tensor (the adversarial training loss).
        ratio: ``reference / result``, ``> 0``.

    Returns:
        Scalar tensor.

    Raises:
        ValueError: ``ratio <= 0``.
    """
    ratio = _check_ratio(ratio)
    term = tf.convert_to_tensor(term)
    reference = tf.cast(reference, term.dtype)
    coefficient = tf.stop_gradient(tf.math.divide_no_nan(reference, term)) / tf.cast(ratio, term.dtype)
    return coefficient * term


# --------------------------------------------------------------------------- Keras losses
@keras.saving.register_keras_serializable(package="tf_dlthesis")
class LabelSmoothingCrossEntropy(keras.losses.Loss):
    """Keras loss for :func:`label_smoothing_cross_entropy` (thesis Eq. 3.8).

    Example:
        >>> model.compile("sgd", loss=LabelSmoothingCrossEntropy(0.1))

    Args:
        smoothing: ``s`` in ``[0, 1)`` (checked against ``1 - 1/C`` at call time).
        from_logits: whether predictions are logits.
        reduction, name, dtype: as for ``keras.losses.Loss`` (``reduction`` is
            the reduction over the batch).
        check_numerics: fail with an error naming ``y_pred`` / ``y_true`` on
            NaN or Inf inputs (off by default; see
            :func:`label_smoothing_cross_entropy`).

    Raises:
        ValueError: if ``smoothing`` is outside ``[0, 1)``.
    """

    def __init__(self, smoothing: float = 0.1, from_logits: bool = True,
                 reduction="sum_over_batch_size", name="label_smoothing_cross_entropy", dtype=None,
                 check_numerics: bool = False):
        super().__init__(reduction=reduction, name=name, dtype=dtype)
        smoothing = _real("smoothing", smoothing)
        if not 0.0 <= smoothing < 1.0:
            raise ValueError(f"`smoothing` must be a float in [0, 1). Received: smoothing={smoothing!r}")
        self.smoothing = smoothing
        self.from_logits = check_bool("from_logits", from_logits)
        self.check_numerics = check_bool("check_numerics", check_numerics)

    def call(self, y_true, y_pred):
        return label_smoothing_cross_entropy(y_true, y_pred, self.smoothing, self.from_logits,
                                             check_numerics=self.check_numerics)

    def get_config(self):
        return {**super().get_config(), "smoothing": self.smoothing, "from_logits": self.from_logits,
                "check_numerics": self.check_numerics}


class _Identity(keras.losses.Loss):
    """Returns ``y_pred`` as the per-example loss (used to reuse Keras's batch reduction)."""

    def __init__(self, reduction, dtype):
        super().__init__(name="identity", reduction=reduction, dtype=dtype)

    def call(self, y_true, y_pred):
        return y_pred


class _LogitLoss(keras.losses.Loss):
    """Base of the logit regularizers: owns ``class_reduction`` (and its deprecated alias).

    Subclasses set ``_default_class_reduction``.
    """

    _default_class_reduction = "sum"

    def __init__(self, class_reduction: str | None = None, *, reduction="sum_over_batch_size", name=None,
                 dtype=None, reduction_over_classes: str | None = None):
        super().__init__(reduction=reduction, name=name, dtype=dtype)
        class_reduction = _resolve_class_reduction(class_reduction, reduction_over_classes,
                                                   "reduction_over_classes", stacklevel=4)
        self.class_reduction = _check_class_reduction(class_reduction or self._default_class_reduction)
        self._batch_reducer = _Identity(self.reduction, dtype)

    def _reduce(self, values, sample_weight=None):
        """Batch-reduce per-example values exactly as ``__call__`` reduces ``call``'s output."""
        return self._batch_reducer(values, values, sample_weight)

    @property
    def reduction_over_classes(self):
        """Deprecated alias of ``class_reduction`` (read-only)."""
        warnings.warn("`reduction_over_classes` is deprecated; use `class_reduction`.", DeprecationWarning,
                      stacklevel=2)
        return self.class_reduction

    def get_config(self):
        return {**super().get_config(), "class_reduction": self.class_reduction}


class _PairLoss(_LogitLoss, abc.ABC):
    """Base of the losses of a pair of logit tensors.

    Call as ``loss(clean_logits, adv_logits, sample_weight=None)``: ``y_true`` is
    the clean logits ``f(x)`` and ``y_pred`` the adversarial logits ``f(g(x))``,
    both ``(B, C)``.  The base validates the pair (rank 2, equal shapes) and
    hands it to :meth:`pair_loss`, which returns one value per example; Keras's
    ``reduction`` then reduces over the batch.
    """

    def call(self, y_true, y_pred):
        clean, adv = _logit_pair(y_true, y_pred)
        return self.pair_loss(clean, adv)

    @abc.abstractmethod
    def pair_loss(self, clean_logits, adv_logits):
        """Per-example loss of a validated pair, shape (B,); every concrete subclass defines it."""


@keras.saving.register_keras_serializable(package="tf_dlthesis")
class LogitSqueezing(_LogitLoss):
    """Keras loss for :func:`logit_squeezing` (``y_true`` is ignored, ``y_pred`` are logits).

    Keras's ``Loss.__call__`` still needs a ``y_true`` tensor (``None`` fails
    there): pass the labels, or the logits themselves as below.

    Example:
        >>> LogitSqueezing()(logits, logits)   # mean over the batch of ||logits||^2

    Args:
        class_reduction: ``"sum"`` over classes (default, the thesis's squared
            norm) or ``"mean"`` (divides by ``C``).
        reduction, name, dtype: as for ``keras.losses.Loss`` (batch reduction).
        reduction_over_classes: deprecated alias of ``class_reduction``.

    Raises:
        ValueError: unknown ``class_reduction``.

    Reference:
        Thesis Sec. 3.3.1; https://arxiv.org/abs/1803.06373.
    """

    _default_class_reduction = "sum"

    def __init__(self, class_reduction: str | None = None, *, reduction="sum_over_batch_size",
                 name="logit_squeezing", dtype=None, reduction_over_classes: str | None = None):
        super().__init__(class_reduction, reduction=reduction, name=name, dtype=dtype,
                         reduction_over_classes=reduction_over_classes)

    def call(self, y_true, y_pred):
        return _squared_norm(_as_logits(y_pred, "y_pred"), self.class_reduction)


@keras.saving.register_keras_serializable(package="tf_dlthesis")
class LogitPairing(_PairLoss):
    """Keras loss for :func:`logit_pairing` (ALP, Eq. 3.9): ``y_true`` = clean, ``y_pred`` = adversarial logits.

    Example:
        >>> alp = LogitPairing()                      # Kannan et al.'s mean over logits
        >>> total = ce + 0.5 * alp(clean_logits, adv_logits)

    Args:
        class_reduction: ``"mean"`` over classes (default; Kannan et al.'s
            ``mean_squared_error``, for which the pairing weights 0.5 / 5.0 were
            tuned) or ``"sum"`` (the squared norm of Eq. 3.9).
        reduction, name, dtype: as for ``keras.losses.Loss`` (batch reduction).
        reduction_over_classes: deprecated alias of ``class_reduction``.

    Raises:
        ValueError: unknown ``class_reduction``; at call time, mismatched shapes.

    Reference:
        Thesis Sec. 3.4.1, Eq. 3.9; https://arxiv.org/abs/1803.06373.
    """

    _default_class_reduction = "mean"

    def __init__(self, class_reduction: str | None = None, *, reduction="sum_over_batch_size",
                 name="logit_pairing", dtype=None, reduction_over_classes: str | None = None):
        super().__init__(class_reduction, reduction=reduction, name=name, dtype=dtype,
                         reduction_over_classes=reduction_over_classes)

    def pair_loss(self, clean_logits, adv_logits):
        return _squared_norm(clean_logits - adv_logits, self.class_reduction)


@keras.saving.register_keras_serializable(package="tf_dlthesis")
class DecoupledLogitPairing(_PairLoss):
    """The decoupled logit pairing of LRM (Eq. 3.11): ``y_true`` = clean, ``y_pred`` = adversarial logits.

    Called like any Keras loss it returns the batch reduction of Eq. 3.11,
    ``h + beta (||f(x)||^2 + ||f(g(x))||^2)`` (``h`` with weight 1).  Inside
    LRM, ``h`` is instead weighted so that the pairing term is the adversarial
    training loss divided by ``ratio``; :meth:`terms` returns the two weighted
    terms given that loss.

    ``h`` is the cross-entropy ``H(softmax(f(x)), softmax(f(g(x))))``.  By
    default (``h_gradient="adversarial"``) no gradient flows into the clean
    distribution, the semantics of the TF1 ``tf.losses.softmax_cross_entropy``
    the thesis's code used.  ``h_gradient="both"`` is the symmetric form: it
    adds an entropy-minimising term on the clean distribution, and because the
    ratio coefficient ``stop_gradient(adversarial_loss / h) / ratio`` grows as
    ``h -> 0``, "both outputs one-hot on the same class" becomes an attractor
    (training collapses to one predicted class at the thesis's ratios; kept
    only to document that).

    Example:
        >>> pairing = DecoupledLogitPairing(beta=1e-3, ratio=0.125)
        >>> terms = pairing.terms(clean_logits, adv_logits, adversarial_loss)
        >>> total = adversarial_loss + terms["pairing_loss"] + terms["logit_norm_loss"]

    Args:
        beta: weight of the logit norms (thesis: 1e-3 CIFAR-10, 3e-5 CIFAR-100,
            1e-4 SVHN).
        ratio: adversarial training loss / pairing loss used by :meth:`terms`
            (thesis: 0.125 CIFAR-10, 0.95 CIFAR-100 and SVHN); ``None`` leaves
            ``h`` unweighted there too.
        h_gradient: ``"adversarial"`` (default) or ``"both"``.
        class_reduction: reduction of the squared norms over classes, ``"sum"``
            (default, Eq. 3.11) or ``"mean"``.
        reduction, name, dtype: as for ``keras.losses.Loss`` (batch reduction).
        reduction_over_classes: deprecated alias of ``class_reduction``.

    Raises:
        ValueError: ``beta < 0``, ``ratio <= 0``, unknown ``h_gradient`` or
            ``class_reduction``; at call time, mismatched shapes.

    Reference:
        Thesis Sec. 3.4.1 (Eq. 3.11) and 3.5.2; https://arxiv.org/abs/1906.03749.
    """

    _default_class_reduction = "sum"

    def __init__(self, beta: float = 1e-3, ratio: float | None = None, h_gradient: str = "adversarial",
                 class_reduction: str | None = None, *, reduction="sum_over_batch_size",
                 name="decoupled_logit_pairing", dtype=None, reduction_over_classes: str | None = None):
        super().__init__(class_reduction, reduction=reduction, name=name, dtype=dtype,
                         reduction_over_classes=reduction_over_classes)
        self.beta = _check_beta(beta)
        self.ratio = None if ratio is None else _check_ratio(ratio)
        self.h_gradient = _check_h_gradient(h_gradient)

    def parts(self, clean_logits, adv_logits):
        """Per-example ``(h, ||f(x)||^2 + ||f(g(x))||^2)`` with this loss's settings, in the loss's dtype.

        The logits are cast to ``self.dtype`` (float32 by default) as ``__call__``
        casts them: :meth:`terms` calls this directly, and squared norms of
        float16 logits (mixed precision) overflow past 65504.
        """
        a, b = _logit_pair(clean_logits, adv_logits)
        a, b = tf.cast(a, self.dtype), tf.cast(b, self.dtype)
        return decoupled_parts(a, b, h_gradient=self.h_gradient, class_reduction=self.class_reduction)

    def pair_loss(self, clean_logits, adv_logits):
        h, reg = self.parts(clean_logits, adv_logits)
        return h + tf.cast(self.beta, h.dtype) * reg

    def terms(self, clean_logits, adv_logits, adversarial_loss, sample_weight=None):
        """The two weighted LRM terms, batch-reduced.

        Args:
            clean_logits: ``(B, C)``.
            adv_logits: ``(B, C)``.
            adversarial_loss: scalar adversarial training loss (Eq. 3.1) the
                pairing term is tied to.
            sample_weight: optional per-example weights.

        Returns:
            ``{"pairing_loss": stop_gradient(adversarial_loss / h) / ratio * h,
            "logit_norm_loss": beta * (||f(x)||^2 + ||f(g(x))||^2)}`` with ``h``
            and the norms reduced over the batch; ``pairing_loss`` equals
            ``adversarial_loss / ratio`` (or ``h`` when ``ratio`` is None).
            In a replica of a distribution strategy (``MirroredStrategy``) the
            coefficient is the whole batch's: ``h`` and ``adversarial_loss``
            are summed over the replicas first, so the update is the one of a
            single device.
        """
        with tf.name_scope(self.name):
            h, reg = self.parts(clean_logits, adv_logits)
            h = self._reduce(h, sample_weight)
            reg = self._reduce(reg, sample_weight)
            if self.ratio is None:
                pairing = h
            else:
                context = tf.distribute.get_replica_context()
                if context is not None and context.num_replicas_in_sync > 1 and h.shape.rank == 0:
                    # the coefficient of the whole batch, as on one device: each replica's (1 / replicas
                    # scaled) h and adversarial loss summed over the replicas, not this replica's ratio
                    total_h, total_loss = context.all_reduce(
                        "sum", [tf.stop_gradient(h), tf.stop_gradient(tf.cast(adversarial_loss, h.dtype))])
                    pairing = tf.math.divide_no_nan(total_loss, total_h) / tf.cast(self.ratio, h.dtype) * h
                else:
                    pairing = scale_to_ratio(h, adversarial_loss, self.ratio)
            return {"pairing_loss": pairing, "logit_norm_loss": tf.cast(self.beta, reg.dtype) * reg}

    def get_config(self):
        return {**super().get_config(), "beta": self.beta, "ratio": self.ratio, "h_gradient": self.h_gradient}
