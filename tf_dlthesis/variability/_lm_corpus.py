"""A real English word-level corpus for the language-model variability protocol.

The thesis measures nondeterminism in language modeling on Penn Treebank
(Tables 5.2, 5.4, B.3). Penn Treebank is licensed (LDC) and cannot be installed
offline, so this module builds a Penn-Treebank-style corpus from English text that
a package manager installs: the fortune-mod data files of the Debian package
`fortunes` (``apt-get install fortunes``; 2.6 MB of quotations, jokes, poems and
definitions in English, under ``/usr/share/games/fortunes``).

Preprocessing follows Mikolov's Penn Treebank release (the one the thesis's
QRNN code reads): lower case, numbers replaced by ``N``, punctuation dropped,
words with an inner apostrophe kept whole, the ``vocab_size - 2`` most frequent
training words kept and every other word replaced by ``<unk>``, and an ``<eos>``
token after each fortune (Penn Treebank: after each sentence). Overstruck text
(``_\\bx``, the fortune files' underlining) is reduced to its visible letters; the
``ascii-art`` file (pictures, not prose) is left out; exact duplicate fortunes are
kept once. The fortunes (in file-name order, then file order) are put in one fixed
pseudo-random order (NumPy's generator seeded with 0: part of the corpus's
definition, the same for every run, so any prefix of the training stream mixes all
files); fortune i of that order goes to the validation split when
``i % 20 == 18``, to the test split when ``i % 20 == 19``, else to training
(90 / 5 / 5 %).

Reference: Thesis Sec. 5.3.3 and App. B.5; Mikolov et al. 2010 (the Penn Treebank
language-modeling split); arXiv:2103.04514.
"""

from __future__ import annotations

import collections
import dataclasses
import functools
import hashlib
import os
import re

import numpy as np

from tf_dlthesis._checks import check_int

#: Where Debian/Ubuntu (`fortunes`) and Fedora (`fortune-mod`) install the data files.
DEFAULT_DIRS = ("/usr/share/games/fortunes", "/usr/share/games/fortune", "/usr/share/fortune")
#: How to install the corpus (said by every error about a missing corpus).
INSTALL_HINT = ("install the English fortune-mod data files: `sudo apt-get install fortunes` (Debian/Ubuntu) or "
                "`sudo dnf install fortune-mod` (Fedora), or pass data_dir= a folder holding fortune files")
CORPORA = ("fortunes",)
EOS, UNK = "<eos>", "<unk>"
#: Fortune files that are not prose.
_EXCLUDED = frozenset({"ascii-art"})
_SKIP_SUFFIXES = (".dat", ".u8", ".gz", ".pdat")
_OVERSTRIKE = re.compile(r".\x08")
_TOKEN = re.compile(r"[a-z]+(?:'[a-z]+)*|[0-9]+(?:[.,:/-][0-9]+)*")
_SPLIT_PERIOD = 20
_ORDER_SEED = 0


