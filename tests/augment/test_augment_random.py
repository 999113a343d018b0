"""The counter-based random words behind the per-element methods, and the fast paths
(per-image statistics shared in batch mode, multi-batch calls in pair mode)."""

import numpy as np
import pytest
import tensorflow as tf
from scipy import stats

from tf_dlthesis.augment import _masks as M
from tf_dlthesis.augment import mix_batch, mix_dataset
from tf_dlthesis.augment.methods import resolve
from tf_dlthesis.augment.mix import mix_pairs

SEED = tf.constant([3, 4], tf.int64)


def _lowbias32_np(x):
    x = x.astype(np.uint64)
    m = np.uint64(0xFFFFFFFF)
    x ^= x >> np.uint64(16)
    x = (x * np.uint64(0x7FEB352D)) & m
    x ^= x >> np.uint64(15)
    x = (x * np.uint64(0x846CA68B)) & m
    x ^= x >> np.uint64(16)
    return x.astype(np.uint32)


def test_hash32_matches_reference_in_eager_graph_and_xla():
    x = np.array([0, 1, 2, 3, 12345, 2 ** 31, 2 ** 32 - 1], np.uint32)
    expect = _lowbias32_np(x)
    np.testing.assert_array_equal(M._hash32(tf.constant(x)).numpy(), expect)
    xla = tf.function(M._hash32, jit_compile=True)(tf.constant(x)).numpy()
    np.testing.assert_array_equal(xla, expect)           # uint32 wrap-around is the same


def test_random_words_uniform_independent_and_distinct_per_pair():
    words = M.random_words(SEED, tf.constant([8, 256, 256, 1])).numpy()
    assert words.dtype == np.uint32
    for b in range(8):                                    # a bijection of the index
        assert len(np.unique(words[b])) == words[b].size
    flat = words.reshape(-1)
    for shift in (24, 16, 8, 0):                          # each byte uniform (chi-square)
        counts = np.bincount((flat >> np.uint32(shift)) & np.uint32(255), minlength=256)
        assert stats.chisquare(counts).pvalue > 1e-4, shift
    u = (flat >> np.uint32(8)).astype(np.float64) / 2 ** 24
    n = u.size
    # neighbouring elements, and the same element of two pairs, are uncorrelated
    assert abs(np.corrcoef(u[:-1], u[1:])[0, 1]) < 5 / np.sqrt(n)
    per_pair = u.reshape(8, -1)
    assert abs(np.corrcoef(per_pair[0], per_pair[1])[0, 1]) < 5 / np.sqrt(per_pair.shape[1])
    other = M.random_words(SEED + 1, tf.constant([8, 256, 256, 1])).numpy()
    assert np.mean(other == words) < 1e-3


def test_word_uniform_on_the_24_bit_grid_and_ks():
    u = M.word_uniform(SEED, tf.constant([4, 128, 128, 1])).numpy().ravel()
    assert u.min() >= 0.0 and u.max() < 1.0
    np.testing.assert_array_equal(u * 2 ** 24, np.floor(u * 2 ** 24))
    assert stats.kstest(u, "uniform").pvalue > 1e-3


@pytest.mark.parametrize("jit", [False, True])
def test_word_normal_is_standard_normal_ks(jit):
    f = tf.function(M.word_normal, jit_compile=True) if jit else M.word_normal
    z = f(SEED, tf.constant([16, 128, 128, 1])).numpy().ravel().astype(np.float64)
    assert np.all(np.isfinite(z)) and np.abs(z).max() < 5.6
    assert stats.kstest(z, "norm").pvalue > 1e-3
    assert abs(z.mean()) < 5 / np.sqrt(z.size)
    assert abs(z.std() - 1.0) < 0.01
    # tails: P(|z| > 3) = 0.0027
    tail = np.mean(np.abs(z) > 3.0)
    assert abs(tail - 2 * stats.norm.sf(3.0)) < 5 * np.sqrt(0.0027 / z.size)


@pytest.mark.parametrize("jit", [False, True])
def test_bernoulli_keeps_the_probability(jit):
    probs = np.array([0.0, 1e-3, 0.1, 0.37, 0.5, 0.9, 1.0], np.float32)
    fn = tf.function(M.bernoulli, jit_compile=True) if jit else M.bernoulli
    mask = fn(SEED, tf.constant([len(probs), 300, 300]), tf.constant(probs)).numpy()
    assert set(np.unique(mask)) <= {0.0, 1.0}
    n = 300 * 300
    freq = mask.reshape(len(probs), -1).mean(1)
    assert freq[0] == 0.0 and freq[-1] == 1.0
    sd = np.sqrt(probs * (1 - probs) / n)
    assert np.all(np.abs(freq - probs) <= 5 * sd + 1e-7), (freq, probs)


def test_noisy_mixup_noise_is_gaussian_with_noise_std():
    x1 = np.zeros((64, 32, 32, 3), np.float32)
    x2 = np.ones((64, 32, 32, 3), np.float32)
    x = np.concatenate([x1, x2])
    y = np.eye(128, dtype=np.float32)
    out, lab = mix_batch(x, y, "noisy_mixup", seed=5, pairing="reverse", noise_std=0.02)
    w = 1.0 - out.numpy()[:64]
    lam = lab.numpy()[:64, :64].diagonal()
    inner = (lam > 0.2) & (lam < 0.8)                     # clipping never reached
    noise = (w[inner, :, :, 0] - lam[inner, None, None]).ravel() / 0.02
    assert stats.kstest(noise.astype(np.float64), "norm").pvalue > 1e-3


