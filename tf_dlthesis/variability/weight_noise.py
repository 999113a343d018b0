"""Weight augmentation: gradients taken at randomly offset weights (Thesis App. B.4).

Thesis App. B.4: "we experimented with taking an averaged gradient around the
current set of parameters at each step, approximated by sampling a random weight
offset before doing a forward or backward pass through the model. Intuitively,
this might encourage optimization to not be too sensitive to the current value of
weights; however, in practice this simply didn't affect the variance or stability
of the model." The thesis gives neither the offset's distribution nor its scale:
here it is Gaussian, ``eps ~ N(0, stddev^2)`` i.i.d. per weight (a documented
choice), drawn afresh at every step.

At each training step the callback moves every trainable weight ``w`` to
``w + eps`` before the forward/backward pass; the optimizer's step ``d`` is computed
there (the gradient, and any decoupled weight decay, at ``w + eps``) and after the
step the offset is taken back out: ``w <- w + d``. So one step is
``w_{t+1} = w_t + step(grad L(w_t + eps_t))``, a one-sample estimate of the gradient
averaged over a Gaussian neighbourhood of ``w_t``.

Randomness is stateless: the offset of step t for variable i is drawn from seed
``(seed, t, i)`` (`tf.random.stateless_normal`), so a run is reproducible and the
"stochastic" source of `SeedPlan` controls it. t counts the steps this callback
has seen over all its `fit` calls (`.steps`), so training continued by a second
`fit` with the same callback (`initial_epoch`) draws new offsets rather than
repeating the first `fit`'s; a fresh callback with the same seed starts again at t = 0,
unless its `fit` starts at epoch k > 0 (`initial_epoch=k`, or
`keras.callbacks.BackupAndRestore` resuming a run): then t starts at k *
steps_per_epoch, the step the uninterrupted run was at, so the resumed run draws
that run's offsets (with an unknown number of steps per epoch it warns and starts at 0).

Reference: Thesis App. B.4; arXiv:2103.04514.
"""

from __future__ import annotations

import warnings

import keras
import numpy as np
import tensorflow as tf

from tf_dlthesis._seeds import check_int_seed, fresh_seed


@keras.saving.register_keras_serializable(package="tf_dlthesis")
class WeightNoise(keras.callbacks.Callback):
    """Keras callback: each step's gradient is taken at randomly offset weights.

    Example:

    >>> noise = WeightNoise(stddev=0.01, seed=0)
    >>> # model.fit(ds, epochs=10, callbacks=[noise])
    >>> noise.steps
    0

    Args:
        stddev: standard deviation of the Gaussian offset added to every
            trainable weight (> 0).
        seed: int seed of the offsets (step t, variable i: seed (seed, t, i)); `None`
            draws one fresh seed (readable afterwards as `.seed`).

    Raises:
        TypeError: `seed` not an int or None.
        ValueError: `stddev` not > 0, `seed` < 0, or (at `fit`) a model compiled with
            `steps_per_execution` > 1.
    """

    def __init__(self, stddev: float, seed: int = 0):
        super().__init__()
        if isinstance(stddev, bool) or not isinstance(stddev, (int, float, np.integer, np.floating)) \
                or not np.isfinite(stddev) or not stddev > 0:
            raise ValueError(f"`stddev` must be a number > 0. Received: stddev={stddev!r}")
        seed = check_int_seed(seed)
        self.stddev = float(stddev)
        self.seed = fresh_seed() if seed is None else seed  # None: fresh entropy, kept for the record
        self.steps = 0
        self._begin = self._end = None
        self._resume_checked = True

    def on_train_begin(self, logs=None):
        per_call = int(getattr(self.model, "steps_per_execution", 1) or 1)
        if per_call != 1:  # Keras calls batch callbacks once per execution: one offset for several steps
            raise ValueError(f"WeightNoise draws a new offset before every training step, which needs "
                             f"`model.compile(steps_per_execution=1)` (Keras calls batch callbacks once per "
                             f"execution). Received: steps_per_execution={per_call}")
        variables = list(self.model.trainable_variables)
        clean = [tf.Variable(tf.zeros_like(v), trainable=False) for v in variables]
        noisy = [tf.Variable(tf.zeros_like(v), trainable=False) for v in variables]
        self._state = (clean, noisy)
        base = tf.constant([self.seed, 0], tf.int64)
        stddev = self.stddev

        @tf.function(autograph=False)
        def begin(step):
            step_seed = tf.random.experimental.stateless_fold_in(base, step)
            for i, (v, c, nz) in enumerate(zip(variables, clean, noisy)):
                seed = tf.random.experimental.stateless_fold_in(step_seed, i)
                eps = tf.random.stateless_normal(tf.shape(v), seed, stddev=stddev, dtype=v.dtype)
                c.assign(v)
                nz.assign(v + eps)
                v.assign(nz)

        @tf.function(autograph=False)
        def end():
            for v, c, nz in zip(variables, clean, noisy):
                v.assign(c + (v - nz))

        self._begin, self._end = begin, end
        self._resume_checked = False
        # `steps` is not reset: a second fit continues the step count (new offsets, not the first fit's again)

    def on_epoch_begin(self, epoch, logs=None):
        if self._resume_checked:
            return
        self._resume_checked = True
        if epoch > 0:  # `initial_epoch` / `BackupAndRestore`: continue at the step the uninterrupted run is at
            per_epoch = self.params.get("steps")
            if per_epoch:
                self.steps = max(self.steps, int(epoch) * int(per_epoch))
            elif not self.steps:
                warnings.warn(f"WeightNoise: training resumes at epoch {epoch} with an unknown number of steps per "
                              f"epoch, so this fresh callback's offsets start again at step 0 (they repeat the "
                              f"first epochs' offsets). Pass `steps_per_epoch` to `fit` to continue at step "
                              f"{epoch} * steps_per_epoch. Received: initial epoch {epoch}", stacklevel=2)

    def on_train_batch_begin(self, batch, logs=None):
        self._begin(tf.constant(self.steps, tf.int64))

    def on_train_batch_end(self, batch, logs=None):
        self._end()
        self.steps += 1

    def get_config(self):
        return {"stddev": self.stddev, "seed": self.seed}

    @classmethod
    def from_config(cls, config):
        return cls(**config)
