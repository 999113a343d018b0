"""`MixStage`: a mixing method bound to its settings, seed and compiled core.

A `MixStage` is what an input pipeline needs to mix: the method(s) and their
hyperparameters, pair or batch mode, the number of classes, a base seed, and the
compiled (XLA by default) mixing function, which the stage owns, so a pipeline
rebuilt every epoch or every run reuses one compilation without any module-level
cache. `data.training_dataset(..., mix=stage)` places it after standard
augmentation (the thesis's order, Sec. 2.4.1); `mix_dataset` uses one internally.
"""

from __future__ import annotations

import tensorflow as tf

from tf_dlthesis._checks import check_bool
from tf_dlthesis._seeds import as_seed
from tf_dlthesis.augment.methods import get_method, resolve
from tf_dlthesis.augment.mix import (batch_core, centre_images, check_num_classes, check_numerics, labels_to_soft,
                                     mix_pairs, pop_check_numerics)

MODES = ("pair", "batch")
_PAIRINGS = ("permute", "reverse")


def _call_seed(seed, epoch, index):
    """The stateless seed of mixing call `index` of epoch `epoch`."""
    epoch_seed = tf.random.experimental.stateless_fold_in(seed, tf.cast(epoch, tf.int64), alg="philox")
    return tf.random.experimental.stateless_fold_in(epoch_seed, tf.cast(index, tf.int64), alg="philox")


def _deinterleave(t):
    """(2n, ...) -> (t[0::2], t[1::2]) via contiguous halves of each row of (n, 2 * D)."""
    shape = tf.shape(t)
    n = shape[0] // 2
    d = tf.reduce_prod(shape[1:])
    flat = tf.reshape(t, tf.stack([n, 2 * d]))
    out_shape = tf.concat([[n], shape[1:]], 0)
    return tf.reshape(flat[:, :d], out_shape), tf.reshape(flat[:, d:], out_shape)


