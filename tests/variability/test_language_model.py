"""The language-model protocol (Tables 5.2, 5.4, B.3): corpus, model, training, seeds, protocol."""

import math

import numpy as np
import pytest
from scipy.special import log_softmax

from tf_dlthesis.variability import SeedPlan
from tf_dlthesis.variability import _lm_corpus as corpus_mod
from tf_dlthesis.variability import language_model as lm

REAL_CORPUS = corpus_mod.corpus_available("fortunes")
needs_corpus = pytest.mark.skipif(
    not REAL_CORPUS, reason="the English fortune-mod corpus is not installed (`apt-get install fortunes`)")

# a tiny setting: one training run takes ~2 s on one core
TINY = lm.LanguageModelSpec(vocab_size=200, train_tokens=4_000, embedding_dim=8, hidden=16, epochs=2, batch_size=10,
                            bptt=20, eval_batch=512)


# ---------------------------------------------------------------------------- corpus
def _write_fortunes(folder, files):
    for name, docs in files.items():
        (folder / name).write_text("\n%\n".join(docs) + "\n%\n")
        (folder / f"{name}.dat").write_bytes(b"\0" * 24)  # strfile index: only its presence matters


def test_tokenize_is_penn_treebank_style():
    assert corpus_mod.tokenize("Don't PANIC!  It's 42, or 3.14... -- Douglas") == \
        ["don't", "panic", "it's", "N", "or", "N", "douglas"]
    assert corpus_mod.tokenize("_\bu_\bn_\bd_\be_\br lined") == ["under", "lined"]  # overstrike underlining
    with pytest.raises(TypeError, match="string"):
        corpus_mod.tokenize(b"bytes")


def test_corpus_from_fortune_files(tmp_path):
    docs = [f"fortune number {i} says the cat sat" for i in range(40)]
    _write_fortunes(tmp_path, {"alpha": docs[:20] + [docs[0]], "beta": docs[20:], "ascii-art": ["( o o )"]})
    (tmp_path / "notes.txt").write_text("no index: not a fortune file")
    corpus = corpus_mod.load_corpus(vocab_size=9, data_dir=tmp_path)
    assert corpus.files == ("alpha", "beta")  # ascii-art and index-less files left out
    assert corpus.documents == {"train": 36, "valid": 2, "test": 2}  # 40 distinct fortunes (duplicate dropped)
    # 7 tokens + <eos> per fortune
    assert (len(corpus.train), len(corpus.valid), len(corpus.test)) == (36 * 8, 16, 16)
    assert corpus.vocab[:2] == ("<eos>", "<unk>")
    # the seven words of every fortune, ties in alphabetical order; numbers are "N"
    assert corpus.vocab[2:] == ("N", "cat", "fortune", "number", "sat", "says", "the")
    assert np.sum(corpus.train == 0) == 36 and corpus.unk_rate("test") == 0.0
    text = [corpus.vocab[i] for i in corpus.test[:8]]
    assert text[:2] == ["fortune", "number"] and text[-1] == "<eos>"
    counts = np.bincount(corpus.train, minlength=9) + 1.0
    expected = math.exp(-np.mean(np.log(counts / counts.sum())[corpus.test]))
    assert corpus.unigram_perplexity("test") == pytest.approx(expected, rel=1e-12)
    assert corpus_mod.load_corpus(vocab_size=9, data_dir=tmp_path).fingerprint == corpus.fingerprint
    smaller = corpus_mod.load_corpus(vocab_size=8, data_dir=tmp_path)  # "the" (last in the tie order) -> <unk>
    assert smaller.vocab[-1] == "says" and smaller.unk_rate("test") == pytest.approx(1 / 8)


def test_the_cached_corpus_is_read_only_and_follows_its_files(tmp_path):
    # one cached object serves every caller: an in-place edit once reached them all, an added file none
    docs = [f"fortune number {i} says the cat sat" for i in range(20)]
    _write_fortunes(tmp_path, {"alpha": docs})
    corpus = corpus_mod.load_corpus(vocab_size=9, data_dir=tmp_path)
    assert corpus_mod.load_corpus(vocab_size=9, data_dir=tmp_path) is corpus
    for stream in (corpus.train, corpus.valid, corpus.test):
        with pytest.raises(ValueError, match="read-only"):
            stream[:1] = 0
    _write_fortunes(tmp_path, {"beta": [f"another fortune {i} here" for i in range(20)]})
    grown = corpus_mod.load_corpus(vocab_size=9, data_dir=tmp_path)
    assert grown.files == ("alpha", "beta") and sum(grown.documents.values()) == 40


