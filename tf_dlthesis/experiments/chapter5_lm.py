"""Chapter 5 and Appendix B in language modeling: Tables 5.2, 5.4 and B.3.

The thesis repeats its nondeterminism protocol on a QRNN language model on Penn
Treebank: each source of nondeterminism (Table 5.2: parameter initialization,
stochastic operations - dropout and variable-length BPTT, one seed - and all
sources), the one-ULP bit change (Table 5.4) and snapshot ensembles (Table B.3,
at two training lengths), each row reporting the SD of test perplexity (with a
bootstrap "±"), the per-token pairwise disagreement of the argmax prediction and
the ensemble perplexity delta (Eq. 5.1 with f = perplexity).

Here the model is a word-level Keras LSTM trained as AWD-LSTM trains its models
(`variability.language_model`), on the English fortune-mod corpus of the Debian
package `fortunes` (`apt-get install fortunes`; Penn Treebank is licensed and
cannot be installed offline) preprocessed as Mikolov's Penn Treebank
(`variability._lm_corpus`). Every run is one `train_language_model` call in a
fresh process (`run_lm_protocol`), stored under ``"ch5.lm_runs"`` keyed by the
spec and source, so Table 5.2's "all sources" runs are read back by 5.4 and B.3
and a killed `reproduce` resumes.

Settings per scale (`SETTINGS`), chosen from the thesis's regime (a model that
learns far beyond word frequencies, trained to the end of a cosine schedule)
before any verdict was seen:

* quick - vocabulary 1,000 (<unk> 28% of test tokens, unigram test perplexity 93),
  the first 60,000 training tokens, one 128-unit LSTM layer with 64-dimensional
  embeddings, locked dropout 0.1 / 0.3, Adam 0.01 with a cosine to 0, batch 20,
  BPTT 35, 5 epochs (448 steps), R = 4 per source (the 2-core budget of the
  quick report: ~10 CPU-s per run, ~25 runs); snapshot ensembles of 5 cycles of
  1 epoch. Test perplexity ~60 (0.65 x unigram). One training length. Measured:
  in these 448 Adam steps a one-ULP bit change does not grow (the largest
  change of a test token's log-probability: 2.6e-5 after 5 epochs, 0.045 after
  15, about x2 per epoch), so Table 5.4's check "instability appeared" fails at
  this scale; at the standard setting one bit change changed 1.95% of the test
  predictions.
* standard - vocabulary 3,000 (<unk> 18% of test tokens, unigram test perplexity
  243), the first 200,000 training tokens, one 200-unit LSTM layer with
  100-dimensional embeddings, Adam 0.005, 10 epochs (snapshots: 5 cycles of 2
  epochs) and a second length of 20 epochs for Table B.3, R = 10 per row. One
  10-epoch run measured 100 CPU-s (1 thread, busy machine) and reached test
  perplexity 109 (0.45 x unigram); the three tables need ~91 such run-equivalents,
  estimated at ~75 minutes on 2 workers. Measured in the committed standard run
  (2 idle cores, 2 workers): Table 5.2's 30 runs 48.0 min, Table 5.4's 15 (10
  effective bit changes, 4 replaced draws, the control) 27.5 min, i.e. ~3.3 min
  per 10-epoch run per worker, and Table B.3's 30 (10 single runs of 20 epochs,
  10 snapshot ensembles each of 10 and 20 epochs; its 10-epoch single runs are
  Table 5.2's) 83.7 min: 159 min for the three tables, not 75.
* full - the thesis's sizes on the whole corpus: vocabulary 10,000 (Penn
  Treebank's), 256-dimensional embeddings, 3 x 512 LSTM layers (the thesis's
  QRNN), 500 and 1,000 epochs, R = 100. Declared for a GPU, never run here.

Reference: Thesis Sec. 5.3.3, 5.4.1, App. B.5; arXiv:2103.04514.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from tf_dlthesis.experiments import stats
from tf_dlthesis.experiments.chapter5 import _mean_pairs, _pair_ratio, _pct
from tf_dlthesis.experiments.registry import Check, Finding, Output, Table, for_scale, register, thesis_rows
from tf_dlthesis.experiments.training import _run_folder
from tf_dlthesis.variability.language_model import LanguageModelSpec, run_lm_protocol
from tf_dlthesis.variability.metrics import perplexity_from_log_probs

#: Store namespace of every language-model run.
STORE_KEY = "ch5.lm_runs"
#: Runs trained at a time (one process each).
WORKERS = 2
COLUMNS = ["runs", "perplexity", "ppl_sd", "ppl_sd_err", "disagreement_pct", "ensemble_ppl_delta"]
#: Table 5.2's sources (the thesis: parameter initialization, stochastic operations, all).
SOURCES = ("init", "stochastic", "all")
#: "Almost no difference": diversity metrics within 20% of each other (Sec. 5.3.2's bound).
_SIMILAR = (1 / 1.2, 1.2)
#: A language model that learned: validation perplexity below this fraction of the unigram model's.
_LEARNED = 0.8


@dataclasses.dataclass(frozen=True)
class LMSetting:
    """The language-model setting of one scale.

    Attributes:
        spec: the model and its training (single models; B.3's snapshot ensembles
            use it with `snapshots=snapshot_cycles`).
        runs: R per source of Table 5.2 (and of the bit change, Table 5.4).
        runs_snapshot: R of snapshot ensembles (Table B.3).
        snapshot_cycles: cosine cycles M of a snapshot ensemble (the thesis: 5).
        long_epochs: Table B.3's second training length (None: one length).
        min_runs: the R a regime check asks for.
    """

    spec: LanguageModelSpec
    runs: int
    runs_snapshot: int
    snapshot_cycles: int = 5
    long_epochs: int | None = None
    min_runs: int = 10

    def lengths(self) -> tuple:
        return (self.spec.epochs,) + ((self.long_epochs,) if self.long_epochs else ())


SETTINGS = {
    "quick": LMSetting(
        spec=LanguageModelSpec(vocab_size=1_000, train_tokens=60_000, embedding_dim=64, hidden=128, layers=1,
                               dropout=0.3, embedding_dropout=0.1, learning_rate=0.01, epochs=5, batch_size=20,
                               bptt=35),
        runs=4, runs_snapshot=4, min_runs=4),
    "standard": LMSetting(
        spec=LanguageModelSpec(vocab_size=3_000, train_tokens=200_000, embedding_dim=100, hidden=200, layers=1,
                               dropout=0.3, embedding_dropout=0.1, learning_rate=0.005, epochs=10, batch_size=20,
                               bptt=35),
        runs=10, runs_snapshot=10, long_epochs=20),
    "full": LMSetting(
        spec=LanguageModelSpec(vocab_size=10_000, train_tokens=None, embedding_dim=256, hidden=512, layers=3,
                               dropout=0.4, embedding_dropout=0.1, learning_rate=0.002, epochs=500, batch_size=20,
                               bptt=70),
        runs=100, runs_snapshot=100, long_epochs=1000, min_runs=100),
}


def settings(scale: str) -> LMSetting:
    """The language-model setting of `scale`.

    Raises:
        ValueError: unknown scale.
    """
    return for_scale(SETTINGS, scale)


def _corpus_dir(name: str):
    """The run's `--data-dir` where it holds corpus `name`, else the system's corpus (as `training.data_dir`)."""
    from tf_dlthesis.variability._lm_corpus import corpus_available

    return _run_folder(lambda folder: corpus_available(name, folder), lambda: corpus_available(name))


def _protocol(cfg: LMSetting, store, sources, *, spec: LanguageModelSpec | None = None, runs: int | None = None):
    spec = spec or cfg.spec
    return run_lm_protocol(spec, sources=list(sources), runs=runs or cfg.runs, store=store,
                           experiment=STORE_KEY, workers=WORKERS, data_dir=_corpus_dir(spec.corpus))


def _corpus(cfg: LMSetting):
    from tf_dlthesis.variability._lm_corpus import load_corpus

    return load_corpus(cfg.spec.corpus, vocab_size=cfg.spec.vocab_size, data_dir=_corpus_dir(cfg.spec.corpus))


# ---------------------------------------------------------------------------- statistics
def _row(metrics: dict) -> dict:
    return {
        "runs": metrics["runs"],
        "perplexity": metrics["perplexity"],
        "ppl_sd": metrics["perplexity_sd"],
        "ppl_sd_err": metrics["perplexity_sd_err"],
        "disagreement_pct": 100.0 * metrics["disagreement"],
        "ensemble_ppl_delta": metrics["ensemble_perplexity_delta"],
    }


def disagreement_matrix(predictions) -> np.ndarray:
    """(R, R): fraction of test tokens on which runs i and j predict different next tokens."""
    preds = np.asarray(predictions)
    return np.stack([(preds != p).mean(axis=1) for p in preds])


def ensemble_delta_matrix(target_log_probs) -> np.ndarray:
    """(R, R): Eq. 5.1's term PPL(mixture of i and j) - (PPL_i + PPL_j) / 2 of every pair (0 on the diagonal)."""
    lp = np.asarray(target_log_probs, dtype=np.float64)
    ppl = perplexity_from_log_probs(lp)
    out = np.zeros((len(lp), len(lp)))
    for i in range(len(lp)):
        for j in range(i + 1, len(lp)):
            mixed = np.logaddexp(lp[i], lp[j]) - np.log(2.0)
            out[i, j] = out[j, i] = np.exp(-mixed.mean()) - 0.5 * (ppl[i] + ppl[j])
    return out


