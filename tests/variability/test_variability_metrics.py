"""Variability metrics and CKA against hand-computed values and scipy (Thesis Sec. 5.3.1)."""

import itertools

import numpy as np
import pytest
from scipy.stats import spearmanr

from tf_dlthesis.variability import (
    accuracy_sd,
    bootstrap_sd,
    cka_matrix,
    cross_entropy_sd,
    ensemble_delta,
    linear_cka,
    mean_pairwise_cka,
    pairwise_correlation,
    pairwise_correlation_matrix,
    pairwise_disagreement,
    variability_metrics,
)

# 3 runs, 4 examples, 2 classes. Predictions (argmax):
#   run 0: 0 1 0 1   run 1: 0 1 1 1   run 2: 1 1 1 1        labels: 0 1 1 0
LOGITS = np.array(
    [
        [[2.0, 0.0], [0.0, 1.0], [1.0, 0.0], [0.0, 3.0]],
        [[1.0, 0.0], [0.0, 2.0], [0.0, 1.0], [0.0, 1.0]],
        [[0.0, 1.0], [0.0, 4.0], [0.0, 2.0], [1.0, 2.0]],
    ]
)
LABELS = np.array([0, 1, 1, 0])


def test_accuracy_sd_by_hand():
    # accuracies: run0 2/4, run1 3/4, run2 2/4 -> SD (ddof=1) of (.5, .75, .5)
    mean = (0.5 + 0.75 + 0.5) / 3
    expected = np.sqrt(((0.5 - mean) ** 2 * 2 + (0.75 - mean) ** 2) / 2)
    assert accuracy_sd(LOGITS, LABELS) == pytest.approx(expected, abs=1e-15)


def test_cross_entropy_sd_by_hand():
    def ce(z, y):
        return -(z[y] - np.log(np.exp(z).sum()))

    per_run = [np.mean([ce(LOGITS[r, n], LABELS[n]) for n in range(4)]) for r in range(3)]
    assert cross_entropy_sd(LOGITS, LABELS) == pytest.approx(np.std(per_run, ddof=1), rel=1e-12)


def test_pairwise_disagreement_by_hand():
    # pairs (0,1): differ on ex 2 -> 1/4; (0,2): ex 0, 2 -> 2/4; (1,2): ex 0 -> 1/4
    assert pairwise_disagreement(LOGITS) == pytest.approx((0.25 + 0.5 + 0.25) / 3, abs=1e-15)


def test_pairwise_correlation_matches_scipy_loop_with_ties():
    rng = np.random.default_rng(0)
    logits = np.round(rng.normal(size=(6, 50, 4)), 1)  # rounding creates ties
    expected = np.mean([spearmanr(logits[i].ravel(), logits[j].ravel())[0] for i, j in itertools.combinations(range(6), 2)])
    assert pairwise_correlation(logits) == pytest.approx(expected, abs=1e-12)
    mat = pairwise_correlation_matrix(logits)
    assert mat[1, 4] == pytest.approx(spearmanr(logits[1].ravel(), logits[4].ravel())[0], abs=1e-12)
    np.testing.assert_allclose(np.diag(mat), 1.0)


@pytest.mark.parametrize("seed", [0, 7, 13])  # seeds whose unclipped sums step past 1 (by 1-4 ulps)
def test_pairwise_correlation_of_identical_runs_never_exceeds_one(seed):
    # rho lies in [-1, 1]; identical runs used to give 1.0000000000000007 (report cells then read
    # "1.00" on one machine and "1" on another)
    logits = np.repeat(np.random.default_rng(seed).normal(size=(1, 500, 10)), 3, axis=0)
    assert 1 - 1e-12 <= pairwise_correlation(logits) <= 1.0
    mat = pairwise_correlation_matrix(logits)
    assert mat.max() <= 1.0 and mat.min() >= 1 - 1e-12


def test_identical_runs_have_no_variability():
    logits = np.repeat(LOGITS[:1], 4, axis=0)
    m = variability_metrics(logits, LABELS, bootstrap_samples=50)
    assert m["accuracy_sd"] == 0 and m["cross_entropy_sd"] == 0 and m["disagreement"] == 0
    assert m["correlation"] == pytest.approx(1.0, abs=1e-12) and m["ensemble_delta"] == 0