def test_missing_corpus_names_the_install(tmp_path, monkeypatch):
    monkeypatch.setattr(corpus_mod, "DEFAULT_DIRS", (str(tmp_path / "nowhere"),))
    assert not corpus_mod.corpus_available(data_dir=tmp_path)
    with pytest.raises(FileNotFoundError, match="apt-get install fortunes"):
        corpus_mod.load_corpus(data_dir=tmp_path)
    with pytest.raises(FileNotFoundError, match="apt-get install fortunes"):
        lm.run_lm_protocol(TINY, sources=["init"], runs=2, data_dir=tmp_path)
    with pytest.raises(ValueError, match="threads_per_run=0"):  # a bad argument is named before the corpus loads
        lm.run_lm_protocol(TINY, sources=["init"], runs=2, threads_per_run=0, data_dir=tmp_path)
    with pytest.raises(ValueError, match="name"):
        corpus_mod.load_corpus("ptb")
    with pytest.raises(ValueError, match="vocab_size"):
        corpus_mod.load_corpus(vocab_size=2, data_dir=tmp_path)


def test_a_data_dir_without_the_corpus_is_an_error_never_the_systems(tmp_path, monkeypatch):
    from tf_dlthesis.experiments import chapter5_lm
    from tf_dlthesis.experiments.training import data_dir

    system, empty, mine = tmp_path / "system", tmp_path / "empty", tmp_path / "mine"
    for folder in (system, empty, mine / "fortunes"):
        folder.mkdir(parents=True)
    _write_fortunes(system, {"alpha": [f"the system fortune {i}" for i in range(40)]})
    _write_fortunes(mine / "fortunes", {"beta": [f"my own fortune {i}" for i in range(40)]})
    monkeypatch.setattr(corpus_mod, "DEFAULT_DIRS", (str(system),))
    assert corpus_mod.load_corpus(vocab_size=9).files == ("alpha",)
    assert not corpus_mod.corpus_available(data_dir=empty)
    with pytest.raises(FileNotFoundError, match="holds no 'fortunes' corpus"):
        corpus_mod.load_corpus(vocab_size=9, data_dir=empty)  # not silently the system's files
    assert corpus_mod.load_corpus(vocab_size=9, data_dir=mine).files == ("beta",)  # DIR/fortunes/ is read
    # a run's --data-dir serves the corpus where it holds it, else the system's; neither: the error names it
    for run_dir, expected in ((mine, str(mine)), (empty, None), (None, None)):
        with data_dir(None if run_dir is None else str(run_dir)):
            assert chapter5_lm._corpus_dir("fortunes") == expected
    monkeypatch.setattr(corpus_mod, "DEFAULT_DIRS", (str(tmp_path / "nowhere"),))
    with data_dir(str(empty)):
        assert chapter5_lm._corpus_dir("fortunes") == str(empty)


@needs_corpus
def test_real_corpus_size():
    corpus = corpus_mod.load_corpus(vocab_size=10_000)
    assert 350_000 < len(corpus.train) < 500_000 and len(corpus.test) > 15_000 and len(corpus.valid) > 15_000
    assert corpus.vocab_size == 10_000 and corpus.unk_rate("test") < 0.12
    assert corpus.unigram_perplexity("valid") > 300


# ---------------------------------------------------------------------------- model and data layout
def test_segment_lengths():
    assert lm.segment_lengths(10, 4, seed=None, variable=False) == [4, 4, 2]
    a = lm.segment_lengths(1_000, 35, seed=3)
    assert sum(a) == 1_000 and min(a[:-1]) >= 5 and a == lm.segment_lengths(1_000, 35, seed=3)
    assert a != lm.segment_lengths(1_000, 35, seed=4)
    assert 25 < np.mean(a[:-1]) < 40  # base 35, halved with probability 0.05
    # before: NumPy's errors naming no argument, and variable="no" read as True
    with pytest.raises(ValueError, match="`seed` must be an int >= 0 or None\. Received: seed=-1"):
        lm.segment_lengths(100, 35, seed=-1)
    with pytest.raises(TypeError, match="Received: seed=1.5"):
        lm.segment_lengths(100, 35, seed=1.5)
    with pytest.raises(TypeError, match="`variable` must be a bool. Received: variable='no'"):
        lm.segment_lengths(100, 35, seed=0, variable="no")
    with pytest.raises(ValueError, match="`models` is empty"):  # before: "math domain error"
        lm.evaluate_stream([], np.arange(50))