def _ppl(res, source) -> np.ndarray:
    return perplexity_from_log_probs(res.target_log_probs[source])


def _similarity_findings(res, source: str, reference: str, claim: str, thesis_text: str) -> list:
    """PPL SD within a factor of 2, disagreement and ensemble PPL delta within 20%, of `reference`'s."""
    rows = res.rows
    sd = stats.sd_ratio(_ppl(res, source), _ppl(res, reference), what=f"test-perplexity SD ratio, {source} / {reference}")
    dis = _pair_ratio(disagreement_matrix(res.predictions[source]), disagreement_matrix(res.predictions[reference]),
                      f"per-token disagreement ratio, {source} / {reference}")
    ens = _pair_ratio(ensemble_delta_matrix(res.target_log_probs[source]),
                      ensemble_delta_matrix(res.target_log_probs[reference]),
                      f"ensemble perplexity delta ratio, {source} / {reference}")
    a, b = rows[source], rows[reference]
    return [
        Finding.test(f"{claim}: test-perplexity SDs within a factor of 2", sd, above=0.5, below=2.0,
                     evidence=f"PPL SD {a['perplexity_sd']:.3f} vs {b['perplexity_sd']:.3f} (R = {a['runs']} / "
                              f"{b['runs']}); thesis: {thesis_text}"),
        Finding.test(f"{claim}: per-token disagreement within 20%", dis, above=_SIMILAR[0], below=_SIMILAR[1],
                     evidence=f"disagreement {_pct(a['disagreement'])} vs {_pct(b['disagreement'])}; thesis: "
                              f"{thesis_text}"),
        Finding.test(f"{claim}: ensemble perplexity delta within 20%", ens, above=_SIMILAR[0], below=_SIMILAR[1],
                     evidence=f"ensemble PPL delta {a['ensemble_perplexity_delta']:.3f} vs "
                              f"{b['ensemble_perplexity_delta']:.3f}; thesis: {thesis_text}"),
    ]


