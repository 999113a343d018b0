"""patch_model / set_example_weight / sweep_example_weight, weight decay and the App. A.1 bound."""

import re

import keras
import numpy as np
import pytest
import tensorflow as tf

from tf_dlthesis.normalization import (
    CenteredL2,
    ExampleWeightedGroupNormalization,
    GhostBatchNormalization,
    apply_normalization_weight_decay,
    measure_output_range,
    normalization_layers,
    output_bound,
    patch_model,
    set_example_weight,
    sweep_example_weight,
)


def _randomize_bn(model, seed=0):
    rng = np.random.default_rng(seed)
    for layer in model._flatten_layers():
        if isinstance(layer, keras.layers.BatchNormalization):
            c = layer.gamma.shape[0]
            layer.set_weights([rng.uniform(0.5, 1.5, c).astype("float32"), rng.normal(0, 0.1, c).astype("float32"),
                               rng.normal(0, 0.1, c).astype("float32"), rng.uniform(0.5, 2, c).astype("float32")])


@pytest.mark.parametrize("app", ["ResNet50", "MobileNetV2"])
def test_patch_keras_applications(app):
    base = getattr(keras.applications, app)(weights=None, input_shape=(32, 32, 3), classes=5,
                                            classifier_activation=None)
    _randomize_bn(base)
    x = np.random.default_rng(1).uniform(size=(2, 32, 32, 3)).astype("float32")
    patched = patch_model(base, 0.0)
    n_bn = sum(isinstance(l, keras.layers.BatchNormalization) for l in base._flatten_layers())
    assert len(normalization_layers(patched)) == n_bn
    assert not normalization_layers(base)  # the original is untouched
    np.testing.assert_allclose(patched(x, training=False).numpy(), base(x, training=False).numpy(),
                               rtol=1e-5, atol=1e-5)
    fn = tf.function(lambda v: patched(v, training=False))
    a = fn(x).numpy()
    assert set_example_weight(patched, 0.3) == n_bn
    b = fn(x).numpy()
    assert fn.experimental_get_tracing_count() == 1
    assert not np.allclose(a, b)


def test_patch_nested_sequential_in_functional():
    inner = keras.Sequential([keras.Input((6,)), keras.layers.Dense(5), keras.layers.BatchNormalization()],
                             name="inner")
    inputs = keras.Input((6,))
    out = keras.layers.Dense(3)(inner(inputs))
    model = keras.Model(inputs, keras.layers.BatchNormalization()(out))
    _randomize_bn(model, seed=3)
    x = np.random.default_rng(2).normal(size=(4, 6)).astype("float32")
    patched = patch_model(model, 0.0)
    assert len(normalization_layers(patched)) == 2
    np.testing.assert_allclose(patched(x).numpy(), model(x).numpy(), rtol=1e-6, atol=1e-6)
    for w_new, w_old in zip(patched.weights, model.weights):
        np.testing.assert_array_equal(w_new.numpy(), w_old.numpy())


def test_patch_batch_renorm_uses_moving_statistics():
    model = keras.Sequential([keras.Input((5,)), keras.layers.BatchNormalization(renorm=True)])
    x = np.random.default_rng(0).normal(size=(16, 5)).astype("float32") * 2 + 1
    model(x, training=True)
    patched = patch_model(model, 0.0)
    np.testing.assert_allclose(patched(x).numpy(), model(x).numpy(), rtol=1e-5, atol=1e-5)


def test_patch_group_normalization_alpha1_is_gn():
    model = keras.Sequential([keras.Input((4, 4, 8)), keras.layers.GroupNormalization(4)])
    x = np.random.default_rng(0).normal(size=(3, 4, 4, 8)).astype("float32")
    patched = patch_model(model, 1.0)
    assert isinstance(patched.layers[0], ExampleWeightedGroupNormalization)
    np.testing.assert_allclose(patched(x).numpy(), model(x).numpy(), rtol=1e-5, atol=1e-5)


class _Sub(keras.Model):
    def __init__(self):
        super().__init__()
        self.dense = keras.layers.Dense(3)
        self.bn = keras.layers.BatchNormalization()

    def call(self, x):
        return self.bn(self.dense(x))


def test_patch_errors():
    sub = _Sub()
    sub(np.zeros((1, 2), "float32"))
    with pytest.raises(ValueError, match="subclassed"):
        patch_model(sub, 0.1)
    inputs = keras.Input((2,))
    nested = keras.Model(inputs, keras.layers.Dense(2)(sub(inputs)))
    with pytest.raises(ValueError, match="subclassed"):
        patch_model(nested, 0.1)
    plain = keras.Sequential([keras.Input((2,)), keras.layers.Dense(2)])
    with pytest.raises(ValueError, match="no BatchNormalization"):
        patch_model(plain, 0.1)
    with pytest.raises(ValueError, match="example_weight"):
        patch_model(plain, 2.0)
    with pytest.raises(TypeError):
        patch_model("model", 0.1)
    with pytest.raises(ValueError, match="patch_model first"):
        set_example_weight(plain, 0.1)


