"""CleverHans-based attacks: equality with CleverHans, constraints, SPSA adapter, bad input."""

import numpy as np
import pytest
import tensorflow as tf
from cleverhans.tf2.attacks import spsa as ch_spsa
from cleverhans.tf2.attacks.fast_gradient_method import fast_gradient_method
from cleverhans.tf2.attacks.projected_gradient_descent import projected_gradient_descent

from tf_dlthesis import robustness as R

from _tiny_model import tiny_classifier


@pytest.fixture(scope="module")
def model():
    return tiny_classifier(seed=1)


@pytest.fixture(scope="module")
def batch():
    rng = np.random.default_rng(0)
    return rng.random((12, 6, 6, 1)).astype("float32"), (np.arange(12) % 5).astype("int64")


def _fn(model):
    return lambda t: model(t, training=False)


def test_fgsm_equals_cleverhans(model, batch):
    x, y = batch
    for labels in (y, None):
        ours = R.fgsm(model, x, labels, epsilon=0.1).numpy()
        theirs = fast_gradient_method(_fn(model), x, 0.1, np.inf, clip_min=0.0, clip_max=1.0, y=labels).numpy()
        np.testing.assert_array_equal(ours, theirs)


@pytest.mark.parametrize("steps", [6, 25])  # unrolled and tf.while_loop paths
def test_pgd_without_random_start_equals_cleverhans(model, batch, steps):
    x, y = batch
    for labels in (y, None):
        ours = R.pgd(model, x, labels, epsilon=0.1, step_size=0.03, num_steps=steps, random_start=False).numpy()
        theirs = projected_gradient_descent(_fn(model), x, 0.1, 0.03, steps, np.inf, clip_min=0.0, clip_max=1.0,
                                            y=labels, rand_init=False).numpy()
        np.testing.assert_array_equal(ours, theirs)


def test_pgd_inside_tf_function_equals_eager(model, batch):
    x, y = batch
    eager = R.pgd(model, x, y, epsilon=0.1, step_size=0.03, num_steps=4, seed=3).numpy()
    graph = tf.function(lambda a, b: R.pgd(model, a, b, epsilon=0.1, step_size=0.03, num_steps=4, seed=3))(x, y)
    np.testing.assert_allclose(eager, graph.numpy(), atol=1e-6)


def test_perturbation_within_epsilon_and_clip_range(model, batch):
    x, y = batch
    for adv in (R.pgd(model, x, y, epsilon=0.2, step_size=0.05, num_steps=5, seed=0),
                R.fgsm(model, x, y, epsilon=0.2),
                R.spsa(model, x, y, epsilon=0.2, num_steps=3, spsa_samples=16, seed=0)):
        adv = adv.numpy()
        assert np.abs(adv - x).max() <= 0.2 + 1e-6
        assert adv.min() >= 0.0 and adv.max() <= 1.0
    narrow = 0.25 + 0.5 * x  # images inside the narrower clip range (outside it they are an error)
    adv = R.pgd(model, narrow, y, epsilon=0.2, step_size=0.05, num_steps=3, seed=0, clip_range=(0.25, 0.75)).numpy()
    assert adv.min() >= 0.25 and adv.max() <= 0.75


def test_pgd_seed_is_stateless(model, batch):
    x, y = batch
    a = R.pgd(model, x, y, epsilon=0.1, step_size=0.03, num_steps=1, seed=7).numpy()
    b = R.pgd(model, x, y, epsilon=0.1, step_size=0.03, num_steps=1, seed=7).numpy()
    c = R.pgd(model, x, y, epsilon=0.1, step_size=0.03, num_steps=1, seed=8).numpy()
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)


def test_pgd_lowers_true_class_margin(model, batch):
    x, y = batch
    def margin(inp):
        z = model(inp, training=False).numpy()
        true = z[np.arange(len(y)), y]
        z[np.arange(len(y)), y] = -np.inf
        return true - z.max(-1)
    adv = R.pgd(model, x, y, epsilon=0.1, step_size=0.03, num_steps=10, seed=0)
    assert margin(adv.numpy()).mean() < margin(x).mean()


