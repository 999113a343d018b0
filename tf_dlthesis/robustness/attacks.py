"""Adversarial attacks: thin wrappers over CleverHans 4.0.0's tf2 attacks.

This is the only module of the library that imports CleverHans.

* :func:`fgsm` calls ``cleverhans.tf2.attacks.fast_gradient_method`` directly.
* :func:`pgd` runs the loop of ``cleverhans.tf2.attacks.projected_gradient_descent``
  (CleverHans's FGM step, then ``clip_eta`` and clipping), unrolled up to 20
  steps like CleverHans and inside a ``tf.while_loop`` beyond (so PGD-1000
  traces one step), and draws the random start with a
  *stateless* op from an explicit seed.  With ``random_start=False`` it equals
  CleverHans's function bit for bit (tested).
* SPSA: CleverHans's ``SPSAAdam`` subclasses ``tf.optimizers.Adam`` and calls
  ``super().__init__(lr=...)``, which Keras 3 rejects
  (``ValueError: Argument(s) not recognized: {'lr': ...}``).
  :class:`SPSAAdamAdapter` subclasses it, initialises the Keras 3 ``Adam`` with
  ``learning_rate=`` and exposes ``lr``, so CleverHans's own SPSA machinery
  (``SPSAAdam.minimize`` / ``_apply_gradients`` and ``projected_optimization``)
  runs unchanged: :func:`cleverhans_spsa` is CleverHans's ``spsa`` with the
  adapter (batch size 1, as in CleverHans).  :func:`spsa` lifts the batch-1
  limit: :class:`BatchedSPSAAdam` estimates the gradient of every example of a
  batch from one model call on ``spsa_samples x B`` perturbed inputs, with
  stateless noise; the Adam update and projection are CleverHans's (they are
  element-wise, hence already per example).

CleverHans issue #1087 (SPSA gradient scale): CleverHans computes
``mean(loss * delta_x) / delta = mean(loss * sign)``, i.e. the SPSA estimate of
Uesato et al. multiplied by ``delta`` (0.01 by default).  Adam is invariant to a
constant gradient scale except through its ``epsilon`` (1e-7), so the attack
barely changes.  We deliberately keep CleverHans's scale by default
(``corrected_gradient=False``) because the thesis evaluated SPSA with CleverHans's
settings (Sec. 3.5.3, "the same evaluation settings as provided in [113]");
``corrected_gradient=True`` uses the paper's ``mean(loss * sign) / delta``.

Reference:
    Thesis Sec. 3.2 and 3.5.3; Madry et al., https://arxiv.org/abs/1706.06083;
    Uesato et al., https://arxiv.org/abs/1802.05666;
    https://github.com/cleverhans-lab/cleverhans/issues/1087.
"""

from __future__ import annotations

import weakref

import keras
import numpy as np
import tensorflow as tf
from cleverhans.tf2.attacks import spsa as _ch_spsa
from cleverhans.tf2.attacks.fast_gradient_method import fast_gradient_method
from cleverhans.tf2.utils import clip_eta

__all__ = [
    "fgsm", "pgd", "spsa", "cleverhans_spsa", "SPSAAdamAdapter", "BatchedSPSAAdam",
    "inference_fn", "make_attack", "ATTACK_NAMES",
]

#: Named attacks understood by :func:`make_attack` (``"pgd<N>"`` for any N also works).
ATTACK_NAMES = ("natural", "fgsm", "pgd5", "pgd10", "pgd20", "pgd1000", "spsa")

_FN_CACHE: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()
#: PGD with at most this many steps is unrolled (as CleverHans does); longer runs use ``tf.while_loop``.
_UNROLL_MAX_STEPS = 20


