"""Batch Normalization with inference example weighing (thesis Sec. 4.3.1)."""

from __future__ import annotations

import keras

from ._base import ExampleGroupNormalization


@keras.saving.register_keras_serializable(package="tf_dlthesis")
class ExampleWeightedBatchNormalization(ExampleGroupNormalization):
    """Keras `BatchNormalization` whose inference blends in the example's statistics.

    Training is exactly Keras BN (per-channel statistics over the whole batch
    and all spatial positions). At inference, Eq. 4.3 mixes the example's own
    per-channel mean and ``E[x^2]`` (over its spatial positions) into the
    moving averages with weight ``example_weight`` (alpha): alpha = 0 is
    classical BN inference, alpha = 1 normalizes each example by its own
    statistics (Instance Normalization). A standard checkpoint's statistics
    are read as ``m_x = moving_mean``, ``m_{x^2} = moving_variance +
    moving_mean^2``. Weights (names, shapes, order) equal Keras BN's, so
    ``layer.set_weights(bn.get_weights())`` works.

    Example:

    >>> layer = ExampleWeightedBatchNormalization(example_weight=0.2)
    >>> y = layer(np.ones((4, 8, 8, 3), "float32"), training=False)

    Args:
        example_weight: alpha in [0, 1] (default 0 = classical inference).
        **kwargs: `keras.layers.BatchNormalization` arguments (``axis``,
            ``momentum``, ``epsilon``, ``center``, ``scale``, initializers,
            regularizers, constraints) and ``moving_update``.

    Reference:
        Thesis Sec. 4.3.1, Eq. 4.3; https://arxiv.org/abs/1906.03548.
    """

    def __init__(self, example_weight: float = 0.0, **kwargs):
        for key in ("groups", "ghost_batch_size"):
            if kwargs.get(key) is not None:
                raise ValueError(f"`{key}` is not an argument of ExampleWeightedBatchNormalization. "
                                 f"Received: {key}={kwargs[key]}")
            kwargs.pop(key, None)
        super().__init__(groups=None, ghost_batch_size=None, example_weight=example_weight, **kwargs)

    def get_config(self):
        config = super().get_config()
        del config["groups"], config["ghost_batch_size"]
        return config