def test_uint8_images_are_converted(model, batch):
    x, y = batch
    x8 = (x * 255).round().astype(np.uint8)
    a = R.fgsm(model, x8, y, epsilon=0.05).numpy()
    b = R.fgsm(model, x8.astype(np.float32) / 255.0, y, epsilon=0.05).numpy()
    assert a.dtype == np.float32
    np.testing.assert_array_equal(a, b)


def test_attack_bad_input(model, batch):
    x, y = batch
    with pytest.raises(ValueError, match="epsilon"):
        R.fgsm(model, x, y, epsilon=-0.1)
    with pytest.raises(ValueError, match="step_size"):
        R.pgd(model, x, y, epsilon=0.1, step_size=0.2, num_steps=3)
    with pytest.raises(ValueError, match="clip_range"):
        R.pgd(model, x, y, epsilon=0.1, step_size=0.01, num_steps=3, clip_range=(1.0, 0.0))
    with pytest.raises(ValueError, match="batch size"):
        R.pgd(model, x, y[:5], epsilon=0.1, step_size=0.01, num_steps=3)
    with pytest.raises(ValueError, match="batch size"):
        R.spsa(model, x, y[:5], epsilon=0.1, num_steps=3)
    with pytest.raises(ValueError, match="num_steps"):
        R.pgd(model, x, y, epsilon=0.1, step_size=0.01, num_steps=-1)
    with pytest.raises(ValueError, match="spsa_samples"):
        R.spsa(model, x, y, epsilon=0.1, num_steps=3, spsa_samples=7)
    with pytest.raises(ValueError, match="Unknown attack"):
        R.make_attack("deepfool", epsilon=0.1)
    with pytest.raises(TypeError, match="model"):
        R.fgsm("not a model", x, y, epsilon=0.1)


def test_cleverhans_spsaadam_needs_the_adapter():
    with pytest.raises(ValueError, match="lr"):
        ch_spsa.SPSAAdam(lr=0.01)  # CleverHans 4.0.0 under Keras 3
    opt = R.SPSAAdamAdapter(lr=0.02, num_samples=4)
    assert opt.lr == 0.02 and isinstance(opt, ch_spsa.SPSAAdam)


def test_cleverhans_spsa_runs_through_adapter(model, batch):
    x, y = batch
    adv = R.cleverhans_spsa(model, x[:2], y[:2], epsilon=0.1, num_steps=2, spsa_samples=8).numpy()
    assert adv.shape == x[:2].shape and np.abs(adv - x[:2]).max() <= 0.1 + 1e-6