def test_ensemble_delta_by_hand():
    # Eq. 5.1 with f = accuracy, ensemble = mean logits.
    acc = lambda z: np.mean(np.argmax(z, -1) == LABELS)  # noqa: E731
    pairs = [(0, 1), (0, 2), (1, 2)]
    expected = np.mean([acc((LOGITS[i] + LOGITS[j]) / 2) - (acc(LOGITS[i]) + acc(LOGITS[j])) / 2 for i, j in pairs])
    assert ensemble_delta(LOGITS, LABELS) == pytest.approx(expected, abs=1e-15)
    # By hand: single accuracies .5, .75, .5; ensembles (0,1) 2/4, (0,2) 3/4, (1,2) 3/4
    # -> deltas -.125, .25, .125 -> mean .25 / 3. Chunking over pairs must not matter.
    assert expected == pytest.approx(0.25 / 3, abs=1e-15)
    assert ensemble_delta(LOGITS, LABELS, max_chunk_bytes=1) == pytest.approx(expected, abs=1e-15)


def test_ensemble_delta_cross_entropy_is_negative_for_diverse_models():
    rng = np.random.default_rng(1)
    logits = rng.normal(size=(5, 40, 3))
    labels = rng.integers(0, 3, size=40)
    # Cross-entropy is convex in the logits: ensembling never raises it.
    assert ensemble_delta(logits, labels, metric="cross_entropy") < 0


def test_bootstrap_sd_properties():
    assert bootstrap_sd(np.full(10, 3.0)) == 0.0
    rng = np.random.default_rng(2)
    vals = rng.normal(size=400)
    err = bootstrap_sd(vals, num_samples=400, seed=0)
    # Standard error of a normal sample SD: sigma / sqrt(2 (R - 1)).
    assert err == pytest.approx(np.std(vals, ddof=1) / np.sqrt(2 * 399), rel=0.25)
    assert bootstrap_sd(3.0 * vals, num_samples=400, seed=0) == pytest.approx(3.0 * err, rel=1e-12)


def _gram_cka(x, y):
    n = x.shape[0]
    h = np.eye(n) - np.ones((n, n)) / n
    k, l = x @ x.T, y @ y.T
    hsic = lambda a, b: np.trace(a @ h @ b @ h)  # noqa: E731
    return hsic(k, l) / np.sqrt(hsic(k, k) * hsic(l, l))


def test_linear_cka_equals_gram_form_and_invariances():
    rng = np.random.default_rng(3)
    x = rng.normal(size=(30, 5))
    y = x @ rng.normal(size=(5, 7)) + 0.5 * rng.normal(size=(30, 7))
    assert linear_cka(x, y) == pytest.approx(_gram_cka(x, y), rel=1e-10)
    q, _ = np.linalg.qr(rng.normal(size=(5, 5)))
    assert linear_cka(x, 2.5 * x @ q + 1.0) == pytest.approx(1.0, abs=1e-12)
    assert 0.0 <= linear_cka(x, rng.normal(size=(30, 3))) < 1.0


@pytest.mark.parametrize("scale", [1e200, 1e-200])
def test_linear_cka_is_scale_invariant_at_extreme_magnitudes(scale):
    # before: 1e200 gave nan (overflow), 1e-200 "CKA is undefined for a constant representation" (underflow)
    rng = np.random.default_rng(4)
    x, y = rng.normal(size=(10, 3)), rng.normal(size=(10, 5))
    expected = _gram_cka(x, y)
    assert linear_cka(scale * x, y) == pytest.approx(expected, rel=1e-12)
    np.testing.assert_allclose(cka_matrix([scale * x, y, x]), cka_matrix([x, y, x]), rtol=1e-12)


def test_cka_needs_two_examples_with_a_clear_error():
    # before: cka_matrix on 0 examples: "cannot reshape array of size 0 ..."; on 1: "constant representation"
    for n in (0, 1):
        with pytest.raises(ValueError, match=r"CKA needs at least 2 examples. Received: `representations\[0\]`"):
            cka_matrix([np.ones((n, 3)), np.ones((n, 2))])
    with pytest.raises(ValueError, match=r"CKA needs at least 2 examples"):
        linear_cka(np.ones((1, 3)), np.ones((1, 3)))


