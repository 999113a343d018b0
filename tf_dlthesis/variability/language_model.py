"""The nondeterminism protocol for a recurrent language model (Thesis Sec. 5.3.3, 5.4.1, B.5).

The thesis repeats its protocol on language modeling (Tables 5.2, 5.4, B.3): a
QRNN (Salesforce's AWD-LSTM/QRNN code) on Penn Treebank, with two sources of
nondeterminism - parameter initialization and "stochastic operations" (its
dropout variants and variable-length backpropagation through time, which share
one seed) - plus the one-ULP bit change and snapshot ensembles. This module gives
the same protocol a Keras word-level LSTM language model trained the way that code
trains it:

* the training stream is cut into `batch_size` parallel rows, read in order in
  segments (truncated BPTT);
* variable-length BPTT: each segment's length is drawn as in AWD-LSTM (the base
  length `bptt`, halved with probability 0.05, plus N(0, 5) jitter, at least 5),
  and the step's learning rate is scaled by length / `bptt`;
* unlike AWD-LSTM, every segment starts from a zero hidden state, in training and
  in evaluation (the test stream is read in windows of `bptt` tokens): with the
  short training that fits a CPU, a state carried along a whole evaluation row
  left some rows in a state training never visits (small cell states, where the
  model predicts nonsense), with row perplexities above 10,000 - a pathology of
  undertrained models that would swamp the run-to-run variability measured here;
* locked ("variational") dropout - one mask per sequence, shared over time - on
  the embeddings, between layers and on the output, seeded explicitly;
* Adam with global gradient-norm clipping, the learning rate annealed along a
  cosine (`CyclicCosineSchedule` with one cycle) or, for a snapshot ensemble,
  restarted in `snapshots` cycles with a `SnapshotEnsemble` snapshot at the end of
  each (the ensemble's prediction: the mixture of its members' next-token
  distributions).

Seeds come from a `SeedPlan`: `init` seeds every initializer, `stochastic` the
dropout masks and the BPTT lengths (one seed, as in the thesis), `bit_change`
moves one embedding weight (the first layer) by one ULP after initialization, and
`deterministic_ops` switches TF op determinism. The data order is fixed (the
thesis's code reads the stream in order), so `shuffle` and `augment` have nothing
to vary.

A run keeps, for every test token, the log-probability of the true next token and
the argmax prediction: all that perplexity SD, per-token disagreement and the
(mixture) ensemble perplexity delta need (`metrics.language_model_metrics`); a
language model's full (tokens x vocabulary) logits are too large to keep for R runs.

Example:

>>> from tf_dlthesis.variability.language_model import LanguageModelSpec, run_lm_protocol
>>> spec = LanguageModelSpec(vocab_size=2_000, train_tokens=60_000, epochs=4)
>>> # result = run_lm_protocol(spec, sources=["init", "stochastic", "bit_change"], runs=10)
>>> # result.rows["init"]["perplexity_sd"], result.rows["bit_change"]["disagreement"]

Reference: Thesis Ch. 5, Sec. 5.3.3, 5.4.1 and App. B.5, Tables 5.2, 5.4, B.3;
arXiv:2103.04514; Merity et al., "Regularizing and Optimizing LSTM Language
Models", arXiv:1708.02182 (the training recipe).
"""

from __future__ import annotations

import dataclasses
import functools
import math
import numbers
import time

import keras
import numpy as np

from tf_dlthesis._checks import check_bool, check_int
from tf_dlthesis._seeds import check_int_seed
from tf_dlthesis.models._build import _head_dtype
from tf_dlthesis.variability._lm_corpus import Corpus, load_corpus
from tf_dlthesis.variability.bit_change import bit_change
from tf_dlthesis.variability.cyclic_cosine_schedule import CyclicCosineSchedule
from tf_dlthesis.variability.metrics import language_model_metrics
from tf_dlthesis.variability.protocol import _as_store, _check_main_guard, _default_workers, _ineffective, \
    _MemoryStore, _process_pool, _Scheduler, _source_list, _stamp_machine, _start_run, _threads_key
from tf_dlthesis.variability.seed_plan import SeedPlan, derive_seed, order_hash, parse_source, \
    reseed_stochastic_layers, weights_hash
from tf_dlthesis.variability.snapshot_ensemble import SnapshotEnsemble

#: Sources the language model varies (the SeedPlan sources it reads).
LM_SOURCES = ("init", "stochastic", "ops", "bit_change")
#: Store namespace of the language-model runs.
STORE_KEY = "ch5.lm_runs"
_MIN_SEGMENT = 5


def _real(value) -> bool:
    """Whether `value` is a real number (Python or NumPy, e.g. `np.float32(0.3)`), not a bool."""
    return isinstance(value, numbers.Real) and not isinstance(value, (bool, np.bool_))


