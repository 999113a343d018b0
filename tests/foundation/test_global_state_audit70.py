"""Public seeded callables derive their randomness from their own seeds only (issue 13, audit 70).

A seeded call must give bit-identical numbers whatever Keras/TF/NumPy global seed is
set, however much global randomness was consumed and however many other seeded
library calls ran before it, inside or outside a `tf.function`, and in a fresh
process. `seed=None` must draw fresh numbers, also in every epoch of a `tf.data` map.
"""
import hashlib
import os
import subprocess
import sys
import textwrap

import keras
import numpy as np
import pytest
import tensorflow as tf

from tf_dlthesis import augment, data, models, robustness, variability
from tf_dlthesis.variability.language_model import segment_lengths

_X = tf.random.stateless_uniform([6, 6, 6, 3], [1, 2])
_Y = tf.constant([0, 1, 2, 0, 1, 2])


def _disturb_global_state():
    """Moves every global random state a library could lean on, and calls other seeded functions."""
    keras.utils.set_random_seed(7)
    tf.random.uniform([3])
    np.random.rand(3)
    keras.random.uniform([3])
    keras.layers.Dense(4)(tf.ones([2, 3]))
    keras.layers.Dropout(0.5)(tf.ones([2, 3]), training=True)
    tf.random.set_seed(99)
    tf.random.normal([2])
    for _ in range(2):  # op-seed counters / caches keyed by call count
        augment.mix_batch(_X, _Y, "mixup", seed=5, num_classes=3)
        data.standard_augment(_X[0], seed=3, pad=1)
        models.build("mlp", (4, 4, 1), 3, seed=11, hidden=4)


def _flat(value):
    if isinstance(value, dict):
        return [a for k in sorted(value) for a in _flat(value[k])]
    if isinstance(value, (list, tuple)):
        return [a for v in value for a in _flat(v)]
    return [np.asarray(value)]


def _mixed_example():
    layer = augment.MixedExample("vh_mixup", seed=3, num_classes=3)
    return [layer({"images": _X, "labels": _Y}, training=True) for _ in range(2)]


def _dropout_after_reseed():
    model = models.build("mlp", (6, 6, 3), 3, seed=1, hidden=8, dropout=0.5, norm="none")
    variability.reseed_stochastic_layers(model, 7)
    return [w.numpy() for w in model.weights] + [model(_X, training=True)]


def _mixed_pipeline():
    x, y = np.asarray(_X), np.asarray(_Y)
    ds = data.training_dataset(x, y, batch_size=3, shuffle_seed=3, augment_seed=4, epochs=2, pad=1, flip=True,
                               mix=augment.MixStage("vh_mixup", num_classes=3, seed=2))
    return list(ds.as_numpy_iterator())


_CLF = models.build("mlp", (6, 6, 3), 3, seed=1, hidden=8)

# name -> (eager call, also compare with the same call traced in a tf.function)
CALLS = {
    "standard_augment": (lambda: data.standard_augment(_X[0], seed=5, pad=2), True),
    "mix_batch_random_2x2": (lambda: augment.mix_batch(_X, _Y, "random_2x2", seed=9, num_classes=3), True),
    "mix_batch_noisy_mixup": (lambda: augment.mix_batch(_X, _Y, "noisy_mixup", seed=9, num_classes=3), True),
    "sample_beta": (lambda: augment.sample_beta(tf.constant([3, 4], tf.int64), [5], 0.4), True),
    "pgd": (lambda: robustness.pgd(_CLF, _X, _Y, epsilon=0.1, step_size=0.05, num_steps=2, seed=3), True),
    "attack_pgd2": (lambda: robustness.make_attack("pgd2", epsilon=0.1, step_size=0.05)(_CLF, _X, _Y, seed=3), False),
    "spsa": (lambda: robustness.spsa(_CLF, _X, _Y, epsilon=0.1, num_steps=1, spsa_samples=4, seed=3), False),
    "build_cnn_dropout": (lambda: [w.numpy() for w in models.build("cnn", (6, 6, 3), 3, seed=5, dropout=0.3).weights],
                          False),
    "mixed_example": (_mixed_example, False),
    "reseed_dropout": (_dropout_after_reseed, False),
    "training_dataset_mix": (_mixed_pipeline, False),
    "non_iid_batches": (lambda: list(data.non_iid_batches(tf.data.Dataset.from_tensor_slices((_X, _Y)), batch_size=2,
                                                          classes_per_batch=2, seed=3, num_batches=3,
                                                          augment_seed=2, pad=1).as_numpy_iterator()), False),
    "bit_change": (lambda: variability.bit_change(models.build("mlp", (4, 4, 1), 3, seed=1, hidden=4), seed=3).index,
                   False),
    "segment_lengths": (lambda: segment_lengths(200, 10, seed=3), False),
}