def test_fixed_bptt_runs_that_vary_dropout_share_their_segment_hash():
    # variable_bptt=False: every run has the same segments, so "stochastic" runs share the order hash
    # (before: "Source 'stochastic' varies stochastic but its runs share a order_hash", after training)
    control = {"init_hash": "i0", "order_hash": "o"}
    records = {"stochastic": [{"init_hash": "i0", "order_hash": "o"}, {"init_hash": "i0", "order_hash": "o"}],
               "init": [{"init_hash": "i1", "order_hash": "o"}, {"init_hash": "i2", "order_hash": "o"}]}
    lm._check_hashes(records, control, segments_vary=False)
    with pytest.raises(RuntimeError, match="varies stochastic but its runs share"):
        lm._check_hashes(records, control, segments_vary=True)
    leaked = {"stochastic": [{"init_hash": "i0", "order_hash": "o"}, {"init_hash": "i0", "order_hash": "p"}]}
    with pytest.raises(RuntimeError, match="uncontrolled source"):  # fixed segments must all agree
        lm._check_hashes(leaked, control, segments_vary=False)


def test_windows_and_labels():
    labels = lm.evaluation_labels(np.arange(11), window=3)
    np.testing.assert_array_equal(labels, np.arange(1, 10))  # 3 windows of 3 predicted tokens
    np.testing.assert_array_equal(lm.batchify(np.arange(7), 2), [[0, 1, 2], [3, 4, 5]])
    with pytest.raises(ValueError, match="too short"):
        lm.evaluation_labels(np.arange(3), window=3)


def test_model_seeds_and_locked_dropout():
    a = lm.build_language_model(30, embedding_dim=6, hidden=8, seed=1, stochastic_seed=5)
    b = lm.build_language_model(30, embedding_dim=6, hidden=8, seed=1, stochastic_seed=6)
    c = lm.build_language_model(30, embedding_dim=6, hidden=8, seed=2, stochastic_seed=5)
    for wa, wb in zip(a.get_weights(), b.get_weights()):
        np.testing.assert_array_equal(wa, wb)  # the stochastic seed leaves the initialization alone
    assert any(not np.array_equal(wa, wc) for wa, wc in zip(a.get_weights(), c.get_weights()))
    drop = a.get_layer("embedding_dropout")
    x = np.ones((3, 7, 6), "float32")
    out = np.asarray(drop(x, training=True))
    # locked dropout: one mask per sequence, the same at every time step
    np.testing.assert_array_equal(out, np.repeat(out[:, :1], 7, axis=1))
    assert 0 < np.mean(out == 0) < 1
    np.testing.assert_array_equal(np.asarray(drop(x, training=False)), x)


def test_model_serializes(tmp_path):
    import keras

    model = lm.build_language_model(20, embedding_dim=4, hidden=5, seed=0)
    path = str(tmp_path / "lm.keras")
    model.save(path)
    loaded = keras.saving.load_model(path)
    x = np.arange(12, dtype="int32").reshape(2, 6) % 20
    np.testing.assert_allclose(np.asarray(loaded(x)), np.asarray(model(x)), atol=1e-6)


def test_evaluate_stream_against_keras_forward():
    models = [lm.build_language_model(15, embedding_dim=4, hidden=6, seed=s) for s in (0, 1)]
    stream = np.random.default_rng(0).integers(0, 15, size=23)
    target, preds = lm.evaluate_stream(models[0], stream, window=5, batch=2)
    x = stream[:20].reshape(4, 5).astype("int32")
    y = stream[1:21].reshape(4, 5)
    logp = log_softmax(np.asarray(models[0](x), dtype=np.float64), axis=-1)
    np.testing.assert_allclose(target, np.take_along_axis(logp, y[..., None], -1).reshape(-1), atol=1e-5)
    np.testing.assert_array_equal(preds, logp.argmax(-1).reshape(-1))
    # two models: the mixture of their distributions
    logp2 = log_softmax(np.asarray(models[1](x), dtype=np.float64), axis=-1)
    mixed = np.log(0.5 * (np.exp(logp) + np.exp(logp2)))
    target2, preds2 = lm.evaluate_stream(models, stream, window=5)
    np.testing.assert_allclose(target2, np.take_along_axis(mixed, y[..., None], -1).reshape(-1), atol=1e-5)
    np.testing.assert_array_equal(preds2, mixed.argmax(-1).reshape(-1))


