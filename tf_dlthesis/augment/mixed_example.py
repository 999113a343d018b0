"""`MixedExample`: on-device mixed-example augmentation as a Keras layer."""

from __future__ import annotations

import keras
import tensorflow as tf

from tf_dlthesis.augment.methods import _PARAM_CHECKS, resolve
from tf_dlthesis.augment.mix import mix_batch


@keras.saving.register_keras_serializable(package="tf_dlthesis")
class MixedExample(keras.layers.Layer):
    """Mixes each batch on the accelerator with one of the Sec. 2.3 methods.

    Called like `keras.layers.MixUp`: on a dict `{"images": (B, H, W, C), "labels":
    (B, K) or sparse (B,)}` it returns the same dict with mixed images and soft labels
    (other keys pass through). Every call draws a fresh stateless seed from a Keras
    `SeedGenerator`, so it works inside a compiled train step, including
    `jit_compile=True` (Beta sampling avoids `stateless_gamma`, which XLA lacks).

    Example:

    >>> mixer = MixedExample("vh_mixup", seed=0, num_classes=10)
    >>> batch = mixer({"images": images, "labels": labels}, training=True)

    Args:
        method: a name in `METHODS` or a list of names (each pair draws one).
        seed: int seed of the layer's `SeedGenerator`; None draws one at random.
        num_classes: required when labels are sparse integers.
        pairing: "permute" (default) or "reverse".
        **kwargs: method hyperparameters (`alpha`, `std_floor`, `p`, `size`, `source`,
            `noise_std`, `noisy_label`; see `mix_batch`) and base `Layer` arguments
            (`name`, `dtype`, ...).

    Call arguments:
        inputs: dict with "images" and "labels".
        training: mixes when True (default, like `keras.layers.MixUp`); identity when
            False.

    Returns:
        dict with the same keys.

    Reference:
        Thesis Sec. 2.3; https://arxiv.org/abs/1805.11272
    """

    def __init__(self, method="vh_mixup", seed=None, num_classes=None, pairing="permute",
                 **kwargs):
        params = {k: kwargs.pop(k) for k in list(kwargs) if k in _PARAM_CHECKS}
        super().__init__(**kwargs)
        self._names, _ = resolve(method, params)
        self.method = list(method) if isinstance(method, (list, tuple)) else method
        self.params = params
        self.seed = seed
        self.num_classes = num_classes
        if pairing not in ("permute", "reverse"):
            raise ValueError(f"`pairing` must be 'permute' or 'reverse'. Received: "
                             f"pairing={pairing!r}")
        self.pairing = pairing
        self.seed_generator = keras.random.SeedGenerator(seed, name="mixed_example_seed")
        self.supports_jit = True

    def call(self, inputs, training=True):
        if not isinstance(inputs, dict) or "images" not in inputs or "labels" not in inputs:
            raise TypeError("MixedExample expects a dict with keys 'images' and 'labels'. "
                            f"Received: {type(inputs).__name__}"
                            + (f" with keys {sorted(inputs)}" if isinstance(inputs, dict) else ""))
        if not training:
            return dict(inputs)
        seed = tf.cast(self.seed_generator.next(), tf.int64)
        images, labels = mix_batch(inputs["images"], inputs["labels"], self._names, seed=seed,
                                   pairing=self.pairing, num_classes=self.num_classes,
                                   **self.params)
        out = dict(inputs)
        out["images"] = images
        out["labels"] = labels
        return out

    def compute_output_shape(self, input_shape):
        out = dict(input_shape)
        labels = tuple(input_shape["labels"])
        if len(labels) == 1:
            out["labels"] = labels + (self.num_classes,)
        return out

    def get_config(self):
        config = super().get_config()
        config.update({"method": self.method, "seed": self.seed,
                       "num_classes": self.num_classes, "pairing": self.pairing,
                       **self.params})
        return config