def _seeded(seed):
    return keras.initializers.GlorotUniform(seed=seed)


def test_sweep_matches_manual_evaluation():
    # Seeded weights: the sweep (traced, batches of 16) and predict (batches of 32) may round the logits
    # differently on some CPUs, and random weights could give a near-tie that flips an argmax.
    rng = np.random.default_rng(0)
    model = keras.Sequential([keras.Input((5,)), keras.layers.Dense(8, kernel_initializer=_seeded(1)),
                              keras.layers.BatchNormalization(), keras.layers.ReLU(),
                              keras.layers.Dense(3, kernel_initializer=_seeded(2))])
    _randomize_bn(model, 4)
    x = rng.normal(size=(40, 5)).astype("float32")
    y = rng.integers(0, 3, 40)
    result = sweep_example_weight(model, (x, y), [0.0, 0.5, 1.0], batch_size=16)
    patched = patch_model(model, 0.0)
    for i, alpha in enumerate([0.0, 0.5, 1.0]):
        set_example_weight(patched, alpha)
        logits = patched.predict(x, verbose=0).astype(np.float64)
        logp = logits - np.log(np.exp(logits).sum(1, keepdims=True))
        assert result["accuracy"][i] == pytest.approx(np.mean(logits.argmax(1) == y))
        assert result["cross_entropy"][i] == pytest.approx(-np.mean(logp[np.arange(40), y]), rel=1e-4)
    assert result["cross_entropy"][0] != pytest.approx(result["cross_entropy"][2])
    with pytest.raises(ValueError):
        sweep_example_weight(model, (x, y), [1.2])


def test_weight_decay_on_built_model_and_serializable(tmp_path):
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(4), keras.layers.BatchNormalization(),
                              GhostBatchNormalization(2)])
    assert not model.losses
    gamma = np.array([0.5, 2.0, 1.0, 3.0], "float32")
    beta = np.array([1.0, -1.0, 0.0, 2.0], "float32")
    model.layers[1].gamma.assign(gamma)
    model.layers[1].beta.assign(beta)
    assert apply_normalization_weight_decay(model, 0.1, gamma_center=1.0) == 2
    expected = 0.1 * (np.sum((gamma - 1) ** 2) + np.sum(beta ** 2)) + 0.0  # layer 2: gamma=1, beta=0
    assert float(sum(model.losses)) == pytest.approx(expected, rel=1e-6)
    path = tmp_path / "wd.keras"
    model.save(path)
    loaded = keras.models.load_model(path)
    assert float(sum(loaded.losses)) == pytest.approx(expected, rel=1e-6)
    assert CenteredL2.from_config(CenteredL2(0.2, 1.0).get_config()).center == 1.0
    with pytest.raises(ValueError):
        apply_normalization_weight_decay(model, -1.0)
    with pytest.raises(ValueError, match="no normalization"):
        apply_normalization_weight_decay(keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)]), 0.1)


def test_output_bound_formula_and_tightness():
    lo, hi = output_bound([2.0], [0.5], 32)
    assert hi[0] == pytest.approx(0.5 + 2 * np.sqrt(31))
    assert lo[0] == pytest.approx(0.5 - 2 * np.sqrt(31))
    # App. A.1: x_0 = 0, x_i = a is the tight case (epsilon -> 0).
    B = 32
    x = np.full((B, 1), 1000.0, "float32")
    x[0] = 0.0
    bn = keras.layers.BatchNormalization(epsilon=1e-12)
    out = bn(x, training=True).numpy()
    assert out[0, 0] == pytest.approx(-np.sqrt(B - 1), rel=1e-4)
    with pytest.raises(ValueError):
        output_bound([1.0], [0.0], 0)


def test_training_outputs_never_exceed_bound():
    rng = np.random.default_rng(0)
    model = keras.Sequential([keras.Input((4, 4, 1)), keras.layers.Conv2D(6, 3, padding="same"),
                              keras.layers.BatchNormalization(name="bn")])
    _randomize_bn(model, 1)
    x = rng.standard_exponential(size=(64, 4, 4, 1)).astype("float32") ** 3  # heavy tails
    before = [w.numpy().copy() for w in model.non_trainable_weights]
    for batch in (1, 2, 8):
        r = measure_output_range(model, "bn", x, batch_size=batch)
        assert r["values_per_statistic"] == batch * 16
        assert r["train_within_bound"]
        assert r["bound_min"] <= r["train_min"] and r["train_max"] <= r["bound_max"]
    for w, v in zip(model.non_trainable_weights, before):
        np.testing.assert_array_equal(w.numpy(), v)  # moving statistics restored