def test_evaluating_many_models_logs_no_retracing_warning(caplog):
    models = [lm.build_language_model(15, embedding_dim=4, hidden=6, seed=s) for s in range(8)]
    stream = np.random.default_rng(0).integers(0, 15, size=23)
    with caplog.at_level("WARNING", logger="tensorflow"):
        for model in models:                                       # one call per model, as in the protocol
            lm.evaluate_stream(model, stream, window=5)
    assert not [r.getMessage() for r in caplog.records if "retracing" in r.getMessage()]


@pytest.mark.parametrize("kwargs, match", [
    ({"vocab_size": 2}, "vocab_size"),
    ({"dropout": 1.0}, "dropout"),
    ({"bptt": 3}, "bptt"),
    ({"learning_rate": 0}, "learning_rate"),
    ({"epochs": 4, "snapshots": 3}, "multiple of `snapshots`"),
    ({"corpus": "ptb"}, "corpus"),
    ({"train_tokens": 1}, "train_tokens"),
])
def test_spec_rejects_bad_values(kwargs, match):
    with pytest.raises(ValueError, match=match):
        lm.LanguageModelSpec(**kwargs)


def test_protocol_rejects_bad_arguments():
    with pytest.raises(ValueError, match="varies nothing"):
        lm.run_lm_protocol(TINY, sources=["shuffle"], runs=2)
    with pytest.raises(TypeError, match="not a string"):
        lm.run_lm_protocol(TINY, sources="init", runs=2)
    with pytest.raises(ValueError, match="runs"):
        lm.run_lm_protocol(TINY, sources=["init"], runs=1)
    with pytest.raises(ValueError, match="executor"):
        lm.run_lm_protocol(TINY, sources=["init"], runs=2, executor="ray")
    with pytest.raises(TypeError, match="LanguageModelSpec"):
        lm.train_language_model({"epochs": 1})


# ---------------------------------------------------------------------------- training on the real corpus
@pytest.fixture(scope="module")
def tiny_runs():
    if not REAL_CORPUS:
        pytest.skip("the English fortune-mod corpus is not installed (`apt-get install fortunes`)")
    base = SeedPlan(init=1, shuffle=1, augment=1, stochastic=1)
    plans = {"base": base, "again": base, "init": base.vary("init", 0), "stochastic": base.vary("stochastic", 0),
             # draw 0 of this run moves a weight of a word the tiny run's test stream never meets, leaving the
             # test outputs bit-identical (run_lm_protocol replaces such draws); draw 1 takes effect
             "bit": base.vary("bit_change", 0).redraw_bit_change(1)}
    return {name: lm.train_language_model(TINY, plan) for name, plan in plans.items()}


def test_training_is_reproducible_and_learns(tiny_runs):
    base, again = tiny_runs["base"], tiny_runs["again"]
    np.testing.assert_array_equal(base["target_log_probs"], again["target_log_probs"])
    assert base["weights_hash"] == again["weights_hash"]
    corpus = corpus_mod.load_corpus(vocab_size=TINY.vocab_size)
    n = len(lm.evaluation_labels(corpus.test, TINY.bptt))
    assert base["target_log_probs"].shape == base["predictions"].shape == (n,)
    info = base["info"]
    assert info["test_perplexity"] == pytest.approx(math.exp(-base["target_log_probs"].astype(float).mean()))
    assert info["train_loss_history"][-1] < info["train_loss_history"][0]
    assert info["test_perplexity"] < TINY.vocab_size  # better than uniform


def test_each_source_varies_only_its_seed(tiny_runs):
    base = tiny_runs["base"]
    init, stochastic, bit = tiny_runs["init"], tiny_runs["stochastic"], tiny_runs["bit"]
    assert init["init_hash"] != base["init_hash"] and init["order_hash"] == base["order_hash"]
    assert stochastic["init_hash"] == base["init_hash"] and stochastic["order_hash"] != base["order_hash"]
    # a bit change: the same initialization (hashed before the change) and order, one weight one ULP away
    assert bit["init_hash"] == base["init_hash"] and bit["order_hash"] == base["order_hash"]
    change = bit["info"]["bit_change"]
    assert change["layer"] == "embedding"
    assert np.nextafter(np.float32(change["old"]), np.float32(change["direction"] * np.inf)) == np.float32(change["new"])
    for run in (init, stochastic, bit):
        assert not np.array_equal(run["target_log_probs"], base["target_log_probs"])