# --------------------------------------------------------------------------- helpers
def inference_fn(model):
    """Return a cached ``x -> model(x, training=False)`` callable for ``model``.

    Keras layers/models are called with ``training=False``; other callables are
    returned unchanged.  The callable is cached per model so CleverHans's
    ``@tf.function compute_gradient`` (which takes it as an argument) does not
    retrace on every attack call.
    """
    if isinstance(model, keras.layers.Layer):
        fn = _FN_CACHE.get(model)
        if fn is None:
            def fn(x, _ref=weakref.ref(model)):
                return _ref()(x, training=False)
            _FN_CACHE[model] = fn
        return fn
    if callable(model):
        return model
    raise TypeError(f"`model` must be a Keras model or a callable returning logits. Received: {model!r}")


def _check_float(name, value, *, minimum=None, allow_tensor=False):
    if allow_tensor and tf.is_tensor(value):
        return value
    if isinstance(value, bool) or not isinstance(value, (int, float, np.floating, np.integer)):
        raise TypeError(f"`{name}` must be a number. Received: {name}={value!r}")
    value = float(value)
    if not np.isfinite(value) or (minimum is not None and value < minimum):
        raise ValueError(f"`{name}` must be a finite number >= {minimum}. Received: {name}={value}")
    return value


def _check_clip_range(clip_range):
    if clip_range is None:
        return None, None
    try:
        lo, hi = (float(v) for v in clip_range)
    except (TypeError, ValueError):
        raise TypeError(f"`clip_range` must be a pair (min, max) or None. Received: clip_range={clip_range!r}") from None
    if not lo < hi:
        raise ValueError(f"`clip_range` must satisfy min < max. Received: clip_range={clip_range!r}")
    return lo, hi


def _check_steps(num_steps):
    if isinstance(num_steps, bool) or not isinstance(num_steps, (int, np.integer)) or num_steps < 0:
        raise ValueError(f"`num_steps` must be an integer >= 0. Received: num_steps={num_steps!r}")
    return int(num_steps)


def as_images(x):
    """Convert images to float32; integer images (e.g. uint8) are scaled by 1/255 into [0, 1]."""
    x = tf.convert_to_tensor(x)
    if x.dtype.is_integer or x.dtype == tf.bool:
        return tf.cast(x, tf.float32) / 255.0
    if x.dtype != tf.float32:
        return tf.cast(x, tf.float32)
    return x


def _prepare_labels(model_fn, x, y):
    """Return (labels, loss_fn): sparse int labels use CleverHans's default loss; soft labels use softmax CE."""
    if y is None:
        return tf.argmax(model_fn(x), axis=-1), None
    y = tf.convert_to_tensor(y)
    if x.shape[0] is not None and y.shape.rank and y.shape[0] is not None and y.shape[0] != x.shape[0]:
        raise ValueError(
            f"Labels and images must have the same batch size. Received: x.shape={x.shape}, y.shape={y.shape}"
        )
    if y.shape.rank == 2:
        y = tf.cast(y, tf.float32)
        return y, lambda labels, logits: tf.nn.softmax_cross_entropy_with_logits(labels=labels, logits=logits)
    if y.shape.rank != 1:
        raise ValueError(f"Labels must be sparse (B,) or one-hot (B, K). Received: y.shape={y.shape}")
    if y.dtype.is_floating:
        y = tf.cast(y, tf.int64)
    return y, None


def _seed_tensor(seed):
    if seed is None:
        return tf.constant(np.random.default_rng().integers(0, 2**31 - 1, size=2), tf.int64)
    if tf.is_tensor(seed):
        seed = tf.cast(seed, tf.int64)
        return seed if seed.shape.rank == 1 else tf.stack([seed, tf.zeros_like(seed)])
    if isinstance(seed, (int, np.integer)):
        return tf.constant([int(seed), 0], tf.int64)
    seed = np.asarray(seed)
    if seed.shape != (2,):
        raise ValueError(f"`seed` must be an int, a shape-[2] int tensor, or None. Received: seed={seed!r}")
    return tf.constant(seed, tf.int64)