def _rate(name, value):
    if not _real(value) or not 0.0 <= value < 1.0:
        raise ValueError(f"`{name}` must be a float in [0, 1). Received: {name}={value!r}")
    return float(value)


def _plain(value):
    """A Python int or float as given, a NumPy number as a Python float (so `to_config` stays JSON-able and
    the store key of an int setting does not change)."""
    return value if type(value) in (int, float) else float(value)


def _positive(name, value):
    if not _real(value) or not 0.0 < value < math.inf:
        raise ValueError(f"`{name}` must be a finite number > 0. Received: {name}={value!r}")
    return _plain(value)


@dataclasses.dataclass(frozen=True)
class LanguageModelSpec:
    """How one language model is trained and evaluated.

    Example:

    >>> spec = LanguageModelSpec(vocab_size=2_000, epochs=4)
    >>> spec.replace(snapshots=2).snapshots
    2

    Attributes:
        corpus: Corpus name (`_lm_corpus.CORPORA`: `"fortunes"`).
        vocab_size: Vocabulary including `<eos>` and `<unk>` (Penn Treebank: 10,000).
        train_tokens: Train on the first this many training tokens (None: all).
        embedding_dim, hidden, layers: LSTM sizes (the thesis's QRNN: 256, 512, 3).
        dropout: Locked dropout on the outputs of the LSTM layers.
        embedding_dropout: Locked dropout on the embeddings.
        learning_rate: Adam's peak learning rate.
        clipnorm: Global gradient-norm clip (AWD-LSTM: 0.25).
        epochs: Passes over the training stream.
        batch_size: Parallel rows of the training stream.
        bptt: Base segment length of truncated BPTT (AWD-LSTM: 70).
        variable_bptt: Draw segment lengths as AWD-LSTM does (False: fixed `bptt`).
        snapshots: None, or the cycles M of a snapshot ensemble (the thesis: 5).
        eval_batch: Windows of `bptt` tokens evaluated per step.
    """

    corpus: str = "fortunes"
    vocab_size: int = 10_000
    train_tokens: int | None = None
    embedding_dim: int = 128
    hidden: int = 256
    layers: int = 1
    dropout: float = 0.3
    embedding_dropout: float = 0.1
    learning_rate: float = 3e-3
    clipnorm: float = 0.25
    epochs: int = 10
    batch_size: int = 32
    bptt: int = 35
    variable_bptt: bool = True
    snapshots: int | None = None
    eval_batch: int = 256

    def __post_init__(self):
        from tf_dlthesis.variability._lm_corpus import CORPORA

        if self.corpus not in CORPORA:
            raise ValueError(f"`corpus` must be one of {CORPORA}. Received: corpus={self.corpus!r}")
        # NumPy ints / bools are stored as Python ones, so `to_config` (the store's key) is one JSON
        ints = {"vocab_size": (3, False), "train_tokens": (2, True), "bptt": (_MIN_SEGMENT, False),
                "snapshots": (1, True), **{name: (1, False) for name in (
                    "embedding_dim", "hidden", "layers", "epochs", "batch_size", "eval_batch")}}
        for name, (minimum, allow_none) in ints.items():
            object.__setattr__(self, name, check_int(name, getattr(self, name), minimum, allow_none=allow_none))
        for name in ("dropout", "embedding_dropout"):
            _rate(name, getattr(self, name))
            object.__setattr__(self, name, _plain(getattr(self, name)))
        for name in ("learning_rate", "clipnorm"):
            object.__setattr__(self, name, _positive(name, getattr(self, name)))
        object.__setattr__(self, "variable_bptt", check_bool("variable_bptt", self.variable_bptt))
        if self.snapshots is not None:
            if self.epochs % self.snapshots:
                raise ValueError(f"`epochs` must be a multiple of `snapshots` (one snapshot per cycle). "
                                 f"Received: epochs={self.epochs}, snapshots={self.snapshots}")

    def replace(self, **changes) -> "LanguageModelSpec":
        return dataclasses.replace(self, **changes)

    def to_config(self) -> dict:
        return dataclasses.asdict(self)

    def describe(self) -> str:
        size = f"{self.layers}x{self.hidden} LSTM, embedding {self.embedding_dim}, vocabulary {self.vocab_size:,}"
        data = f"{self.corpus} ({'all' if self.train_tokens is None else f'{self.train_tokens:,}'} training tokens)"
        ens = f", snapshot ensemble of {self.snapshots} cosine cycles" if self.snapshots else ""
        return (f"{size} on {data}; locked dropout {self.embedding_dropout}/{self.dropout}, "
                f"{'variable' if self.variable_bptt else 'fixed'} BPTT {self.bptt}, batch {self.batch_size}, "
                f"Adam {self.learning_rate:g} + cosine, clip {self.clipnorm:g}, {self.epochs} epochs{ens}")


