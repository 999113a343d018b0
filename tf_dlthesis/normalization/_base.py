"""Shared Keras layer behind the four normalization layers (thesis Ch. 4)."""

from __future__ import annotations

import math
import numbers

import keras
import tensorflow as tf

from tf_dlthesis._checks import check_bool, check_int

from . import _core

_CLIPPING_KEYS = ("rmax", "rmin", "dmax")


def check_example_weight(alpha) -> float:
    """Validates the inference example weight alpha (Eq. 4.3) and returns it."""
    if isinstance(alpha, bool) or not isinstance(alpha, numbers.Real):
        raise TypeError(f"`example_weight` must be a float in [0, 1]. Received: example_weight={alpha!r}")
    alpha = float(alpha)
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"`example_weight` must be in [0, 1]. Received: example_weight={alpha}")
    return alpha


def check_groups(groups, allow_none: bool = True):
    """Validates ``groups``: a positive int, ``-1`` (one channel per group) or, where allowed, ``None``."""
    groups = check_int("groups", groups, allow_none=allow_none)  # a TypeError for anything but an int (or None)
    if groups is not None and groups <= 0 and groups != -1:
        raise ValueError(f"Invalid value for argument `groups`: expected a positive int or -1 (one channel per "
                         f"group). Received: groups={groups!r}")
    return groups


def check_renorm_clipping(renorm_clipping) -> dict:
    """Validates Batch Renormalization's ``renorm_clipping`` dict (keys ``rmax``, ``rmin``, ``dmax``)."""
    if renorm_clipping is None:
        return {}
    if not isinstance(renorm_clipping, dict):
        raise TypeError(f"`renorm_clipping` must be a dict with keys {list(_CLIPPING_KEYS)}. "
                        f"Received: renorm_clipping={renorm_clipping!r}")
    bad = set(renorm_clipping) - set(_CLIPPING_KEYS)
    if bad:
        raise ValueError(f"Received invalid keys {sorted(bad)} for argument `renorm_clipping`; allowed keys are "
                         f"{list(_CLIPPING_KEYS)}. Received: renorm_clipping={renorm_clipping}")
    for key, value in renorm_clipping.items():
        if value is not None and (isinstance(value, bool) or not isinstance(value, numbers.Real)):
            raise TypeError(f"`renorm_clipping['{key}']` must be a number. Received: renorm_clipping={renorm_clipping}")
    rmax, rmin, dmax = (renorm_clipping.get(k) for k in _CLIPPING_KEYS)
    if rmax is not None and rmin is not None and rmax < rmin:
        raise ValueError(f"In `renorm_clipping`, rmax should be >= rmin. Received: renorm_clipping={renorm_clipping}")
    if dmax is not None and dmax < 0:
        raise ValueError(f"In `renorm_clipping`, dmax should be non-negative. "
                         f"Received: renorm_clipping={renorm_clipping}")
    return dict(renorm_clipping)