class MixStage:
    """Mixed-example augmentation as one configured pipeline stage (Thesis Sec. 2.3-2.4.1).

    Example:

    >>> from tf_dlthesis import augment, data
    >>> x, y = data.load_arrays("digits", "train")
    >>> stage = augment.MixStage("vh_mixup", num_classes=10, seed=0)
    >>> ds = data.training_dataset(x, y, batch_size=64, shuffle_seed=0, epochs=3, mix=stage)

    In `"pair"` mode (the thesis's) consecutive examples of the shuffled stream are
    mixed; `training_dataset` reads the training set twice per epoch so an epoch
    still yields N mixed examples and each example is paired exactly once per pass,
    with fresh pairings every epoch. In `"batch"` mode each batch is mixed with a
    permutation of itself (`mix_batch`).

    Args:
        method: a name in `METHODS` or a list of names (each pair draws one).
        mode: `"pair"` or `"batch"`.
        num_classes: number of classes (needed for sparse integer labels).
        seed: base seed (int, shape-[2] tensor, or None for fresh entropy); call
            `i` of epoch `e` mixes with a seed derived from (seed, e, i).
        pairing: batch mode partner choice, `"permute"` or `"reverse"`.
        jit_compile: compile the mixing core with XLA (several times faster on CPU
            for the mask methods; outputs differ from `jit_compile=False` because
            XLA orders its Philox stream differently, each is deterministic).
        **params: the methods' hyperparameters, as for `mix_batch`, and
            `check_numerics=True` (default False) to fail with an error naming
            `images` / `labels` on NaN or Inf inputs (checked outside the compiled core).

    Raises:
        ValueError: unknown method or mode, bad hyperparameters or `num_classes`.
        TypeError: unexpected hyperparameter.
    """

    def __init__(self, method, *, mode: str = "pair", num_classes: int | None = None, seed=0,
                 pairing: str = "permute", jit_compile: bool = True, **params):
        if mode not in MODES:
            raise ValueError(f"`mode` must be one of {MODES}. Received: mode={mode!r}")
        if pairing not in _PAIRINGS:
            raise ValueError(f"`pairing` must be one of {_PAIRINGS}. Received: pairing={pairing!r}")
        num_classes = check_num_classes(num_classes, minimum=2)
        params = dict(params)
        self.check_numerics = pop_check_numerics(params)
        self.names, self._full = resolve(method, params)
        self.method = method if isinstance(method, str) else list(method)
        self.mode = mode
        self.num_classes = num_classes
        self.pairing = pairing
        self.jit_compile = check_bool("jit_compile", jit_compile)
        self.params = dict(params)
        self.seed = as_seed(seed)
        self._pair_fn = None
        self._batch_fn = None
        self._interleaved_fn = None

    # ------------------------------------------------------------------ config
    def get_config(self) -> dict:
        """A JSON-able description (the seed is not part of it: runs pass their own)."""
        config = {"method": self.method, "mode": self.mode, "num_classes": self.num_classes,
                  "pairing": self.pairing, "jit_compile": self.jit_compile, **self.params}
        if self.check_numerics:
            config["check_numerics"] = True
        return config

    @property
    def centers_images(self) -> bool:
        """Whether every mixed output is per-image zero-mean (BC+ / VH-BC+ only).

        A model trained on such a stage must see per-image zero-mean images at test
        time too (the authors' preprocessing): see `test_transform`.
        """
        return all(get_method(n).center for n in self.names)

    def test_transform(self, images):
        """What test images need to look like training inputs: per-image centring for BC+."""
        images = tf.convert_to_tensor(images)
        if not self.centers_images:
            return images
        return centre_images(tf.cast(images, tf.float32))

    # ------------------------------------------------------------------ compiled cores
    def _soft(self, labels):
        return check_numerics(labels_to_soft(labels, self.num_classes, 1), "labels", self.check_numerics)

    def _x(self, images):
        return check_numerics(images, "images", self.check_numerics)

    # The cores below are compiled without AutoGraph: they branch only on Python values, and
    # conversion would parse their source again in every fresh process (as it did for the
    # training stream's functions; not measured for these).
    def pairs(self, x1, y1, x2, y2, epoch, index):
        """Mixes pairs (x1[b], x2[b]) with the seed of call (`epoch`, `index`)."""
        if self._pair_fn is None:
            def core(x1, y1, x2, y2, seed):
                return mix_pairs(tf.cast(x1, tf.float32), y1, tf.cast(x2, tf.float32), y2, self.names,
                                 self._full, seed)
            self._pair_fn = tf.function(core, jit_compile=self.jit_compile, reduce_retracing=True, autograph=False)
        return self._pair_fn(self._x(x1), self._soft(y1), self._x(x2), self._soft(y2), _call_seed(self.seed, epoch, index))

    def batch(self, x, y, epoch, index):
        """Mixes a batch with a permutation (or reversal) of itself."""
        if self._batch_fn is None:
            def core(x, y, seed):
                return batch_core(tf.cast(x, tf.float32), y, self.names, self._full, seed, self.pairing)
            self._batch_fn = tf.function(core, jit_compile=self.jit_compile, reduce_retracing=True, autograph=False)
        return self._batch_fn(self._x(x), self._soft(y), _call_seed(self.seed, epoch, index))

    def interleaved(self, x, y, epoch, index):
        """Mixes consecutive examples of a chunk (x[0] with x[1], x[2] with x[3], ...).

        An odd trailing example is dropped (a chunk of one example gives an empty
        output; `mix_dataset`'s pair mode, which uses this, skips such chunks).
        """
        if self._interleaved_fn is None:
            def core(x, y, seed):
                n = tf.shape(x)[0] // 2
                x = tf.cast(x[:2 * n], tf.float32)
                x1, x2 = _deinterleave(x)       # strided slices are ~10x slower in tf.data on CPU
                y1, y2 = _deinterleave(y[:2 * n])
                return mix_pairs(x1, y1, x2, y2, self.names, self._full, seed)
            self._interleaved_fn = tf.function(core, jit_compile=self.jit_compile, reduce_retracing=True, autograph=False)
        return self._interleaved_fn(self._x(x), self._soft(y), _call_seed(self.seed, epoch, index))

    def __repr__(self):
        return f"MixStage({self.method!r}, mode={self.mode!r}, num_classes={self.num_classes}, params={self.params})"
