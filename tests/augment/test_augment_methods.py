"""Per-method correctness of tf_dlthesis.augment against the thesis's definitions."""

import numpy as np
import pytest
import tensorflow as tf

from tf_dlthesis.augment import METHODS, mix_batch, mix_pair

NON_LINEAR = ("vertical_concat", "horizontal_concat", "mixed_concat", "random_2x2",
              "random_square", "random_column_interval", "random_row_interval", "random_rows",
              "random_columns", "random_pixels", "random_elements")
B, H, W, C = 32, 8, 12, 3           # non-square on purpose


def _distinct_pair(seed=0):
    rng = np.random.default_rng(seed)
    x1 = rng.uniform(0.0, 0.5, (B, H, W, C)).astype(np.float32)
    x2 = rng.uniform(0.5, 1.0, (B, H, W, C)).astype(np.float32)
    return x1, x2


def _mix_pairs_reverse(method, x1, x2, seed=7, **params):
    """Mix x1[b] with x2[b] via mix_batch(reverse) on the concatenation [x1; x2[::-1]]."""
    x = np.concatenate([x1, x2[::-1]])
    y = np.eye(2 * B, dtype=np.float32)
    xm, ym = mix_batch(x, y, method, seed=seed, pairing="reverse", **params)
    return xm.numpy()[:B], ym.numpy()[:B, :B].diagonal().copy(), ym.numpy()[:B]


@pytest.mark.parametrize("method", NON_LINEAR)
def test_every_element_from_x1_or_x2_and_label_is_realised_fraction(method):
    x1, x2 = _distinct_pair()
    out, lam1, y = _mix_pairs_reverse(method, x1, x2)
    from_x1 = out == x1
    if method in ("random_square", "random_column_interval", "random_row_interval"):
        from_x2 = np.isin(out, x2)           # x2 content comes from a shifted region
    else:
        from_x2 = out == x2
    assert np.all(from_x1 | from_x2), method
    np.testing.assert_allclose(lam1, from_x1.mean(axis=(1, 2, 3)), atol=1e-6)
    np.testing.assert_allclose(y.sum(1) + 0 * lam1, 1.0, atol=1e-6)
    assert 0.0 < lam1.mean() < 1.0


def _weights(method, seed=3, **params):
    """Weight of x1 per element, read off by mixing zeros (x1) with ones (x2)."""
    x1 = np.zeros((B, H, W, C), np.float32)
    x2 = np.ones((B, H, W, C), np.float32)
    out, lam1, _ = _mix_pairs_reverse(method, x1, x2, seed=seed, **params)
    return 1.0 - out, lam1


def test_vertical_and_horizontal_concat_are_prefix_cuts():
    w, lam = _weights("vertical_concat")
    for b in range(B):
        rows = w[b, :, 0, 0]
        cut = int(rows.sum())
        np.testing.assert_array_equal(rows, np.r_[np.ones(cut), np.zeros(H - cut)])  # Eq. 2.5
        assert np.all(w[b] == rows[:, None, None])
        assert lam[b] == pytest.approx(cut / H)
    w, lam = _weights("horizontal_concat")
    for b in range(B):
        cols = w[b, 0, :, 0]
        cut = int(cols.sum())
        np.testing.assert_array_equal(cols, np.r_[np.ones(cut), np.zeros(W - cut)])  # Eq. 2.6
        assert lam[b] == pytest.approx(cut / W)


def test_mixed_concat_top_left_and_bottom_right_from_x1():
    w, lam = _weights("mixed_concat")
    for b in range(B):
        m = w[b, :, :, 0]
        # find the cuts: x1 occupies top-left a x c and bottom-right.
        for a in range(H + 1):
            for c in range(W + 1):
                r, k = np.meshgrid(np.arange(H), np.arange(W), indexing="ij")
                expect = ((r < a) == (k < c)).astype(np.float32)
                if np.array_equal(m, expect):
                    fa, fc = a / H, c / W
                    assert lam[b] == pytest.approx(fa * fc + (1 - fa) * (1 - fc), abs=1e-6)
                    break
            else:
                continue
            break
        else:
            pytest.fail(f"pair {b}: not a mixed-concat pattern:\n{m}")