def test_inference_range_is_the_trained_models_own():
    """The training-mode passes moved the moving statistics before each inference pass (restored only at the end),
    so the "inference" range was another model's and changed with the batch size."""
    rng = np.random.default_rng(1)
    model = keras.Sequential([keras.Input((4, 4, 1)), keras.layers.Conv2D(6, 3, padding="same",
                                                                          kernel_initializer=_seeded(3)),
                              keras.layers.BatchNormalization(name="bn", momentum=0.5)])
    _randomize_bn(model, 2)
    x = (3 * rng.standard_normal((32, 4, 4, 1)) + 2).astype("float32")  # far from the moving statistics
    expected = model(x, training=False).numpy()
    for batch in (1, 4, 32):
        r = measure_output_range(model, "bn", x, batch_size=batch)
        # up to float rounding: eager on 32 images vs a tf.function on `batch` (other kernels on some CPUs)
        assert (r["inference_min"], r["inference_max"]) == pytest.approx((expected.min(), expected.max()),
                                                                         rel=1e-5, abs=1e-5), batch


@keras.saving.register_keras_serializable(package="tests_patching")
class _Block(keras.layers.Layer):
    """A custom (non-model) layer holding a Keras BN: `clone_model` rebuilds it from its config."""

    def __init__(self, units=3, **kwargs):
        super().__init__(**kwargs)
        self.units = units
        self.dense = keras.layers.Dense(units)
        self.bn = keras.layers.BatchNormalization()

    def call(self, x, training=None):
        return self.bn(self.dense(x), training=training)

    def get_config(self):
        return {**super().get_config(), "units": self.units}


def test_patch_refuses_bn_inside_a_custom_layer_or_wrapper():
    rng = np.random.default_rng(1)
    x, y = rng.normal(size=(16, 4)).astype("float32"), rng.integers(0, 3, 16)
    custom = keras.Sequential([keras.Input((4,)), _Block(3, name="my_block"), keras.layers.BatchNormalization()])
    with pytest.raises(ValueError, match="inside the layer 'my_block'"):
        patch_model(custom, 0.5)
    with pytest.raises(ValueError, match="my_block"):
        sweep_example_weight(custom, (x, y), [0.0, 1.0])
    wrapped = keras.Sequential([keras.Input((2, 4)), keras.layers.TimeDistributed(keras.layers.BatchNormalization(),
                                                                                   name="td")])
    with pytest.raises(ValueError, match="inside the layer 'td'"):
        patch_model(wrapped, 0.5)


def test_sweep_rejects_scalar_alphas_and_a_model_alpha_cannot_change(monkeypatch):
    from tf_dlthesis.normalization import patching

    rng = np.random.default_rng(2)
    x, y = rng.normal(size=(16, 4)).astype("float32"), rng.integers(0, 3, 16)
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3), keras.layers.BatchNormalization()])
    with pytest.raises(TypeError, match="alphas=0.5"):
        sweep_example_weight(model, (x, y), 0.5)
    with pytest.raises(TypeError, match="alphas"):
        sweep_example_weight(model, (x, y), "0.5")
    # a patch that leaves no example-weighted layer must not report one identical row per alpha
    monkeypatch.setattr(patching, "patch_model", lambda m, alpha: keras.models.clone_model(m))
    with pytest.raises(ValueError, match="no example-weighted normalization layer"):
        sweep_example_weight(model, (x, y), [0.0, 1.0])


@pytest.mark.parametrize("rate, center", [(float("nan"), 0.0), (float("inf"), 0.0), (0.1, float("nan")),
                                          (0.1, float("inf"))])
def test_weight_decay_rejects_non_finite_values(rate, center):
    with pytest.raises(ValueError, match="rate=|center="):
        CenteredL2(rate, center)
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3), keras.layers.BatchNormalization()])
    with pytest.raises(ValueError, match="rate=|gamma_center="):
        apply_normalization_weight_decay(model, rate, gamma_center=center)


def test_weight_decay_names_gamma_center_when_it_is_not_a_number():
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3), keras.layers.BatchNormalization()])
    # before: "`center` must be a float. Received: center='1'", an argument the caller never passed
    with pytest.raises(TypeError, match="`gamma_center` must be a float. Received: gamma_center='1'"):
        apply_normalization_weight_decay(model, 0.1, gamma_center="1")


def _conv_bn_gn_model():
    # seeded: the sweep's accuracy is compared with the eager model's argmax (a near-tie could round either way)
    inputs = keras.Input((6, 6, 3))
    h = keras.layers.Conv2D(8, 3, padding="same", kernel_initializer=_seeded(4))(inputs)
    h = keras.layers.BatchNormalization(name="bn")(h)
    h = keras.layers.GroupNormalization(groups=4, name="gn")(h)
    h = keras.layers.GlobalAveragePooling2D()(h)
    return keras.Model(inputs, keras.layers.Dense(3, kernel_initializer=_seeded(5))(h))


