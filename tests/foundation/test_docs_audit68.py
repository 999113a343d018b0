"""What users read and run first, as found by the 2026-12-07 (68th) audit: the notebooks and the benchmarks.

Each test fails on the files as they were before the audit.
"""

import importlib
import pathlib
import sys

import numpy as np
import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]
NOTEBOOKS = ROOT / "notebooks"
BENCHMARKS = ROOT / "benchmarks"


def _code_cells(name):
    import nbformat

    notebook = nbformat.read(NOTEBOOKS / name, as_version=4)
    return [cell.source for cell in notebook.cells if cell.cell_type == "code"]


def test_notebook_01_figure_2_2_shows_both_images_in_every_panel(monkeypatch):
    """Notebook 01's "Figure 2.2: one output of every method" called `plot_methods(a, b)`: at seed 0 its
    Rand. 2x2 panel was x1 unchanged (label weight 1.00) and its Rand. Rows panel x2 unchanged (0.00), so two
    methods seemed to do nothing. It now asks for the reproduce item's label weight (`FIGURE_LAM`)."""
    import matplotlib

    matplotlib.use("Agg")
    monkeypatch.setenv("TF_DLTHESIS_TINY", "1")
    cells = _code_cells("01_mixed_example.ipynb")
    namespace = {}
    exec(cells[0], namespace)                      # imports and the digits arrays
    [figure_cell] = [c for c in cells if "plot_methods" in c]
    exec(figure_cell, namespace)
    fig = namespace["fig"]
    axes = [ax for ax in fig.axes if ax.get_title()]
    arrays = [np.asarray(ax.get_images()[0].get_array(), np.float64) for ax in axes]
    x1, x2 = arrays[:2]
    assert np.abs(x1 - x2).mean() > 0.05
    assert len(axes) == 2 + len(namespace["augment"].METHODS)
    for ax, panel in zip(axes[2:], arrays[2:]):
        title = ax.get_title().replace("\n", " ")
        assert np.abs(panel - x1).mean() > 0.01, title
        assert np.abs(panel - x2).mean() > 0.01, title
    matplotlib.pyplot.close(fig)


@pytest.fixture
def benchmarks_on_path(monkeypatch):
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    yield
    for name in [m for m in sys.modules if m.startswith("bench_")]:
        sys.modules.pop(name, None)


def test_normalization_benchmark_times_ours_on_the_tf_keras_peers_own_net(benchmarks_on_path):
    """bench_normalization's only peer, tf_keras's Ghost BN / tf_keras BN, was timed on a 3-conv net while
    our Ghost BN / Keras BN was timed on a pre-activation ResNet, and the docstring said "on the same net":
    the two ratios, printed side by side (README's Chapter 4 table), were of different nets. Ours is now
    timed on the peer's net too, with the same initial weights, interleaved with the peer."""
    import keras
    import tensorflow as tf
    import tf_keras

    from tf_dlthesis.normalization import GhostBatchNormalization

    bench = importlib.import_module("bench_normalization")
    assert "on the same net" not in bench.__doc__
    ours = bench._three_conv_net(keras, lambda: GhostBatchNormalization(16), (8, 8, 3), 10)
    peer = bench._three_conv_net(tf_keras, lambda: tf_keras.layers.BatchNormalization(virtual_batch_size=16),
                                 (8, 8, 3), 10)
    assert len(ours.trainable_weights) == len(peer.trainable_weights) == 9
    for a, b in zip(ours.trainable_weights, peer.trainable_weights):   # same seeded initial weights
        np.testing.assert_array_equal(np.ravel(a), np.ravel(b))        # (tf_keras's ghost gamma is (1, 1, 1, 1, C))
    rng = np.random.default_rng(0)
    x = tf.constant(rng.uniform(size=(32, 8, 8, 3)).astype("float32"))
    y = tf.constant(rng.integers(0, 10, 32))
    rows = []
    times = bench._peer_part(rows, x, y, iters=1, repeats=1)
    assert set(times) == {"keras_bn", "ghost:16", "tfk_bn", "tfk_ghost16"}
    labels = [row[0] for row in rows]
    assert any("ghost:16" in label and "3-conv" in label for label in labels)
    assert any(label.startswith("peer: tf_keras") and "3-conv" in label for label in labels)


