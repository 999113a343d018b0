"""Audit 68 (Chapter 3): low-precision logits (SPSA, LRM terms, sanity_report); tensor settings of fgsm / pgd."""

import keras
import numpy as np
import pytest
import tensorflow as tf
from _tiny_model import tiny_classifier

from tf_dlthesis.robustness import (
    DecoupledLogitPairing,
    RobustModel,
    cleverhans_spsa,
    fgsm,
    make_attack,
    pgd,
    sanity_report,
    smoothed_targets,
    spsa,
)


def _data(n=4, seed=0):
    rng = np.random.default_rng(seed)
    return rng.uniform(0, 1, (n, 6, 6, 1)).astype("float32"), rng.integers(0, 5, n)


def _low_precision_classifier(policy, head=None):
    """``tiny_classifier`` built under a mixed-precision policy: its logits come out in float16 / bfloat16."""
    keras.mixed_precision.set_global_policy(policy)
    try:
        model = tiny_classifier()
        if head is not None:
            model = keras.Sequential([model, head()])
    finally:
        keras.mixed_precision.set_global_policy("float32")
    return model


@pytest.mark.parametrize("policy", ["mixed_float16", "mixed_bfloat16"])
def test_spsa_attacks_a_mixed_precision_model(policy):
    # Old: CleverHans's margin loss multiplied the float32 one-hot mask with float16 / bfloat16 logits:
    # `TypeError: ... Could not take row-wise dot product` from inside the compiled SPSA loop (and an
    # InvalidArgumentError from cleverhans_spsa).  The margin is now taken on float32 logits, so the attack
    # equals the one on the same model with its logits cast to float32 by hand.
    model = _low_precision_classifier(policy)
    assert model(np.zeros((1, 6, 6, 1), "float32")).dtype != tf.float32
    x, y = _data()

    def as_float32(images):
        return tf.cast(model(images, training=False), tf.float32)

    settings = {"epsilon": 0.1, "num_steps": 2, "spsa_samples": 4}
    adv = spsa(model, x, y, seed=0, **settings).numpy()
    np.testing.assert_array_equal(adv, spsa(as_float32, x, y, seed=0, **settings).numpy())
    assert np.abs(adv - x).max() <= 0.1 + 1e-6 and adv.min() >= 0 and adv.max() <= 1
    named = make_attack("spsa", epsilon=0.1, spsa_params={"num_steps": 2, "spsa_samples": 4})
    np.testing.assert_array_equal(named(model, x, y, seed=0).numpy(), adv)
    one = cleverhans_spsa(model, x[:1], y[:1], **settings).numpy()
    assert one.shape == (1, 6, 6, 1) and np.abs(one - x[:1]).max() <= 0.1 + 1e-6


def test_pgd_and_fgsm_take_float64_and_int_tensor_settings():
    # Old: a float64 (or int) epsilon / step_size tensor crashed inside TF (`Tensor conversion requested
    # dtype float32 for Tensor with dtype float64`, `cannot compute Mul ... double tensor`) and an int64
    # `num_steps` tensor ("a scalar integer tensor", as the docstring allows) failed the loop's `Less`.
    model = tiny_classifier()
    x, y = _data()
    ref = pgd(model, x, y, epsilon=0.25, step_size=0.125, num_steps=2, seed=0).numpy()
    got = pgd(model, x, y, epsilon=tf.constant(0.25, tf.float64), step_size=tf.constant(0.125, tf.float64),
              num_steps=tf.constant(2, tf.int64), seed=0).numpy()
    np.testing.assert_array_equal(got, ref)
    np.testing.assert_array_equal(
        fgsm(model, x, y, epsilon=tf.constant(0.25, tf.float64)).numpy(), fgsm(model, x, y, epsilon=0.25).numpy())
    whole = pgd(model, x, y, epsilon=tf.constant(1), step_size=tf.constant(1), num_steps=1, seed=0).numpy()
    np.testing.assert_array_equal(whole, pgd(model, x, y, epsilon=1.0, step_size=1.0, num_steps=1, seed=0).numpy())


def test_pgd_and_fgsm_refuse_bad_eager_tensor_settings():
    # Old: tensors skipped every check: a negative epsilon ran (FGSM then steps towards lower loss),
    # an infinite step ran, step_size > epsilon ran, a negative step count silently ran zero steps, and
    # a vector epsilon or a bool tensor failed deep inside TF.
    model = tiny_classifier()
    x, y = _data()
    with pytest.raises(ValueError, match=r"`epsilon` must be a finite number >= 0.0. Received: epsilon=-0.5"):
        pgd(model, x, y, epsilon=tf.constant(-0.5), step_size=0.0, num_steps=1, seed=0)
    with pytest.raises(ValueError, match=r"`epsilon` must be a finite number >= 0.0. Received: epsilon=-0.5"):
        fgsm(model, x, y, epsilon=tf.constant(-0.5, tf.float64))
    with pytest.raises(ValueError, match=r"`step_size` must be a finite number >= 0.0. Received: step_size=inf"):
        pgd(model, x, y, epsilon=0.25, step_size=tf.constant(np.inf), num_steps=1, seed=0)
    with pytest.raises(ValueError, match=r"`step_size` must be <= `epsilon`. Received: step_size=0.5, epsilon=0.25"):
        pgd(model, x, y, epsilon=tf.constant(0.25), step_size=tf.constant(0.5), num_steps=1, seed=0)
    with pytest.raises(ValueError, match=r"`num_steps` must be an int >= 0. Received: num_steps=-3"):
        pgd(model, x, y, epsilon=0.25, step_size=0.125, num_steps=tf.constant(-3), seed=0)
    with pytest.raises(ValueError, match=r"`epsilon` must be a scalar. Received: epsilon.shape=\(2,\)"):
        fgsm(model, x, y, epsilon=tf.constant([0.1, 0.2]))
    with pytest.raises(TypeError, match=r"`epsilon` must be a real number or a scalar real tensor"):
        fgsm(model, x, y, epsilon=tf.constant(True))


