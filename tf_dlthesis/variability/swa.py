"""Stochastic weight averaging (SWA) and its "aggressive" variant (ASWA) of Thesis App. B.4.

Thesis App. B.4 ("Approaches that don't reduce instability") tried *Aggressive*
Stochastic Weight Averaging (ASWA), "a variant of SWA [53]" inspired by Madhyastha
and Jain [72], and found that it did not reduce run-to-run variability: "we could
not get the model to converge to a reasonable degree of performance with the
original formulation due to update sizes that decreased too rapidly, and though we
were able to modify it to converge successfully, the output variance remained as
high as the other models". The thesis states no more (not the modification).

Two modes of one callback, `StochasticWeightAveraging`:

* ``"swa"`` - Izmailov et al. 2018 (arXiv:1803.05407, Thesis [53]): from epoch
  `start_epoch` on, the running average of the weights at the end of each epoch,
  ``w_swa <- (w_swa * n + w) / (n + 1)``; at the end of training the model takes
  the average, and batch-norm statistics are recomputed with one pass over the
  training data (their `bn_update`). Pair it with `SWASchedule`, the paper's
  learning-rate schedule (constant, then linear decay to `swa_lr` at 90% of
  `start_epoch`, then constant `swa_lr`).
* ``"aswa"`` - Madhyastha & Jain 2019 (CoNLL, Thesis [72]): the running average is
  updated after *every* optimizer step (from `start_epoch` on) and assigned to the
  model at the end of every epoch, so training continues from the average. After
  n steps an update moves the average by 1/n of itself, the "update sizes that
  decreased too rapidly" the thesis reports; starting later (`start_epoch`) is one
  way to let the model converge first.

Only trainable variables are averaged; the moving statistics of batch-norm-family
layers (Keras BN and the library's Chapter 4 layers) are recomputed (`bn_data`)
or, without data, kept as training left them.

Reference: Thesis App. B.4; Izmailov et al., "Averaging Weights Leads to Wider
Optima and Better Generalization", arXiv:1803.05407; Madhyastha & Jain, "On Model
Stability as a Function of Random Seed", CoNLL 2019, arXiv:1909.10447.
"""

from __future__ import annotations

import os
import warnings

import keras
import numpy as np
import tensorflow as tf

from tf_dlthesis._checks import check_int
from tf_dlthesis.variability._backup import (backup_path, check_backup_dir, read_backup, remove_backups,
                                               write_backup)

MODES = ("swa", "aswa")


def _number(name, value, *, minimum=None, positive=False):
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)) or not np.isfinite(value):
        raise ValueError(f"`{name}` must be a finite number. Received: {name}={value!r}")
    if positive and not value > 0:
        raise ValueError(f"`{name}` must be > 0. Received: {name}={value!r}")
    if minimum is not None and value < minimum:
        raise ValueError(f"`{name}` must be >= {minimum}. Received: {name}={value!r}")
    return value


@keras.saving.register_keras_serializable(package="tf_dlthesis")
class SWASchedule(keras.optimizers.schedules.LearningRateSchedule):
    """The learning-rate schedule of Izmailov et al. 2018 for SWA.

    With t = step / swa_start_step: the rate is `learning_rate` for t <= 0.5, falls
    linearly to `swa_lr` at t = 0.9 and stays at `swa_lr` from there on (the whole
    averaging phase).

    Example:

    >>> s = SWASchedule(0.1, swa_lr=0.01, swa_start_step=100)
    >>> [round(float(s(t)), 4) for t in (0, 50, 70, 90, 500)]
    [0.1, 0.1, 0.055, 0.01, 0.01]

    Args:
        learning_rate: the initial rate.
        swa_lr: the constant rate of the averaging phase.
        swa_start_step: the step at which averaging starts.

    Raises:
        TypeError: a start step that is not an int.
        ValueError: non-positive rates or start step.
    """

    def __init__(self, learning_rate, swa_lr, swa_start_step, name=None):
        self.learning_rate = float(_number("learning_rate", learning_rate, positive=True))
        self.swa_lr = float(_number("swa_lr", swa_lr, positive=True))
        self.swa_start_step = check_int("swa_start_step", swa_start_step, 1)
        self.name = name

    def __call__(self, step):
        t = keras.ops.cast(step, "float32") / float(self.swa_start_step)
        ratio = self.swa_lr / self.learning_rate
        factor = keras.ops.where(t <= 0.5, 1.0, keras.ops.where(t <= 0.9, 1.0 - (1.0 - ratio) * (t - 0.5) / 0.4, ratio))
        return self.learning_rate * factor

    def get_config(self):
        return {"learning_rate": self.learning_rate, "swa_lr": self.swa_lr, "swa_start_step": self.swa_start_step,
                "name": self.name}


