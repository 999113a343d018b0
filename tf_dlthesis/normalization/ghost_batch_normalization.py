"""Ghost Batch Normalization (thesis Sec. 4.3.2, Eq. 4.4)."""

from __future__ import annotations

import keras

from ._base import ExampleGroupNormalization


@keras.saving.register_keras_serializable(package="tf_dlthesis")
class GhostBatchNormalization(ExampleGroupNormalization):
    """Batch Normalization whose training statistics use ghost batches of ``B'`` examples.

    Eq. 4.4: example ``i`` is normalized with the mean and variance of its
    own ghost batch (consecutive ``ghost_batch_size`` examples of the
    batch). Keras 3 dropped tf_keras's ``virtual_batch_size``; unlike it,
    this layer also accepts a batch not divisible by ``B'`` (the last ghost
    batch is smaller) and ``training`` passed as a tensor (tf_keras then
    silently uses the full batch).

    Moving statistics: by default (``moving_update="averaged"``, as
    tf_keras) the ghost batches' means and variances are averaged and one
    momentum update is made per training step, so the moving variance
    estimates the *ghost-batch* variance training normalized with (smaller
    than the full-batch variance). ``"sequential"`` applies one update per
    ghost batch instead. Inference supports example weighing (Eq. 4.3),
    whose benefit grows as ``B'`` shrinks (Fig. 4.4).

    Example:

    >>> model = keras.Sequential([keras.layers.Dense(16), GhostBatchNormalization(16)])

    Args:
        ghost_batch_size: ``B' > 0`` examples per statistic.
        example_weight: Inference alpha in [0, 1].
        **kwargs: `keras.layers.BatchNormalization` arguments and
            ``moving_update``.

    Raises:
        ValueError: ``ghost_batch_size <= 0``.
        TypeError: ``ghost_batch_size`` not an int.

    Reference:
        Thesis Sec. 4.3.2; Hoffer et al. 2017 (https://arxiv.org/abs/1705.08741);
        https://arxiv.org/abs/1906.03548.
    """

    def __init__(self, ghost_batch_size: int, example_weight: float = 0.0, **kwargs):
        if kwargs.get("groups") is not None:
            raise ValueError(f"`groups` is not an argument of GhostBatchNormalization. Received: groups={kwargs['groups']}")
        kwargs.pop("groups", None)
        if ghost_batch_size is None:
            raise ValueError("`ghost_batch_size` must be a positive int. Received: ghost_batch_size=None")
        super().__init__(groups=None, ghost_batch_size=ghost_batch_size, example_weight=example_weight, **kwargs)

    def get_config(self):
        config = super().get_config()
        del config["groups"]
        return config