@pytest.mark.parametrize("name", sorted(p.name for p in NOTEBOOKS.glob("*.ipynb")))
def test_notebook_first_cell_prints_no_tensorflow_banners(name, tmp_path):
    """Notebooks 01 and 03 imported TensorFlow / Keras before `tf_dlthesis`, so their first cells showed TF's
    C++ start-up banners (oneDNN, CUDA probing, CPU features, `failed call to cuInit`), which README's
    "Quiet by default" says the library hides when it is imported first. The first code cell, then one TF op,
    run here in a fresh interpreter with no logging settings of the user's."""
    import os
    import subprocess

    source = _code_cells(name)[0] + "\nimport tensorflow as _tf\n_ = (_tf.constant(1.0) + 1).numpy()\n"
    env = {k: v for k, v in os.environ.items() if k not in ("TF_CPP_MIN_LOG_LEVEL", "TF_DLTHESIS_VERBOSE")}
    env["TF_DLTHESIS_TINY"] = "1"
    env["PYTHONPATH"] = str(ROOT)
    out = subprocess.run([sys.executable, "-c", source], cwd=tmp_path, env=env, capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    for banner in ("oneDNN", "cuInit", "cpu_feature_guard", "cuda drivers"):
        assert banner not in out.stderr, out.stderr[-2000:]


def test_notebook_01_says_mixed_example_pairs_within_a_permuted_batch():
    """Notebook 01 said `MixedExample` "does the same" as `training_dataset(..., mix=MixStage(...))`, whose
    pairing it had just described as consecutive examples of the shuffled stream, each paired once per pass.
    The layer pairs each example with a partner drawn by a permutation of its own batch (checked here)."""
    import nbformat

    from tf_dlthesis.augment import MixedExample

    notebook = nbformat.read(NOTEBOOKS / "01_mixed_example.ipynb", as_version=4)
    [text] = [c.source for c in notebook.cells if c.cell_type == "markdown" and "`MixedExample`" in c.source
              and "MixStage" in c.source]
    assert "does the same" not in text and "permutation of its own batch" in text
    images = np.broadcast_to(np.arange(8, dtype="float32")[:, None, None, None], (8, 4, 4, 1))
    layer = MixedExample("mixup", seed=0, num_classes=8)
    partner = np.asarray(layer.get_random_transformation({"images": images, "labels": np.arange(8)},
                                                          training=True)["partner"])
    np.testing.assert_array_equal(np.sort(partner), np.arange(8))


def test_augment_benchmark_naive_peer_draws_lambda_from_an_explicit_seed(benchmarks_on_path):
    """bench_augment's naive per-pair mixup (the peer of pair mode) drew lambda with the stateful, unseeded
    `tf.random.uniform`, so two passes over the same pipeline mixed differently (and the draws depended on the
    parallel map's scheduling). It is now stateless from (seed, pair index), as ours is."""
    bench = importlib.import_module("bench_augment")
    naive = bench.pipelines(2 * bench.BATCH)["naive per-pair mixup"]
    first = [x.numpy() for x, _ in naive]
    second = [x.numpy() for x, _ in naive]
    assert len(first) == 2
    for a, b in zip(first, second):
        np.testing.assert_array_equal(a, b)
    (x1, _), (x2, _) = list(bench._source(2))          # the first pair: still lam * x1 + (1 - lam) * x2
    mixed, _ = next(iter(bench._naive_mixup(bench._source(2))))
    lam = float(np.median((mixed.numpy() - x2.numpy()) / (x1.numpy() - x2.numpy())))
    assert 0.0 < lam < 1.0
    np.testing.assert_allclose(mixed.numpy(), lam * x1.numpy() + (1 - lam) * x2.numpy(), atol=1e-4)
