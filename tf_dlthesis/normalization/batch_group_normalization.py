"""Batch Group Normalization: groups of examples x groups of channels (Sec. 4.3.4)."""

from __future__ import annotations

import keras

from ._base import ExampleGroupNormalization, check_groups


@keras.saving.register_keras_serializable(package="tf_dlthesis")
class BatchGroupNormalization(ExampleGroupNormalization):
    """Group Normalization whose statistics also pool across the examples of a (ghost) batch.

    The thesis's generalization of Batch and Group Normalization for small
    batches: a statistic is computed over ``C / groups`` consecutive channels
    *and* over ``ghost_batch_size`` examples (``None``: the whole batch, the
    thesis's B = 2 setting). ``groups = C`` gives Ghost BN, one example per
    group gives Group Normalization. Moving statistics track the group
    statistics (each channel stores its group's value), and inference uses
    example weighing (Eq. 4.3) pooled over the group's channels.

    Example:

    >>> layer = BatchGroupNormalization(groups=8, example_weight=0.5)

    Args:
        groups: Number of channel groups; must divide the channel count (``-1``:
            one channel per group).
        ghost_batch_size: Examples per statistic (``None`` = whole batch).
        example_weight: Inference alpha in [0, 1] (default 0: moving
            statistics only; the thesis tunes it on validation data).
        **kwargs: `keras.layers.BatchNormalization` arguments and
            ``moving_update``.

    Reference:
        Thesis Sec. 4.3.4; https://arxiv.org/abs/1906.03548.
    """

    def __init__(self, groups: int, ghost_batch_size: int | None = None, example_weight: float = 0.0, **kwargs):
        super().__init__(groups=check_groups(groups, allow_none=False), ghost_batch_size=ghost_batch_size, example_weight=example_weight, **kwargs)
