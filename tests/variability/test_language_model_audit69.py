"""Audit 69 (language model): float32 logits and loss scaling under a mixed-precision policy."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from tf_dlthesis.variability.language_model import _make_train_step, build_language_model, evaluate_stream


def _lm_under(policy, vocab=30, **kwargs):
    keras.mixed_precision.set_global_policy(policy)
    try:
        return build_language_model(vocab, embedding_dim=kwargs.pop("embedding_dim", 4),
                                    hidden=kwargs.pop("hidden", 8), seed=1, **kwargs)
    finally:
        keras.mixed_precision.set_global_policy("float32")


@pytest.mark.parametrize("policy", ["mixed_float16", "mixed_bfloat16"])
def test_mixed_precision_language_model_returns_float32_logits(policy):
    # Old: the "decoder" Dense computed in float16 / bfloat16, so the next-token logits (and the
    # log-softmax of evaluate_stream over the whole vocabulary) came out in low precision.
    model = _lm_under(policy)
    assert model.get_layer("decoder").compute_dtype == "float32"
    assert model.get_layer("lstm0").compute_dtype == policy.split("_")[1]
    tokens = np.random.default_rng(0).integers(0, 30, (2, 6)).astype("int32")
    assert model(tokens).dtype == tf.float32
    target, _ = evaluate_stream(model, tokens.reshape(-1), window=5)
    reference = tf.nn.log_softmax(tf.cast(model(tokens.reshape(-1)[:10].reshape(2, 5)), tf.float64)).numpy()
    np.testing.assert_allclose(target, np.take_along_axis(reference, tokens.reshape(-1)[1:11].reshape(2, 5, 1),
                                                          -1).reshape(-1), rtol=1e-5)


def test_float32_language_model_head_is_unchanged():
    model = _lm_under("float32")
    assert model.get_layer("decoder").get_config()["dtype"]["config"] == {"name": "float32"}
    assert model(np.zeros((1, 3), "int32")).dtype == tf.float32


def test_mixed_float16_train_step_scales_the_loss():
    # Old: the custom train step applied unscaled float16 gradients: with a 2,000-word vocabulary and a
    # 32 x 35 batch, ~70% of the LSTM's recurrent-kernel gradients flushed to zero (float32: none), so one
    # Adam step left those weights unchanged.  `Model.compile` scales the loss under mixed_float16; the
    # language model's own step now does the same (LossScaleOptimizer).
    vocab, tokens = 2_000, np.random.default_rng(0).integers(0, 2_000, (32, 36)).astype("int32")

    def one_step(policy):
        model = _lm_under(policy, vocab, embedding_dim=16, hidden=32, dropout=0.0, embedding_dropout=0.0)
        before = model.get_layer("lstm0").cell.recurrent_kernel.numpy()
        loss = _make_train_step(model, keras.optimizers.Adam(1e-3, global_clipnorm=0.25))(tokens[:, :-1],
                                                                                            tokens[:, 1:])
        return float(loss), model.get_layer("lstm0").cell.recurrent_kernel.numpy() - before

    loss32, delta32 = one_step("float32")
    loss16, delta16 = one_step("mixed_float16")
    assert (delta32 == 0).mean() == 0
    assert (delta16 == 0).mean() < 0.01  # old: ~0.7
    np.testing.assert_allclose(loss16, loss32, rtol=1e-3)  # the step reports the unscaled loss


def test_mixed_float16_train_step_keeps_training_after_an_overflow():
    # Old: no loss scaling, so nothing was skipped.  Now steps whose scaled float16 gradients overflow are
    # skipped and the (dynamic) scale halved until the gradients fit, then the model trains.
    model = _lm_under("mixed_float16", 30, dropout=0.0, embedding_dropout=0.0)
    decoder = model.get_layer("decoder")
    decoder.kernel.assign(decoder.kernel * 200.0)  # gradients reaching the float16 LSTM: beyond 65504 / 32768
    lstm = model.get_layer("lstm0").cell.kernel
    step = _make_train_step(model, keras.optimizers.SGD(1e-3))
    tokens = np.random.default_rng(1).integers(0, 30, (4, 9)).astype("int32")
    start = lstm.numpy()
    assert np.isfinite(float(step(tokens[:, :-1], tokens[:, 1:])))
    np.testing.assert_array_equal(lstm.numpy(), start)  # overflow: the step is skipped
    for _ in range(20):
        step(tokens[:, :-1], tokens[:, 1:])
    assert np.isfinite(lstm.numpy()).all() and not np.array_equal(lstm.numpy(), start)