# ---------------------------------------------------------------------------- model
def build_language_model(vocab_size: int, *, embedding_dim: int = 128, hidden: int = 256, layers: int = 1,
                         dropout: float = 0.3, embedding_dropout: float = 0.1, seed: int | None = None,
                         stochastic_seed: int | None = None) -> keras.Model:
    """A word-level LSTM language model: token ids (B, T) -> next-token logits (B, T, V).

    Embedding -> locked dropout -> `layers` x (LSTM -> locked dropout) -> Dense.
    Dropout is locked ("variational", AWD-LSTM): one mask per sequence, shared over
    time (`noise_shape=(None, 1, features)`). Only standard Keras layers, so the
    model saves and loads with `keras.saving`.

    Example:

    >>> import numpy as np
    >>> model = build_language_model(50, embedding_dim=8, hidden=16, seed=0)
    >>> tuple(model(np.zeros((2, 5), "int32")).shape)
    (2, 5, 50)

    Args:
        vocab_size: Number of tokens V.
        embedding_dim, hidden, layers: Sizes.
        dropout: Locked dropout rate after each LSTM layer.
        embedding_dropout: Locked dropout rate on the embeddings.
        seed: Seeds every initializer (the "init" source); None: unseeded.
        stochastic_seed: Seeds the dropout masks (the "stochastic" source);
            None: derived from `seed` (unseeded too when `seed` is None).

    Returns:
        An uncompiled functional `keras.Model`.

    Raises:
        TypeError: a size or seed that is not an int.
        ValueError: a size < 1, a rate outside [0, 1) or a negative seed.
    """
    vocab_size = check_int("vocab_size", vocab_size, 2)
    # as Python ints: Keras's layers refuse NumPy ints (`output_dim=4 (of type int64)`)
    embedding_dim, hidden, layers = (check_int(name, value, 1) for name, value in (
        ("embedding_dim", embedding_dim), ("hidden", hidden), ("layers", layers)))
    _rate("dropout", dropout)
    _rate("embedding_dropout", embedding_dropout)
    if seed is not None:
        seed = check_int("seed", seed, 0)
    if stochastic_seed is not None:
        drop = derive_seed(check_int("stochastic_seed", stochastic_seed, 0))
    else:  # no seed at all: unseeded masks, as the unseeded initializers (not one fixed mask sequence)
        drop = None if seed is None else derive_seed(seed, 999)

    def init_seed(i):
        return None if seed is None else derive_seed(seed, i)

    def drop_seed(i):
        return None if drop is None else derive_seed(drop, i)
    tokens = keras.Input((None,), dtype="int32", name="tokens")
    x = keras.layers.Embedding(vocab_size, embedding_dim, name="embedding",
                               embeddings_initializer=keras.initializers.RandomUniform(-0.1, 0.1, seed=init_seed(0)))(tokens)
    x = keras.layers.Dropout(embedding_dropout, noise_shape=(None, 1, embedding_dim), seed=drop_seed(0),
                             name="embedding_dropout")(x)
    for i in range(layers):
        x = keras.layers.LSTM(
            hidden, return_sequences=True, name=f"lstm{i}",
            kernel_initializer=keras.initializers.GlorotUniform(seed=init_seed(3 * i + 1)),
            recurrent_initializer=keras.initializers.Orthogonal(seed=init_seed(3 * i + 2)),
        )(x)
        x = keras.layers.Dropout(dropout, noise_shape=(None, 1, hidden), seed=drop_seed(i + 1),
                                 name=f"dropout{i}")(x)
    logits = keras.layers.Dense(vocab_size, name="decoder", dtype=_head_dtype(),  # float32 under a mixed policy
                                kernel_initializer=keras.initializers.GlorotUniform(seed=init_seed(3 * layers + 1)))(x)
    return keras.Model(tokens, logits, name="lstm_language_model")


def _model_for(spec: LanguageModelSpec, plan: SeedPlan) -> keras.Model:
    return build_language_model(spec.vocab_size, embedding_dim=spec.embedding_dim, hidden=spec.hidden,
                                layers=spec.layers, dropout=spec.dropout, embedding_dropout=spec.embedding_dropout,
                                seed=plan.init, stochastic_seed=plan.stochastic)