def recompute_batch_norm_statistics(model, batches) -> int:
    """Sets every BN-family layer's moving statistics to their average over `batches` (Izmailov et al.'s `bn_update`).

    One training-mode pass over the data with the averaged weights; each layer's
    moving mean and variance become the average of the per-batch statistics it
    normalized with, each batch weighted by its number of examples (their
    `bn_update` momentum b / (n + b)). Covers Keras `BatchNormalization` and the
    library's Chapter 4 layers (Ghost BN, Batch Group Norm, ...), nested ones
    included: `normalization.update_bn_statistics(..., average="examples")`.

    Args:
        model: a Keras model.
        batches: a batched `tf.data.Dataset`, one array of inputs or `(x, y[,
            sample_weight])` arrays as Keras `fit` takes them (split into batches of
            32), or an iterable of input batches (or of `(inputs, labels)` pairs).
            A tuple or list of 2 or 3 arrays of one length is `(x, y[,
            sample_weight])` when its second entry's shape differs from the first's
            (labels beside inputs), else a list of batches.

    Returns:
        The number of batches seen (0: the model has no layer with moving statistics).
    """
    from tf_dlthesis.normalization import bn_layers, update_bn_statistics

    if not bn_layers(model):
        return 0
    if _is_xy(batches):
        batches = batches[0]  # the inputs of (x, y[, sample_weight]) arrays
    whole = hasattr(batches, "shape") or isinstance(batches, tf.data.Dataset)
    return update_bn_statistics(model, batches if whole else iter(batches), average="examples")


def _is_xy(batches) -> bool:
    """Whether `batches` is `(x, y[, sample_weight])` arrays rather than a list of 2 or 3 input batches.

    Arrays of one length whose second entry differs in shape from the first (labels
    beside images) are `(x, y[, sample_weight])`; batches of inputs share a shape.
    """
    if not isinstance(batches, (tuple, list)) or not 2 <= len(batches) <= 3:
        return False
    shapes = [tuple(getattr(b, "shape", ())) for b in batches]
    if any(len(shape) == 0 for shape in shapes) or len({shape[0] for shape in shapes}) != 1:
        return False
    return shapes[1][1:] != shapes[0][1:]


