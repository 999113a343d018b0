"""Chapter 4 experiment plumbing: the non-i.i.d. batches of Table 4.1 (thesis Sec. 4.4.4)."""

import numpy as np

from tf_dlthesis.experiments import chapter4


def _toy(n_per_class=40, classes=10):
    y = np.repeat(np.arange(classes), n_per_class).astype(np.int64)
    x = np.arange(len(y), dtype=np.float32).reshape(-1, 1, 1, 1)  # the value identifies the example
    return x, y


def test_non_iid_batches_are_fresh_every_epoch():
    # Regression: the Table 4.1 runs repeated one epoch's worth of batches
    # (`.repeat()`), so every epoch showed the same few class combinations.
    x, y = _toy()
    ds, steps = chapter4._non_iid_dataset(x, y, batch_size=16, epochs=3, seed=0)
    batches = list(ds.as_numpy_iterator())
    assert steps == len(x) // 16
    assert len(batches) == 3 * steps
    for bx, by in batches:
        assert bx.shape == (16, 1, 1, 1)
        # 4 draws of 4 examples each, every block from one class, labels matching the images.
        blocks = by.reshape(4, 4)
        assert np.all(blocks == blocks[:, :1])
        np.testing.assert_array_equal(y[bx.reshape(-1).astype(int)], by)
    first = [tuple(b[0].reshape(-1)) for b in batches[:steps]]
    second = [tuple(b[0].reshape(-1)) for b in batches[steps:2 * steps]]
    assert sum(a != b for a, b in zip(first, second)) >= steps - 1
    # Classes seen over one epoch's worth of draws cover more than a fixed set of 4 * steps.
    assert len({tuple(sorted(set(b[1]))) for b in batches}) > steps