def _token_stream(stream, vocab_size: int | None = None) -> np.ndarray:
    """`stream` as a 1-D integer array, its ids checked against `vocab_size` (None: only >= 0).

    An id outside the embedding's table is an error: TF's gather raises a graph error naming no
    argument on CPU and silently reads zeros on GPU.
    """
    arr = np.asarray(stream)
    if arr.ndim != 1:
        raise ValueError(f"`stream` must be a 1-D sequence of token ids. Received: shape={arr.shape}")
    if arr.size == 0:
        return arr.astype(np.int64)  # too short: the caller says for what
    if not np.issubdtype(arr.dtype, np.integer):
        raise TypeError(f"`stream` must hold integer token ids. Received: dtype={arr.dtype}")
    low, high = int(arr.min()), int(arr.max())
    if low < 0 or (vocab_size is not None and high >= vocab_size):
        bound = "" if vocab_size is None else f", {vocab_size}"
        raise ValueError(f"`stream` holds token ids outside [0{bound}) (the model's vocabulary). "
                         f"Received: ids from {low} to {high}")
    return arr


def _model_vocab(model) -> int | None:
    """The number of tokens a model scores (its logits' last dimension), or None when unknown."""
    try:
        size = model.outputs[0].shape[-1]
    except (AttributeError, IndexError, TypeError, ValueError):
        return None
    return None if size is None else int(size)


def batchify(stream, rows: int) -> np.ndarray:
    """Cuts a token stream into `rows` parallel rows (the remainder is dropped), shape (rows, len // rows).

    Raises:
        TypeError: if the stream does not hold integer token ids.
        ValueError: if the stream is not 1-D, holds a negative id or has fewer than 2 tokens per row.
    """
    stream = _token_stream(stream)
    rows = check_int("rows", rows, 1)
    cols = stream.shape[0] // rows
    if cols < 2:
        raise ValueError(f"A stream of {stream.shape[0]} tokens is too short for {rows} rows of >= 2 tokens.")
    return stream[: rows * cols].reshape(rows, cols)


def segment_lengths(num_positions: int, bptt: int, *, seed: int | None, variable: bool = True) -> list[int]:
    """One epoch's BPTT segment lengths over `num_positions` predicted positions.

    AWD-LSTM's rule: base length `bptt`, or `bptt / 2` with probability 0.05, plus
    N(0, 5) jitter, at least 5; the last segment is cut to what is left. With
    `variable=False` every segment has length `bptt`.

    Example:

    >>> segment_lengths(10, 4, seed=None, variable=False)
    [4, 4, 2]
    """
    num_positions = check_int("num_positions", num_positions, 1)
    bptt = check_int("bptt", bptt, 1)
    seed = check_int_seed(seed)  # None: fresh entropy
    variable = check_bool("variable", variable)
    rng = np.random.default_rng(seed) if variable else None
    out, pos = [], 0
    while pos < num_positions:
        if rng is None:
            length = bptt
        else:
            base = bptt if rng.random() < 0.95 else bptt / 2.0
            length = max(_MIN_SEGMENT, int(rng.normal(base, 5.0)))
        length = min(length, num_positions - pos)
        out.append(length)
        pos += length
    return out


def _make_train_step(model, optimizer):
    import tensorflow as tf

    # float16 layers (a `mixed_float16` policy): scale the loss, as `Model.compile` does, so that small
    # gradients of the float16 LSTM do not flush to zero; the wrapper unscales them before `optimizer`
    # (whose learning rate the caller sets) applies them and skips a step whose gradients overflow
    scaled = any(getattr(layer, "compute_dtype", None) == "float16" for layer in model.layers)
    apply = keras.optimizers.LossScaleOptimizer(optimizer) if scaled else optimizer

    @tf.function(input_signature=[tf.TensorSpec((None, None), tf.int32)] * 2, autograph=False)
    def step(x, y):
        with tf.GradientTape() as tape:
            logits = model(x, training=True)
            loss = tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(labels=y, logits=logits))
            objective = apply.scale_loss(loss) if scaled else loss
        variables = model.trainable_variables
        apply.apply_gradients(zip(tape.gradient(objective, variables), variables))
        return loss

    return step


def _ensemble_log_probs(models, x, y):
    import tensorflow as tf

    logps = [tf.nn.log_softmax(model(x, training=False), axis=-1) for model in models]
    # a snapshot ensemble predicts the mixture of its members' next-token distributions
    logp = logps[0] if len(models) == 1 else tf.reduce_logsumexp(tf.stack(logps), axis=0) - math.log(len(models))
    return tf.gather(logp, y, axis=-1, batch_dims=2), tf.argmax(logp, axis=-1, output_type=tf.int32)


def _make_eval_step(models):
    import tensorflow as tf

    # a partial, not a closure: TF's retracing detector keys closures by their code object, so one
    # trace per evaluated model set would read as retracing of a single function
    return tf.function(functools.partial(_ensemble_log_probs, tuple(models)),
                       input_signature=[tf.TensorSpec((None, None), tf.int32)] * 2, autograph=False)