@dataclasses.dataclass(frozen=True)
class Corpus:
    """A tokenized word-level corpus, split and mapped to ids.

    Attributes:
        name: Corpus name (`"fortunes"`).
        train, valid, test: 1-D int32 token-id streams (each document ends with `<eos>`).
        vocab: The words; id i is `vocab[i]`; id 0 is `<eos>`, id 1 is `<unk>`.
        source: Folder the files were read from.
        files: The files read, in order.
        documents: Number of (deduplicated) documents per split.
        fingerprint: SHA-256 (16 hex digits) of the three id streams and the vocabulary.
    """

    name: str
    train: np.ndarray
    valid: np.ndarray
    test: np.ndarray
    vocab: tuple
    source: str
    files: tuple
    documents: dict
    fingerprint: str

    @property
    def vocab_size(self) -> int:
        return len(self.vocab)

    @property
    def eos_id(self) -> int:
        return 0

    @property
    def unk_id(self) -> int:
        return 1

    def unigram_perplexity(self, split: str = "test") -> float:
        """Perplexity on `split` of the unigram model fitted to the training split (add-one smoothed).

        The floor a language model must beat to have learned anything beyond word
        frequencies (the regime check of Tables 5.2, 5.4 and B.3).
        """
        stream = self._split(split)
        counts = np.bincount(self.train, minlength=self.vocab_size).astype(np.float64) + 1.0
        logp = np.log(counts / counts.sum())
        return float(np.exp(-np.mean(logp[stream])))

    def unk_rate(self, split: str = "test") -> float:
        """Fraction of `split`'s tokens that are `<unk>`."""
        return float(np.mean(self._split(split) == self.unk_id))

    def _split(self, split: str) -> np.ndarray:
        if split not in ("train", "valid", "test"):
            raise ValueError(f"`split` must be 'train', 'valid' or 'test'. Received: split={split!r}")
        return getattr(self, split)

    def describe(self) -> str:
        """One line: name, tokens per split, vocabulary, `<unk>` rate."""
        return (f"{self.name} corpus ({self.source}; {len(self.files)} files): {len(self.train):,} / "
                f"{len(self.valid):,} / {len(self.test):,} train / valid / test tokens, vocabulary "
                f"{self.vocab_size:,}, <unk> {100 * self.unk_rate():.1f}% of test tokens")


def tokenize(text: str) -> list[str]:
    """Penn-Treebank-style word tokens of `text`: lower case, numbers -> ``N``, no punctuation.

    Example:

    >>> tokenize("Don't panic!  It's 42, or 3.14...")
    ["don't", 'panic', "it's", 'N', 'or', 'N']
    """
    if not isinstance(text, str):
        raise TypeError(f"`text` must be a string. Received: {type(text).__name__}")
    text = _OVERSTRIKE.sub("", text).lower()
    return ["N" if tok[0].isdigit() else tok for tok in _TOKEN.findall(text)]


def find_corpus_dir(name: str = "fortunes", data_dir=None) -> str | None:
    """The folder holding the corpus's files, or None when it is not there.

    With `data_dir`, looks in `data_dir` and `data_dir/fortunes` only (a folder the
    caller names is never silently replaced by another corpus); without it, in the
    system folders (`DEFAULT_DIRS`).
    """
    _check_name(name)
    if data_dir is not None:
        candidates = [os.fspath(data_dir), os.path.join(os.fspath(data_dir), name)]
    else:
        candidates = list(DEFAULT_DIRS)
    for folder in candidates:
        if os.path.isdir(folder) and _fortune_files(folder):
            return folder
    return None


def corpus_available(name: str = "fortunes", data_dir=None) -> bool:
    """Whether `load_corpus(name, data_dir=...)` can find its files."""
    return find_corpus_dir(name, data_dir) is not None


def _check_name(name):
    if name not in CORPORA:
        raise ValueError(f"`name` must be one of {CORPORA}. Received: name={name!r}")


def _fortune_files(folder: str) -> list[str]:
    out = []
    for entry in sorted(os.listdir(folder)):
        path = os.path.join(folder, entry)
        if entry.startswith(".") or entry.endswith(_SKIP_SUFFIXES) or entry in _EXCLUDED:
            continue
        if os.path.isfile(path) and not os.path.islink(path) and os.path.exists(path + ".dat"):
            out.append(path)  # a fortune file ships with its strfile index `<name>.dat`
    return out


def read_documents(folder: str) -> tuple[list[str], list[str]]:
    """The deduplicated fortunes of every fortune file in `folder`, and the files read.

    Raises:
        FileNotFoundError: if `folder` holds no fortune files.
    """
    files = _fortune_files(folder)
    if not files:
        raise FileNotFoundError(f"No fortune files (a text file next to its .dat index) in {folder!r}; {INSTALL_HINT}.")
    seen, docs = set(), []
    for path in files:
        with open(path, "rb") as fh:
            text = fh.read().decode("utf-8", errors="replace")
        for doc in re.split(r"(?m)^%[ \t]*$", text):
            doc = _OVERSTRIKE.sub("", doc).strip()
            key = " ".join(doc.split())
            if key and key not in seen:
                seen.add(key)
                docs.append(doc)
    return docs, files