def test_a_constant_float64_representation_is_refused_not_scored_near_zero():
    # before: 0.1 centred to ~1e-17 instead of 0, so CKA returned ~2e-33 (cka_matrix ~6e-18)
    x = np.random.default_rng(0).normal(size=(100, 3))
    constant = np.full((100, 4), 0.1)
    with pytest.raises(ValueError, match=r"constant representation .* Received: `y` with 100 identical rows"):
        linear_cka(x, constant)
    with pytest.raises(ValueError, match=r"Received: `representations\[1\]` with 100 identical rows"):
        cka_matrix([x, constant])


def test_bootstrap_sd_and_the_lm_metrics_refuse_what_numpy_converts_quietly():
    from tf_dlthesis.variability import mixture_perplexity_delta

    # before: strings parsed as numbers, bools as 0/1, complex numbers cut to their real part (a warning)
    for bad in (["1.0", "2.5"], [True, False, True], np.array([1 + 1j, 2 + 0j])):
        with pytest.raises(TypeError, match="`values` must hold real numbers"):
            bootstrap_sd(bad, num_samples=10)
    with pytest.raises(TypeError, match="`target_log_probs` must hold real numbers"):
        mixture_perplexity_delta(np.array([[-1 + 1j, -1], [-1, -1]]))


def test_cka_matrix_matches_pairwise_linear_cka():
    rng = np.random.default_rng(4)
    reps = [rng.normal(size=(20, d)) for d in (3, 4, 6)]
    mat = cka_matrix(reps)
    for i, j in itertools.combinations(range(3), 2):
        assert mat[i, j] == pytest.approx(linear_cka(reps[i], reps[j]), rel=1e-10)
    assert np.allclose(np.diag(mat), 1.0)
    assert mean_pairwise_cka(reps) == pytest.approx(np.mean([mat[0, 1], mat[0, 2], mat[1, 2]]), rel=1e-12)


@pytest.mark.parametrize(
    "logits, labels, match",
    [
        (LOGITS[:1], LABELS, "at least 2 runs"),
        (LOGITS[0], LABELS, r"shape \(R, N, C\)"),
        (LOGITS, LABELS[:3], "must have shape"),
        (np.where(np.arange(24).reshape(3, 4, 2) == 5, np.nan, LOGITS), LABELS, "NaN"),
        (LOGITS, np.array([0, 1, 2, 0]), r"lie in \[0, 2\)"),
    ],
)
def test_bad_input_raises(logits, labels, match):
    with pytest.raises(ValueError, match=match):
        variability_metrics(logits, labels)


def test_bad_input_other():
    with pytest.raises(ValueError, match="same examples"):
        linear_cka(np.ones((4, 2)), np.ones((5, 2)))
    with pytest.raises(ValueError, match="constant"):
        linear_cka(np.ones((4, 2)), np.arange(8.0).reshape(4, 2))
    with pytest.raises(ValueError, match="metric"):
        ensemble_delta(LOGITS, LABELS, metric="f1")
    with pytest.raises(TypeError, match="integer"):
        accuracy_sd(LOGITS, LABELS.astype(float))
    with pytest.raises(ValueError, match="at least 2"):
        bootstrap_sd([1.0])
    with pytest.raises(ValueError, match="seed=-1"):
        bootstrap_sd([1.0, 2.0], seed=-1)


def _cka_model(seed):
    import keras

    init = lambda s: keras.initializers.GlorotUniform(seed=seed * 10 + s)  # noqa: E731
    inputs = keras.Input((3, 3, 1))
    x = keras.layers.Flatten(name="flat")(inputs)
    x = keras.layers.Dense(6, activation="relu", kernel_initializer=init(1), name="hidden")(x)
    return keras.Model(inputs, keras.layers.Dense(2, kernel_initializer=init(2), name="out")(x))