def _windows(stream, window: int, vocab_size: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    stream = _token_stream(stream, vocab_size)
    window = check_int("window", window, 1)
    count = (stream.shape[0] - 1) // window
    if count < 1:
        raise ValueError(f"A stream of {stream.shape[0]} tokens is too short for one window of {window} + 1 tokens.")
    n = count * window
    return stream[:n].reshape(count, window), stream[1:n + 1].reshape(count, window)


def evaluate_stream(models, stream, *, window: int = 35, batch: int = 256) -> tuple[np.ndarray, np.ndarray]:
    """Log-probabilities of the true next tokens and argmax predictions on a token stream.

    The stream is read in consecutive windows of `window` tokens, each from a zero
    state (as in training); token t + 1 of a window is predicted from tokens
    1..t of it. Several models (a snapshot ensemble) predict the mixture of their
    next-token distributions.

    Args:
        models: A model from `build_language_model`, or a list of them.
        stream: 1-D token ids.
        window: Tokens per window.
        batch: Windows per evaluation step.

    Returns:
        `(target_log_probs, predictions)`, each of shape
        ((len(stream) - 1) // window * window,), in `evaluation_labels` order.

    Raises:
        TypeError: a stream that does not hold integer token ids, or a model that is not one.
        ValueError: no model, models with different vocabularies, a stream that is not
            1-D, too short for one window, or holds ids outside the models' vocabulary.
    """
    models = list(models) if isinstance(models, (list, tuple)) else [models]
    if not models:
        raise ValueError("`models` is empty: pass a model from `build_language_model` or a list of them.")
    for model in models:
        if not callable(model):
            raise TypeError(f"`models` must be a model from `build_language_model` or a list or tuple of them. "
                            f"Received: {type(model).__name__}")
    sizes = [v for v in map(_model_vocab, models) if v is not None]
    if len(set(sizes)) > 1:  # a mixture needs one vocabulary (else a graph error in the stack of their outputs)
        raise ValueError(f"The models must score one vocabulary to be ensembled. Received: models with "
                         f"{sorted(set(sizes))} tokens")
    x, y = _windows(stream, window, sizes[0] if sizes else None)
    batch = check_int("batch", batch, 1)
    step = _make_eval_step(models)
    targets, preds = [], []
    for start in range(0, x.shape[0], batch):
        t, p = step(x[start:start + batch].astype(np.int32), y[start:start + batch].astype(np.int32))
        targets.append(t.numpy())
        preds.append(p.numpy())
    return (np.concatenate(targets).reshape(-1).astype(np.float32),
            np.concatenate(preds).reshape(-1).astype(np.int32))


def evaluation_labels(stream, window: int = 35) -> np.ndarray:
    """The true next tokens in `evaluate_stream`'s order."""
    return _windows(stream, window)[1].reshape(-1).astype(np.int64)


def _as_plan(plan) -> SeedPlan:
    if isinstance(plan, SeedPlan):
        return plan
    s = check_int("plan", plan, 0, why="an int seed, or a SeedPlan")
    return SeedPlan(init=s, shuffle=s, augment=s + 1, stochastic=s + 2)


def train_language_model(spec: LanguageModelSpec, plan=0, *, data_dir=None, corpus: Corpus | None = None,
                         verbose: bool = False) -> dict:
    """Trains one language model under `plan` and evaluates it on the test (and validation) stream.

    Example:

    >>> spec = LanguageModelSpec(vocab_size=500, train_tokens=5_000, hidden=32, embedding_dim=16, epochs=1)
    >>> # run = train_language_model(spec, SeedPlan(init=1, stochastic=2))   # needs the corpus
    >>> # run["info"]["test_perplexity"], run["target_log_probs"].shape

    Args:
        spec: The setting.
        plan: A `SeedPlan` (or an int seed).
        data_dir: Folder with the corpus files (default: where the package manager installs them).
        corpus: An already loaded corpus (else `load_corpus(spec.corpus, ...)`).
        verbose: Print one line per epoch.

    Returns:
        `{"target_log_probs" (N,), "predictions" (N,), "init_hash", "order_hash",
        "weights_hash", "info"}`: N test tokens in `evaluation_labels` order;
        `init_hash` is the hash of the initial weights before any bit change,
        `order_hash` the hash of the data order and BPTT segmentation, `info`
        holds validation/test perplexity, per-epoch training loss, the bit change,
        the snapshot members' perplexities and CPU seconds.

    Raises:
        FileNotFoundError: the corpus is not installed (the message says how to install it).
        TypeError: a corpus stream that does not hold integer token ids.
        ValueError: a corpus stream with ids outside [0, spec.vocab_size), or a test or validation
            stream too short for one window of `spec.bptt` + 1 tokens.
    """
    if not isinstance(spec, LanguageModelSpec):
        raise TypeError(f"`spec` must be a LanguageModelSpec. Received: {type(spec).__name__}")
    if corpus is not None and not isinstance(corpus, Corpus):
        raise TypeError(f"`corpus` must be a Corpus from `load_corpus`, or None. Received: {type(corpus).__name__}")
    plan = _as_plan(plan)
    corpus = corpus if corpus is not None else load_corpus(spec.corpus, vocab_size=spec.vocab_size, data_dir=data_dir)
    if corpus.vocab_size != spec.vocab_size:
        raise ValueError(f"`corpus` has {corpus.vocab_size} words but spec.vocab_size={spec.vocab_size}.")
    start_cpu, start = time.process_time(), time.time()
    # every id inside the vocabulary (an id outside it is a graph error in training on CPU, zeros on GPU),
    # and the test and validation streams long enough, checked before training rather than after it
    stream = _token_stream(corpus.train if spec.train_tokens is None else corpus.train[: spec.train_tokens],
                           spec.vocab_size)
    for split in ("test", "valid"):
        try:
            _windows(getattr(corpus, split), spec.bptt, spec.vocab_size)
        except (TypeError, ValueError) as err:
            raise type(err)(f"corpus.{split}: {err}") from None
    data = batchify(stream, spec.batch_size).astype(np.int32)
    positions = data.shape[1] - 1
    model = _model_for(spec, plan)
    init_hash = weights_hash(model)
    change = None if plan.bit_change is None else bit_change(model, seed=plan.bit_change)
    optimizer = keras.optimizers.Adam(learning_rate=spec.learning_rate, global_clipnorm=spec.clipnorm)
    cycles = spec.snapshots or 1
    nominal = max(1, math.ceil(positions / spec.bptt))  # steps per epoch at the base length
    schedule = CyclicCosineSchedule(spec.learning_rate, total_steps=max(cycles, spec.epochs * nominal), cycles=cycles)
    rates = np.asarray(schedule(np.arange(spec.epochs * nominal)), dtype=np.float64)
    snapshots = None
    if spec.snapshots:
        snapshots = SnapshotEnsemble(cycles=spec.snapshots)
        snapshots.set_model(model)
        snapshots.set_params({"epochs": spec.epochs})
        snapshots.on_train_begin()
    step = _make_train_step(model, optimizer)
    segmentation, history = [], []
    for epoch in range(spec.epochs):
        stochastic = plan.epoch_seed("stochastic", epoch)
        reseed_stochastic_layers(model, derive_seed(stochastic, epoch))
        lengths = segment_lengths(positions, spec.bptt, seed=derive_seed(stochastic, epoch, 1),
                                  variable=spec.variable_bptt)
        segmentation.append(lengths)
        pos, loss_sum = 0, 0.0
        for length in lengths:
            index = min(spec.epochs * nominal - 1, epoch * nominal + pos // spec.bptt)
            optimizer.learning_rate = float(rates[index] * length / spec.bptt)
            loss = step(data[:, pos:pos + length], data[:, pos + 1:pos + 1 + length])
            loss_sum += float(loss) * length
            pos += length
        history.append(loss_sum / positions)
        if not np.isfinite(history[-1]):
            raise FloatingPointError(f"Training diverged (loss {history[-1]}) in epoch {epoch} of plan "
                                     f"{plan.source}/{plan.run}; lower `learning_rate`.")
        if snapshots is not None:
            snapshots.on_epoch_end(epoch)
        if verbose:
            print(f"epoch {epoch + 1}/{spec.epochs}: train loss {history[-1]:.4f} (ppl {math.exp(history[-1]):.1f})")
    info = {"train_loss_history": history, "train_perplexity": float(math.exp(history[-1])),
            "bit_change": None if change is None else change.to_config(), "corpus": corpus.fingerprint}
    members = [model]
    evaluation = {"window": spec.bptt, "batch": spec.eval_batch}
    if snapshots is not None:
        members = []
        for weights in snapshots.snapshots:
            member = keras.models.clone_model(model)
            member.set_weights(weights)
            members.append(member)
        info["member_test_perplexity"] = [
            float(np.exp(-evaluate_stream(m, corpus.test, **evaluation)[0].astype(np.float64).mean()))
            for m in members]
        info["snapshot_epochs"] = list(snapshots.snapshot_epochs)
    target, preds = evaluate_stream(members, corpus.test, **evaluation)
    valid, _ = evaluate_stream(members, corpus.valid, **evaluation)
    info.update(test_perplexity=float(np.exp(-target.astype(np.float64).mean())),
                valid_perplexity=float(np.exp(-valid.astype(np.float64).mean())),
                distinct_predictions=int(np.unique(preds).size), seconds=time.time() - start,
                cpu_seconds=time.process_time() - start_cpu)
    return {"target_log_probs": target, "predictions": preds, "init_hash": init_hash,
            "order_hash": order_hash(np.concatenate([stream.astype(np.int64), [-1], np.concatenate(
                [np.asarray(s, np.int64) for s in segmentation])])),
            "weights_hash": weights_hash(model), "info": info}


# ---------------------------------------------------------------------------- protocol
@dataclasses.dataclass
class LMProtocolResult:
    """What `run_lm_protocol` returns.

    Attributes:
        rows: Source -> `metrics.language_model_metrics` row.
        target_log_probs: Source -> (R, N) log p(true next token) per run.
        predictions: Source -> (R, N) argmax next token per run.
        labels: (N,) the true next tokens.
        info: Source -> the runs' `info` dicts.
        bit_changes: Pure bit-change source -> `runs`, `effective`, `replaced`,
            `exhausted` and `details` (as `ProtocolResult.bit_changes`).
        control: The unperturbed control run's record (bit-change sources), or None.
    """

    rows: dict
    target_log_probs: dict
    predictions: dict
    labels: np.ndarray
    info: dict = dataclasses.field(default_factory=dict)
    bit_changes: dict = dataclasses.field(default_factory=dict)
    control: dict | None = None


def _check_source(source: str) -> tuple:
    names = parse_source(source)
    if not any(n in LM_SOURCES for n in names):
        raise ValueError(f"The language model reads its data in order and has no augmentation, so source "
                         f"{source!r} varies nothing here. Use one of {LM_SOURCES}, 'all' or a combination.")
    return names


def _run_lm(spec, plan, corpus, threads):
    """One run in a fresh process: threads, op determinism per the plan, then train."""
    _start_run(plan, threads, 0)
    out = train_language_model(spec, plan, corpus=corpus)
    out["plan"] = plan.to_config()
    return _stamp_machine(out)


def _check_hashes(records: dict, control, *, segments_vary: bool = True) -> None:
    """Runs that do not vary a source share its hash (with the control); runs that vary it differ.

    The order hash is of the BPTT segment lengths: with `variable_bptt=False`
    (`segments_vary=False`) every run has the same ones, whatever it varies.
    """
    for key, source_name in (("init_hash", "init"), ("order_hash", "stochastic")):
        fixed = set() if control is None else {control[key]}
        for source, recs in records.items():
            values = [r[key] for r in recs]
            if source_name in parse_source(source) and (key == "init_hash" or segments_vary):
                if len(set(values)) != len(values):
                    raise RuntimeError(f"Source {source!r} varies {source_name} but its runs share a {key}.")
            else:
                fixed.update(values)
        if len(fixed) > 1:
            raise RuntimeError(f"{key} differs between runs that do not vary {source_name}: an uncontrolled source "
                               f"of nondeterminism leaks into training.")


def run_lm_protocol(spec: LanguageModelSpec, *, sources, runs, store=None, experiment: str = STORE_KEY,
                    executor: str = "local", workers: int | None = None, threads_per_run: int | None = 1,
                    base_plan: SeedPlan | None = None, data_dir=None, bit_change_redraws: int = 3,
                    bootstrap_samples: int = 1000, progress: bool = True) -> LMProtocolResult:
    """Trains R language models per source of nondeterminism and returns Tables 5.2 / 5.4 / B.3's rows.

    The protocol of `run_protocol` for language models: run r of a source trains
    from `base_plan.vary(source, r)` (only that source's seed differs), one fresh
    process per run (op determinism is per process), every finished run written
    to `store` at once (a rerun trains only what is missing), and the init hash and
    data-order/segmentation hash checked across runs. A pure ``"bit_change"``
    source also trains the unperturbed control; a bit change that leaves the
    trained model bit-identical to it is recorded and redrawn at another position
    (up to `bit_change_redraws` times), never counted.

    Example:

    >>> # spec = LanguageModelSpec(vocab_size=2_000, train_tokens=60_000, epochs=4)
    >>> # res = run_lm_protocol(spec, sources=["init", "stochastic", "all"], runs=10,
    >>> #                       store=ResultsStore("lm.sqlite"))
    >>> # res.rows["init"]["perplexity_sd"], res.rows["init"]["perplexity_sd_err"]

    Args:
        spec: The setting (a snapshot ensemble when `spec.snapshots`).
        sources: Source names: `"init"`, `"stochastic"`, `"ops"`, `"bit_change"`,
            `"all"` or `+`-combinations (`shuffle` and `augment` vary nothing here).
        runs: R >= 2 per source, or a mapping source -> R.
        store: A `ResultsStore`, a path (str or `os.PathLike`) to open one on, anything
            with has/get/record, or None (results kept in memory: no resume).
        experiment: Namespace in the store.
        executor: `"local"` (a process pool, a fresh process per run) or `"serial"`.
        workers: Pool size (default: the usable cores, `runtime.usable_cores()`, at most 2).
        threads_per_run: TF threads per run (None: TF's default). Part of the
            store key unless 1 (the default), as in `run_protocol`.
        base_plan: The plan every run varies (`SeedPlan()` by default).
        data_dir: Folder with the corpus files.
        bit_change_redraws: Redraws of an ineffective bit change (>= 0).
        bootstrap_samples: Resamples of the "±".
        progress: Show a progress bar (when stderr is a terminal).

    Returns:
        An `LMProtocolResult`.

    Raises:
        TypeError: a run count, `workers` or `threads_per_run` that is not an int, or a
            `store` that is neither a results store, a path nor None.
        ValueError: an unknown source or one the language model does not have,
            runs < 2, or an unknown executor.
        FileNotFoundError: the corpus is not installed.
        RuntimeError: a source that should stay fixed changed between runs.
    """
    if not isinstance(spec, LanguageModelSpec):
        raise TypeError(f"`spec` must be a LanguageModelSpec. Received: {type(spec).__name__}")
    sources = _source_list(sources, _check_source)
    if isinstance(runs, dict):
        missing = [s for s in sources if s not in runs]
        if missing:
            raise ValueError(f"`runs` gives no run count for source(s) {missing}. Received: runs={runs!r}")
    counts = {s: runs[s] if isinstance(runs, dict) else runs for s in sources}
    for source, r in counts.items():
        check_int(f"runs[{source!r}]", r, 2)
    if executor not in ("local", "serial"):
        raise ValueError(f"`executor` must be 'local' or 'serial'. Received: executor={executor!r}")
    if executor == "local":
        _check_main_guard()
    check_int("bit_change_redraws", bit_change_redraws, 0)
    threads_key = _threads_key(executor, threads_per_run)  # checked before the corpus loads
    base_plan = SeedPlan() if base_plan is None else base_plan
    if not isinstance(base_plan, SeedPlan):
        raise TypeError(f"`base_plan` must be a SeedPlan. Received: {type(base_plan).__name__}")
    store = _MemoryStore(default=str) if store is None else _as_store(store)  # a path opens a ResultsStore
    corpus = load_corpus(spec.corpus, vocab_size=spec.vocab_size, data_dir=data_dir)  # fails early when absent
    labels = evaluation_labels(corpus.test, spec.bptt)
    workers = _default_workers() if workers is None else check_int("workers", workers, 1)
    config = {"spec": spec.to_config(), "corpus": corpus.fingerprint, "base": base_plan.to_config(),
              **threads_key}

    def key(source):
        return {**config, "source": source}

    scheduler = _Scheduler(
        store, experiment, sources, counts, key=key, control_key=key("control"),
        plans={(s, r): base_plan.vary(s, r) for s in sources for r in range(counts[s])},
        control_plan=dataclasses.replace(base_plan, bit_change=None, base=None, source="control", run=0),
        redraws=bit_change_redraws,
        ineffective=functools.partial(_ineffective, values="target_log_probs", noun="test log-probability"),
        bit_change_of=lambda record: record["info"]["bit_change"])
    scheduler.run(lambda plan: _run_lm(spec, plan, corpus, None),
                  None if executor == "serial" else functools.partial(_pool, spec, corpus, threads_per_run, workers),
                  progress)

    control = scheduler.stored_control()
    rows, logps, preds, infos, records, bit_changes = {}, {}, {}, {}, {}, {}
    for source in sources:
        run_ids, recs = scheduler.finished(source)
        records[source] = recs
        infos[source] = [rec["info"] for rec in recs]
        if source in scheduler.bit_sources:  # the language model's report has no per-run "attempts"
            summary = scheduler.bit_change_summary(source, run_ids)
            bit_changes[source] = {k: v for k, v in summary.items() if k != "attempts"}
        if len(recs) < 2:
            continue
        logps[source] = np.stack([np.asarray(rec["target_log_probs"]) for rec in recs])
        preds[source] = np.stack([np.asarray(rec["predictions"]) for rec in recs])
        if logps[source].shape[1] != labels.shape[0]:
            raise ValueError(f"Stored runs of {source!r} have {logps[source].shape[1]} test tokens; expected "
                             f"{labels.shape[0]}.")
        rows[source] = language_model_metrics(logps[source], preds[source], bootstrap_samples=bootstrap_samples)
    _check_hashes(records, control, segments_vary=spec.variable_bptt)
    return LMProtocolResult(rows=rows, target_log_probs=logps, predictions=preds, labels=labels, info=infos,
                            bit_changes=bit_changes, control=control)


def _pool(spec, corpus, threads, workers, todo, done, bar):
    """Runs `todo` in a process pool, a fresh process per run, handing each result to `done(label, result)`."""
    job = functools.partial(_run_lm, spec, corpus=corpus, threads=threads)
    _process_pool(todo, job, workers, None, done, bar, preload=[__name__])