@pytest.mark.parametrize("method", ["bc_plus", "vh_bc_plus", "random_pixels"])
def test_batch_mode_shared_statistics_equal_recomputed(method):
    """Batch mode gathers x2's per-image statistics from x1's (x2 = x1[partner])."""
    rng = np.random.default_rng(0)
    x1 = tf.constant(rng.uniform(size=(16, 8, 8, 3)).astype(np.float32) * 255.0)
    y1 = tf.one_hot(tf.range(16), 16)
    partner = tf.constant(rng.permutation(16).astype(np.int32))
    x2, y2 = tf.gather(x1, partner), tf.gather(y1, partner)
    names, full = resolve(method, {})
    a = mix_pairs(x1, y1, x2, y2, names, full, SEED, partner=partner)
    b = mix_pairs(x1, y1, x2, y2, names, full, SEED)
    np.testing.assert_allclose(a[0].numpy(), b[0].numpy(), rtol=1e-5, atol=1e-3)
    np.testing.assert_allclose(a[1].numpy(), b[1].numpy(), atol=1e-6)


def test_pair_mode_multi_batch_calls_keep_pairing_batches_and_cardinality():
    n = 10
    x = np.arange(n, dtype=np.float32).reshape(n, 1, 1, 1) * np.ones((1, 4, 4, 1), np.float32)
    ds = tf.data.Dataset.from_tensor_slices((x, np.arange(n)))
    for per_call in (3, 12, None):          # one batch per call, 4 per call, automatic
        out = mix_dataset(ds, "vertical_concat", seed=0, num_classes=n, batch_size=2,
                          pairs_per_call=per_call, jit_compile=False)
        assert out.cardinality().numpy() == 3   # 10 examples -> 5 pairs -> batches 2, 2, 1
        batches = list(out)
        assert [int(b[0].shape[0]) for b in batches] == [2, 2, 1]
        xm = np.concatenate([b[0].numpy() for b in batches])
        ym = np.concatenate([b[1].numpy() for b in batches])
        for i in range(n // 2):
            a, b = 2 * i, 2 * i + 1
            assert set(np.nonzero(ym[i])[0]) <= {a, b}
            assert set(np.unique(xm[i])) <= {float(a), float(b)}


def test_pair_mode_pairs_per_call_validation():
    ds = tf.data.Dataset.from_tensor_slices((np.zeros((4, 2, 2, 1), np.float32), np.arange(4)))
    with pytest.raises(ValueError, match="pairs_per_call"):
        mix_dataset(ds, "mixup", seed=0, num_classes=4, pairs_per_call=0)


@pytest.mark.parametrize("partner", [False, True])
def test_vh_bc_plus_row_column_statistics_equal_the_concatenations_std(partner):
    """VH-BC+ computes sigma of both concatenations from per-row/column sums; check it
    against the definition (std of the materialized concatenations, float64)."""
    from tf_dlthesis.augment import methods as MM
    rng = np.random.default_rng(1)
    b, h, w, c = 6, 7, 9, 3
    x1 = rng.uniform(0, 255, (b, h, w, c)).astype(np.float32)
    x2 = rng.uniform(0, 255, (b, h, w, c)).astype(np.float32)
    if partner:
        perm = rng.permutation(b).astype(np.int32)
        x2 = x1[perm]
    y = np.eye(b, dtype=np.float32)
    names, full = resolve("vh_bc_plus", {})
    out, _ = mix_pairs(tf.constant(x1), tf.constant(y), tf.constant(x2), tf.constant(y), names,
                       full, SEED, partner=tf.constant(perm) if partner else None)
    # the plan's own draws (same seed derivation as mix_pairs for one method)
    plan_seed = tf.unstack(tf.random.experimental.stateless_split(SEED, num=2, alg="philox"))[1]
    s1, s2, s3 = MM._split(plan_seed, 3)
    top = MM._vertical(s1, b, h, 1.0).numpy()[:, :, None, None].astype(np.float64)
    left = MM._horizontal(s2, b, w, 1.0).numpy()[:, None, :, None].astype(np.float64)
    lam = MM._beta(s3, b, 1.0).numpy().astype(np.float64)[:, None, None, None]
    a = x1 - x1.astype(np.float64).mean(axis=(1, 2, 3), keepdims=True)
    d = x2 - x2.astype(np.float64).mean(axis=(1, 2, 3), keepdims=True)
    vert, horiz = top * a + (1 - top) * d, left * a + (1 - left) * d
    sv = vert.std(axis=(1, 2, 3), keepdims=True) + 1e-3
    sh = horiz.std(axis=(1, 2, 3), keepdims=True) + 1e-3
    p = lam * sh / (lam * sh + (1 - lam) * sv)
    weight = p * top + (1 - p) * left
    expect = (weight * a + (1 - weight) * d) / np.sqrt(p ** 2 + (1 - p) ** 2)
    np.testing.assert_allclose(out.numpy(), expect, rtol=1e-4, atol=1e-2)