# --------------------------------------------------------------------------- FGSM / PGD
def fgsm(model, x, y=None, *, epsilon: float, clip_range=(0.0, 1.0), loss_fn=None):
    """Fast gradient sign method (L-inf), CleverHans's ``fast_gradient_method``.

    Example:
        >>> x_adv = fgsm(model, images, labels, epsilon=0.03)

    Args:
        model: Keras model returning logits (called with ``training=False``) or a callable.
        x: images ``(B, H, W, C)``; integer images are converted to ``[0, 1]`` floats.
        y: sparse or one-hot labels; ``None`` uses the model's predictions
            (avoids label leaking).
        epsilon: L-inf radius (``>= 0``).
        clip_range: ``(min, max)`` valid input range, or ``None``.
        loss_fn: optional ``loss_fn(labels=..., logits=...)`` per example.

    Returns:
        Adversarial images, float32, same shape as ``x``.

    Raises:
        ValueError: negative epsilon, inverted clip range, label/batch mismatch.

    Reference:
        Thesis Sec. 3.2, Eq. 3.1; Goodfellow et al., https://arxiv.org/abs/1412.6572.
    """
    epsilon = _check_float("epsilon", epsilon, minimum=0.0, allow_tensor=True)
    lo, hi = _check_clip_range(clip_range)
    model_fn = inference_fn(model)
    x = as_images(x)
    y, default_loss = _prepare_labels(model_fn, x, y)
    return fast_gradient_method(model_fn, x, epsilon, np.inf, loss_fn=loss_fn or default_loss,
                                clip_min=lo, clip_max=hi, y=y)


def pgd(model, x, y=None, *, epsilon: float, step_size: float, num_steps: int, random_start: bool = True,
        clip_range=(0.0, 1.0), seed=None, loss_fn=None):
    """Projected gradient descent (Madry et al.), L-inf, built on CleverHans.

    Each step is CleverHans's ``fast_gradient_method`` followed by its
    ``clip_eta`` projection and clipping to ``clip_range``, exactly as in
    ``cleverhans.tf2.attacks.projected_gradient_descent``; up to 20 steps are
    unrolled (as in CleverHans), longer attacks run in a ``tf.while_loop``
    (one traced step for any ``num_steps``), and the random start is
    ``tf.random.stateless_uniform(-epsilon, epsilon)`` from ``seed``.

    Example:
        >>> x_adv = pgd(model, images, labels, epsilon=0.03, step_size=0.0078, num_steps=10, seed=0)

    Args:
        model: Keras model returning logits (called with ``training=False``) or a callable.
        x: images; integer images are converted to ``[0, 1]`` floats.
        y: sparse or one-hot labels, or ``None`` for the model's predictions.
        epsilon: L-inf radius (``>= 0``).
        step_size: step per iteration, ``0 <= step_size <= epsilon``.
        num_steps: number of iterations.
        random_start: start uniformly in the epsilon ball (Madry et al.).
        clip_range: ``(min, max)`` or ``None``.
        seed: int, shape-[2] int tensor (stateless seed) or ``None`` (fresh random seed).
        loss_fn: optional ``loss_fn(labels=..., logits=...)``.

    Returns:
        Adversarial images (float32).

    Raises:
        ValueError: negative epsilon, ``step_size > epsilon``, inverted clip
            range, negative ``num_steps``, label/batch mismatch.

    Reference:
        Thesis Sec. 3.2 and 3.5.1 (eps 0.03, step 0.0078); https://arxiv.org/abs/1706.06083.
    """
    epsilon = _check_float("epsilon", epsilon, minimum=0.0, allow_tensor=True)
    step_size = _check_float("step_size", step_size, minimum=0.0, allow_tensor=True)
    if not tf.is_tensor(epsilon) and not tf.is_tensor(step_size) and step_size > epsilon:
        raise ValueError(f"`step_size` must be <= `epsilon`. Received: step_size={step_size}, epsilon={epsilon}")
    num_steps = _check_steps(num_steps)
    lo, hi = _check_clip_range(clip_range)
    model_fn = inference_fn(model)
    x = as_images(x)
    y, default_loss = _prepare_labels(model_fn, x, y)
    loss_fn = loss_fn or default_loss
    if random_start:
        eta = tf.random.stateless_uniform(tf.shape(x), _seed_tensor(seed), -epsilon, epsilon, dtype=x.dtype)
    else:
        eta = tf.zeros_like(x)
    eta = clip_eta(eta, np.inf, epsilon)
    adv = x + eta
    if lo is not None:
        adv = tf.clip_by_value(adv, lo, hi)

    def body(i, adv):
        adv = fast_gradient_method(model_fn, adv, step_size, np.inf, loss_fn, clip_min=lo, clip_max=hi, y=y)
        adv = x + clip_eta(adv - x, np.inf, epsilon)
        if lo is not None:
            adv = tf.clip_by_value(adv, lo, hi)
        return i + 1, adv

    if num_steps <= _UNROLL_MAX_STEPS:  # unrolled like CleverHans: lets graph optimisations span steps
        for i in range(num_steps):
            _, adv = body(i, adv)
    else:  # one traced body for long attacks (PGD-1000)
        _, adv = tf.while_loop(lambda i, _: i < num_steps, body, (tf.constant(0), adv), parallel_iterations=1)
    return tf.stop_gradient(adv)


