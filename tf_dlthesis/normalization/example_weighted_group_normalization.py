"""Group Normalization that tracks moving statistics (thesis Sec. 4.3.1, Fig. 4.2)."""

from __future__ import annotations

import keras

from ._base import ExampleGroupNormalization


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

    Example:

    >>> layer = ExampleWeightedGroupNormalization(groups=4, example_weight=0.95)

    Args:
        groups: Number of channel groups; must divide the channel count.
        example_weight: Inference alpha in [0, 1] (default 1 = GN).
        **kwargs: `keras.layers.BatchNormalization` arguments.

    Reference:
        Thesis Sec. 4.3.1 (Fig. 4.2); Wu & He 2018 (https://arxiv.org/abs/1803.08494);
        https://arxiv.org/abs/1906.03548.
    """

    def __init__(self, groups: int, example_weight: float = 1.0, **kwargs):
        if kwargs.get("ghost_batch_size") not in (None, 1):
            raise ValueError("`ghost_batch_size` is not an argument of ExampleWeightedGroupNormalization. "
                             f"Received: ghost_batch_size={kwargs['ghost_batch_size']}")
        kwargs.pop("ghost_batch_size", None)
        if groups is None:
            raise ValueError("`groups` must be a positive int. Received: groups=None")
        super().__init__(groups=groups, ghost_batch_size=1, example_weight=example_weight, **kwargs)

    def get_config(self):
        config = super().get_config()
        del config["ghost_batch_size"]
        return config