def _regime_checks(cfg: LMSetting, results: dict, scale: str) -> list:
    """The models learned (validation perplexity far below the unigram model's); enough runs; convergence shown.

    `results`: row-label prefix -> `LMProtocolResult`.
    """
    corpus = _corpus(cfg)
    unigram = corpus.unigram_perplexity("valid")
    infos = [(f"{label}{source}", r, info) for label, res in results.items() for source, runs in res.info.items()
             for r, info in enumerate(runs) if source in res.rows]
    worst_label, worst_run, worst = max(infos, key=lambda t: t[2]["valid_perplexity"])
    counts = {f"{label}{s}": res.rows[s]["runs"] for label, res in results.items() for s in res.rows}
    shares = []
    for _, _, info in infos:
        loss = info["train_loss_history"]
        total = loss[0] - loss[-1]
        shares.append((loss[-2] - loss[-1]) / total if len(loss) > 1 and total > 0 else 1.0)
    return [
        Check(f"the language models learned: every run's validation perplexity < {_LEARNED} x the unigram model's",
              worst["valid_perplexity"] < _LEARNED * unigram,
              f"validation perplexity at most {worst['valid_perplexity']:.1f} ({worst_label} run {worst_run}) of "
              f"{len(infos)} models vs unigram {unigram:.1f} ({corpus.describe()})", regime=True),
        Check(f"runs per row (>= {cfg.min_runs} at scale {scale})", min(counts.values()) >= cfg.min_runs,
              ", ".join(f"{k} {v}" for k, v in counts.items()), regime=True),
        Check("training ran to the end of its cosine schedule; share of the training loss's decrease made in the "
              "last epoch (information: the thesis trained 500 epochs)", True,
              f"at most {100 * max(shares):.1f}%, median {100 * float(np.median(shares)):.1f}% over "
              f"{len(shares)} models"),
    ]


def _setting_text(cfg: LMSetting, scale: str) -> str:
    return (f"{cfg.spec.describe()}; {_corpus(cfg).describe()}; ensemble of two runs = the mixture of their "
            f"next-token distributions; scale {scale}")


_THESIS_SETTING = ("Penn Treebank, QRNN (256-d embeddings, 3 x 512 units; test PPL 75.49), AWD-LSTM code, "
                   "R = 100 per row")


