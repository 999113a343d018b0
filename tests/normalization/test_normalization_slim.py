"""TF-Slim batch_norm, example_weighted nets and patch_graph_def on resnet_v1_50 / resnet_v2_50."""

import numpy as np
import pytest
import tensorflow as tf

slim_mod = pytest.importorskip("tf_dlthesis.normalization.slim")
tf_slim = pytest.importorskip("tf_slim")
from tf_slim.nets import resnet_v1, resnet_v2  # noqa: E402

SIZE = 32
NETS = {"resnet_v1_50": (resnet_v1, resnet_v1.resnet_v1_50, resnet_v1.resnet_arg_scope),
        "resnet_v2_50": (resnet_v2, resnet_v2.resnet_v2_50, resnet_v2.resnet_arg_scope)}


def _build(net, weighted=False):
    module, fn, scope = NETS[net]
    graph = tf.Graph()
    with graph.as_default():
        images = tf.compat.v1.placeholder(tf.float32, [None, SIZE, SIZE, 3], name="images")
        alpha = tf.compat.v1.placeholder_with_default(0.0, [], name="alpha")
        ctx = slim_mod.example_weighted(alpha) if weighted else _null()
        with ctx, tf_slim.arg_scope(scope()):
            logits, _ = fn(images, num_classes=5, is_training=False, global_pool=True)
        logits = tf.identity(tf.reshape(logits, [-1, 5]), name="logits")
        # Randomize BN statistics / betas so alpha visibly matters.
        assigns = []
        rng = np.random.default_rng(0)
        for v in tf.compat.v1.global_variables():
            if "BatchNorm" in v.name:
                shape = v.shape.as_list()
                if "moving_variance" in v.name:
                    val = rng.uniform(0.5, 2.0, shape)
                elif "gamma" in v.name:
                    val = rng.uniform(0.5, 1.5, shape)
                else:
                    val = rng.normal(0, 0.2, shape)
                assigns.append(v.assign(val.astype(np.float32)))
        init = tf.compat.v1.global_variables_initializer()
        saver = tf.compat.v1.train.Saver()
    return graph, images, logits, init, assigns, saver


class _null:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


@pytest.mark.parametrize("net", ["resnet_v1_50", pytest.param("resnet_v2_50", marks=pytest.mark.slow)])
def test_checkpoint_restores_and_alpha(net, tmp_path):
    x = np.random.default_rng(1).uniform(size=(2, SIZE, SIZE, 3)).astype("float32")
    graph, images, logits, init, assigns, saver = _build(net)
    with tf.compat.v1.Session(graph=graph) as sess:
        sess.run(init)
        sess.run(assigns)
        stock = sess.run(logits, {images: x})
        ckpt = saver.save(sess, str(tmp_path / "model.ckpt"))
        frozen = tf.compat.v1.graph_util.convert_variables_to_constants(sess, graph.as_graph_def(), ["logits"])
    outs = {}
    g2, im2, lg2, _, _, saver2 = _build(net, weighted=True)  # alpha is a placeholder: one graph
    with tf.compat.v1.Session(graph=g2) as sess:
        saver2.restore(sess, ckpt)  # TF-Slim variable names: the stock checkpoint restores
        for alpha in (0.0, 0.3):
            outs[alpha] = sess.run(lg2, {im2: x, "alpha:0": alpha})
    scale = np.abs(stock).max()  # logits of a random 50-layer net reach ~100: compare relative to that
    assert np.abs(outs[0.0] - stock).max() <= 1e-5 * scale
    assert np.abs(outs[0.3] - stock).max() > 1e-3

    assert any(n.op.startswith("FusedBatchNorm") for n in frozen.node)
    patched = slim_mod.patch_graph_def(frozen, 0.3)
    assert not any(n.op.startswith("FusedBatchNorm") for n in patched.node)
    assert np.abs(_run_frozen(patched, x) - outs[0.3]).max() <= 1e-5 * scale
    if net == "resnet_v2_50":
        assert np.abs(_run_frozen(slim_mod.patch_graph_def(frozen, 0.0), x) - stock).max() <= 1e-5 * scale


def _run_frozen(graph_def, x):
    g = tf.Graph()
    with g.as_default():
        tf.graph_util.import_graph_def(graph_def, name="")
    with tf.compat.v1.Session(graph=g) as sess:
        return sess.run("logits:0", {"images:0": x})


def test_batch_norm_as_normalizer_fn_in_arg_scope():
    graph = tf.Graph()
    x = np.random.default_rng(2).normal(size=(3, 4, 4, 2)).astype("float32")
    with graph.as_default():
        inp = tf.constant(x)
        with tf_slim.arg_scope([tf_slim.batch_norm], is_training=False, scale=True):
            with tf_slim.arg_scope([tf_slim.conv2d], normalizer_fn=slim_mod.batch_norm,
                                   normalizer_params={"example_weight": 1.0}, activation_fn=None):
                net = tf_slim.conv2d(inp, 3, 1, scope="conv")
        names = sorted(v.op.name for v in tf.compat.v1.global_variables())
        init = tf.compat.v1.global_variables_initializer()
        kernel = [v for v in tf.compat.v1.global_variables() if v.op.name == "conv/weights"][0]
    assert names == ["conv/BatchNorm/beta", "conv/BatchNorm/gamma", "conv/BatchNorm/moving_mean",
                     "conv/BatchNorm/moving_variance", "conv/weights"]
    with tf.compat.v1.Session(graph=graph) as sess:
        sess.run(init)
        out, w = sess.run([net, kernel])
    pre = np.einsum("nhwc,cd->nhwd", x.astype(np.float64), w[0, 0])
    ref = (pre - pre.mean((1, 2), keepdims=True)) / np.sqrt(pre.var((1, 2), keepdims=True) + 0.001)
    np.testing.assert_allclose(out, ref, rtol=1e-4, atol=1e-4)  # alpha = 1: per-example statistics


def test_graph_def_errors():
    g = tf.Graph()
    with g.as_default():
        a = tf.compat.v1.placeholder(tf.float32, [None, 2], name="a")
        tf.identity(a * 2.0, name="out")
    with pytest.raises(ValueError, match="folded"):
        slim_mod.patch_graph_def(g.as_graph_def(), 0.1)
    with pytest.raises(ValueError):
        slim_mod.patch_graph_def(g.as_graph_def(), 1.5)
    with pytest.raises(TypeError):
        slim_mod.patch_graph_def("graph", 0.1)