# --------------------------------------------------------------------------- SPSA
class SPSAAdamAdapter(_ch_spsa.SPSAAdam):
    """CleverHans's ``SPSAAdam`` made constructible under Keras 3.

    CleverHans 4.0.0 calls ``tf.optimizers.Adam.__init__(lr=...)``; Keras 3 only
    accepts ``learning_rate=``.  This subclass initialises the Keras 3 ``Adam``
    correctly, keeps ``lr`` as a plain float (CleverHans's update reads
    ``self.lr``), and otherwise inherits CleverHans's SPSA gradient estimate and
    Adam update unchanged.  Build it outside ``tf.function`` (Keras creates
    variables in ``__init__``).

    Args:
        lr, delta, num_samples, num_iters: as for CleverHans's ``SPSAAdam``.
        corrected_gradient: divide the estimate by ``delta`` (CleverHans issue #1087).
    """

    def __init__(self, lr=0.01, delta=0.01, num_samples=128, num_iters=1, compare_to_analytic_grad=False,
                 corrected_gradient=False):
        keras.optimizers.Adam.__init__(self, learning_rate=lr)
        if int(num_samples) % 2 or num_samples <= 0:
            raise ValueError(f"`spsa_samples` must be a positive even number. Received: {num_samples}")
        self._lr_value = float(lr)
        self._delta = float(delta)
        self._num_samples = int(num_samples) // 2  # mirrored +/- delta
        self._num_iters = int(num_iters)
        self._compare_to_analytic_grad = compare_to_analytic_grad
        self._corrected_gradient = bool(corrected_gradient)

    @property
    def lr(self):
        return self._lr_value

    def _compute_gradients(self, loss_fn, x):
        grads = super()._compute_gradients(loss_fn, x)
        if self._corrected_gradient:
            grads = [g / self._delta for g in grads]
        return grads


class BatchedSPSAAdam(SPSAAdamAdapter):
    """SPSA gradient estimate for a whole batch at once, stateless noise.

    For a batch ``x`` of B images it draws ``spsa_samples/2`` Rademacher
    directions per image (mirrored to ``spsa_samples``), evaluates the loss of
    all ``spsa_samples * B`` perturbed images in one model call, and returns one
    gradient estimate per image, each computed exactly as CleverHans's batch-1
    ``_compute_gradients`` would.  The Adam update is inherited (element-wise).
    """

    def set_seed(self, seed):
        self._seed = seed

    def _compute_gradients(self, loss_fn, x):
        x = x[0]
        s = self._num_samples
        total = tf.zeros_like(x)
        for it in range(self._num_iters):
            seed = tf.random.experimental.stateless_fold_in(self._seed, it)
            sign = tf.sign(tf.random.stateless_uniform(tf.concat([[s], tf.shape(x)], 0), seed, -1.0, 1.0))
            delta_x = self._delta * sign
            delta_x = tf.concat([delta_x, -delta_x], axis=0)  # (2S, B, ...)
            flat = tf.reshape(x[None] + delta_x, tf.concat([[-1], tf.shape(x)[1:]], 0))
            loss = tf.reshape(loss_fn(flat), tf.concat([[2 * s, tf.shape(x)[0]], tf.ones([tf.rank(x) - 1], tf.int32)], 0))
            total += tf.reduce_mean(loss * delta_x, axis=0) / self._delta
        if self._corrected_gradient:
            total = total / self._delta
        return [total]


