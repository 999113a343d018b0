"""Shared pieces of the benchmark scripts (run as `python benchmarks/bench_*.py`)."""

import tensorflow as tf


def sgd_train_step(model, optimizer, loss_fn, *, jit=False, before=None):
    """A compiled one-update train step: `before(x, y)` (e.g. mixing) -> loss -> SGD update.

    Works for Keras 3 and tf_keras models alike, so ours and the peer are timed with
    the same loop.
    """

    @tf.function(jit_compile=jit)
    def step(x, y):
        if before is not None:
            x, y = before(x, y)
        with tf.GradientTape() as tape:
            loss = loss_fn(y, model(x, training=True))
        grads = tape.gradient(loss, model.trainable_variables)
        optimizer.apply_gradients(zip(grads, model.trainable_variables))
        return loss

    return step