def test_layer_cka_per_layer():
    from tf_dlthesis.variability import layer_activations, layer_cka

    images = np.random.default_rng(5).normal(size=(40, 3, 3, 1)).astype("float32")
    a, b = _cka_model(0), _cka_model(1)
    acts = layer_activations(a, images, ["hidden", "out"])
    assert acts["hidden"].shape == (40, 6) and acts["hidden"].dtype == np.float64
    same = layer_cka([a, a], images)
    assert set(same) == {"hidden", "out"} and all(v == pytest.approx(1.0, abs=1e-9) for v in same.values())
    diff = layer_cka([a, b], images)
    expected = linear_cka(acts["hidden"], layer_activations(b, images, ["hidden"])["hidden"])
    assert diff["hidden"] == pytest.approx(expected, rel=1e-9) and diff["hidden"] < 1.0
    with pytest.raises(ValueError, match="Unknown layer"):
        layer_cka([a, b], images, ["nope"])


def test_layer_cka_over_many_models_logs_no_retracing_warning(caplog):
    from tf_dlthesis.variability import layer_activations, layer_cka

    images = np.random.default_rng(5).normal(size=(40, 3, 3, 1)).astype("float32")
    models = [_cka_model(s) for s in range(8)]
    with caplog.at_level("WARNING", logger="tensorflow"):
        layer_cka(models, images, batch_size=64)                   # one call per model, as in Fig. 5.1
        one = layer_activations(models[0], images, ["hidden"], batch_size=16)
    assert not [r.getMessage() for r in caplog.records if "retracing" in r.getMessage()]
    assert one["hidden"].shape == (40, 6)


# ---------------------------------------------------------------------------- language-model metrics
# 3 runs, 2 tokens, vocabulary 3; true next tokens 0, 1. The probability each run gives the true token:
#   run 0: 0.5, 0.6    run 1: 0.25, 0.8    run 2: 0.8, 0.25
LM_PROBS = np.array(
    [
        [[0.5, 0.25, 0.25], [0.2, 0.6, 0.2]],
        [[0.25, 0.5, 0.25], [0.1, 0.8, 0.1]],
        [[0.8, 0.1, 0.1], [0.5, 0.25, 0.25]],
    ]
)
LM_LOGITS = np.log(LM_PROBS) + 1.7  # a constant shift changes no softmax
LM_LABELS = np.array([0, 1])
LM_TRUE = np.array([[0.5, 0.6], [0.25, 0.8], [0.8, 0.25]])
# perplexity = exp(-mean log p) = 1 / sqrt(p_1 p_2)
LM_PPL = np.array([1 / np.sqrt(0.3), 1 / np.sqrt(0.2), 1 / np.sqrt(0.2)])


def test_perplexity_sd_by_hand():
    from tf_dlthesis.variability import perplexity_sd

    mean = LM_PPL.sum() / 3
    expected = np.sqrt(((LM_PPL - mean) ** 2).sum() / 2)
    assert perplexity_sd(LM_LOGITS, LM_LABELS) == pytest.approx(expected, rel=1e-12)
    assert perplexity_sd(np.repeat(LM_LOGITS[:1], 3, axis=0), LM_LABELS) == 0.0


def test_ensemble_perplexity_delta_mixture_by_hand():
    from tf_dlthesis.variability import ensemble_perplexity_delta, mixture_perplexity_delta

    # mixtures: (0,1) p = .375, .7; (0,2) .65, .425; (1,2) .525, .525
    mixed = {(0, 1): 1 / np.sqrt(0.375 * 0.7), (0, 2): 1 / np.sqrt(0.65 * 0.425), (1, 2): 1 / 0.525}
    expected = np.mean([mixed[i, j] - (LM_PPL[i] + LM_PPL[j]) / 2 for i, j in mixed])
    assert ensemble_perplexity_delta(LM_LOGITS, LM_LABELS) == pytest.approx(expected, rel=1e-12)
    assert mixture_perplexity_delta(np.log(LM_TRUE)) == pytest.approx(expected, rel=1e-12)
    assert expected < 0  # ensembling helps