@keras.saving.register_keras_serializable(package="tf_dlthesis")
class StochasticWeightAveraging(keras.callbacks.Callback):
    """Keras callback for SWA (Izmailov et al. 2018) and aggressive SWA (Thesis App. B.4).

    Example:

    >>> swa = StochasticWeightAveraging(mode="swa", start_epoch=15)
    >>> # model.fit(ds, epochs=20, callbacks=[swa]); the model now holds the average
    >>> swa.averaged  # how many weight sets went into the average
    0

    Args:
        mode: ``"swa"`` (average the end-of-epoch weights from `start_epoch` on,
            assign at the end of training) or ``"aswa"`` (average after every
            step from `start_epoch` on, assign at the end of every epoch).
        start_epoch: the first epoch (0-based) whose weights are averaged.
        bn_data: optional training data for the final batch-norm recomputation
            (what `recompute_batch_norm_statistics` takes: a dataset, an array, `(x, y)`
            arrays or an iterable of batches).

        backup_dir: optional directory (str or os.PathLike) for a backup of the
            running average that survives a restart (below). None: no backup.

    In mode ``"aswa"`` the model holds the average from the end of each epoch >=
    `start_epoch` on, and `fit`'s validation of such an epoch (`val_*` logs, which
    Keras computes before `on_epoch_end`) already sees the average (it is assigned
    at `on_test_begin`), so `val_loss` is the loss of the weights training
    continues from. A `model.evaluate` outside `fit` is not affected.

    Every `fit` from epoch 0 starts a new average (`averaged` counts its weight
    sets). Without `backup_dir`, a `fit` resuming after `start_epoch`
    (`initial_epoch`, or a fresh callback under `keras.callbacks.BackupAndRestore`)
    cannot average the epochs before it, since the average is not part of a Keras
    backup or checkpoint; it warns, naming them. With `backup_dir`, the running
    average, its count and `averaged` (in mode ``"aswa"`` the per-step average, all
    it needs to continue) are written at the end of each epoch >= `start_epoch`
    (`swa_epoch<e>.npz`, atomically: a temporary name, then `os.replace`; the two
    latest are kept), and a `fit` resuming at epoch k > `start_epoch` loads the
    average of epoch k - 1 (mode ``"aswa"`` also assigns it to the model, which
    continued from it), so with `BackupAndRestore(save_freq="epoch")` the final
    average and weights are the uninterrupted run's bit for bit. Use a directory
    of its own, one per run: `BackupAndRestore` deletes its directory at the end of
    `fit`, and two runs sharing one remove and overwrite each other's files (a
    resuming run could load the other's average where the models' shapes agree). The
    files are kept after a successful `fit` (delete them yourself); a `fit` that
    starts at epoch 0 removes this callback's earlier files from `backup_dir`.

    Raises:
        TypeError: a start epoch that is not an int, a `backup_dir` that is not a path.
        ValueError: unknown mode, negative start epoch, or (at `fit`) a start
            epoch at or after the last epoch, or mode ``"aswa"`` for a model compiled
            with `steps_per_execution` > 1, or a backup in `backup_dir` written with
            another mode or start epoch or for another model.
    """

    _BACKUP_PREFIX = "swa_epoch"  # its files in `backup_dir`: swa_epoch<epoch>.npz

    def __init__(self, mode: str = "swa", start_epoch: int = 0, bn_data=None, backup_dir=None):
        super().__init__()
        if mode not in MODES:
            raise ValueError(f"`mode` must be one of {MODES}. Received: mode={mode!r}")
        start_epoch = check_int("start_epoch", start_epoch, 0)
        self.mode = mode
        self.start_epoch = start_epoch
        self.bn_data = bn_data
        self.backup_dir = check_backup_dir(backup_dir)
        self.averaged = 0
        self._average = None
        self._epoch = 0
        self._update = None
        self._resume_checked = True
        self._in_fit = False
        self._assigned_epoch = None

    def _variables(self):
        return list(self.model.trainable_variables)

    def set_params(self, params):
        # Keras wraps callbacks in a new `CallbackList` (which calls this) for every `fit`, `evaluate` and
        # `predict`, but `fit`'s own validation reuses fit's list: so `_in_fit` is cleared here, and set again by
        # `on_train_begin`, also when an earlier `fit` died before `on_train_end` (Keras has no `finally` there)
        super().set_params(params)
        self._in_fit = False

    def on_train_begin(self, logs=None):
        epochs = self.params.get("epochs")
        if epochs is not None and self.start_epoch >= int(epochs):
            raise ValueError(f"`start_epoch`={self.start_epoch} leaves no epoch to average in a {epochs}-epoch run.")
        per_call = int(getattr(self.model, "steps_per_execution", 1) or 1)
        if self.mode == "aswa" and per_call != 1:  # Keras calls batch callbacks once per execution
            raise ValueError(f"mode='aswa' averages the weights after every training step, which needs "
                             f"`model.compile(steps_per_execution=1)` (Keras calls batch callbacks once per "
                             f"execution). Received: steps_per_execution={per_call}")
        variables = self._variables()
        self._average = [tf.Variable(tf.zeros_like(v), trainable=False) for v in variables]
        self._count = tf.Variable(0.0, dtype=tf.float32, trainable=False)
        self.averaged = 0

        @tf.function(autograph=False)
        def update():
            n = self._count + 1.0
            for avg, v in zip(self._average, variables):
                avg.assign_add((tf.cast(v, avg.dtype) - avg) / tf.cast(n, avg.dtype))
            self._count.assign(n)

        @tf.function(autograph=False)
        def assign():
            for avg, v in zip(self._average, variables):
                v.assign(tf.cast(avg, v.dtype))

        self._update, self._assign = update, assign
        self._resume_checked = False
        self._in_fit = True
        self._assigned_epoch = None

    def on_epoch_begin(self, epoch, logs=None):
        if not self._resume_checked:  # the first epoch of this fit
            self._resume_checked = True
            if self.backup_dir is not None and epoch == 0:  # a new run: an earlier run's backups must not be loaded
                remove_backups(self.backup_dir, self._BACKUP_PREFIX)
            # `initial_epoch` / `BackupAndRestore`: without a backup the average restarts with this fit
            if epoch > self.start_epoch and not self._restore(int(epoch)):
                hint = ("pass `backup_dir` to keep it across restarts" if self.backup_dir is None else
                        f"backup_dir={self.backup_dir!r} holds no average of epoch {int(epoch) - 1}")
                warnings.warn(f"StochasticWeightAveraging: training resumes at epoch {epoch}, after "
                              f"start_epoch={self.start_epoch}; every `fit` starts a new average (the average is "
                              f"not part of a Keras backup or checkpoint; {hint}), so epochs {self.start_epoch}.."
                              f"{int(epoch) - 1} are not in it. Received: initial epoch {epoch}", stacklevel=2)
        self._epoch = int(epoch)

    def _backup_path(self, epoch):
        return backup_path(self.backup_dir, self._BACKUP_PREFIX, epoch)

    def _restore(self, epoch) -> bool:
        """Loads the average of epoch `epoch` - 1 from `backup_dir`; False when there is none."""
        if self.backup_dir is None or not os.path.exists(self._backup_path(epoch - 1)):
            return False
        arrays, meta = read_backup(self._backup_path(epoch - 1), "StochasticWeightAveraging", self._average,
                                    mode=self.mode, start_epoch=self.start_epoch, epoch=epoch - 1)
        for avg, value in zip(self._average, arrays):
            avg.assign(value)
        self._count.assign(np.float32(meta["count"]))
        self.averaged = int(meta["averaged"])
        if self.mode == "aswa":  # the uninterrupted run continued from the average (a Keras backup may hold the
            self._assign()       # SGD iterate, depending on the order of the callbacks)
        return True

    def on_train_batch_end(self, batch, logs=None):
        if self.mode == "aswa" and self._epoch >= self.start_epoch:
            self._update()
            self.averaged += 1

    def on_test_begin(self, logs=None):
        # `fit` validates before `on_epoch_end`: ASWA's validation must see the average training continues from
        if (self._in_fit and self.mode == "aswa" and self._epoch >= self.start_epoch
                and self._assigned_epoch != self._epoch):
            self._assign()
            self._assigned_epoch = self._epoch

    def on_epoch_end(self, epoch, logs=None):
        if epoch < self.start_epoch:
            return
        if self.mode == "swa":
            self._update()
            self.averaged += 1
        elif self._assigned_epoch != epoch:  # not yet assigned for a validation of this epoch
            self._assign()
        if self.backup_dir is not None:
            write_backup(self._backup_path(epoch), self._average, mode=self.mode, start_epoch=self.start_epoch,
                          epoch=int(epoch), count=np.asarray(self._count, dtype=np.float32),
                          averaged=self.averaged)
            stale = self._backup_path(epoch - 2)  # the previous epoch's stays: a Keras backup may lag this one
            if os.path.exists(stale):
                os.remove(stale)

    def on_train_end(self, logs=None):
        self._in_fit = False
        if not self.averaged:
            return
        self._assign()
        if self.bn_data is not None:
            recompute_batch_norm_statistics(self.model, self.bn_data)

    def average(self) -> list:
        """The current average of the trainable variables, as NumPy arrays."""
        if self._average is None:
            raise ValueError("StochasticWeightAveraging has no average yet; train with it as a callback first.")
        return [np.asarray(a) for a in self._average]

    def get_config(self):
        return {"mode": self.mode, "start_epoch": self.start_epoch, "backup_dir": self.backup_dir}

    @classmethod
    def from_config(cls, config):
        return cls(**config)
