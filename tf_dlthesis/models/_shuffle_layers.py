"""The two channel operations of ShuffleNetV2 (Ma et al. 2018) as Keras layers."""

from __future__ import annotations

import keras

from tf_dlthesis._checks import check_int


@keras.saving.register_keras_serializable(package="tf_dlthesis")
class ChannelSplit(keras.layers.Layer):
    """Splits the last axis into two equal halves (ShuffleNetV2's channel split).

    Example:

    >>> import numpy as np
    >>> a, b = ChannelSplit()(np.arange(4, dtype="float32").reshape(1, 1, 1, 4))
    >>> a.numpy().ravel().tolist(), b.numpy().ravel().tolist()
    ([0.0, 1.0], [2.0, 3.0])

    Call arguments:
        inputs: (..., C) tensor with an even C.

    Returns:
        `[inputs[..., :C/2], inputs[..., C/2:]]`.

    Raises:
        ValueError: an odd channel count.
    """

    def build(self, input_shape):
        channels = input_shape[-1]
        if channels is None or channels % 2:
            raise ValueError(f"ChannelSplit needs an even channel count. Received: input_shape={input_shape}")
        self.built = True

    def call(self, inputs):
        half = inputs.shape[-1] // 2
        return [inputs[..., :half], inputs[..., half:]]

    def compute_output_shape(self, input_shape):
        half = tuple(input_shape[:-1]) + (input_shape[-1] // 2,)
        return [half, half]


@keras.saving.register_keras_serializable(package="tf_dlthesis")
class ChannelShuffle(keras.layers.Layer):
    """ShuffleNet's channel shuffle: (..., g * n) -> reshape (..., g, n) -> transpose -> (..., n * g).

    With `groups=2` the channels [a0..a(n-1), b0..b(n-1)] become [a0, b0, a1, b1, ...].

    Example:

    >>> import numpy as np
    >>> ChannelShuffle(2)(np.arange(4, dtype="float32").reshape(1, 1, 1, 4)).numpy().ravel().tolist()
    [0.0, 2.0, 1.0, 3.0]

    Args:
        groups: number of groups g (2 in ShuffleNetV2).

    Raises:
        TypeError: `groups` not an int.
        ValueError: `groups` < 1 or not dividing the channel count.
    """

    def __init__(self, groups: int = 2, **kwargs):
        super().__init__(**kwargs)
        self.groups = check_int("groups", groups, 1)

    def build(self, input_shape):
        channels = input_shape[-1]
        if channels is None or channels % self.groups:
            raise ValueError(f"ChannelShuffle: groups={self.groups} must divide the channel count. "
                             f"Received: input_shape={input_shape}")
        self.built = True

    def call(self, inputs):
        shape = keras.ops.shape(inputs)
        c = inputs.shape[-1]
        x = keras.ops.reshape(inputs, (-1, self.groups, c // self.groups))
        x = keras.ops.transpose(x, (0, 2, 1))
        return keras.ops.reshape(x, shape)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {**super().get_config(), "groups": self.groups}