def test_random_2x2_grid_lines_in_middle_half_and_cells_binary():
    w, lam = _weights("random_2x2", seed=11)
    bh, bw = round(0.25 * H), round(0.25 * W)
    seen = set()
    for b in range(B):
        m = w[b, :, :, 0]
        row_changes = np.nonzero(np.any(m[1:] != m[:-1], axis=1))[0] + 1
        col_changes = np.nonzero(np.any(m[:, 1:] != m[:, :-1], axis=0))[0] + 1
        assert len(row_changes) <= 1 and len(col_changes) <= 1
        for cut in row_changes:
            assert bh <= cut <= H - bh
        for cut in col_changes:
            assert bw <= cut <= W - bw
        seen.add(tuple(np.unique(m)))
        assert lam[b] == pytest.approx(m.mean(), abs=1e-6)
    assert (0.0, 1.0) in seen


@pytest.mark.parametrize("n", [8, 12, 32])
def test_random_2x2_grid_lines_reach_both_ends_of_the_middle_half(n):
    """Sec. 2.3.3: "the intersection lines of the grid occur in the middle p fraction of the
    image". With p = 0.5 a line after row k is allowed for n/4 <= k <= 3n/4, both ends: the
    range is symmetric under a flip (k <-> n - k). It used to stop one short (8..23 of 32)."""
    count = 3000
    x = np.zeros((count, n, n, 1), np.float32)
    x[::2] = 1.0                                   # reverse pairing mixes a 1-image with a 0-image
    y = np.eye(2, dtype=np.float32)[np.arange(count) % 2]
    out = mix_batch(x, y, "random_2x2", seed=3, pairing="reverse")[0].numpy()[..., 0]
    rows, cols = set(), set()
    for m in out:
        rows.update((np.nonzero(np.any(m[1:] != m[:-1], axis=1))[0] + 1).tolist())
        cols.update((np.nonzero(np.any(m[:, 1:] != m[:, :-1], axis=0))[0] + 1).tolist())
    lo = round(0.25 * n)
    assert rows == cols == set(range(lo, n - lo + 1))


def test_vh_mixup_matches_eq_2_7():
    w, lam = _weights("vh_mixup", seed=5)
    for b in range(B):
        m = w[b, :, :, 0]
        assert lam[b] == pytest.approx(m.mean(), abs=1e-5)
        vals = np.unique(np.round(m, 5))
        # top-left 1, bottom-right 0, top-right lam3, bottom-left 1 - lam3.
        if m[0, -1] != m[-1, 0] and m[0, 0] == 1.0 and m[-1, -1] == 0.0:
            assert m[0, -1] + m[-1, 0] == pytest.approx(1.0, abs=1e-6)
        assert len(vals) <= 4


def test_random_square_patch_is_a_square_region_of_x2():
    x1 = np.zeros((B, H, W, C), np.float32)
    x2 = np.arange(B * H * W * C, dtype=np.float32).reshape(B, H, W, C) + 1.0
    out, lam, _ = _mix_pairs_reverse("random_square", x1, x2, seed=2, size=4)
    moved = 0
    for b in range(B):
        inside = out[b, :, :, 0] != 0
        rs, cs = np.nonzero(inside)
        h, w = rs.max() - rs.min() + 1, cs.max() - cs.min() + 1
        assert inside.sum() == h * w and h <= 4 and w <= 4         # clipped square
        patch = out[b, rs.min():rs.max() + 1, cs.min():cs.max() + 1]
        # the patch is a contiguous h x w region of x2[b]
        r0, c0 = np.argwhere(x2[b, :, :, 0] == patch[0, 0, 0])[0]
        np.testing.assert_array_equal(patch, x2[b, r0:r0 + h, c0:c0 + w])
        moved += (r0, c0) != (rs.min(), cs.min())
        assert lam[b] == pytest.approx(1 - h * w / (H * W), abs=1e-6)
    assert moved > 0          # source region drawn at random, not the same place