@functools.lru_cache(maxsize=8)
def _load(name: str, vocab_size: int, folder: str, stamp: tuple) -> Corpus:  # `stamp` keys the cache
    docs, files = read_documents(folder)
    order = np.random.default_rng(_ORDER_SEED).permutation(len(docs))
    splits = {"train": [], "valid": [], "test": []}
    for i, doc in enumerate(docs[j] for j in order):
        r = i % _SPLIT_PERIOD
        split = "valid" if r == _SPLIT_PERIOD - 2 else "test" if r == _SPLIT_PERIOD - 1 else "train"
        toks = tokenize(doc)
        if toks:
            splits[split].append(toks)
    counts = collections.Counter(tok for doc in splits["train"] for tok in doc)
    words = sorted(counts, key=lambda w: (-counts[w], w))[: vocab_size - 2]
    vocab = (EOS, UNK, *words)
    index = {w: i for i, w in enumerate(vocab)}
    streams = {}
    for split, split_docs in splits.items():
        ids = []
        for doc in split_docs:
            ids.extend(index.get(tok, 1) for tok in doc)
            ids.append(0)
        streams[split] = np.asarray(ids, dtype=np.int32)
    h = hashlib.sha256()
    for split in ("train", "valid", "test"):
        h.update(streams[split].tobytes())
    h.update("\n".join(vocab).encode())
    for stream in streams.values():  # one object is shared by every caller: read-only
        stream.flags.writeable = False
    return Corpus(name=name, train=streams["train"], valid=streams["valid"], test=streams["test"], vocab=vocab,
                  source=folder, files=tuple(os.path.basename(f) for f in files),
                  documents={s: len(d) for s, d in splits.items()}, fingerprint=h.hexdigest()[:16])


def load_corpus(name: str = "fortunes", *, vocab_size: int = 10_000, data_dir=None) -> Corpus:
    """Loads, tokenizes and splits a word-level English corpus (cached per process, read-only arrays).

    Example:

    >>> corpus = load_corpus("fortunes", vocab_size=10_000)   # needs `apt-get install fortunes`
    >>> corpus.vocab[:2], corpus.train.dtype
    (('<eos>', '<unk>'), dtype('int32'))

    Args:
        name: `"fortunes"` (the English fortune-mod data files).
        vocab_size: Vocabulary size including `<eos>` and `<unk>` (Penn
            Treebank: 10,000); at most the number of distinct training words + 2.
        data_dir: Folder with the fortune files (each with its strfile index
            `<file>.dat`), directly or in `data_dir/fortunes/`. Default: where the
            package manager installs them. A `data_dir` without them is an error,
            never a fallback to the system's files.

    Returns:
        A `Corpus`.

    Raises:
        TypeError: `vocab_size` is not an int.
        ValueError: unknown `name` or `vocab_size` < 3.
        FileNotFoundError: `data_dir` holds no corpus, or (without `data_dir`) the corpus is not
            installed; the message says how to install it.
    """
    _check_name(name)
    check_int("vocab_size", vocab_size, 3)
    folder = find_corpus_dir(name, data_dir)
    if folder is None and data_dir is not None:
        where = os.fspath(data_dir)
        raise FileNotFoundError(f"data_dir={where!r} holds no {name!r} corpus (looked for fortune files with their "
                                f"`.dat` index in {where} and {os.path.join(where, name)}); put them there, or leave "
                                f"data_dir unset to read the system's: {INSTALL_HINT}.")
    if folder is None:
        raise FileNotFoundError(f"The {name!r} corpus is not installed (looked in {', '.join(DEFAULT_DIRS)}); "
                                f"{INSTALL_HINT}.")
    folder = os.path.abspath(folder)
    stamp = tuple((f, s.st_size, s.st_mtime_ns) for f, s in ((f, os.stat(f)) for f in _fortune_files(folder)))
    return _load(name, int(vocab_size), folder, stamp)  # read again when a file is added, removed or changed