# ---------------------------------------------------------------------------- Table 5.2
@register("5.2", title="Each source of nondeterminism in language modeling", chapter=5,
          quick_minutes=1.0, workers=WORKERS)
def table_5_2(scale, dataset, store, *, out=None):
    cfg = settings(scale)
    res = _protocol(cfg, store, SOURCES)
    table = Table(
        id="5.2",
        title="Variability of language models per source of nondeterminism",
        setting=f"{_setting_text(cfg, scale)}; R = {cfg.runs} per source; 'stochastic' = dropout masks and "
                f"variable BPTT lengths (one seed, as in the thesis); 'all' adds op nondeterminism",
        columns=COLUMNS,
        rows={s: _row(res.rows[s]) for s in SOURCES},
        thesis=thesis_rows("5.2"),
        thesis_setting=_THESIS_SETTING,
    )
    thesis = thesis_rows("5.2")
    findings = []
    for source in ("stochastic", "all"):
        t = thesis[source]
        findings += _similarity_findings(
            res, source, "init", f"{source} has an effect similar to parameter initialization",
            f"PPL SD {t['ppl_sd']} vs init {thesis['init']['ppl_sd']}, disagreement {t['disagreement_pct']}% vs "
            f"{thesis['init']['disagreement_pct']}%, ensemble PPL delta {t['ensemble_ppl_delta']} vs "
            f"{thesis['init']['ensemble_ppl_delta']}")
    return Output(tables=[table], findings=findings, checks=_regime_checks(cfg, {"": res}, scale))


# ---------------------------------------------------------------------------- Table 5.4
@register("5.4", title="Instability in language modeling: one random bit change", chapter=5,
          quick_minutes=0.5, workers=WORKERS)
def table_5_4(scale, dataset, store, *, out=None):
    cfg = settings(scale)
    res = _protocol(cfg, store, ["bit_change", "all"])
    bc = res.bit_changes["bit_change"]
    rows = {"all": _row(res.rows["all"])}
    if "bit_change" in res.rows:
        rows = {"bit_change": _row(res.rows["bit_change"]), **rows}
    thesis = thesis_rows("5.4")
    table = Table(
        id="5.4",
        title="Variability of language models from changing one embedding weight by one ULP (float32)",
        setting=f"{_setting_text(cfg, scale)}; R = {cfg.runs} bit changes of one first-layer (embedding) weight, each "
                f"checked against the unperturbed control run ({bc['replaced']} draw(s) that left the model "
                f"bit-identical were replaced by another position); 'all' = Table 5.2's all-sources runs",
        columns=COLUMNS,
        rows=rows,
        thesis={**thesis, "all": thesis_rows("5.2")["all"]},
        thesis_setting=_THESIS_SETTING,
    )
    claim = "A one-bit change to one weight produces roughly as much variability as all sources together"
    t, t_all = thesis["bit_change"], thesis_rows("5.2")["all"]
    text = (f"bit change PPL SD {t['ppl_sd']}, disagreement {t['disagreement_pct']}%, ensemble PPL delta "
            f"{t['ensemble_ppl_delta']} vs all sources {t_all['ppl_sd']}, {t_all['disagreement_pct']}%, "
            f"{t_all['ensemble_ppl_delta']}")
    if "bit_change" in res.rows:
        findings = _similarity_findings(res, "bit_change", "all", claim, text)
    else:
        findings = [Finding.not_comparable(claim, f"fewer than 2 bit changes took effect ({bc['effective']} of "
                                                  f"{bc['runs']} runs)")]
    checks = [Check("the bit changes took effect", not bc["exhausted"] and bc["effective"] >= 2,
                    f"{bc['effective']} of {bc['runs']} runs differ from the unperturbed control; {bc['replaced']} "
                    f"draw(s) were replaced", regime=True)]
    if "bit_change" in res.rows and res.control is not None:
        control = np.asarray(res.control["predictions"])
        flips = [float((p != control).mean()) for p in res.predictions["bit_change"]]
        checks.append(Check("instability appeared: the one-ULP change grew into other next-token predictions",
                            min(flips) > 0, f"test tokens predicted differently from the control: min "
                                            f"{_pct(min(flips))}, mean {_pct(float(np.mean(flips)))}"))
    checks += _regime_checks(cfg, {"": res}, scale)
    return Output(tables=[table], findings=findings, checks=checks)


# ---------------------------------------------------------------------------- Table B.3
@register("B.3", title="Snapshot ensembles in language modeling", chapter="B",
          quick_minutes=0.4, workers=WORKERS)