def _margin_loss(model_fn):
    def loss_fn(x, label):
        logits = model_fn(x)
        return -_ch_spsa.margin_logit_loss(logits, label, nb_classes=logits.shape[-1])
    return loss_fn


def _spsa_args(epsilon, num_steps, clip_range, spsa_samples, learning_rate, delta):
    epsilon = _check_float("epsilon", epsilon, minimum=0.0)
    num_steps = _check_steps(num_steps)
    lo, hi = _check_clip_range(clip_range)
    if lo is None:
        raise ValueError("SPSA (CleverHans projected_optimization) requires a clip_range. Received: clip_range=None")
    _check_float("learning_rate", learning_rate, minimum=0.0)
    _check_float("delta", delta, minimum=0.0)
    if isinstance(spsa_samples, bool) or not isinstance(spsa_samples, (int, np.integer)) or spsa_samples <= 0 \
            or spsa_samples % 2:
        raise ValueError(f"`spsa_samples` must be a positive even integer. Received: spsa_samples={spsa_samples!r}")
    return epsilon, num_steps, lo, hi


def cleverhans_spsa(model, x, y, *, epsilon: float, num_steps: int, learning_rate: float = 0.01,
                    delta: float = 0.01, spsa_samples: int = 128, spsa_iters: int = 1, clip_range=(0.0, 1.0),
                    corrected_gradient: bool = False, early_stop_loss_threshold=None):
    """CleverHans 4.0.0's own SPSA (``projected_optimization`` + ``SPSAAdam``), one example at a time.

    This is ``cleverhans.tf2.attacks.spsa.spsa`` with :class:`SPSAAdamAdapter`
    in place of ``SPSAAdam`` so it runs under Keras 3; it loops over the batch
    because CleverHans only accepts batch size 1.  Randomness is CleverHans's
    (stateful ``tf.random.uniform``).  Use :func:`spsa` for the batched,
    seeded version.

    Returns:
        Adversarial images (float32).
    """
    epsilon, num_steps, lo, hi = _spsa_args(epsilon, num_steps, clip_range, spsa_samples, learning_rate, delta)
    model_fn = inference_fn(model)
    x = as_images(x)
    y = tf.reshape(tf.cast(tf.convert_to_tensor(y), tf.int64), [-1])
    if y.shape[0] != x.shape[0]:
        raise ValueError(f"Labels and images must have the same batch size. Received: x.shape={x.shape}, y.shape={y.shape}")
    optimizer = SPSAAdamAdapter(lr=learning_rate, delta=delta, num_samples=spsa_samples, num_iters=spsa_iters,
                                corrected_gradient=corrected_gradient)
    loss_fn = _margin_loss(model_fn)
    out = []
    for i in range(int(x.shape[0])):
        out.append(_ch_spsa.projected_optimization(loss_fn, x[i:i + 1], y[i:i + 1], epsilon, num_steps, optimizer,
                                                   lo, hi, early_stop_loss_threshold))
    return tf.concat(out, axis=0)


_SPSA_FN_CACHE: dict = {}