@pytest.mark.parametrize("corrected,scale", [(False, 0.01), (True, 1.0)])
def test_batched_spsa_gradient_scale_issue_1087(corrected, scale):
    """For a linear loss w.x the SPSA estimate is delta*w in CleverHans (issue #1087) and w when corrected."""
    w = np.array([[[[1.0]], [[-2.0]]], [[[0.5]], [[3.0]]]], np.float32)  # (B=2, 2, 1, 1), one w per example
    opt = R.BatchedSPSAAdam(lr=0.01, delta=0.01, num_samples=4000, corrected_gradient=corrected)
    opt.set_seed(tf.constant([1, 2], tf.int64))
    x = tf.zeros_like(w)

    def loss_fn(flat):  # flat: (2S*B, 2, 1, 1), example index = row % B
        ww = tf.tile(w, [tf.shape(flat)[0] // 2, 1, 1, 1])
        return tf.reduce_sum(tf.reshape(flat * ww, [tf.shape(flat)[0], -1]), -1)

    grad = opt._compute_gradients(loss_fn, [x])[0].numpy()
    np.testing.assert_allclose(grad, scale * w, rtol=0.1, atol=0.05 * scale)


def test_batched_spsa_reduces_accuracy(model, batch):
    x, y = batch
    pred = model(x, training=False).numpy().argmax(-1)
    adv = R.spsa(model, x, pred, epsilon=0.3, num_steps=10, spsa_samples=32, learning_rate=0.05, seed=0)
    after = model(adv, training=False).numpy().argmax(-1)
    assert (after == pred).mean() < 1.0


# --------------------------------------------------------------------------- seeds, Attack objects, caches
def test_seed_none_is_fresh_and_int_seeds_reproduce(model, batch):
    x, y = batch
    kw = dict(epsilon=0.1, step_size=0.03, num_steps=1)
    a, b = R.pgd(model, x, y, seed=None, **kw).numpy(), R.pgd(model, x, y, seed=None, **kw).numpy()
    assert not np.array_equal(a, b)
    attack = R.make_attack("pgd1", epsilon=0.1, step_size=0.03)
    a, b = attack(model, x, y).numpy(), attack(model, x, y, seed=None).numpy()
    assert not np.array_equal(a, b)                        # make_attack no longer turns None into 0
    np.testing.assert_array_equal(attack(model, x, y, seed=3).numpy(), attack(model, x, y, seed=3).numpy())
    np.testing.assert_array_equal(attack(model, x, y, seed=3).numpy(), R.pgd(model, x, y, seed=3, **kw).numpy())
    s1 = R.spsa(model, x, y, epsilon=0.1, num_steps=1, spsa_samples=4, seed=None).numpy()
    s2 = R.spsa(model, x, y, epsilon=0.1, num_steps=1, spsa_samples=4, seed=None).numpy()
    assert not np.array_equal(s1, s2)
    with pytest.raises(TypeError, match="seed"):
        R.pgd(model, x, y, seed=1.5, **kw)


def test_make_attack_returns_an_immutable_attack():
    attack = R.make_attack("pgd10", epsilon=0.03, step_size=0.0078)
    assert isinstance(attack, R.Attack) and (attack.kind, attack.num_steps, attack.epsilon) == ("pgd", 10, 0.03)
    with pytest.raises(AttributeError):
        attack.epsilon = 0.1
    assert "pgd10" in repr(attack)
    import copy
    import pickle
    assert copy.deepcopy(attack).epsilon == 0.03 and pickle.loads(pickle.dumps(attack)).num_steps == 10
    with pytest.raises(ValueError, match="step_size"):
        R.make_attack("pgd5", epsilon=0.03)
    with pytest.raises(ValueError, match="spsa_params"):
        R.make_attack("spsa", epsilon=0.03, spsa_params={"steps": 3})


def test_no_module_level_caches():
    from tf_dlthesis.robustness import attacks
    for name in ("_FN_CACHE", "_SPSA_FN_CACHE", "_ATTACK_FN_CACHE"):
        assert not hasattr(attacks, name)


def test_compiled_attack_does_not_keep_its_model_alive(batch):
    import gc
    import weakref
    x, y = batch
    m = tiny_classifier(seed=2)
    R.make_attack("pgd2", epsilon=0.1, step_size=0.05)(m, x, y, seed=0)
    R.spsa(m, x, y, epsilon=0.1, num_steps=1, spsa_samples=4, seed=0)
    ref = weakref.ref(m)
    del m
    gc.collect()
    assert ref() is None


def test_eager_attacks_do_not_retrace_cleverhans(model, batch):
    from cleverhans.tf2.utils import compute_gradient
    x, y = batch
    R.fgsm(model, x, y, epsilon=0.1)
    before = compute_gradient.experimental_get_tracing_count()
    for _ in range(3):
        R.fgsm(model, x, y, epsilon=0.1)
        R.pgd(model, x, y, epsilon=0.1, step_size=0.05, num_steps=2, seed=0)
    assert compute_gradient.experimental_get_tracing_count() == before
