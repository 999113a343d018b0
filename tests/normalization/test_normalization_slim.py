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


def _fused_graph(x_shape, data_format, *, epsilon=1e-3, seed=0, training_node=False):
    """A graph ``out = fused_batch_norm(x)`` (inference) with random parameters; returns (GraphDef, params)."""
    rng = np.random.default_rng(seed)
    c = x_shape[1] if data_format.startswith("NC") else x_shape[-1]
    params = [rng.uniform(0.5, 1.5, c), rng.normal(0, 0.3, c), rng.normal(0, 0.5, c), rng.uniform(0.5, 2.0, c)]
    params = [p.astype("float32") for p in params]
    g = tf.Graph()
    with g.as_default():
        x = tf.compat.v1.placeholder(tf.float32, x_shape, name="x")
        y, _, _ = tf.compat.v1.nn.fused_batch_norm(x, *params, epsilon=epsilon, data_format=data_format,
                                                   is_training=False, name="bn")
        tf.identity(y, name="out")
        if training_node:
            t, _, _ = tf.compat.v1.nn.fused_batch_norm(x, params[0], params[1], epsilon=epsilon, is_training=True,
                                                       name="bn_train")
            tf.identity(t, name="out_train")
    return g, params


def _eq43(x, params, alpha, channel_axis, eps):
    """Thesis Eq. 4.3 in float64: per-example moments over the spatial axes blended with the moving ones."""
    x = x.astype(np.float64)
    shape = [1] * x.ndim
    shape[channel_axis] = -1
    scale, offset, mm, mv = (p.astype(np.float64).reshape(shape) for p in params)
    spatial = tuple(a for a in range(1, x.ndim) if a != channel_axis)
    mu_e, x2_e = x.mean(spatial, keepdims=True), (x ** 2).mean(spatial, keepdims=True)
    mu = alpha * mu_e + (1 - alpha) * mm
    var = alpha * x2_e + (1 - alpha) * (mv + mm ** 2) - mu ** 2
    return scale * (x - mu) / np.sqrt(var + eps) + offset


def _run(graph_def, fetch, x):
    g = tf.Graph()
    with g.as_default():
        tf.graph_util.import_graph_def(graph_def, name="")
    with tf.compat.v1.Session(graph=g) as sess:
        return sess.run(fetch, {"x:0": x})


@pytest.mark.parametrize("data_format, shape, channel_axis", [("NDHWC", (2, 3, 4, 5, 6), 4),
                                                              ("NCDHW", (2, 6, 3, 4, 5), 1),
                                                              ("NCHW", (2, 6, 4, 5), 1)])
def test_patch_graph_def_reduces_over_every_spatial_axis(data_format, shape, channel_axis):
    # 5-D (Conv3D) FusedBatchNormV3 nodes: the example's statistics span depth, height and width
    x = (np.random.default_rng(1).normal(size=shape) * 2 + 1).astype("float32")
    g, params = _fused_graph(shape, data_format)
    for alpha in (0.3, 1.0):
        out = _run(slim_mod.patch_graph_def(g.as_graph_def(), alpha), "out:0", x)
        np.testing.assert_allclose(out, _eq43(x, params, alpha, channel_axis, 1e-3), rtol=1e-4, atol=1e-4)


def test_patch_graph_def_rejects_an_unknown_data_format():
    g, _ = _fused_graph((2, 4, 4, 3), "NHWC")
    graph_def = g.as_graph_def()
    node = next(n for n in graph_def.node if n.name == "bn")
    node.attr["data_format"].s = b"NWC"
    with pytest.raises(ValueError, match="'bn'.*data_format 'NWC'"):
        slim_mod.patch_graph_def(graph_def, 0.5)


def test_patch_graph_def_reads_stripped_default_attrs_and_leaves_its_input_alone():
    # strip_default_attrs=True drops epsilon=1e-4, is_training=True and data_format="NHWC" (the op's defaults)
    x = (np.random.default_rng(2).normal(size=(4, 4, 4, 3)) * 2 + 1).astype("float32")
    g, params = _fused_graph(x.shape, "NHWC", epsilon=1e-4, training_node=True)
    with g.as_default():
        meta = tf.compat.v1.train.export_meta_graph(graph=g, strip_default_attrs=True)
    stripped = meta.graph_def
    bn = {n.name: n for n in stripped.node}
    assert not {"epsilon", "is_training", "data_format"} & set(bn["bn_train"].attr)  # the precondition
    assert not {"epsilon", "data_format"} & set(bn["bn"].attr) and "is_training" in bn["bn"].attr
    before = stripped.SerializeToString(deterministic=True)
    patched = slim_mod.patch_graph_def(stripped, 0.0)
    assert stripped.SerializeToString(deterministic=True) == before  # the input is not modified
    ops = {n.name: n.op for n in patched.node}
    assert ops["bn_train"].startswith("FusedBatchNorm") and ops["bn"] == "Identity"  # the training node stays
    # alpha = 0 equals TF's own FusedBatchNorm on the stripped graph (TF fills in epsilon = 1e-4)
    np.testing.assert_allclose(_run(patched, "out:0", x), _run(stripped, "out:0", x), rtol=1e-6, atol=1e-6)
    out = _run(slim_mod.patch_graph_def(stripped, 0.4), "out:0", x)
    np.testing.assert_allclose(out, _eq43(x, params, 0.4, 3, 1e-4), rtol=1e-4, atol=1e-4)


def test_patch_graph_def_alpha0_keeps_non_finite_values_in_place():
    x = np.random.default_rng(3).normal(size=(2, 3, 3, 2)).astype("float32")
    x[0, 1, 1, 0], x[1, 0, 2, 1] = np.inf, np.nan
    g, _ = _fused_graph(x.shape, "NHWC")
    out = _run(slim_mod.patch_graph_def(g.as_graph_def(), 0.0), "out:0", x)
    expected = _run(g.as_graph_def(), "out:0", x)  # TF's FusedBatchNorm
    assert np.isfinite(expected).sum() == x.size - 2
    np.testing.assert_allclose(out, expected, rtol=1e-6, atol=1e-6)


def test_slim_batch_norm_checks_numpy_and_string_alphas_and_collects_its_own_output():
    tf1 = tf.compat.v1
    with tf.Graph().as_default():
        x = tf1.placeholder(tf.float32, [2, 3, 3, 2])
        # before: np.float32(1.5) ran (NaN outputs), '0.1' failed only at Session.run
        with pytest.raises(ValueError, match="`example_weight` must be in"):
            slim_mod.batch_norm(x, is_training=False, example_weight=np.float32(1.5), scope="a")
        with pytest.raises(TypeError, match="example_weight='0.1'"):
            slim_mod.batch_norm(x, is_training=False, example_weight="0.1", scope="b")
        with pytest.raises(ValueError, match="`example_weight` must be in"):
            with slim_mod.example_weighted(np.float32(2.0)):
                pass
        y = slim_mod.batch_norm(x, is_training=False, example_weight=0.5, scope="bn", outputs_collections="ends")
        ends = tf_slim.utils.convert_collection_to_dict("ends")
        # before: the end point was the stock op's (alpha = 0) output, up to 3.9 away from the returned one
        assert list(ends) == ["bn"] and ends["bn"] is y