def spsa(model, x, y, *, epsilon: float, num_steps: int, learning_rate: float = 0.01, delta: float = 0.01,
         spsa_samples: int = 128, spsa_iters: int = 1, clip_range=(0.0, 1.0), seed=None,
         corrected_gradient: bool = False):
    """SPSA attack (Uesato et al. 2018) for any batch size, on CleverHans's machinery.

    Minimises CleverHans's margin loss (``max_{c != y} f_c - f_y``, negated for
    untargeted attacks) with SPSA gradient estimates and CleverHans's Adam
    update, projecting onto the epsilon ball and ``clip_range`` after every
    step (CleverHans's ``_project_perturbation``).  All examples of the batch
    are attacked in parallel (one model call on ``spsa_samples * B`` images per
    step); noise is stateless from ``seed``.  See the module docstring for the
    gradient-scale choice (CleverHans issue #1087).

    Example:
        >>> x_adv = spsa(model, images, labels, epsilon=0.03, num_steps=100, seed=0)

    Args:
        model: Keras model returning logits or a callable.
        x: images (any batch size); integer images are scaled to ``[0, 1]``.
        y: sparse labels ``(B,)`` (or one-hot).
        epsilon: L-inf radius.
        num_steps: optimisation steps.
        learning_rate, delta, spsa_samples, spsa_iters: CleverHans's SPSA settings
            (defaults are CleverHans's).
        clip_range: ``(min, max)`` (required).
        seed: int, shape-[2] tensor or ``None``.
        corrected_gradient: divide the estimate by ``delta`` (issue #1087).

    Returns:
        Adversarial images (float32).

    Raises:
        ValueError: bad epsilon / steps / clip range / sample count, label mismatch.

    Reference:
        Thesis Sec. 3.5.3, Table 3.6; https://arxiv.org/abs/1802.05666.
    """
    epsilon, num_steps, lo, hi = _spsa_args(epsilon, num_steps, clip_range, spsa_samples, learning_rate, delta)
    x = as_images(x)
    y = tf.convert_to_tensor(y)
    if y.shape.rank == 2:
        y = tf.argmax(y, axis=-1)
    y = tf.cast(y, tf.int64)
    if x.shape[0] is not None and y.shape[0] is not None and y.shape[0] != x.shape[0]:
        raise ValueError(f"Labels and images must have the same batch size. Received: x.shape={x.shape}, y.shape={y.shape}")
    key = (id(model), epsilon, num_steps, learning_rate, delta, spsa_samples, spsa_iters, lo, hi, corrected_gradient)
    entry = _SPSA_FN_CACHE.get(key)
    if entry is None or entry[0]() is not model:
        optimizer = BatchedSPSAAdam(lr=learning_rate, delta=delta, num_samples=spsa_samples, num_iters=spsa_iters,
                                    corrected_gradient=corrected_gradient)
        loss_fn = _margin_loss(inference_fn(model))

        @tf.function(reduce_retracing=True)
        def run(x, y, seed):
            init_seed, loop_seed = tf.unstack(tf.random.experimental.stateless_split(seed, 2))
            pert = tf.random.stateless_uniform(tf.shape(x), init_seed, -epsilon, epsilon, dtype=x.dtype)
            pert = _ch_spsa._project_perturbation(pert, epsilon, x, lo, hi)
            state = optimizer.init_state([pert])
            flat_state = tf.nest.flatten(state)

            def body(i, pert, flat_state):
                optimizer.set_seed(tf.random.experimental.stateless_fold_in(loop_seed, i))
                st = tf.nest.pack_sequence_as(state, flat_state)
                def wrapped(p):
                    reps = tf.shape(p)[0] // tf.shape(x)[0]
                    tiled = tf.tile(x, tf.concat([[reps], tf.ones([tf.rank(x) - 1], tf.int32)], 0))
                    return loss_fn(tiled + p, tf.tile(y, [reps]))

                new, st = optimizer.minimize(wrapped, [pert], st)
                pert = _ch_spsa._project_perturbation(new[0], epsilon, x, lo, hi)
                return i + 1, pert, tf.nest.flatten(st)

            _, pert, _ = tf.while_loop(lambda i, *_: i < num_steps, body, (tf.constant(0), pert, flat_state),
                                       parallel_iterations=1)
            return tf.stop_gradient(x + pert)

        entry = (weakref.ref(model) if isinstance(model, keras.layers.Layer) else (lambda m=model: m), run)
        _SPSA_FN_CACHE[key] = entry
    return entry[1](x, y, _seed_tensor(seed))