def test_ensemble_perplexity_delta_mean_logits_by_hand():
    from tf_dlthesis.variability import ensemble_perplexity_delta

    # the softmax of the mean logits is the normalized geometric mean of the two distributions
    def ppl(i, j):
        geo = np.sqrt(LM_PROBS[i] * LM_PROBS[j])
        p = geo / geo.sum(axis=-1, keepdims=True)
        return 1 / np.sqrt(p[0, 0] * p[1, 1])

    pairs = [(0, 1), (0, 2), (1, 2)]
    expected = np.mean([ppl(i, j) - (LM_PPL[i] + LM_PPL[j]) / 2 for i, j in pairs])
    assert ensemble_perplexity_delta(LM_LOGITS, LM_LABELS, combine="logits") == pytest.approx(expected, rel=1e-12)


def test_prediction_disagreement_by_hand():
    from tf_dlthesis.variability import prediction_disagreement

    # argmax: run 0 -> 0, 1; run 1 -> 1, 1; run 2 -> 0, 0. Pairs differ on 1/2, 1/2, 2/2 of the tokens.
    assert pairwise_disagreement(LM_LOGITS) == pytest.approx(2 / 3, abs=1e-15)
    assert prediction_disagreement([[0, 1], [1, 1], [0, 0]]) == pytest.approx(2 / 3, abs=1e-15)
    rng = np.random.default_rng(6)
    preds = rng.integers(0, 5, size=(7, 30))
    loop = np.mean([(preds[i] != preds[j]).mean() for i, j in itertools.combinations(range(7), 2)])
    assert prediction_disagreement(preds) == pytest.approx(loop, abs=1e-14)


def test_language_model_metrics_row_by_hand():
    from tf_dlthesis.variability import language_model_metrics

    row = language_model_metrics(np.log(LM_TRUE), np.array([[0, 1], [1, 1], [0, 0]]), bootstrap_samples=50)
    assert row["runs"] == 3
    assert row["perplexity"] == pytest.approx(LM_PPL.mean(), rel=1e-12)
    assert row["perplexity_sd"] == pytest.approx(np.std(LM_PPL, ddof=1), rel=1e-12)
    assert row["disagreement"] == pytest.approx(2 / 3, abs=1e-15)
    assert row["perplexity_sd_err"] == pytest.approx(bootstrap_sd(LM_PPL, num_samples=50), rel=1e-12)


def test_language_model_metrics_bad_input():
    from tf_dlthesis.variability import ensemble_perplexity_delta, language_model_metrics, prediction_disagreement

    with pytest.raises(ValueError, match="combine"):
        ensemble_perplexity_delta(LM_LOGITS, LM_LABELS, combine="median")
    with pytest.raises(ValueError, match="R >= 2"):
        language_model_metrics(np.log(LM_TRUE[:1]), np.zeros((1, 2), int))
    with pytest.raises(ValueError, match="log-probabilities"):
        language_model_metrics(np.log(LM_TRUE) + 1.0, np.zeros((3, 2), int))
    with pytest.raises(ValueError, match="shape of `target_log_probs`"):
        language_model_metrics(np.log(LM_TRUE), np.zeros((3, 3), int))
    with pytest.raises(TypeError, match="integer"):
        prediction_disagreement(np.zeros((2, 3)))


@pytest.mark.parametrize("convert", [lambda a: a + 0.5j, lambda a: a.astype(str), lambda a: a > 0,
                                     lambda a: a.astype(object)])
def test_logits_and_features_must_be_real_numbers(convert):
    # complex logits lost their imaginary part with a warning, strings were parsed, bools accepted
    labels = np.array([0, 1, 1, 0])
    with pytest.raises(TypeError, match="real numbers"):
        accuracy_sd(convert(LOGITS), labels)
    with pytest.raises(TypeError, match="real numbers"):
        linear_cka(convert(LOGITS[0]), LOGITS[1])


def test_metric_settings_are_checked():
    with pytest.raises(TypeError, match=r"`seed` must be an int >= 0 or None .*Received: seed=1\.5"):
        bootstrap_sd([0.1, 0.2, 0.4], seed=1.5)       # was NumPy's SeedSequence TypeError, naming no argument
    with pytest.raises(ValueError, match="max_chunk_bytes"):
        ensemble_delta(LOGITS, np.array([0, 1, 1, 0]), max_chunk_bytes=0)   # was accepted
    assert bootstrap_sd([0.1, 0.2, 0.4], seed=None) >= 0
