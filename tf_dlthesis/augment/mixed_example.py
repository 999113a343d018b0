"""`MixedExample`: on-device mixed-example augmentation as a Keras image-preprocessing layer."""

from __future__ import annotations

import keras
import tensorflow as tf

from tf_dlthesis._checks import check_bool
from tf_dlthesis.augment import _masks as M
from tf_dlthesis._seeds import as_seed, check_int_seed
from tf_dlthesis.augment.methods import _PARAM_CHECKS, _RENAMED_PARAMS, get_method, resolve
from tf_dlthesis.augment.mix import (_images, _out_dtype, batch_partner, centre_images,
                                     centred_inputs, check_num_classes, check_numerics,
                                     labels_to_soft, plan_pairs)

_PAIRINGS = ("permute", "reverse")


@keras.saving.register_keras_serializable(package="tf_dlthesis")
class MixedExample(keras.layers.Layer):
    """Mixes each batch on the accelerator with one of the Sec. 2.3 methods.

    Follows the contract of Keras 3's image-preprocessing layers (`keras.layers.MixUp`,
    `keras.layers.CutMix`): called on a dict `{"images": (B, H, W, C), "labels": (B, K)
    or sparse (B,)}` it returns the same dict with mixed images and soft labels (other
    keys pass through), and the work is split the same way:

    * `get_random_transformation(data, training=True, seed=None)` draws everything
      random from the batch: the partner of each example and the method's mixing plan
      (per-element weights of x1, label weights, BC+ scales and means, region sources);
    * `transform_images(images, transformation, training=True)` and
      `transform_labels(labels, transformation, training=True)` apply that one draw, so
      images and labels stay consistent.

    It therefore composes like Keras's own layers: in `keras.layers.Pipeline([...,
    MixedExample(...)])`, in `dataset.map(layer)` / `dataset.map(pipeline)` on batched
    dict elements, and inside a model or a compiled train step, including
    `jit_compile=True` for every method (Beta sampling avoids `stateless_gamma`, which
    XLA lacks). Every call draws a fresh stateless seed from a Keras `SeedGenerator`
    (pass `seed=` to `get_random_transformation` to choose it). In `dataset.map(layer)`
    with `num_parallel_calls` > 1 the parallel calls take those seeds in a run-dependent
    order, so the mixing is not reproducible (as with Keras's own `MixUp`); map
    sequentially, or use `mix_dataset` / `MixStage`, whose seeds come from (seed,
    epoch, call index) and are reproducible for any parallelism. The library is
    TensorFlow-only, so the layer subclasses `keras.layers.Layer` rather than Keras's
    private `BaseImagePreprocessingLayer`; the contract's methods and dict handling are
    the same.

    Example:

    >>> mixer = MixedExample("vh_mixup", seed=0, num_classes=10)
    >>> batch = mixer({"images": images, "labels": labels}, training=True)
    >>> pipeline = keras.layers.Pipeline([keras.layers.RandomFlip("horizontal"), mixer])
    >>> ds = ds.batch(128).map(lambda x, y: pipeline({"images": x, "labels": y}))

    Args:
        method: a name in `METHODS` or a list of names (each pair draws one).
        seed: int seed (>= 0; NumPy integers accepted) of the layer's
            `SeedGenerator`; None draws one at random.
        num_classes: required when labels are sparse integers.
        pairing: "permute" (default) or "reverse".
        check_numerics: fail with an error naming `images` / `labels` when they hold
            NaN or Inf (off by default: one check per call).
        **kwargs: method hyperparameters (`alpha`, `std_floor`, `p`, `size`, `source`,
            `noise_std`, `noisy_label`; see `mix_batch`) and base `Layer` arguments
            (`name`, `dtype`, ...).

    Inference: BC+ and VH-BC+ mix per-image zero-mean images (Sec. 2.3.2), so a model
    trained on them must see centred images at test time too (the authors'
    preprocessing; `MixStage.test_transform` does the same for the `tf.data` stage).
    With `training=False` a layer whose every method centres (`centers_images`)
    therefore subtracts each image's mean over H, W and C, so a model with the layer
    inside it evaluates and predicts on what it trained on. Where the layer mixes in a
    `tf.data` map instead, pass the test set through it with `training=False` (or
    `transform_images(images, None, training=False)`). Other methods, and lists that
    mix centred and uncentred methods, pass images through unchanged; labels always
    pass through unchanged.

    Call arguments:
        inputs: dict with "images" (a batch, B >= 2 when training) and "labels".
        training: mixes when True (default, like `keras.layers.MixUp`); when False,
            images and labels pass unmixed, as tensors (floats in the layer's compute
            dtype; integer images and sparse labels keep their dtype), images centred
            per image when `centers_images` (then integer images become float32, as
            mixed ones do).

    Returns:
        dict with the same keys.

    Raises:
        TypeError: inputs that are not a dict with "images" and "labels".
        ValueError: unknown method, bad hyperparameters, `num_classes` or a negative
            `seed` (at construction); an
            unbatched image, a batch of 1, mismatched batch sizes, labels of the wrong
            width or out of range (at call time; under `jit_compile=True`, where
            XLA drops the range assert, an out-of-range sparse label gives a NaN label
            row and so a NaN loss).

    Reference:
        Thesis Sec. 2.3; https://arxiv.org/abs/1805.11272
    """

    def __init__(self, method="vh_mixup", seed=None, num_classes=None, pairing="permute",
                 check_numerics=False, **kwargs):
        params = {k: kwargs.pop(k) for k in list(kwargs) if k in _PARAM_CHECKS}
        super().__init__(**kwargs)
        self._names, self._full = resolve(method, params)
        self.method = list(method) if isinstance(method, (list, tuple)) else method
        # The config stores current names (`std_floor`, not the deprecated `epsilon`), so
        # a saved model keeps loading once the old name is removed.
        self.params = {_RENAMED_PARAMS.get(k, k): v for k, v in params.items()}
        self.seed = check_int_seed(seed)
        self.num_classes = check_num_classes(num_classes)
        if pairing not in _PAIRINGS:
            raise ValueError(f"`pairing` must be 'permute' or 'reverse'. Received: "
                             f"pairing={pairing!r}")
        self.pairing = pairing
        self.check_numerics = check_bool("check_numerics", check_numerics)
        self.seed_generator = keras.random.SeedGenerator(self.seed, name="mixed_example_seed")
        self.supports_jit = True
        # Like keras.layers.Pipeline: do not let Layer.__call__ cast every input to the
        # compute dtype (it would turn sparse integer labels into floats); `call` casts
        # float images and labels itself.
        self._convert_input_args = False
        self._allow_non_tensor_positional_args = True

    @property
    def centers_images(self) -> bool:
        """Whether every mixed output is per-image zero-mean (BC+ / VH-BC+ only).

        Such a layer centres each image at inference (`training=False`), as
        `MixStage.test_transform` does for the `tf.data` stage.
        """
        return all(get_method(n).center for n in self._names)

    # ------------------------------------------------------------------ the contract
    @staticmethod
    def _split(data):
        if not isinstance(data, dict) or "images" not in data or "labels" not in data:
            raise TypeError("MixedExample expects a dict with keys 'images' and 'labels'. "
                            f"Received: {type(data).__name__}"
                            + (f" with keys {sorted(data)}" if isinstance(data, dict) else ""))
        return data["images"], data["labels"]

    def _float_images(self, images):
        images = _images(images, 4, "images")
        return check_numerics(tf.cast(images, tf.float32), "images", self.check_numerics)

    def _as_compute(self, x):
        x = tf.convert_to_tensor(x)
        return tf.cast(x, self.compute_dtype) if x.dtype.is_floating else x

    def get_random_transformation(self, data, training=True, seed=None):
        """Draws the partners and the mixing plan of one batch.

        Args:
            data: dict {"images", "labels"} (or the images alone).
            training: None is returned when False (no mixing).
            seed: int >= 0 (as `[seed, 0]`) or shape-[2] integer seed; None takes
                the next from the layer's `SeedGenerator`.

        Returns:
            dict with "partner" ((B,) index of each example's partner) and "plan" (the
            mixing plan of `mix_batch`), or None when not training.

        Raises:
            TypeError / ValueError: a `seed` that is not an int >= 0 or a shape-[2]
                integer seed.
        """
        if not training:
            return None
        images = data["images"] if isinstance(data, dict) else data
        images = _images(images, 4, "images")
        b = images.shape[0]
        if b is not None and b < 2:
            raise ValueError(f"MixedExample needs a batch of at least 2 `images` to pair; "
                             f"received shape {images.shape}.")
        x1 = tf.cast(images, tf.float32)
        seed = tf.cast(self.seed_generator.next(), tf.int64) if seed is None else as_seed(seed, "seed")
        partner, s_mix = batch_partner(x1, seed, self.pairing)
        pair_plan = plan_pairs(x1, tf.gather(x1, partner), self._names, self._full, s_mix,
                               partner=partner)
        return {"partner": partner, "plan": pair_plan}

    def transform_images(self, images, transformation, training=True):
        """Mixes images[b] with images[partner[b]] by the transformation's plan.

        With `training=False`: each image minus its mean over H, W and C when
        `centers_images` (BC+ / VH-BC+: test images centred like the training
        mixtures), else the images unchanged.
        """
        if not training:
            return self._test_images(images)
        if transformation is None:
            return images
        x1 = self._float_images(images)
        x2 = tf.gather(x1, transformation["partner"])
        a, c = centred_inputs(x1, x2, transformation["plan"])
        out = M.mix_images(a, c, transformation["plan"].plan)
        return tf.cast(out, _out_dtype(tf.convert_to_tensor(images)))

    def _test_images(self, images):
        """Inference images: per-image centred for BC+ / VH-BC+, else unchanged."""
        if not self.centers_images:
            return images
        x = self._float_images(images)
        out = centre_images(x)  # as `MixStage.test_transform`: test images centred like training inputs
        return tf.cast(out, _out_dtype(tf.convert_to_tensor(images)))

    def transform_labels(self, labels, transformation, training=True):
        """Soft labels: each example's label weight on its own label, the rest on its partner's.

        Sparse labels (integer, or float class indices as Keras's preprocessing layers
        pass them on after casting every input to their compute dtype) need
        `num_classes`.
        """
        if not training or transformation is None:
            return labels
        labels = tf.convert_to_tensor(labels)
        if labels.dtype.is_floating and labels.shape.rank == 1 and self.num_classes is not None:
            # Sparse class indices that a Keras preprocessing layer earlier in a Pipeline
            # cast to its float compute dtype (Keras's layers cast every input).
            labels = tf.cast(labels, tf.int64)
        soft = check_numerics(labels_to_soft(labels, self.num_classes, 1), "labels",
                              self.check_numerics)
        return M.mix_labels(soft, tf.gather(soft, transformation["partner"]),
                            transformation["plan"].plan)

    def call(self, inputs, training=True):
        images, labels = self._split(inputs)
        images = self._as_compute(images)
        labels = self._as_compute(labels)
        if not training:
            # Tensors in the compute dtype, as when training (and as `keras.layers.MixUp`
            # returns them), not the caller's NumPy arrays.
            out = dict(inputs)
            out.update(images=self.transform_images(images, None, training=False), labels=labels)
            return out
        b, bl = images.shape[0] if images.shape.rank else None, labels.shape[0] if labels.shape.rank else None
        if b is not None and bl is not None and b != bl:
            raise ValueError(f"`images` and `labels` disagree on batch size: {images.shape} vs "
                             f"{labels.shape}.")
        transformation = self.get_random_transformation(inputs, training=training)
        out = dict(inputs)
        out["labels"] = self.transform_labels(labels, transformation, training=training)
        out["images"] = self.transform_images(images, transformation, training=training)
        return out

    def compute_output_shape(self, input_shape):
        out = dict(input_shape)
        labels = tuple(input_shape["labels"])
        if len(labels) == 1:
            out["labels"] = labels + (self.num_classes,)
        return out

    # Keras saves a layer's weights but no `SeedGenerator` position, so a model saved
    # after some steps (`model.save`, `save_weights`, `ModelCheckpoint`) and loaded again
    # would restart the layer's stream of seeds and repeat the mixing draws it already
    # made. The position is saved with the layer's (otherwise empty) variables; files
    # written before it was saved load as before (the stream starts from `seed`).
    _SEED_STATE_KEY = "seed_generator_state"

    def save_own_variables(self, store):
        """Saves the layer's variables and the position of its `SeedGenerator`."""
        super().save_own_variables(store)
        store[self._SEED_STATE_KEY] = keras.ops.convert_to_numpy(self.seed_generator.state)

    def load_own_variables(self, store):
        """Restores what `save_own_variables` saved (the seed position when present)."""
        keys = list(store.keys())
        if self._SEED_STATE_KEY in keys:
            state = store[self._SEED_STATE_KEY]
            self.seed_generator.state.assign(
                keras.ops.cast(keras.ops.convert_to_tensor(state), self.seed_generator.state.dtype))
        super().load_own_variables({k: store[k] for k in keys if k != self._SEED_STATE_KEY})

    def get_config(self):
        config = super().get_config()
        config.update({"method": self.method, "seed": self.seed,
                       "num_classes": self.num_classes, "pairing": self.pairing,
                       "check_numerics": self.check_numerics, **self.params})
        return config