def test_random_square_default_size_scales_with_image():
    w, lam = _weights("random_square", seed=4)
    sides = [int(np.sqrt((1 - w[b, :, :, 0]).sum())) for b in range(B)]
    assert max(sides) <= 4 and max((1 - w[:, :, :, 0]).sum(axis=(1, 2))) == 16  # 0.5*min(8,12)


@pytest.mark.parametrize("method,axis", [("random_column_interval", 2),
                                         ("random_row_interval", 1)])
def test_interval_is_one_contiguous_nonempty_run(method, axis):
    w, lam = _weights(method, seed=9, source="same")
    n = w.shape[axis]
    for b in range(B):
        line = w[b, :, 0, 0] if axis == 1 else w[b, 0, :, 0]
        hole = np.nonzero(line == 0)[0]
        assert len(hole) >= 1 and np.all(np.diff(hole) == 1)
        assert lam[b] == pytest.approx(1 - len(hole) / n)


@pytest.mark.parametrize("method,shape", [("random_rows", (H, 1, 1)), ("random_columns", (1, W, 1)),
                                          ("random_pixels", (H, W, 1))])
def test_random_masks_have_the_right_granularity(method, shape):
    w, lam = _weights(method, seed=12)
    for b in range(B):
        m = w[b]
        assert set(np.unique(m)) <= {0.0, 1.0}
        ref = m[: shape[0], : shape[1], : shape[2]]
        np.testing.assert_array_equal(m, np.broadcast_to(ref, m.shape))
        assert lam[b] == pytest.approx(m.mean(), abs=1e-6)
    w, _ = _weights("random_elements", seed=12)
    assert np.any(w[..., 0] != w[..., 1])           # channels sampled separately


def test_mixup_is_eq_2_3():
    x1, x2 = _distinct_pair(1)
    out, lam, _ = _mix_pairs_reverse("mixup", x1, x2, seed=3)
    expect = lam[:, None, None, None] * x1 + (1 - lam[:, None, None, None]) * x2
    np.testing.assert_allclose(out, expect, atol=1e-6)


def test_noisy_mixup_weights_are_clipped_noise_around_lambda():
    w, lam = _weights("noisy_mixup", seed=6, noise_std=0.1)
    assert w.min() >= 0.0 and w.max() <= 1.0
    assert np.all(w[..., 0:1] == w)                      # per pixel, shared by channels
    inner = (lam > 0.3) & (lam < 0.7)
    dev = w[inner] - lam[inner, None, None, None]
    assert 0.07 < dev.std() < 0.13
    np.testing.assert_allclose(w[inner].mean(axis=(1, 2, 3)), lam[inner], atol=0.05)
    _, lam_r = _weights("noisy_mixup", seed=6, noise_std=0.1, noisy_label="realised")
    np.testing.assert_allclose(lam_r, w.mean(axis=(1, 2, 3)), atol=1e-6)


def _np_bc_plus(x1, x2, lam, eps=1e-3):
    a = x1 - x1.mean()
    b = x2 - x2.mean()
    s1, s2 = a.std() + eps, b.std() + eps
    p = 1.0 / (1.0 + (s1 / s2) * (1.0 - lam) / lam)          # Eq. 2.4
    return (p * a + (1 - p) * b) / np.sqrt(p ** 2 + (1 - p) ** 2)


def test_bc_plus_is_eq_2_4_with_label_lambda():
    x1, x2 = _distinct_pair(2)
    out, lam, _ = _mix_pairs_reverse("bc_plus", x1, x2, seed=4)
    for b in range(B):
        np.testing.assert_allclose(out[b], _np_bc_plus(x1[b].astype(np.float64),
                                                       x2[b].astype(np.float64), lam[b]),
                                   atol=2e-5)


