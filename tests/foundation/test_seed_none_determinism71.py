"""Stop 71: `seed=None` inside traced code under op determinism. TF refuses OS entropy there, and the old
path (TF's stateful op seeds) restarted with each `tf.data` iterator, so every epoch drew the same "fresh"
crops and mixes, while Keras's own `seed=None` layers draw new ones every epoch there. Now a generator
seeded from TF's global seed draws them: fresh every epoch and execution, and reproducible after the same
`keras.utils.set_random_seed`, whatever random ops ran in between. The epoch test fails on the old code."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from tf_dlthesis import augment, data, runtime

X = np.random.default_rng(0).random((8, 6, 6, 1)).astype("float32")
Y = np.arange(8) % 3


def _draws():
    """Two epochs of seed=None crops and of seed=None mixing weights, and two calls of a tf.function."""
    crops = tf.data.Dataset.from_tensor_slices(X).map(lambda a: data.standard_augment(a, seed=None, pad=2))
    mixes = (tf.data.Dataset.from_tensor_slices((X, Y)).batch(8)
             .map(lambda a, b: augment.mix_batch(a, b, "mixup", seed=None, num_classes=3)[1]))
    beta = tf.function(lambda: augment.sample_beta(None, [4], alpha=0.5))
    return ([np.stack(list(crops.as_numpy_iterator())) for _ in range(2)]
            + [np.concatenate(list(mixes.as_numpy_iterator())) for _ in range(2)]
            + [beta().numpy(), beta().numpy()])


@pytest.fixture
def deterministic():
    runtime.configure(deterministic=True)
    yield
    runtime.configure(deterministic=False)


def test_seed_none_is_fresh_every_epoch_and_call_under_op_determinism(deterministic):
    keras.utils.set_random_seed(0)
    crops1, crops2, mix1, mix2, beta1, beta2 = _draws()
    assert not np.array_equal(crops1, crops2), "the same seed=None crops in every epoch"
    assert not np.array_equal(mix1, mix2), "the same seed=None mixing weights in every epoch"
    assert not np.array_equal(beta1, beta2)


def test_seed_none_under_op_determinism_is_reproducible_after_the_same_global_seed(deterministic):
    keras.utils.set_random_seed(0)
    first = _draws()
    tf.random.uniform([5])  # unrelated random ops in between (they moved TF's op-seed counter)
    keras.layers.Dropout(0.5)(tf.ones([4]), training=True)
    keras.utils.set_random_seed(0)
    again = _draws()
    for a, b in zip(first, again):
        np.testing.assert_array_equal(a, b)
    keras.utils.set_random_seed(1)
    other = _draws()
    assert not np.array_equal(first[0], other[0])


def test_seed_none_under_op_determinism_without_a_global_seed_still_says_how():
    from tensorflow.python.eager import context

    ctx = context.context()
    saved = ctx._seed, ctx._rng
    runtime.configure(deterministic=True)
    try:
        ctx._seed = None  # as in a fresh process that never set one
        with pytest.raises(RuntimeError, match=r"tf\.random\.set_seed"):
            tf.function(lambda: augment.sample_beta(None, [2], alpha=0.5))()
    finally:
        ctx._seed, ctx._rng = saved
        runtime.configure(deterministic=False)