def table_b_3(scale, dataset, store, *, out=None):
    cfg = settings(scale)
    thesis = thesis_rows("B.3")
    thesis_lengths = (500, 1000)
    rows, ours, results, findings = {}, {}, {}, []
    for k, epochs in enumerate(cfg.lengths()):
        spec = cfg.spec.replace(epochs=epochs)
        single = _protocol(cfg, store, ["all"], spec=spec)
        snap = _protocol(cfg, store, ["all"], spec=spec.replace(snapshots=cfg.snapshot_cycles), runs=cfg.runs_snapshot)
        results[f"{epochs} epochs: "], results[f"{epochs} epochs, snapshot: "] = single, snap
        rows[f"all/{epochs}"] = _row(single.rows["all"])
        rows[f"snapshot/all/{epochs}"] = _row(snap.rows["all"])
        ours[f"all/{epochs}"] = thesis[f"all/{thesis_lengths[k]}"]
        ours[f"snapshot/all/{epochs}"] = thesis[f"snapshot/all/{thesis_lengths[k]}"]
        s, e = single.rows["all"], snap.rows["all"]
        t_s, t_e = thesis[f"all/{thesis_lengths[k]}"], thesis[f"snapshot/all/{thesis_lengths[k]}"]
        d_single, d_snap = disagreement_matrix(single.predictions["all"]), disagreement_matrix(snap.predictions["all"])
        dis = stats.bootstrap(lambda a, b: 100 * (_mean_pairs(d_snap, a) - _mean_pairs(d_single, b)),
                              np.arange(len(d_snap)), np.arange(len(d_single)),
                              what=f"per-token disagreement, snapshot ensembles minus single models, {epochs} epochs (pts)")
        e_single = ensemble_delta_matrix(single.target_log_probs["all"])
        e_snap = ensemble_delta_matrix(snap.target_log_probs["all"])
        ens = stats.bootstrap(lambda a, b: _mean_pairs(e_snap, a) - _mean_pairs(e_single, b),
                              np.arange(len(e_snap)), np.arange(len(e_single)),
                              what=f"ensemble PPL delta, snapshot ensembles minus single models, {epochs} epochs")
        p_single, p_snap = _ppl(single, "all"), _ppl(snap, "all")
        ppl = stats.bootstrap(lambda a, b: a.mean() - b.mean(), p_snap, p_single,
                              what=f"mean test perplexity, snapshot ensembles minus single models, {epochs} epochs")
        findings += [
            Finding.test(f"Snapshot ensembles lower the per-token disagreement ({epochs} epochs)", dis, below=0.0,
                         evidence=f"{_pct(s['disagreement'])} single vs {_pct(e['disagreement'])} snapshot; thesis "
                                  f"{t_s['disagreement_pct']}% vs {t_e['disagreement_pct']}%"),
            Finding.test(f"Snapshot ensembles shrink the perplexity gain from ensembling two runs ({epochs} epochs)",
                         ens, above=0.0,
                         evidence=f"ensemble PPL delta {s['ensemble_perplexity_delta']:.3f} single vs "
                                  f"{e['ensemble_perplexity_delta']:.3f} snapshot; thesis {t_s['ensemble_ppl_delta']} "
                                  f"vs {t_e['ensemble_ppl_delta']}"),
            Finding.test(f"Snapshot ensembles have a higher mean test perplexity than single models ({epochs} epochs)",
                         ppl, above=0.0,
                         evidence=f"mean PPL {s['perplexity']:.2f} single vs {e['perplexity']:.2f} snapshot; PPL SD "
                                  f"{s['perplexity_sd']:.3f} vs {e['perplexity_sd']:.3f} (the thesis: 'more mixed'); "
                                  f"thesis mean PPL 73.0 vs 75.0"),
        ]
    lengths = " and ".join(str(e) for e in cfg.lengths())
    table = Table(
        id="B.3",
        title="Variability of single language models and snapshot ensembles (all sources varied)",
        setting=f"{_setting_text(cfg, scale)}; rows all/E = single models trained E epochs (Table 5.2's all-sources "
                f"runs at E = {cfg.spec.epochs}), snapshot/all/E = snapshot ensembles of {cfg.snapshot_cycles} cosine "
                f"cycles over E epochs (the mixture of the {cfg.snapshot_cycles} snapshots); E = {lengths}; "
                f"R = {cfg.runs} single, {cfg.runs_snapshot} snapshot",
        columns=COLUMNS,
        rows=rows,
        thesis=ours,
        thesis_setting=f"{_THESIS_SETTING}; thesis rows at 500 and 1000 epochs shown beside our E = {lengths}",
    )
    return Output(tables=[table], findings=findings, checks=_regime_checks(cfg, results, scale))