@pytest.mark.parametrize("method", ["bc_plus", "vh_bc_plus"])
def test_bc_plus_family_finite_on_constant_images(method):
    x1 = np.full((B, H, W, C), 0.2, np.float32)
    x2 = np.full((B, H, W, C), 0.9, np.float32)
    out, lam, _ = _mix_pairs_reverse(method, x1, x2)
    assert np.all(np.isfinite(out)) and np.all(np.isfinite(lam))
    # Zero-meaned *before* concatenation (Sec. 2.3.3): constant inputs vanish entirely.
    np.testing.assert_allclose(out, 0.0, atol=1e-6)


def test_vh_bc_plus_label_and_scale():
    x1, x2 = _distinct_pair(3)
    out, lam, _ = _mix_pairs_reverse("vh_bc_plus", x1, x2, seed=8)
    assert np.all((lam >= 0) & (lam <= 1))
    # p-weighted combination of centred inputs scaled by 1/sqrt(p^2+(1-p)^2) >= 1:
    centred_max = np.maximum(np.abs(x1 - x1.mean(axis=(1, 2, 3), keepdims=True)),
                             np.abs(x2 - x2.mean(axis=(1, 2, 3), keepdims=True))).max()
    assert np.abs(out).max() <= np.sqrt(2) * centred_max + 1e-5


@pytest.mark.parametrize("method", METHODS)
def test_uint8_and_sparse_labels_and_pair_api(method):
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (4, 6, 5, 1), dtype=np.uint8)
    y = np.array([0, 1, 2, 1])
    xm, ym = mix_batch(x, y, method, seed=[1, 2], num_classes=3)
    assert xm.dtype == tf.float32 and xm.shape == (4, 6, 5, 1)
    np.testing.assert_allclose(ym.numpy().sum(1), 1.0, atol=1e-6)
    xp, yp = mix_pair(x[0], y[0], x[1], y[1], method, seed=3, num_classes=3)
    assert xp.shape == (6, 5, 1) and yp.shape == (3,)
    assert float(yp[0]) + float(yp[1]) == pytest.approx(1.0, abs=1e-6)


def test_mix_pair_equals_mix_batch_core_and_is_seeded():
    x1, x2 = _distinct_pair(4)
    a = mix_pair(x1[0], [1.0, 0.0], x2[0], [0.0, 1.0], "vh_mixup", seed=5)
    b = mix_pair(x1[0], [1.0, 0.0], x2[0], [0.0, 1.0], "vh_mixup", seed=5)
    c = mix_pair(x1[0], [1.0, 0.0], x2[0], [0.0, 1.0], "vh_mixup", seed=6)
    np.testing.assert_array_equal(a[0], b[0])
    assert not np.array_equal(a[0], c[0])


def test_method_list_draws_one_method_per_pair():
    w, _ = _weights(["vertical_concat", "horizontal_concat"], seed=1)
    kinds = set()
    for b in range(B):
        m = w[b, :, :, 0]
        rows_const = np.all(m == m[:, :1])
        cols_const = np.all(m == m[:1, :])
        assert rows_const or cols_const
        if not (rows_const and cols_const):
            kinds.add("v" if rows_const else "h")
    assert kinds == {"v", "h"}


def test_permute_pairing_labels_mix_two_examples():
    x = np.random.default_rng(0).uniform(size=(16, 4, 4, 1)).astype(np.float32)
    y = np.eye(16, dtype=np.float32)
    _, ym = mix_batch(x, y, "mixup", seed=0)
    ym = ym.numpy()
    assert np.all((ym > 0).sum(1) <= 2)
    np.testing.assert_allclose(ym.sum(1), 1.0, atol=1e-6)