@pytest.mark.parametrize("name", sorted(CALLS))
def test_seeded_call_ignores_global_random_state(name):
    call, traced = CALLS[name]
    keras.utils.set_random_seed(123)
    first = _flat(call())
    assert first and any(a.size for a in first)
    _disturb_global_state()
    again = _flat(call())
    assert len(again) == len(first)
    for a, b in zip(first, again):
        np.testing.assert_array_equal(a, b, err_msg=f"{name} changed with the global random state")
    if traced:
        for a, b in zip(first, _flat(tf.function(call)())):
            np.testing.assert_array_equal(a, b, err_msg=f"{name} differs inside a tf.function")


def test_reseeded_dropout_masks_follow_the_seed():
    # the invariance above must be able to fail: another reseed gives other masks
    model = models.build("mlp", (6, 6, 3), 3, seed=1, hidden=8, dropout=0.5, norm="none")
    variability.reseed_stochastic_layers(model, 8)
    assert not np.array_equal(model(_X, training=True), _dropout_after_reseed()[-1])


_CHILD = textwrap.dedent("""
    import hashlib, numpy as np, tensorflow as tf
    from tf_dlthesis import augment, data, models, robustness
    x = tf.random.stateless_uniform([6, 6, 6, 3], [1, 2]); y = tf.constant([0, 1, 2, 0, 1, 2])
    clf = models.build("mlp", (6, 6, 3), 3, seed=1, hidden=8)
    parts = [data.standard_augment(x[0], seed=5, pad=2), *augment.mix_batch(x, y, "vh_mixup", seed=9, num_classes=3),
             robustness.pgd(clf, x, y, epsilon=0.1, step_size=0.05, num_steps=2, seed=3),
             *models.build("cnn", (6, 6, 3), 3, seed=5, dropout=0.3).weights]
    print(hashlib.sha256(b"".join(np.asarray(p).tobytes() for p in parts)).hexdigest())
""")


def test_fresh_process_gives_the_same_numbers():
    keras.utils.set_random_seed(42)
    _disturb_global_state()
    exec_globals = {}
    out = {}
    exec_globals["print"] = lambda digest: out.setdefault("digest", digest)
    exec(_CHILD, exec_globals)  # noqa: S102 - the same script in this (disturbed) process
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "CUDA_VISIBLE_DEVICES": ""}
    child = subprocess.run([sys.executable, "-c", _CHILD], capture_output=True, text=True, env=env, timeout=300)
    assert child.returncode == 0, child.stderr[-2000:]
    assert child.stdout.strip().splitlines()[-1] == out["digest"]
    assert len(out["digest"]) == len(hashlib.sha256().hexdigest())


def test_seed_none_in_a_tf_data_map_is_fresh_every_epoch_under_a_global_seed():
    # before: once a global seed was set (keras.utils.set_random_seed, as every Keras user does), the
    # in-graph draw behind `seed=None` restarted with each tf.data iterator, so every epoch got exactly
    # the same "random" crops and mixes (Keras's own seed=None layers draw new ones every epoch)
    keras.utils.set_random_seed(0)
    x = np.random.default_rng(0).random((8, 6, 6, 1)).astype("float32")
    crops = tf.data.Dataset.from_tensor_slices(x).map(lambda a: data.standard_augment(a, seed=None, pad=2))
    first, second = (np.stack(list(crops.as_numpy_iterator())) for _ in range(2))
    assert not np.array_equal(first, second), "seed=None drew the same crops in every epoch"
    # batches of 32 (3 classes): a batch's labels come out unmixed only where its random partner permutation
    # maps every example to one of its own class (probability 11! 11! 10! / 32! ~ 2e-14); with 4 examples of
    # classes [0, 1, 2, 0] that was 2 / 24, so both epochs came out one-hot, and equal, in (1/12)^4 ~ 5e-5 of runs
    x = np.random.default_rng(1).random((64, 6, 6, 1)).astype("float32")
    y = np.arange(64) % 3
    mixes = (tf.data.Dataset.from_tensor_slices((x, y)).batch(32)
             .map(lambda a, b: augment.mix_batch(a, b, "mixup", seed=None, num_classes=3)[1]))
    first, second = (np.concatenate(list(mixes.as_numpy_iterator())) for _ in range(2))
    assert not np.array_equal(first, second), "seed=None drew the same mixing weights in every epoch"


def test_seed_none_traced_draws_do_not_follow_the_global_seed():
    # before: the draw was a stateful op seeded from the global seed and TF's op counter, so two fresh
    # tf.functions after the same `set_random_seed` drew identical "fresh" numbers
    keras.utils.set_random_seed(0)
    a = tf.function(lambda: augment.sample_beta(None, [8], 0.5))().numpy()
    keras.utils.set_random_seed(0)
    b = tf.function(lambda: augment.sample_beta(None, [8], 0.5))().numpy()
    assert not np.array_equal(a, b)