def test_patch_keeps_keras_group_norm_plain_so_alpha0_equals_the_original():
    # A Keras GN has no moving statistics: patching must not invent them (moving_mean=0, variance=1 changed
    # this model's alpha = 0 output by ~1 before the fix). GN stays plain GN; alpha acts on the BN only.
    rng = np.random.default_rng(0)
    model = _conv_bn_gn_model()
    _randomize_bn(model, 5)
    x = (rng.normal(size=(12, 6, 6, 3)) * 3 + 2).astype("float32")
    y = rng.integers(0, 3, 12)
    original = model(x, training=False).numpy()
    patched = patch_model(model, 0.0)
    gn = patched.get_layer("gn")
    assert isinstance(gn, ExampleWeightedGroupNormalization) and not gn.moving_statistics
    assert gn.example_weight == 1.0
    np.testing.assert_allclose(patched(x, training=False).numpy(), original, rtol=1e-5, atol=1e-5)
    # set_example_weight acts on the BN only; the GN output stays Keras GN's at every alpha
    assert set_example_weight(patched, 0.5) == 1
    assert gn.example_weight == 1.0 and patched.get_layer("bn").example_weight == 0.5
    pre_gn = keras.Model(patched.inputs, patched.get_layer("bn").output)(x, training=False).numpy()
    post_gn = keras.Model(patched.inputs, gn.output)(x, training=False).numpy()
    np.testing.assert_allclose(post_gn, model.get_layer("gn")(pre_gn).numpy(), rtol=1e-5, atol=1e-5)
    # the sweep at alpha = 0 reports the original model's own accuracy and cross-entropy
    logits = original.astype(np.float64)
    logp = logits - np.log(np.exp(logits).sum(1, keepdims=True))
    result = sweep_example_weight(model, (x, y), [0.0, 1.0], batch_size=8)
    assert result["accuracy"][0] == pytest.approx(np.mean(logits.argmax(1) == y))
    assert result["cross_entropy"][0] == pytest.approx(-np.mean(logp[np.arange(12), y]), rel=1e-5)


def test_alpha_on_a_group_norm_only_model_is_refused():
    model = keras.Sequential([keras.Input((4, 4, 8)), keras.layers.GroupNormalization(4, name="gn")])
    x = (np.random.default_rng(1).normal(size=(3, 4, 4, 8)) * 5 + 3).astype("float32")
    y = np.array([0, 1, 2])
    for alpha in (0.0, 0.5):
        with pytest.raises(ValueError, match=f"no normalization layer that example_weight can act on.*"
                                             f"example_weight={alpha}"):
            patch_model(model, alpha)
    with pytest.raises(ValueError, match="no normalization layer that example_weight can act on"):
        sweep_example_weight(model, (x, y), [0.0, 1.0])
    patched = patch_model(model, 1.0)  # alpha = 1 is what GN does: allowed, and equal to Keras GN
    np.testing.assert_allclose(patched(x).numpy(), model(x).numpy(), rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="example_weight=0.3"):
        set_example_weight(patched, 0.3)
    with pytest.raises(ValueError, match="no normalization layer that example_weight can act on"):
        sweep_example_weight(patched, (x, y), [0.0, 1.0])


@pytest.mark.parametrize("bad", [2.9, 32.0, True, np.float64(3.0), "4"])
def test_output_bound_rejects_a_non_integer_count(bad):
    with pytest.raises(TypeError, match=re.escape(f"values_per_statistic={bad!r}")):
        output_bound([1.0], [0.0], bad)


def test_output_bound_accepts_numpy_integers():
    lo, hi = output_bound([2.0], [0.5], np.int64(4))
    np.testing.assert_allclose([lo[0], hi[0]], [0.5 - 2 * np.sqrt(3), 0.5 + 2 * np.sqrt(3)])


def test_a_sub_model_shared_by_two_nested_models_is_counted_once():
    from tf_dlthesis.normalization import normalization_layers, set_example_weight

    sub = keras.Sequential([keras.Input((3,)), keras.layers.BatchNormalization()], name="sub")

    def wrap(name):
        i = keras.Input((3,))
        return keras.Model(i, sub(i), name=name)

    a, b = wrap("a"), wrap("b")
    i = keras.Input((3,))
    patched = patch_model(keras.Model(i, keras.layers.Add()([a(i), b(i)])), 0.0)
    assert len(normalization_layers(patched)) == 1
    assert set_example_weight(patched, 0.2) == 1  # before: 2 for one changed layer