def test_works_in_graph_and_xla_with_tensor_seed():
    """The contract the robustness chapter relies on (LRM trains on VH-mixup inputs)."""
    x = tf.random.stateless_uniform([8, 8, 8, 3], [0, 0])
    y = tf.one_hot(tf.range(8) % 4, 4)

    @tf.function
    def graph_step(seed):
        return mix_batch(x, y, "vh_mixup", seed=seed)

    @tf.function(jit_compile=True)
    def xla_step(seed):
        return mix_batch(x, y, "vh_mixup", seed=seed)

    eager = mix_batch(x, y, "vh_mixup", seed=tf.constant([3, 4]))
    graph = graph_step(tf.constant([3, 4]))
    np.testing.assert_array_equal(graph[0], eager[0])
    np.testing.assert_array_equal(graph[1], eager[1])
    # XLA's Philox kernel orders its stream differently from TF's: deterministic, not equal.
    first, again = xla_step(tf.constant([3, 4])), xla_step(tf.constant([3, 4]))
    np.testing.assert_array_equal(first[0], again[0])
    np.testing.assert_allclose(first[1].numpy().sum(1), 1.0, atol=1e-6)
    other = xla_step(tf.constant([3, 5]))
    assert not np.allclose(other[0], first[0])


# --- issue 11 (interval source) and issue 12 (std_floor) ------------------------------

@pytest.mark.parametrize("method", ["random_column_interval", "random_row_interval"])
def test_interval_default_takes_x2_from_the_same_position(method):
    """Sec. 2.3.3 presents the interval methods as generalized concatenations: x2's part stays in place."""
    x1 = np.zeros((B, H, W, C), np.float32)
    x2 = np.arange(B * H * W * C, dtype=np.float32).reshape(B, H, W, C) + 1.0
    out, lam, _ = _mix_pairs_reverse(method, x1, x2, seed=5)
    from_x2 = out != 0
    assert from_x2.any()
    np.testing.assert_array_equal(out[from_x2], x2[from_x2])          # same positions
    np.testing.assert_allclose(lam, 1 - from_x2.mean(axis=(1, 2, 3)), atol=1e-6)
    moved, _, _ = _mix_pairs_reverse(method, x1, x2, seed=5, source="random")
    assert np.any(moved[moved != 0] != x2[moved != 0])               # the option still shifts the region
    same, _, _ = _mix_pairs_reverse(method, x1, x2, seed=5, source="same")
    np.testing.assert_array_equal(same, out)


def test_random_square_still_defaults_to_a_random_region():
    from tf_dlthesis.augment import default_params
    assert default_params("random_square")["source"] == "random"
    assert default_params("random_row_interval")["source"] == "same"
    assert default_params("random_column_interval")["source"] == "same"


def test_source_error_message_names_both_options():
    with pytest.raises(ValueError, match="'same'.*'random'"):
        mix_batch(np.zeros((2, 4, 4, 1), np.float32), np.eye(2, dtype=np.float32), "random_row_interval",
                  seed=0, source="elsewhere")


def test_bc_plus_std_floor_is_added_to_sigma():
    x1, x2 = _distinct_pair(4)
    out, lam, _ = _mix_pairs_reverse("bc_plus", x1, x2, seed=4, std_floor=0.5)
    for b in range(4):
        np.testing.assert_allclose(out[b], _np_bc_plus(x1[b].astype(np.float64), x2[b].astype(np.float64),
                                                       lam[b], eps=0.5), atol=2e-5)
    from tf_dlthesis.augment import default_params
    assert default_params("bc_plus") == {"alpha": 1.0, "std_floor": 1e-3}
    assert "epsilon" not in default_params("vh_bc_plus")


@pytest.mark.parametrize("method", ["bc_plus", "vh_bc_plus"])
def test_deprecated_epsilon_alias_of_std_floor(method):
    x1, x2 = _distinct_pair(5)
    new, _, _ = _mix_pairs_reverse(method, x1, x2, seed=2, std_floor=0.05)
    with pytest.warns(DeprecationWarning, match="std_floor"):
        old, _, _ = _mix_pairs_reverse(method, x1, x2, seed=2, epsilon=0.05)
    np.testing.assert_array_equal(old, new)
    with pytest.raises(ValueError, match="not both"):
        _mix_pairs_reverse(method, x1, x2, std_floor=0.05, epsilon=0.1)
    with pytest.raises(ValueError, match="std_floor"):
        _mix_pairs_reverse(method, x1, x2, std_floor=0.0)