# --------------------------------------------------------------------------- named attacks
def make_attack(name: str, *, epsilon: float, step_size: float | None = None, clip_range=(0.0, 1.0),
                spsa_params: dict | None = None):
    """Return ``attack(model, x, y, seed) -> x_adv`` for a named attack.

    Names: ``"natural"`` (identity), ``"fgsm"``, ``"pgd<N>"`` (e.g. ``"pgd10"``,
    random start, step ``step_size``), ``"spsa"`` (``spsa_params`` passed to
    :func:`spsa`, default ``num_steps=100``).

    Raises:
        ValueError: unknown attack name or missing ``step_size`` for PGD.
    """
    if not isinstance(name, str):
        raise TypeError(f"Attack name must be a string. Received: {name!r}")
    _check_float("epsilon", epsilon, minimum=0.0)
    _check_clip_range(clip_range)
    if name == "natural":
        return lambda model, x, y, seed=None: as_images(x)
    if name == "fgsm":
        fn = _compiled_attack(epsilon, 0.0, None, clip_range)
        return lambda model, x, y, seed=None: fn(model, x, y, seed)
    if name.startswith("pgd") and name[3:].isdigit():
        steps = int(name[3:])
        if step_size is None:
            raise ValueError(f"Attack {name!r} needs `step_size`. Received: step_size=None")
        if step_size > epsilon:
            raise ValueError(f"`step_size` must be <= `epsilon`. Received: step_size={step_size}, epsilon={epsilon}")
        fn = _compiled_attack(epsilon, float(step_size), steps, clip_range)
        return lambda model, x, y, seed=None: fn(model, x, y, seed)
    if name == "spsa":
        params = {"num_steps": 100, **(spsa_params or {})}
        return lambda model, x, y, seed=None: spsa(model, x, y, epsilon=epsilon, clip_range=clip_range,
                                                   seed=seed, **params)
    raise ValueError(f"Unknown attack {name!r}. Expected one of {ATTACK_NAMES} or 'pgd<N>'.")


_ATTACK_FN_CACHE: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


def _compiled_attack(epsilon, step_size, steps, clip_range):
    """FGSM (``steps=None``) or PGD in one ``tf.function`` per (model, steps, clip range).

    Epsilon and step size are tensor arguments, so sweeping epsilon does not retrace.
    """
    clip = tuple(clip_range) if clip_range else None

    def attack(model, x, y, seed):
        x = as_images(x)
        eps, step = tf.constant(epsilon, tf.float32), tf.constant(step_size, tf.float32)
        if not isinstance(model, keras.layers.Layer):
            return _run_attack(model, x, y, eps, step, steps, clip, seed)
        fns = _ATTACK_FN_CACHE.setdefault(model, {})
        if (steps, clip) not in fns:
            ref = weakref.ref(model)
            fns[(steps, clip)] = tf.function(
                lambda x, y, eps, step, seed: _run_attack(ref(), x, y, eps, step, steps, clip, seed),
                reduce_retracing=True)
        return fns[(steps, clip)](x, tf.convert_to_tensor(y), eps, step, _seed_tensor(0 if seed is None else seed))
    return attack


def _run_attack(model, x, y, eps, step, steps, clip, seed):
    if steps is None:
        return fgsm(model, x, y, epsilon=eps, clip_range=clip)
    return pgd(model, x, y, epsilon=eps, step_size=step, num_steps=steps, clip_range=clip, seed=seed)
