"""Shared Keras layer behind the four normalization layers (thesis Ch. 4)."""

from __future__ import annotations

import numbers

import keras
import tensorflow as tf

from . import _core

_BN_ONLY_KEYS = ("renorm", "renorm_clipping", "renorm_momentum", "synchronized")


def check_example_weight(alpha) -> float:
    """Validates the inference example weight alpha (Eq. 4.3) and returns it."""
    if isinstance(alpha, bool) or not isinstance(alpha, numbers.Real):
        raise TypeError(f"`example_weight` must be a float in [0, 1]. Received: example_weight={alpha!r}")
    alpha = float(alpha)
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"`example_weight` must be in [0, 1]. Received: example_weight={alpha}")
    return alpha


def _check_positive_int(name, value, allow_none=False):
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"`{name}` must be a positive int. Received: {name}={value!r}")
    if value <= 0:
        raise ValueError(f"`{name}` must be a positive int. Received: {name}={value}")
    return int(value)


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
    layer's compute dtype (mixed precision); the output has the compute dtype.

    Args:
        groups: Number of channel groups; ``None`` = one per channel (BN).
        ghost_batch_size: Examples per statistic in training; ``None`` = the
            whole batch.
        example_weight: alpha in [0, 1] used at inference.
        moving_update: ``"averaged"`` or ``"sequential"``.
        axis, momentum, epsilon, center, scale, *_initializer, *_regularizer,
            *_constraint: as in `keras.layers.BatchNormalization`.

    Call arguments:
        inputs: Tensor of rank >= 2, batch first.
        training: Python bool, ``None`` or a boolean scalar tensor (then both
            branches are built and chosen at run time).
        mask: Accepted for API compatibility with Keras BN but not used:
            every position counts in the statistics.

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
        **kwargs,
    ):
        for key in _BN_ONLY_KEYS:
            if kwargs.pop(key, None) not in (None, False):
                raise ValueError(f"`{key}` is not supported by {type(self).__name__}.")
        super().__init__(**kwargs)
        self.groups = _check_positive_int("groups", groups, allow_none=True)
        self.ghost_batch_size = _check_positive_int("ghost_batch_size", ghost_batch_size, allow_none=True)
        if isinstance(axis, bool) or not isinstance(axis, numbers.Integral):
            raise TypeError(f"`axis` must be an int. Received: axis={axis!r}")
        self.axis = int(axis)
        if not 0.0 <= float(momentum) <= 1.0:
            raise ValueError(f"`momentum` must be in [0, 1]. Received: momentum={momentum}")
        self.momentum = float(momentum)
        if float(epsilon) < 0:
            raise ValueError(f"`epsilon` must be >= 0. Received: epsilon={epsilon}")
        self.epsilon = float(epsilon)
        if moving_update not in ("averaged", "sequential"):
            raise ValueError(
                f"`moving_update` must be 'averaged' or 'sequential'. Received: moving_update={moving_update!r}"
            )
        self.moving_update = moving_update
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
        # A raw tf.Variable: not a Keras weight (so weight lists match Keras BN
        # 1:1), but a variable, so changing it never retraces a tf.function.
        self._alpha = [tf.Variable(check_example_weight(example_weight), trainable=False, dtype=tf.float32,
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
        self._alpha[0].assign(check_example_weight(value))

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
            raise ValueError(f"The channel axis {self.axis} of the input must be known. Received: input_shape={input_shape}")
        groups = channels if self.groups is None else self.groups
        if groups > channels or channels % groups:
            raise ValueError(
                f"`groups` must divide the number of channels ({channels}). Received: groups={self.groups}"
            )
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
        self.moving_mean = self.add_weight(shape=shape, name="moving_mean", initializer=self.moving_mean_initializer,
                                           trainable=False, autocast=False)
        self.moving_variance = self.add_weight(shape=shape, name="moving_variance",
                                               initializer=self.moving_variance_initializer,
                                               trainable=False, autocast=False)
        self.input_spec = keras.layers.InputSpec(ndim=rank, axes={axis: channels})

    def compute_output_shape(self, input_shape):
        return input_shape

    # ------------------------------------------------------------------ call
    def _params(self):
        gamma = None if self.gamma is None else tf.cast(self.gamma.value, tf.float32)
        beta = None if self.beta is None else tf.cast(self.beta.value, tf.float32)
        return gamma, beta

    def _train(self, x):
        gamma, beta = self._params()
        y, mean, variance, momentum = _core.normalize_training(
            x, gamma, beta, axis=self._axis, ghost_batch_size=self.ghost_batch_size, groups=self._groups,
            epsilon=self.epsilon, momentum=self.momentum, moving_update=self.moving_update)
        mm = tf.cast(self.moving_mean.value, tf.float32)
        mv = tf.cast(self.moving_variance.value, tf.float32)
        self.moving_mean.assign(mm * momentum + mean * (1.0 - momentum))
        self.moving_variance.assign(mv * momentum + variance * (1.0 - momentum))
        return y

    def _infer(self, x):
        gamma, beta = self._params()
        return _core.normalize_inference(
            x, gamma, beta, tf.cast(self.moving_mean.value, tf.float32),
            tf.cast(self.moving_variance.value, tf.float32), axis=self._axis, groups=self._groups,
            epsilon=self.epsilon, example_weight=self._alpha[0])

    def call(self, inputs, training=None, mask=None):
        x = tf.cast(inputs, tf.float32)
        if training is None or isinstance(training, (bool, int)):
            if training and self.trainable:
                y = self._train(x)
            else:
                y = self._infer(x)
        elif not self.trainable:
            y = self._infer(x)
        else:
            # `training` given as a tensor: choose at run time (tf_keras's
            # Ghost BN silently falls back to full-batch BN here).
            y = tf.cond(tf.cast(training, tf.bool), lambda: self._train(x), lambda: self._infer(x))
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
        }
        return {**base, **config}