class ExampleGroupNormalization(keras.layers.Layer):
    """Normalization over groups of examples x groups of channels (Sec. 4.3.4).

    The base of `ExampleWeightedBatchNormalization`, `GhostBatchNormalization`,
    `BatchGroupNormalization` and `ExampleWeightedGroupNormalization`. It owns
    the Keras `BatchNormalization` weights (``gamma``, ``beta``,
    ``moving_mean``, ``moving_variance``, all of shape ``(C,)``, created in that
    order) so weights copy 1:1 from and to Keras BN layers.

    Training normalizes with statistics over ``ghost_batch_size`` examples
    (``None``: the whole batch; a batch not divisible by it ends with a
    smaller ghost batch) and ``C / groups`` channels. The moving statistics
    track the statistics training actually normalized with: each channel
    receives its group's mean and variance, averaged over the ghost batches
    (``moving_update="averaged"``, as tf_keras's ``virtual_batch_size``;
    one momentum step per batch) or applied as one momentum step per ghost
    batch in order (``"sequential"``; the moving average then forgets
    ``n_ghost`` times faster per training batch).

    Inference uses Eq. 4.3 with ``example_weight`` (alpha), interpreting a
    standard checkpoint's statistics as ``m_x = moving_mean`` and
    ``m_{x^2} = moving_variance + moving_mean^2``. Alpha is held in a
    `tf.Variable`, so `set_example_weight` changes it without retracing.

    Statistics and normalization are computed in float32 whatever the
    layer's compute dtype (mixed precision): the layer does not autocast its
    inputs, so a float32 input above float16's range (e.g. 70000 under
    ``mixed_float16``) is normalized before the output is cast to the compute
    dtype, as Keras's `GroupNormalization` (Keras issue 22586).

    Keras `BatchNormalization` arguments beyond the basic ones:

    * ``mask``: as Keras BN, statistics in training use the unmasked
      positions only (mask shape = input shape without the channel axis; the
      moving averages then track masked statistics); at inference the
      example's own statistics (alpha > 0) also use only its unmasked
      positions, and alpha = 0 ignores the mask, as Keras.
    * ``renorm``, ``renorm_clipping``, ``renorm_momentum``: Batch
      Renormalization (Ioffe 2017) composed with the layer's statistics:
      each ghost batch / channel group statistic gets its ``(r, d)``
      correction against per-channel renorm statistics (``moving_stddev``,
      ``renorm_mean``, ``renorm_stddev`` weights created after the four BN
      weights, as Keras). Inference uses the moving statistics, so example
      weighing applies unchanged.
    * ``synchronized``: statistics over the global batch of all replicas
      under `tf.distribute` (two all-reduces: mean, then squared
      deviations). Only where the statistic spans the whole batch
      (``ghost_batch_size=None``); ghost batches and per-example groups are
      local by definition, so those layers refuse it.

    Args:
        groups: Number of channel groups; ``None`` = one per channel (BN).
        ghost_batch_size: Examples per statistic in training; ``None`` = the
            whole batch.
        example_weight: alpha in [0, 1] used at inference.
        moving_update: ``"averaged"`` or ``"sequential"``.
        moving_statistics: Track moving statistics (default). ``False``
            creates only ``gamma`` / ``beta`` (Keras `GroupNormalization`'s
            weights); alpha is then fixed at 1.
        axis, momentum, epsilon, center, scale, *_initializer, *_regularizer,
            *_constraint: as in `keras.layers.BatchNormalization`.

    Call arguments:
        inputs: Tensor of rank >= 2, batch first.
        training: Python bool, ``None`` or a boolean scalar tensor (then both
            branches are built and chosen at run time).
        mask: Optional boolean mask of the input's shape without the
            channel axis: masked positions do not count in the statistics.
            With the channel axis not last, a mask of the input's shape
            without the last axis (what Keras's Masking / Embedding
            propagate) masks along that axis, as Keras BN, unless its shape
            also fits the first form.

    Reference:
        Thesis Sec. 4.3; https://arxiv.org/abs/1906.03548.
    """

    def __init__(
        self,
        groups: int | None = None,
        ghost_batch_size: int | None = None,
        example_weight: float = 0.0,
        axis: int = -1,
        momentum: float = 0.99,
        epsilon: float = 1e-3,
        center: bool = True,
        scale: bool = True,
        beta_initializer="zeros",
        gamma_initializer="ones",
        moving_mean_initializer="zeros",
        moving_variance_initializer="ones",
        beta_regularizer=None,
        gamma_regularizer=None,
        beta_constraint=None,
        gamma_constraint=None,
        moving_update: str = "averaged",
        moving_statistics: bool = True,
        renorm: bool = False,
        renorm_clipping: dict | None = None,
        renorm_momentum: float = 0.99,
        synchronized: bool = False,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.groups = check_groups(groups)
        self.ghost_batch_size = check_int("ghost_batch_size", ghost_batch_size, 1, allow_none=True)
        self.renorm = renorm = check_bool("renorm", renorm)
        self.renorm_clipping = check_renorm_clipping(renorm_clipping) if renorm else renorm_clipping
        if isinstance(renorm_momentum, bool) or not isinstance(renorm_momentum, numbers.Real) or not (
                0.0 <= float(renorm_momentum) <= 1.0):
            raise ValueError(f"`renorm_momentum` must be in [0, 1]. Received: renorm_momentum={renorm_momentum!r}")
        self.renorm_momentum = float(renorm_momentum)
        synchronized = check_bool("synchronized", synchronized)
        if synchronized and self.ghost_batch_size is not None:
            what = ("single examples" if self.ghost_batch_size == 1
                    else f"ghost batches of {self.ghost_batch_size} examples")
            raise ValueError(
                f"`synchronized=True` has no meaning for {type(self).__name__}: its statistics are computed over "
                f"{what} of each replica's own batch, which are local by definition (use "
                "ExampleWeightedBatchNormalization or BatchGroupNormalization(ghost_batch_size=None) for "
                "cross-replica statistics). Received: synchronized=True")
        self.synchronized = synchronized
        self.axis = check_int("axis", axis)
        if isinstance(momentum, bool) or not isinstance(momentum, numbers.Real) or not 0.0 <= momentum <= 1.0:
            raise ValueError(f"`momentum` must be a number in [0, 1]. Received: momentum={momentum!r}")
        self.momentum = float(momentum)
        if isinstance(epsilon, bool) or not isinstance(epsilon, numbers.Real) or not 0.0 <= epsilon < math.inf:
            raise ValueError(f"`epsilon` must be a finite number >= 0. Received: epsilon={epsilon!r}")
        self.epsilon = float(epsilon)
        if moving_update not in ("averaged", "sequential"):
            raise ValueError(
                f"`moving_update` must be 'averaged' or 'sequential'. Received: moving_update={moving_update!r}"
            )
        self.moving_update = moving_update
        moving_statistics = check_bool("moving_statistics", moving_statistics)
        example_weight = check_example_weight(example_weight)
        if not moving_statistics and (renorm or example_weight < 1.0):
            raise ValueError("Without moving statistics the layer can only normalize by the example's own statistics: "
                             "it needs example_weight=1 and renorm=False. Received: moving_statistics=False, "
                             f"example_weight={example_weight}, renorm={renorm}")
        self.moving_statistics = moving_statistics
        self.center = center
        self.scale = scale
        self.beta_initializer = keras.initializers.get(beta_initializer)
        self.gamma_initializer = keras.initializers.get(gamma_initializer)
        self.moving_mean_initializer = keras.initializers.get(moving_mean_initializer)
        self.moving_variance_initializer = keras.initializers.get(moving_variance_initializer)
        self.beta_regularizer = keras.regularizers.get(beta_regularizer)
        self.gamma_regularizer = keras.regularizers.get(gamma_regularizer)
        self.beta_constraint = keras.constraints.get(beta_constraint)
        self.gamma_constraint = keras.constraints.get(gamma_constraint)
        self.supports_masking = True
        # mixed precision: normalize the float32 input, not its float16 cast (70000 -> inf)
        self.autocast = False
        # A raw tf.Variable: not a Keras weight (so weight lists match Keras BN
        # 1:1), but a variable, so changing it never retraces a tf.function.
        self._alpha = [tf.Variable(example_weight, trainable=False, dtype=tf.float32,
                                   name="example_weight")]
        self.gamma = None
        self.beta = None

    # ----------------------------------------------------------------- alpha
    @property
    def example_weight(self) -> float:
        """The inference example weight alpha (Eq. 4.3)."""
        return float(self._alpha[0].numpy())

    @example_weight.setter
    def example_weight(self, value) -> None:
        self._alpha[0].assign(self.check_alpha(value))

    def check_alpha(self, value) -> float:
        """Validates alpha for this layer: in [0, 1], and 1 for a layer without moving statistics."""
        alpha = check_example_weight(value)
        if alpha < 1.0 and not self.moving_statistics:
            raise ValueError(f"Layer '{self.name}' tracks no moving statistics (moving_statistics=False), so its "
                             f"example weight must stay 1. Received: example_weight={alpha}")
        return alpha

    @property
    def example_weight_variable(self) -> tf.Variable:
        """The `tf.Variable` holding alpha (read inside compiled functions)."""
        return self._alpha[0]

    # ----------------------------------------------------------------- build
    def _channel_axis(self, rank: int) -> int:
        axis = self.axis
        if not -rank <= axis < rank:
            raise ValueError(f"`axis` {axis} is out of bounds for an input of rank {rank}. Received: axis={axis}")
        axis = axis % rank
        if axis == 0:
            raise ValueError(f"`axis` must not be the batch axis 0. Received: axis={self.axis}")
        return axis

    def build(self, input_shape):
        rank = len(input_shape)
        if rank < 2:
            raise ValueError(f"{type(self).__name__} needs inputs of rank >= 2. Received: input_shape={input_shape}")
        axis = self._channel_axis(rank)
        channels = input_shape[axis]
        if channels is None:
            raise ValueError(f"Axis {self.axis} of the input tensor should have a defined dimension but the layer "
                             f"received an input with shape {tuple(input_shape)}. Received: input_shape={input_shape}")
        groups = channels if self.groups in (None, -1) else self.groups
        if groups > channels:
            raise ValueError(f"`groups` ({groups}) cannot be more than the number of channels ({channels}). "
                             f"Received: groups={self.groups}")
        if channels % groups:
            raise ValueError(f"`groups` must divide the number of channels ({channels}). Received: groups={self.groups}")
        self._groups = groups
        self._axis = axis
        shape = (channels,)
        if self.scale:
            self.gamma = self.add_weight(shape=shape, name="gamma", initializer=self.gamma_initializer,
                                         regularizer=self.gamma_regularizer, constraint=self.gamma_constraint,
                                         trainable=True, autocast=False)
        if self.center:
            self.beta = self.add_weight(shape=shape, name="beta", initializer=self.beta_initializer,
                                        regularizer=self.beta_regularizer, constraint=self.beta_constraint,
                                        trainable=True, autocast=False)
        if not self.moving_statistics:
            self.input_spec = keras.layers.InputSpec(ndim=rank, axes={axis: channels})
            return
        self.moving_mean = self.add_weight(shape=shape, name="moving_mean", initializer=self.moving_mean_initializer,
                                           trainable=False, autocast=False)
        self.moving_variance = self.add_weight(shape=shape, name="moving_variance",
                                               initializer=self.moving_variance_initializer,
                                               trainable=False, autocast=False)
        if self.renorm:
            variance_init = self.moving_variance_initializer
            mean_init = self.moving_mean_initializer

            def stddev_init(shape, dtype=None):  # in the variable's dtype (a float16/float64 layer's weights)
                stddev = tf.sqrt(tf.cast(variance_init(shape, dtype=dtype), tf.float32))
                return stddev if dtype is None else tf.cast(stddev, dtype)

            self.moving_stddev = self.add_weight(shape=shape, name="moving_stddev", initializer=stddev_init,
                                                 trainable=False, autocast=False)
            self.renorm_mean = self.add_weight(shape=shape, name="renorm_mean", initializer=mean_init,
                                               trainable=False, autocast=False)
            self.renorm_stddev = self.add_weight(shape=shape, name="renorm_stddev", initializer=stddev_init,
                                                 trainable=False, autocast=False)
        self.input_spec = keras.layers.InputSpec(ndim=rank, axes={axis: channels})

    def compute_output_shape(self, input_shape):
        return input_shape

    # ------------------------------------------------------------------ call
    def _params(self):
        gamma = None if self.gamma is None else tf.cast(self.gamma.value, tf.float32)
        beta = None if self.beta is None else tf.cast(self.beta.value, tf.float32)
        return gamma, beta

    @staticmethod
    def _read(variable):
        return tf.cast(variable.value, tf.float32)

    def _train(self, x, mask=None, active=None):
        """Training-mode output; updates the moving statistics (only where ``active``, a bool tensor, is true).

        An empty batch (a replica's share of a short last batch under
        `tf.distribute`) has no statistics and leaves the moving statistics
        unchanged (Keras BN sets them to NaN; its averaged ghost statistics
        would pull them toward 0).
        """
        if x.shape[0] is None or x.shape[0] == 0:
            nonempty = tf.size(x) > 0
            active = nonempty if active is None else tf.logical_and(active, nonempty)

        def assign(variable, value):
            variable.assign(value if active is None else tf.where(active, value, self._read(variable)))

        gamma, beta = self._params()
        renorm = None
        if self.renorm:
            renorm = {"mean": self._read(self.renorm_mean), "stddev": self._read(self.renorm_stddev),
                      "momentum": self.renorm_momentum, **(self.renorm_clipping or {})}
        st = _core.normalize_training(
            x, gamma, beta, axis=self._axis, ghost_batch_size=self.ghost_batch_size, groups=self._groups,
            epsilon=self.epsilon, momentum=self.momentum, moving_update=self.moving_update, mask=mask,
            renorm=renorm, synchronized=self.synchronized)
        if not self.moving_statistics:
            return st.outputs
        m = st.momentum
        assign(self.moving_mean, self._read(self.moving_mean) * m + st.mean * (1.0 - m))
        if self.renorm:
            rm = st.renorm_momentum
            assign(self.renorm_mean, self._read(self.renorm_mean) * rm + st.renorm_mean * (1.0 - rm))
            assign(self.renorm_stddev, self._read(self.renorm_stddev) * rm + st.renorm_stddev * (1.0 - rm))
            stddev = self._read(self.moving_stddev) * m + st.stddev * (1.0 - m)
            assign(self.moving_variance, tf.nn.relu(stddev * stddev - self.epsilon))
            assign(self.moving_stddev, stddev)
        else:
            assign(self.moving_variance, self._read(self.moving_variance) * m + st.variance * (1.0 - m))
        return st.outputs

    def _infer(self, x, mask=None):
        gamma, beta = self._params()
        if self.moving_statistics:
            moving = self._read(self.moving_mean), self._read(self.moving_variance)
        else:  # alpha is 1: the example's own statistics (plain Group / Instance Normalization)
            moving = tf.zeros([x.shape[self._axis]]), tf.ones([x.shape[self._axis]])
        return _core.normalize_inference(
            x, gamma, beta, *moving, axis=self._axis, groups=self._groups, epsilon=self.epsilon,
            example_weight=self._alpha[0], mask=mask)

    def _mask(self, mask, inputs):
        """The call's mask -> a float mask of the input's rank (size 1 where it broadcasts).

        A mask has the input's shape without the channel axis; its size-1
        channel dimension goes back at the channel axis (Keras 3.15's BN
        always appends it last, which for ``axis != -1`` masks along the wrong
        axis). A mask of the input's shape without the *last* axis, the shape
        Keras's Masking / Embedding propagate and Keras BN reads, is read that
        way when the channel axis is not last and the shape does not also fit
        the first form.
        """
        if mask is None:
            return None
        mask = tf.convert_to_tensor(mask)
        if mask.shape.rank != inputs.shape.rank - 1:
            raise ValueError(f"The mask provided should be one dimension less than the inputs. Received: "
                             f"mask.shape={mask.shape}, inputs.shape={inputs.shape}")

        def fits(expected):
            return all(m is None or d is None or m in (1, d) for m, d in zip(mask.shape, expected))

        mask = tf.cast(tf.cast(mask, tf.bool), tf.float32)
        without_channel = [d for i, d in enumerate(inputs.shape) if i != self._axis]
        if fits(without_channel):
            return tf.expand_dims(mask, self._axis)
        if fits(inputs.shape[:-1]):  # Keras's propagated mask: every position of the last axis
            return tf.expand_dims(mask, -1)
        raise ValueError(f"The mask should have the input's shape without the channel axis {self._axis}, "
                         f"{tuple(without_channel)}. Received: mask.shape={tuple(mask.shape)}, "
                         f"inputs.shape={tuple(inputs.shape)}")

    def call(self, inputs, training=None, mask=None):
        x = tf.cast(inputs, tf.float32)
        m = self._mask(mask, x)
        if training is None or isinstance(training, (bool, int)):
            if training and self.trainable:
                y = self._train(x, m)
            else:
                y = self._infer(x, m)
        elif not self.trainable:
            y = self._infer(x, m)
        else:
            # `training` given as a tensor: choose at run time (tf_keras's
            # Ghost BN silently falls back to full-batch BN here). Both
            # outputs are computed and selected, the moving statistics
            # updated only where training: a differentiated `tf.cond` here
            # makes TF's type inference print a ~40-line "Type inference
            # failed" warning (issue 15), and this path is rare (Keras passes
            # Python booleans).
            active = tf.cast(training, tf.bool)
            y = tf.where(active, self._train(x, m, active=active), self._infer(x, m))
        return tf.cast(y, self.compute_dtype)

    # ---------------------------------------------------------------- config
    def get_config(self):
        base = super().get_config()
        config = {
            "groups": self.groups,
            "ghost_batch_size": self.ghost_batch_size,
            "example_weight": self.example_weight,
            "axis": self.axis,
            "momentum": self.momentum,
            "epsilon": self.epsilon,
            "center": self.center,
            "scale": self.scale,
            "beta_initializer": keras.initializers.serialize(self.beta_initializer),
            "gamma_initializer": keras.initializers.serialize(self.gamma_initializer),
            "moving_mean_initializer": keras.initializers.serialize(self.moving_mean_initializer),
            "moving_variance_initializer": keras.initializers.serialize(self.moving_variance_initializer),
            "beta_regularizer": keras.regularizers.serialize(self.beta_regularizer),
            "gamma_regularizer": keras.regularizers.serialize(self.gamma_regularizer),
            "beta_constraint": keras.constraints.serialize(self.beta_constraint),
            "gamma_constraint": keras.constraints.serialize(self.gamma_constraint),
            "moving_update": self.moving_update,
            "moving_statistics": self.moving_statistics,
            "synchronized": self.synchronized,
            "renorm": self.renorm,
            "renorm_clipping": self.renorm_clipping,
            "renorm_momentum": self.renorm_momentum,
        }
        return {**base, **config}