def test_tensor_settings_still_trace_without_values():
    # the checks need concrete values; traced settings (a compiled attack's arguments) pass through unchanged
    model = tiny_classifier()
    x, y = _data()

    @tf.function(input_signature=[tf.TensorSpec([], tf.float64), tf.TensorSpec([], tf.int64)])
    def run(eps, steps):
        return pgd(model, x, y, epsilon=eps, step_size=eps / 2, num_steps=steps, seed=0)

    np.testing.assert_array_equal(run(tf.constant(0.25, tf.float64), tf.constant(2, tf.int64)).numpy(),
                                  pgd(model, x, y, epsilon=0.25, step_size=0.125, num_steps=2, seed=0).numpy())


def test_sanity_report_flags_a_bfloat16_softmax_head():
    # Old: the outputs_logits check demanded rows summing to 1 within 1e-3, but bfloat16 probabilities
    # (a softmax head under mixed_bfloat16) sum to 1 only within bfloat16's rounding (here by 0.0039): the
    # probability model passed as "outputs are not a probability simplex".
    keras.utils.set_random_seed(0)
    model = _low_precision_classifier("mixed_bfloat16", head=keras.layers.Softmax)
    x, y = _data(8)
    dense = model.layers[0].layers[-1]  # sharpen the softmax (larger logits, as training makes them)
    dense.kernel.assign(dense.kernel * 5.0)
    probs = np.asarray(model(x))
    assert probs.dtype.name == "bfloat16"
    assert np.abs(probs.sum(-1) - 1).max() > 1e-3  # rows off the old tolerance: the premise of the defect
    report = sanity_report(model, (x, y), epsilon=0.1, step_size=0.05, max_examples=8)
    check = next(c for c in report.checks if c.name == "outputs_logits")
    assert not check.passed and "model outputs probabilities" in check.detail


def test_lrm_terms_of_float16_logits_are_computed_in_float32():
    # Old: DecoupledLogitPairing.terms (what RobustModel's LRM calls) computed the squared norms in the
    # logits' float16, which overflows past 65504: logit_norm_loss = inf for 100 logits of size ~30,
    # while calling the same loss (Keras casts its inputs to its float32 dtype) gave the finite value.
    rng = np.random.default_rng(0)
    a, b = rng.normal(0, 30, (4, 100)), rng.normal(0, 30, (4, 100))
    a16, b16 = tf.constant(a, tf.float16), tf.constant(b, tf.float16)
    a, b = np.asarray(a16, np.float64), np.asarray(b16, np.float64)  # the float16 values, exactly
    beta, ratio, adv_loss = 3e-5, 0.95, 2.0
    terms = DecoupledLogitPairing(beta, ratio).terms(a16, b16, tf.constant(adv_loss))
    norms = beta * ((a ** 2).sum(-1) + (b ** 2).sum(-1)).mean()
    assert terms["logit_norm_loss"].dtype == tf.float32
    np.testing.assert_allclose(float(terms["logit_norm_loss"]), norms, rtol=1e-5)
    np.testing.assert_allclose(float(terms["pairing_loss"]), adv_loss / ratio, rtol=1e-6)


def test_robust_lrm_on_a_float16_model_logs_finite_logit_norms():
    # Old: RobustModel's LRM loss (and its logged logit_norm_loss) was inf for a float16-logit model.
    model = _low_precision_classifier("mixed_float16")
    dense = model.layers[-1]
    dense.kernel.assign(dense.kernel * 400.0)  # logits of a few hundred: squared norms beyond float16
    x, y = _data(4)
    logits = np.asarray(model(x), np.float64)
    assert (logits ** 2).sum(-1).max() > np.finfo(np.float16).max
    robust = RobustModel(model, "lrm", mixing=None, num_steps=1, seed=0)
    loss, _, _ = robust.defense_loss(x, y, 0, training=False)
    assert np.isfinite(float(loss))


@pytest.mark.parametrize("num_classes", [2.9, "3", True])
def test_smoothed_targets_refuses_a_num_classes_that_is_not_an_int(num_classes):
    # Old: `int(num_classes)` truncated 2.9 to 2 classes (targets [[0.9, 0.1]] for label 0), read the
    # string "3" as 3 and only refused True as "must be >= 2".
    with pytest.raises(TypeError, match=r"`num_classes` must be an int >= 2. Received: num_classes="):
        smoothed_targets([0], num_classes, 0.1)


def test_smoothed_targets_still_takes_numpy_ints():
    np.testing.assert_allclose(smoothed_targets([2], np.int64(3), 0.2).numpy(), [[0.1, 0.1, 0.8]], rtol=1e-6)
    with pytest.raises(ValueError, match=r"`num_classes` must be >= 2. Received: num_classes=1"):
        smoothed_targets([0], 1, 0.1)


def test_clean_logit_pairing_never_pairs_an_example_with_itself():
    import keras

    from tf_dlthesis.robustness import RobustModel

    inner = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3)])
    robust = RobustModel(inner, "clean_logit_pairing")
    for b in (2, 3, 16, 128):
        logits = tf.reshape(tf.range(b, dtype=tf.float32), (b, 1))  # row i holds i: the partner's index
        for s in range(20):
            partner = robust._partner(logits, tf.constant([s, 7], tf.int64)).numpy()[:, 0].astype(int)
            assert sorted(partner.tolist()) == list(range(b))  # a permutation: every example is someone's partner
            assert not np.any(partner == np.arange(b)), (b, s)  # a random permutation had ~1 fixed point per batch