def test_snapshot_ensemble_is_the_mixture_of_its_members():
    if not REAL_CORPUS:
        pytest.skip("the English fortune-mod corpus is not installed (`apt-get install fortunes`)")
    run = lm.train_language_model(TINY.replace(snapshots=2), SeedPlan(init=3, stochastic=4))
    info = run["info"]
    assert info["snapshot_epochs"] == [0, 1] and len(info["member_test_perplexity"]) == 2
    # a mixture's log-likelihood is at least the mean of its members' (Jensen), so its perplexity is lower
    assert info["test_perplexity"] < max(info["member_test_perplexity"])


@needs_corpus
def test_protocol_serial_with_bit_change_and_resume(tmp_path):
    from tf_dlthesis.experiments import ResultsStore

    spec = TINY.replace(epochs=1)
    store = ResultsStore(str(tmp_path / "lm.sqlite"))
    res = lm.run_lm_protocol(spec, sources=["init", "bit_change"], runs=2, store=store, executor="serial",
                             progress=False, bootstrap_samples=20)
    assert set(res.rows) == {"init", "bit_change"}
    assert res.bit_changes["bit_change"]["effective"] == 2 and res.control is not None
    assert res.target_log_probs["init"].shape == (2, res.labels.shape[0])
    row = res.rows["init"]
    ppl = np.exp(-res.target_log_probs["init"].astype(float).mean(axis=1))
    assert row["perplexity_sd"] == pytest.approx(np.std(ppl, ddof=1), rel=1e-9)
    before = len(store.rows(lm.STORE_KEY))
    again = lm.run_lm_protocol(spec, sources=["init", "bit_change"], runs=2, store=store, executor="serial",
                               progress=False, bootstrap_samples=20)
    assert len(store.rows(lm.STORE_KEY)) == before  # everything read back, nothing retrained
    np.testing.assert_array_equal(again.target_log_probs["bit_change"], res.target_log_probs["bit_change"])


# ---------------------------------------------------------------------------- Tables 5.2 / 5.4 / B.3 helpers
def test_table_pair_matrices_by_hand():
    from tf_dlthesis.experiments import chapter5_lm
    from tf_dlthesis.variability import mixture_perplexity_delta

    preds = np.array([[0, 1], [1, 1], [0, 0]])
    np.testing.assert_allclose(chapter5_lm.disagreement_matrix(preds), [[0, .5, .5], [.5, 0, 1], [.5, 1, 0]])
    true = np.log([[0.5, 0.6], [0.25, 0.8], [0.8, 0.25]])
    mat = chapter5_lm.ensemble_delta_matrix(true)
    # pair (0, 1): mixture p = .375, .7 -> PPL 1/sqrt(.2625); members 1/sqrt(.3), 1/sqrt(.2)
    assert mat[0, 1] == pytest.approx(1 / np.sqrt(0.2625) - (1 / np.sqrt(0.3) + 1 / np.sqrt(0.2)) / 2, rel=1e-12)
    assert mat[0, 1] == mat[1, 0] and np.all(np.diag(mat) == 0)
    assert mat[np.triu_indices(3, 1)].mean() == pytest.approx(mixture_perplexity_delta(true), rel=1e-12)


def test_table_settings():
    from tf_dlthesis.experiments import chapter5_lm

    for scale, cfg in chapter5_lm.SETTINGS.items():
        for epochs in cfg.lengths():  # every training length splits into the snapshot cycles
            cfg.spec.replace(epochs=epochs, snapshots=cfg.snapshot_cycles)
    with pytest.raises(ValueError, match="scale"):
        chapter5_lm.settings("huge")


def test_pair_ratio_of_a_zero_reference_is_nan_not_a_crash():
    """Table 5.4 / B.3 ratios divided by the reference's mean over pairs: a reference whose runs agree exactly
    (mean 0) raised ZeroDivisionError in the language-model chapter (Table 5.1's version already gave NaN)."""
    from tf_dlthesis.experiments import chapter5_lm

    a = np.full((6, 6), 0.2) - 0.2 * np.eye(6)
    e = chapter5_lm._pair_ratio(a, np.zeros((6, 6)), "ratio")
    assert math.isnan(e.estimate)
    assert chapter5_lm._pair_ratio(a, 2 * a, "ratio").estimate == pytest.approx(0.5)
    assert chapter5_lm._pair_ratio(-a, -2 * a, "ratio").estimate == pytest.approx(0.5)  # ensemble deltas are < 0
