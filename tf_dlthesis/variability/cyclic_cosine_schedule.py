"""Cyclic cosine learning-rate schedule for snapshot ensembles (Thesis Sec. 5.5).

Huang et al.'s schedule (Snapshot Ensembles, Eq. 2): within each of M cycles of
L = ceil(T / M) steps the rate falls from its maximum to ~0 along a half cosine,

    lr(t) = lr_0 / 2 * (cos(pi * mod(t, L) / L) + 1),

then restarts. A snapshot taken at the end of each cycle (`SnapshotEnsemble`)
sits where the rate is ~0. The thesis uses M = 5 cycles.

Reference: Thesis Ch. 5, Sec. 5.5 and Table 5.5; arXiv:2103.04514;
Huang et al., "Snapshot Ensembles: Train 1, get M for free", arXiv:1704.00109.
"""

from __future__ import annotations

import math
import numbers

import keras

from tf_dlthesis._checks import check_int


@keras.saving.register_keras_serializable(package="tf_dlthesis")
class CyclicCosineSchedule(keras.optimizers.schedules.LearningRateSchedule):
    """Cosine annealing restarted `cycles` times over `total_steps` steps.

    Example:

    >>> schedule = CyclicCosineSchedule(0.1, total_steps=100, cycles=5)
    >>> [round(float(schedule(s)), 5) for s in (0, 19, 20)]
    [0.1, 0.00062, 0.1]

    Args:
        initial_learning_rate: Maximum rate, at the start of every cycle.
        total_steps: Training steps T over all cycles.
        cycles: Number of cycles M (5 in the thesis).
        warmup_steps: Optional linear warm-up at the start of the first cycle
            (the thesis's baseline warms up for 3 epochs); 0 disables it.

    Raises:
        TypeError: for a rate that is not a number (NumPy scalars are fine), or
            steps / cycles that are not ints.
        ValueError: for non-positive or infinite rates, non-positive steps,
            cycles > total_steps, or warmup_steps not shorter than one cycle.
    """

    def __init__(self, initial_learning_rate: float, total_steps: int, cycles: int = 5, warmup_steps: int = 0, name=None):
        lr = initial_learning_rate
        if isinstance(lr, bool) or not isinstance(lr, numbers.Real):
            raise TypeError(f"`initial_learning_rate` must be a number. Received: initial_learning_rate={lr!r}")
        if not 0 < lr < math.inf:
            raise ValueError(f"`initial_learning_rate` must be finite and > 0. Received: initial_learning_rate={lr!r}")
        check_int("total_steps", total_steps, 1)
        check_int("cycles", cycles, 1)
        if cycles > total_steps:
            raise ValueError(f"`cycles` must not exceed `total_steps`. Received: cycles={cycles}, total_steps={total_steps}")
        self.cycle_length = int(math.ceil(total_steps / cycles))
        check_int("warmup_steps", warmup_steps, 0)
        if warmup_steps >= self.cycle_length:
            raise ValueError(
                f"`warmup_steps` must be an int in [0, {self.cycle_length}). Received: warmup_steps={warmup_steps!r}"
            )
        self.initial_learning_rate = float(initial_learning_rate)
        self.total_steps = int(total_steps)
        self.cycles = int(cycles)
        self.warmup_steps = int(warmup_steps)
        self.name = name

    def __call__(self, step):
        step = keras.ops.cast(step, "float32")
        length = float(self.cycle_length)
        position = step - keras.ops.floor(step / length) * length
        lr = 0.5 * self.initial_learning_rate * (keras.ops.cos(math.pi * position / length) + 1.0)
        if self.warmup_steps:
            ramp = (step + 1.0) / float(self.warmup_steps)
            lr = keras.ops.where(step < float(self.warmup_steps), lr * ramp, lr)
        return lr

    def get_config(self):
        return {
            "initial_learning_rate": self.initial_learning_rate,
            "total_steps": self.total_steps,
            "cycles": self.cycles,
            "warmup_steps": self.warmup_steps,
            "name": self.name,
        }
