"""Group Normalization that tracks moving statistics (thesis Sec. 4.3.1, Fig. 4.2)."""

from __future__ import annotations

import keras

from ._base import ExampleGroupNormalization, check_example_weight, check_groups


@keras.saving.register_keras_serializable(package="tf_dlthesis")
class ExampleWeightedGroupNormalization(ExampleGroupNormalization):
    """Group Normalization (training equals `keras.layers.GroupNormalization`) plus moving statistics.

    GN never uses cross-example statistics, but the thesis (Fig. 4.2) finds
    that blending a little of the *moving* statistics into inference helps.
    This layer trains exactly like GN (one example, ``C / groups`` channels
    per statistic), tracks the group statistics as moving averages (stored
    per channel, Keras BN weight names), and at inference uses Eq. 4.3 with
    ``example_weight`` alpha: 1 (default) is plain GN, alpha < 1 blends in
    the moving statistics.

    A drop-in for `keras.layers.GroupNormalization`: the same arguments and
    defaults (``groups=32``; ``groups=-1`` = one channel per group, i.e.
    Instance Normalization), float32 statistics under mixed precision, and
    the same outputs. The moving statistics (two non-trainable weights with
    Keras BN's names) exist when ``moving_statistics`` is true, by default
    exactly when ``example_weight < 1``: the default layer has Keras GN's
    weights (``gamma``, ``beta``), so Keras GN weights copy into it
    (``set_weights``, ``tf.train.Checkpoint``; a Keras ``.weights.h5`` file keys
    each layer by its class name, so load that into the Keras model and
    `patch_model` it), and
    a layer meant for an alpha sweep is built with ``moving_statistics=True``
    (the ``norm="ew_group:G"`` models do, as does `patch_model`).

    Example:

    >>> layer = ExampleWeightedGroupNormalization(groups=4, example_weight=0.95)

    Args:
        groups: Number of channel groups (default 32, as Keras GN); must
            divide the channel count; ``-1``: one channel per group.
        example_weight: Inference alpha in [0, 1] (default 1 = GN).
        moving_statistics: Track moving statistics (needed for alpha < 1);
            ``None``: only if ``example_weight < 1``.
        **kwargs: `keras.layers.BatchNormalization` arguments.

    Reference:
        Thesis Sec. 4.3.1 (Fig. 4.2); Wu & He 2018 (https://arxiv.org/abs/1803.08494);
        https://arxiv.org/abs/1906.03548.
    """

    def __init__(self, groups: int = 32, example_weight: float = 1.0, moving_statistics: bool | None = None,
                 **kwargs):
        if kwargs.get("ghost_batch_size") not in (None, 1):
            raise ValueError("`ghost_batch_size` is not an argument of ExampleWeightedGroupNormalization. "
                             f"Received: ghost_batch_size={kwargs['ghost_batch_size']}")
        kwargs.pop("ghost_batch_size", None)
        if moving_statistics is None:
            moving_statistics = check_example_weight(example_weight) < 1.0
        super().__init__(groups=check_groups(groups, allow_none=False), ghost_batch_size=1,
                         example_weight=example_weight, moving_statistics=moving_statistics, **kwargs)

    @classmethod
    def from_config(cls, config):
        # configs saved before `moving_statistics` existed always tracked them
        return cls(**{"moving_statistics": True, **config})

    def get_config(self):
        config = super().get_config()
        del config["ghost_batch_size"]
        return config
