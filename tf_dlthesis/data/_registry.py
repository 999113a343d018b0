"""Dataset names, metadata and loading.

Three routes: `"digits"` is embedded (scikit-learn ships it); `"fashion_mnist"` and
`"mnist"` go through Keras's own `keras.datasets` loaders, fed offline from files on
this machine (see `load`); every other name goes to tensorflow-datasets,
which reads a prepared copy and never downloads.
"""

from __future__ import annotations

import contextlib
import dataclasses
import difflib
import functools
import glob
import gzip
import hashlib
import os
import pathlib
import re
import struct
import subprocess
import tempfile
import zlib

import numpy as np
import tensorflow as tf

from tf_dlthesis._checks import check_int

DIGITS = "digits"
# Real 28x28 sets read through `keras.datasets` (their original files, offline).
KERAS_DATASETS = ("fashion_mnist", "mnist")
# tfds image-classification datasets the thesis uses, with their known metadata, so
# `info` answers without downloading. Any other tfds name is accepted too.
_KNOWN_TFDS = {
    "cifar10": (10, (32, 32, 3), {"train": 50_000, "test": 10_000}),
    "cifar100": (100, (32, 32, 3), {"train": 50_000, "test": 10_000}),
    "svhn_cropped": (10, (32, 32, 3), {"train": 73_257, "test": 26_032, "extra": 531_131}),
    "caltech101": (102, (None, None, 3), {"train": 3_060, "test": 6_084}),
    "oxford_flowers102": (102, (None, None, 3), {"train": 1_020, "validation": 1_020, "test": 6_149}),
    "caltech_birds2011": (200, (None, None, 3), {"train": 5_994, "test": 5_794}),
}
# Thesis validation protocol (Sec. 4.4.1): CIFAR-100 holds out 10k of its 50k training images, SVHN 20% of
# its 604,388 non-test images (here 20% of `train` and of `extra` each). The thesis states no CIFAR-10 split.
THESIS_VALIDATION_SPLITS = {
    "cifar100": ("train[:40000]", "train[40000:]"),
    "svhn_cropped": ("train[:80%]+extra[:80%]", "train[80%:]+extra[80%:]"),
}


@dataclasses.dataclass(frozen=True)
class DatasetInfo:
    """What a model needs to know about a dataset.

    Attributes:
        name: the dataset name as given to `load`.
        num_classes: number of labels.
        image_shape: (H, W, C) of the images `load` yields (None for variable sizes).
        splits: split name -> number of examples.
    """

    name: str
    num_classes: int
    image_shape: tuple
    splits: dict


class DatasetNotFoundError(FileNotFoundError):
    """A named dataset's files are not on this machine, and nothing is downloaded.

    Raised by `load` and `load_arrays` with one message that says where the data
    was looked for and how to provide it (`data_dir=`, `apt-get install
    dataset-fashion-mnist`, `tfds build NAME`). A subclass of `FileNotFoundError`.

    Example:

    >>> from tf_dlthesis import data
    >>> try:
    ...     data.load("fashion_mnist", data_dir="/nonexistent")
    ... except data.DatasetNotFoundError as err:
    ...     print("data_dir" in str(err))
    True
    """


def _check_name(name) -> str:
    if not isinstance(name, str) or not name:
        raise TypeError(f"`name` must be a dataset name string. Received: name={name!r}")
    return name


def _check_image_size(image_size):
    return check_int("image_size", image_size, 1, allow_none=True)


@functools.lru_cache(maxsize=None)
def _digits_arrays():
    """All 1,797 digits as (x float32 (N, 8, 8, 1) in [0, 1], y int64) and the fixed split.

    The split is stratified and involves no RNG: within each class (in the order
    scikit-learn ships the examples), every fifth example is a test example. That
    gives 364 test / 1,433 train examples on every machine and library version.
    """
    from sklearn.datasets import load_digits

    bunch = load_digits()
    x = (bunch.images.astype(np.float32) / 16.0)[..., None]
    y = bunch.target.astype(np.int64)
    is_test = np.zeros(len(y), dtype=bool)
    for c in range(10):
        idx = np.flatnonzero(y == c)
        is_test[idx[::5]] = True
    return x, y, is_test


# ------------------------------------------------------------------ split strings

_SPLIT = re.compile(r"^(?P<base>[a-z_]+)(?:\[\s*(?P<start>-?\d+%?)?\s*:\s*(?P<stop>-?\d+%?)?\s*\])?$")


def _parse_split(name, split, bases):
    """`"train"`, `"train[:20000]"`, `"test[10%:]"` -> (base, start, stop) with raw bounds."""
    match = _SPLIT.match(split.strip()) if isinstance(split, str) else None
    if match is None or match["base"] not in bases:
        raise ValueError(
            f"Unknown split for {name!r}. Expected one of {sorted(bases)}, optionally sliced like "
            f"'train[:20000]' or 'test[:10%]'. Received: split={split!r}"
        )
    for bound in (match["start"], match["stop"]):
        if bound is not None and bound.endswith("%") and abs(int(bound[:-1])) > 100:
            # As in tensorflow-datasets: a percent beyond the split is a typo, not "all of it".
            raise ValueError(
                f"Percent slice bounds of {name!r} must lie in [-100%, 100%]. Received: split={split!r}"
            )
    return match["base"], match["start"], match["stop"]


def _bound(text, n):
    """A raw slice bound ("20000", "-5", "10%") of a split with n rows; percent bounds are rounded."""
    if text is None:
        return None
    if text.endswith("%"):
        return int(round(int(text[:-1]) * n / 100))
    return int(text)


def _take(x, y, start, stop):
    """Rows [start:stop] of (x, y); percent bounds are of len(x), rounded."""
    rows = slice(_bound(start, len(x)), _bound(stop, len(x)))
    return x[rows], y[rows]


def _take_split(name, split, base, x, y, start, stop):
    """`_take`, refusing a slice that selects no examples (a model would train or score on nothing) and
    absolute bounds beyond the split (a typo; tensorflow-datasets refuses them too, not clamping)."""
    xs, ys = _take(x, y, start, stop)
    if len(xs) == 0:
        first, last, _ = slice(_bound(start, len(x)), _bound(stop, len(x))).indices(len(x))
        raise ValueError(
            f"Split {split!r} of {name!r} selects no examples: the {base!r} split has {len(x)}, and the slice "
            f"resolves to rows [{first}:{last}]. Received: split={split!r}"
        )
    if any(b is not None and not b.endswith("%") and abs(int(b)) > len(x) for b in (start, stop)):
        raise ValueError(f"Split {split!r} of {name!r} has a bound beyond the {base!r} split's {len(x)} examples "
                         f"(it would be clamped to {len(xs)}). Received: split={split!r}")
    return xs, ys


# --------------------------------------------------- keras.datasets route (28x28 sets)

_IDX_FILES = (
    "train-images-idx3-ubyte.gz",
    "train-labels-idx1-ubyte.gz",
    "t10k-images-idx3-ubyte.gz",
    "t10k-labels-idx1-ubyte.gz",
)
_IDX_LIST = ", ".join(_IDX_FILES)
_KERAS_SPLITS = {"train": 60_000, "test": 10_000}
_FASHION_PACKAGE = "dataset-fashion-mnist"
# Where keras.datasets.fashion_mnist.load_data / mnist.load_data look (their
# `get_file(..., cache_subdir=...)` under Keras's cache folder).
_FASHION_CACHE_SUBDIR = os.path.join("datasets", "fashion-mnist")
_MNIST_NPZ = "mnist.npz"
_MNIST_CACHE_SUBDIR = "datasets"
# The sha256 keras.datasets.mnist.load_data checks its cached mnist.npz against. Keras
# re-downloads any other file (impossible offline), so only this exact file goes
# through Keras; another mnist.npz, or the IDX files, are read here.
_KERAS_MNIST_SHA256 = "731c5ac602752760c8e48fbffcf8c3b850d9dc2a2aedcf2cc48468fc17b673d1"


# sha256 of the original Fashion-MNIST files' decompressed contents (the Debian package's and
# Keras's download compress them differently; the contents are the same). Only files with these
# contents enter Keras's shared cache: others (a subset, a stand-in) are read here, so that
# `keras.datasets.fashion_mnist.load_data()` elsewhere never returns them as Fashion-MNIST.
_FASHION_CONTENT_SHA256 = {
    "train-images-idx3-ubyte.gz": "c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888",
    "train-labels-idx1-ubyte.gz": "bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9",
    "t10k-images-idx3-ubyte.gz": "5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b",
    "t10k-labels-idx1-ubyte.gz": "0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34",
}


@functools.lru_cache(maxsize=16)
def _content_sha256(path, size, mtime_ns):  # size and mtime_ns key the cache
    digest = hashlib.sha256()
    try:
        with gzip.open(path, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                digest.update(chunk)
    except (OSError, EOFError, zlib.error):
        return None  # not a readable gzip file: not the original (the IDX checks name the problem)
    return digest.hexdigest()


def _file_content_sha256(path):
    """`_file_sha256` of a gzip file's decompressed contents (None for a file gzip cannot read)."""
    stat = os.stat(path)
    return _content_sha256(os.path.realpath(path), stat.st_size, stat.st_mtime_ns)


def _original_fashion(files) -> bool:
    """Whether `files` ({IDX file name: path}) hold the original Fashion-MNIST's contents."""
    return all(_file_content_sha256(files[fname]) == want for fname, want in _FASHION_CONTENT_SHA256.items())


def source_fingerprint(name: str, data_dir=None) -> str | None:
    """A fingerprint of the data `load(name, data_dir=)` reads, or None where it cannot be told.

    For Fashion-MNIST and MNIST: a sha256 over the contents of the files found (gzip
    files decompressed, so differently compressed copies of one set agree); for
    digits, which ships with scikit-learn, a constant. None for tfds datasets (not
    fingerprinted) and where the files are not on this machine. `experiments.train`
    stores it with every run and refuses to read a run back for other data.
    """
    name = _check_name(name)
    if name == DIGITS:
        return "sklearn-digits"
    if name not in KERAS_DATASETS:
        return None
    try:
        _, files = _keras_source(name, _check_data_dir(data_dir))
    except (DatasetNotFoundError, ValueError, OSError):
        return None
    digest = hashlib.sha256()
    for fname in sorted(files):
        content = (_file_content_sha256 if fname.endswith(".gz") else _file_sha256)(files[fname])
        digest.update(f"{fname}:{content}\n".encode())
    return digest.hexdigest()[:16]


def _keras_cache_dir() -> str:
    """Keras's cache folder, by the rule `keras.utils.get_file` documents.

    `$KERAS_HOME` if set, else `~/.keras`; where that folder is not writable Keras
    uses `/tmp/.keras`. (Keras reads `KERAS_HOME` once, when it is imported. Files
    found here are still handed to Keras through `get_file`, so a mismatch would only
    copy them, never download.)
    """
    base = os.path.expanduser(os.environ.get("KERAS_HOME") or os.path.join("~", ".keras"))
    if not os.access(base, os.W_OK):
        base = os.path.join("/tmp" if os.path.isdir("/tmp") else tempfile.gettempdir(), ".keras")
    return base


def _debian_package_files(package: str) -> dict:
    """Basename -> path of the files an installed Debian package ships, from its file list.

    Asks dpkg (`dpkg-query -L PACKAGE`, what `dpkg -L` runs); where dpkg is not on the
    PATH, reads dpkg's list `/var/lib/dpkg/info/PACKAGE.list` itself. Returns {} when
    the package is not installed.
    """
    listing = None
    try:
        proc = subprocess.run(["dpkg-query", "-L", package], capture_output=True, text=True, timeout=60, check=False)
        if proc.returncode == 0:
            listing = proc.stdout
    except (OSError, subprocess.SubprocessError):
        pass
    if listing is None:
        info_dir = pathlib.Path("/var/lib/dpkg/info")
        for list_file in (info_dir / f"{package}.list", *sorted(info_dir.glob(f"{package}:*.list"))):
            try:
                listing = list_file.read_text()
                break
            except OSError:
                continue
    files = {}
    for line in (listing or "").splitlines():
        path = line.strip()
        if path.startswith("/") and os.path.isfile(path):
            files.setdefault(os.path.basename(path), path)
    return files


def _read_idx(path, header_only=False):
    """A gzipped IDX file (the MNIST format) -> its dims, and its uint8 array unless header_only.

    Magic number 0x0000_08_NN: unsigned bytes, NN dimensions, each a big-endian uint32.
    """
    try:
        with gzip.open(path, "rb") as f:
            head = f.read(4)
            if len(head) != 4 or head[:3] != b"\x00\x00\x08" or not 1 <= head[3] <= 4:
                raise ValueError("bad magic number")
            dims = struct.unpack(f">{head[3]}I", f.read(4 * head[3]))
            if header_only:
                return dims, None
            body = f.read()
    except (OSError, EOFError, struct.error, ValueError) as err:
        raise ValueError(
            f"{path} is not a gzipped IDX file of unsigned bytes (magic 2049 for labels, 2051 "
            f"for images; {err}). Received: {path}"
        ) from None
    count = int(np.prod(dims))
    if len(body) < count:
        raise ValueError(f"{path} is truncated: its header promises {dims} values, it holds {len(body)}.")
    if len(body) > count:  # Keras's loader would fail reshaping them, naming no file; the IDX route ignored them
        raise ValueError(f"{path} holds {len(body) - count} bytes beyond the {dims} values its header promises.")
    return dims, np.frombuffer(body, np.uint8, count=count).reshape(dims)


def _check_idx_set(files: dict):
    """Validates the four IDX files' headers: 28x28 images, as many labels as images."""
    for prefix in ("train", "t10k"):
        images, labels = files[f"{prefix}-images-idx3-ubyte.gz"], files[f"{prefix}-labels-idx1-ubyte.gz"]
        image_dims, _ = _read_idx(images, header_only=True)
        label_dims, _ = _read_idx(labels, header_only=True)
        if len(image_dims) != 3 or tuple(image_dims[1:]) != (28, 28):
            raise ValueError(f"{images} must hold 28x28 images (IDX magic 2051). Received dims {image_dims}")
        if len(label_dims) != 1 or label_dims[0] != image_dims[0]:
            raise ValueError(
                f"{labels} must hold one label per image of {images} (IDX magic 2049, {image_dims[0]} "
                f"labels). Received dims {label_dims}"
            )


@functools.lru_cache(maxsize=16)
def _sha256(path, size, mtime_ns):  # size and mtime_ns key the cache
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _file_sha256(path):
    stat = os.stat(path)
    return _sha256(os.path.realpath(path), stat.st_size, stat.st_mtime_ns)


def _in_dir(folder, names):
    return {n: os.path.join(folder, n) for n in names if os.path.isfile(os.path.join(folder, n))}


def _dataset_folder(name, data_dir) -> str:
    """`data_dir/<name>` where that folder exists (one folder holding several datasets), else `data_dir`."""
    folder = os.fspath(data_dir)
    sub = os.path.join(folder, name.split(":")[0])
    return sub if os.path.isdir(sub) else folder


def holds(name: str, data_dir) -> bool:
    """Whether `data_dir` holds files of dataset `name`, directly or in its subfolder `data_dir/<name>/`.

    For `"fashion_mnist"` / `"mnist"`: any of the four IDX files (for MNIST also
    `mnist.npz`); for a tfds name: its prepared copy's folder `data_dir/<name>/`;
    `"digits"` ships with scikit-learn and has no files (False). A folder shared by
    several datasets (`--data-dir` of `tf-dlthesis reproduce` / `train`,
    `experiments.data_dir`) serves the datasets it holds; the others come from their
    default source (Fashion-MNIST: the Debian package).

    Example:

    >>> import tempfile
    >>> from tf_dlthesis import data
    >>> data.holds("mnist", tempfile.mkdtemp())
    False

    Raises:
        TypeError: `name` is not a string, or `data_dir` not a path.
    """
    name = _check_name(name)
    data_dir = _check_data_dir(data_dir)
    if data_dir is None or name == DIGITS or not os.path.isdir(data_dir):
        return False
    folder = _dataset_folder(name, data_dir)
    if name not in KERAS_DATASETS:
        return folder != os.fspath(data_dir)  # a prepared tfds copy: data_dir/<name>/
    return bool(_in_dir(folder, _IDX_FILES + ((_MNIST_NPZ,) if name == "mnist" else ())))


def _keras_source(name, data_dir):
    """Where `name`'s files come from: (route, {file name: path}).

    route `"keras"`: handed to Keras's loader through its cache (Fashion-MNIST's
    original files, and Keras's own mnist.npz); `"idx"` / `"npz"`: files read here
    (MNIST's files Keras's loader cannot take, and IDX files with other contents than
    the original Fashion-MNIST's, which never enter Keras's shared cache). `data_dir/<name>/` is used
    where it exists, so one folder can hold both sets (their IDX files share names).
    """
    if data_dir is not None:
        folder = _dataset_folder(name, data_dir)
        idx = _in_dir(folder, _IDX_FILES)
        if name == "mnist":
            npz = _in_dir(folder, [_MNIST_NPZ])
            if npz:
                return ("keras" if _file_sha256(npz[_MNIST_NPZ]) == _KERAS_MNIST_SHA256 else "npz"), npz
        if len(idx) == len(_IDX_FILES):
            _check_idx_set(idx)
            return ("keras" if name == "fashion_mnist" and _original_fashion(idx) else "idx"), idx
        if not os.path.isdir(folder):
            where = "it is not a folder"
        elif not idx:
            where = "it holds none of the files"
        else:
            where = "it lacks " + ", ".join(f for f in _IDX_FILES if f not in idx)
        if folder != os.fspath(data_dir):
            where += f"; looked in its subfolder {name}/"
        if name == "fashion_mnist":
            raise DatasetNotFoundError(
                f"`data_dir` does not hold Fashion-MNIST ({where}). A Fashion-MNIST `data_dir` must "
                f"contain the four original gzipped IDX files, directly or in a subfolder fashion_mnist/: "
                f"{_IDX_LIST} (or install them with `apt-get install {_FASHION_PACKAGE}` and leave "
                f"data_dir=None). Received: name={name!r}, data_dir={data_dir!r}"
            )
        raise DatasetNotFoundError(
            f"`data_dir` does not hold MNIST ({where}; no {_MNIST_NPZ} either). An MNIST `data_dir` "
            f"must contain, directly or in a subfolder mnist/, Keras's {_MNIST_NPZ} or the four original "
            f"gzipped IDX files: {_IDX_LIST}. Received: name={name!r}, data_dir={data_dir!r}"
        )
    cache = _keras_cache_dir()
    if name == "fashion_mnist":
        debian = _debian_package_files(_FASHION_PACKAGE)
        if all(f in debian for f in _IDX_FILES):
            files = {f: debian[f] for f in _IDX_FILES}
            _check_idx_set(files)
            return ("keras" if _original_fashion(files) else "idx"), files
        cached = _in_dir(os.path.join(cache, _FASHION_CACHE_SUBDIR), _IDX_FILES)
        if len(cached) == len(_IDX_FILES) and _original_fashion(cached):  # never another set left there
            return "keras", cached
        raise DatasetNotFoundError(
            f"Fashion-MNIST is not on this machine, and tf_dlthesis never downloads it. Install the "
            f"Debian package that ships its original files, `apt-get install {_FASHION_PACKAGE}` "
            f"(found through `dpkg -L {_FASHION_PACKAGE}`), or pass `data_dir=` a folder holding the "
            f"four original gzipped IDX files: {_IDX_LIST}. Looked in: the package "
            f"{_FASHION_PACKAGE} ({'installed without those files' if debian else 'not installed'}) "
            f"and Keras's cache {os.path.join(cache, _FASHION_CACHE_SUBDIR)}. "
            f"Received: name={name!r}, data_dir=None"
        )
    cached = _in_dir(os.path.join(cache, _MNIST_CACHE_SUBDIR), [_MNIST_NPZ])
    if cached and _file_sha256(cached[_MNIST_NPZ]) == _KERAS_MNIST_SHA256:
        return "keras", cached
    raise DatasetNotFoundError(
        f"MNIST is not on this machine, and tf_dlthesis never downloads it. Pass `data_dir=` a "
        f"folder holding Keras's {_MNIST_NPZ} or the four original gzipped IDX files: {_IDX_LIST}. "
        f"Looked in: Keras's cache {os.path.join(cache, _MNIST_CACHE_SUBDIR, _MNIST_NPZ)}. "
        f"(Fashion-MNIST, MNIST's 28x28 drop-in replacement, installs offline with "
        f"`apt-get install {_FASHION_PACKAGE}`.) Received: name={name!r}, data_dir=None"
    )


@contextlib.contextmanager
def _cache_lock():
    """Serialises filling Keras's cache across processes (POSIX `flock`; a no-op elsewhere).

    The lock file sits in the cache folder it guards, not in the temporary folder: a
    task process of the chapter / protocol pools has a temporary folder of its own.
    """
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows
        yield
        return
    try:
        base = _keras_cache_dir()
        os.makedirs(base, exist_ok=True)
        fd = os.open(os.path.join(base, "tf_dlthesis-datasets.lock"), os.O_RDWR | os.O_CREAT, 0o666)
    except OSError:  # pragma: no cover - unwritable cache folder
        yield
        return
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # releases the lock


@contextlib.contextmanager
def _quiet_keras():
    """Keras's "Downloading data from file://..." line and progress bar go to absl logging."""
    import keras

    was_enabled = keras.config.is_interactive_logging_enabled()
    keras.config.disable_interactive_logging()
    try:
        yield
    finally:
        if was_enabled:
            keras.config.enable_interactive_logging()


def _through_keras(name, files):
    """Places `files` into Keras's cache with `keras.utils.get_file`, then runs Keras's loader.

    `get_file(fname, origin="file://...", cache_subdir=...)` copies a file into the
    cache folder Keras's loader reads (urllib opens file:// URLs), and, given the
    source's sha256, replaces a cached file that differs. Keras's loader then finds
    every file it asks for and downloads nothing.
    """
    import keras

    loader, subdir = (
        (keras.datasets.fashion_mnist.load_data, _FASHION_CACHE_SUBDIR)
        if name == "fashion_mnist"
        else (keras.datasets.mnist.load_data, _MNIST_CACHE_SUBDIR)
    )
    with _cache_lock(), _quiet_keras():
        for fname, path in files.items():
            try:
                keras.utils.get_file(
                    fname,
                    origin=pathlib.Path(path).resolve().as_uri(),
                    cache_subdir=subdir,
                    file_hash=_file_sha256(path),
                    hash_algorithm="sha256",
                )
            except (NotADirectoryError, FileExistsError) as err:  # e.g. KERAS_HOME names a file
                raise ValueError(f"Keras's cache folder {_keras_cache_dir()} (`KERAS_HOME`, else ~/.keras) cannot "
                                 f"hold {name!r}'s files: {err}. Point KERAS_HOME at a folder.") from None
        try:
            return loader()
        except Exception as err:  # a download attempt: never expected, never let through
            if "URL fetch failure" not in str(err):
                raise
            raise DatasetNotFoundError(
                f"Keras's loader for {name!r} tried to download although its files were placed "
                f"in its cache (is $KERAS_HOME set differently from when Keras was imported?). "
                f"Received: {err}"
            ) from None


def _freeze(x, y):
    x = (x.astype(np.float32) / np.float32(255.0))[..., None]
    y = y.astype(np.int64)
    x.flags.writeable = False
    y.flags.writeable = False
    return x, y


@functools.lru_cache(maxsize=4)
def _keras_arrays(name, route, files_key):
    """((x, y) train, (x, y) test) as read-only float32 [0, 1] (N, 28, 28, 1) and int64.

    Cached in-process, keyed by the source files' (name, path, size, mtime).
    """
    files = {fname: path for fname, path, _, _ in files_key}
    if route == "keras":
        try:
            (x, y), (xt, yt) = _through_keras(name, files)
        except (ValueError, EOFError, OSError, zlib.error) as err:
            if isinstance(err, DatasetNotFoundError):
                raise
            # Keras's loader reshapes whatever bytes it finds: name the broken file instead.
            for fname in _IDX_FILES:
                if fname in files:
                    _read_idx(files[fname])
            raise
        sources = {"train": (files.get(_IDX_FILES[0]), files.get(_IDX_FILES[1])),
                   "test": (files.get(_IDX_FILES[2]), files.get(_IDX_FILES[3]))}
    elif route == "npz":
        path = files[_MNIST_NPZ]
        try:
            npz = np.load(path, allow_pickle=False)
        except (ValueError, OSError, EOFError) as err:
            raise ValueError(f"{path} is not a NumPy .npz archive like Keras's mnist.npz ({err}). Received: {path}") from None
        if not isinstance(npz, np.lib.npyio.NpzFile):
            raise ValueError(f"{path} is a single NumPy array, not an .npz archive like Keras's mnist.npz. Received: {path}")
        with npz:
            keys = {"x_train", "y_train", "x_test", "y_test"}
            if not keys <= set(npz.files):
                raise ValueError(f"{path} must hold the arrays {sorted(keys)}. Received: {sorted(npz.files)}")
            try:
                x, y, xt, yt = (npz[k] for k in ("x_train", "y_train", "x_test", "y_test"))
            except (ValueError, OSError, EOFError, zlib.error) as err:
                raise ValueError(f"{path} holds arrays that cannot be read like Keras's mnist.npz ({err}). "
                                 f"Received: {path}") from None
        sources = {"train": (f"{path} (x_train)", f"{path} (y_train)"), "test": (f"{path} (x_test)", f"{path} (y_test)")}
    else:  # "idx"
        x, y, xt, yt = (_read_idx(files[f])[1] for f in _IDX_FILES)
        sources = {"train": (files[_IDX_FILES[0]], files[_IDX_FILES[1]]), "test": (files[_IDX_FILES[2]], files[_IDX_FILES[3]])}
    _check_mnist_arrays(name, x, y, *sources["train"])
    _check_mnist_arrays(name, xt, yt, *sources["test"])
    _check_not_the_other_set(name, y, yt, sources["train"][1], sources["test"][1])
    return _freeze(x, y), _freeze(xt, yt)


# The first ten training and test labels of the original MNIST and Fashion-MNIST files. The two
# sets' files have the same names and shapes; these labels tell them apart (whatever the compression).
_FIRST_LABELS = {"mnist": ((5, 0, 4, 1, 9, 2, 1, 3, 1, 4), (7, 2, 1, 0, 4, 1, 4, 9, 5, 9)),
                 "fashion_mnist": ((9, 0, 0, 3, 0, 2, 7, 2, 5, 5), (9, 2, 1, 1, 6, 1, 4, 6, 5, 7))}


def _check_not_the_other_set(name, y, yt, y_source, yt_source):
    """Refuses MNIST's files read as Fashion-MNIST and the reverse (same file names: an easy mix-up)."""
    for other, (train, test) in _FIRST_LABELS.items():
        if other != name and tuple(y[:10].tolist()) == train and tuple(yt[:10].tolist()) == test:
            raise ValueError(
                f"The files read as {name!r} are {other!r}'s: the first ten labels of {y_source} and "
                f"{yt_source} are exactly {other}'s ({list(train)} / {list(test)}). The two sets' files "
                f"have the same names; keep each in its own folder (a `data_dir` holding both: "
                f"data_dir/mnist/ and data_dir/fashion_mnist/). Received: name={name!r}")


def _check_mnist_arrays(name, x, y, x_source, y_source):
    """(Fashion-)MNIST arrays as their files define them: uint8 (N, 28, 28) images, N labels in 0..9."""
    if x.dtype != np.uint8 or x.ndim != 3 or x.shape[1:] != (28, 28):
        raise ValueError(f"{x_source} must hold {name}'s uint8 28x28 images. Received: an array of dtype "
                         f"{x.dtype} and shape {x.shape}")
    if not np.issubdtype(y.dtype, np.integer) or y.ndim != 1 or len(y) != len(x):
        raise ValueError(f"{y_source} must hold one integer label per image of {x_source} ({len(x)}). Received: "
                         f"an array of dtype {y.dtype} and shape {y.shape}")
    bad = np.unique(y[(y < 0) | (y > 9)]) if len(y) else y
    if len(bad):
        raise ValueError(f"{y_source} has labels outside [0, 9] ({name} has 10 classes; a corrupt or foreign "
                         f"file?). Received out-of-range labels: {bad[:10].tolist()}")


def _keras_split(name, split, data_dir):
    base, start, stop = _parse_split(name, split, _KERAS_SPLITS)
    route, files = _keras_source(name, data_dir)
    key = tuple(sorted((f, os.path.realpath(p), os.stat(p).st_size, os.stat(p).st_mtime_ns) for f, p in files.items()))
    train, test = _keras_arrays(name, route, key)
    x, y = train if base == "train" else test
    return _take_split(name, split, base, x, y, start, stop)


# ------------------------------------------------------------------ tfds route


def _missing_module(err):
    return ImportError(
        f"tensorflow-datasets needs the Python module {err.name!r}, which is not installed. Install "
        f"it with `pip install {str(err.name).replace('_', '-')}` (reinstalling tf_dlthesis brings it "
        f"too). Received: {type(err).__name__}: {err}"
    )


def _tfds():
    """The `tensorflow_datasets` module, or one clear `ImportError` when it cannot be imported here."""
    try:
        import tensorflow_datasets as tfds

        tfds.builder  # (tfds imports most of itself lazily: a broken dependency surfaces here)
    except ModuleNotFoundError as err:
        raise _missing_module(err) from None
    except Exception as err:  # (an ImportError, AttributeError or protobuf's TypeError from its lazy imports)
        raise ImportError(
            "tensorflow-datasets is installed but cannot be imported, so datasets other than 'digits', "
            "'fashion_mnist' and 'mnist' cannot be read. A known cause: tensorflow-metadata >= 1.21 needs "
            "protobuf >= 5, which TensorFlow 2.16 and 2.17 do not allow; `pip install 'tensorflow-metadata<1.21'` "
            f"(or TensorFlow >= 2.18) mends it. Received: {type(err).__name__}: {err}"
        ) from None
    return tfds


def _tfds_builder_names():
    tfds = _tfds()
    try:
        return list(tfds.list_builders())
    except Exception:  # pragma: no cover - listing never needs the network, but be safe
        return list(_KNOWN_TFDS)


@contextlib.contextmanager
def _tfds_temp_folders_removed():
    """Removes the empty `tmp*tfds` folders tensorflow-datasets made inside.

    tfds's `DatasetInfo.initialize_from_bucket` makes one with `tempfile.mkdtemp`
    for every builder of a dataset that is not prepared, and never removes it. Only
    folders that appeared inside and are still empty go (`os.rmdir`).
    """
    pattern = os.path.join(glob.escape(tempfile.gettempdir()), "tmp*tfds")  # (the folder's name may hold [ or *)
    before = set(glob.glob(pattern))
    try:
        yield
    finally:
        for folder in set(glob.glob(pattern)) - before:
            with contextlib.suppress(OSError):  # not empty, or gone already
                os.rmdir(folder)


def _tfds_builder(name, data_dir):
    tfds = _tfds()
    try:
        with _tfds_temp_folders_removed():
            return tfds.builder(name, data_dir=data_dir)
    except ModuleNotFoundError as err:
        raise _missing_module(err) from None


def _check_image_classification(name, builder) -> None:
    if not {"image", "label"} <= set(builder.info.features):
        raise ValueError(f"{name!r} is not a tensorflow-datasets image-classification dataset (its features: "
                         f"{sorted(builder.info.features)}; expected 'image' and 'label'). Received: name={name!r}")


def _load_tfds(name, split, data_dir):
    """A prepared tfds dataset as (image, label); never downloads or prepares it."""
    if not isinstance(split, (str, _tfds().core.ReadInstruction)):
        # tfds reads None (or a list) as every split (a dict or list of datasets), which fails later, unnamed
        raise TypeError(f"`split` must be one split string of {name!r}, e.g. 'train', 'test[:10%]' or "
                        f"'train[:80%]+extra[:80%]' (or a tfds.core.ReadInstruction). Received: split={split!r}")
    builder = _tfds_builder(name, data_dir)
    _check_image_classification(name, builder)
    try:
        # `as_dataset` only reads a prepared copy (like `tfds.load(..., download=False)`).
        ds = builder.as_dataset(split=split, as_supervised=True, shuffle_files=False)
    except ModuleNotFoundError as err:
        raise _missing_module(err) from None
    except AssertionError:  # tfds's "could not find data in ..."
        root = getattr(builder, "data_dir_root", data_dir)
        raise DatasetNotFoundError(
            f"tensorflow-datasets has no prepared copy of {name!r} in {root}, and tf_dlthesis never "
            f"downloads it. Prepare it on a machine with network access with "
            f"`tfds build {name} --data_dir DIR`, copy DIR here and pass `data_dir=DIR`. "
            f"Received: name={name!r}, data_dir={data_dir!r}"
        ) from None
    except (ValueError, KeyError) as err:  # tfds raises these for bad split strings
        raise ValueError(f"Could not load split {split!r} of {name!r}: {err}") from None
    try:
        rows = builder.info.splits[split].num_examples
    except (KeyError, ValueError):  # no split metadata (e.g. under `tfds.testing.mock_data`): tfds checks reading
        return ds
    if rows <= 0:  # tfds reads a reversed slice ("train[5:2]") as -3 rows, which fails only when iterated
        raise ValueError(f"Split {split!r} of {name!r} selects no examples (tensorflow-datasets counts {rows}). "
                         f"Received: split={split!r}")
    return ds


# ------------------------------------------------------------------ public API


def info(name: str, *, image_size: int | None = None, data_dir: str | None = None) -> DatasetInfo:
    """Metadata of a dataset: number of classes, image shape and split sizes.

    Answers without loading or downloading anything for `"digits"`,
    `"fashion_mnist"`, `"mnist"` and the thesis's tfds datasets (CIFAR-10/100,
    SVHN, ...); other tfds names read their builder's metadata.

    Example:

    >>> from tf_dlthesis import data
    >>> data.info("digits").num_classes
    10
    >>> data.info("fashion_mnist").splits
    {'train': 60000, 'test': 10000}

    Args:
        name: `"digits"`, `"fashion_mnist"`, `"mnist"` or a tfds image-classification
            dataset name.
        image_size: the size `load(..., image_size=...)` would resize to.
        data_dir: tfds data directory (used for names not built in).

    Returns:
        A `DatasetInfo`. For `"fashion_mnist"` / `"mnist"` the split sizes are the
        original sets' (60,000 / 10,000), whatever files `data_dir` holds. For a
        tfds name outside the thesis's sets the split sizes are known only once the
        dataset is prepared in `data_dir` (as in tfds's own `builder.info`): before
        that `splits` is empty, while `num_classes` and `image_shape` are given, and
        `load` raises `DatasetNotFoundError`.

    Raises:
        ValueError: for an unknown dataset name or a bad `image_size`.
    """
    name = _check_name(name)
    image_size = _check_image_size(image_size)
    data_dir = _check_data_dir(data_dir)
    if name == DIGITS:
        _, y, is_test = _digits_arrays()
        shape = (8, 8, 1) if image_size is None else (image_size, image_size, 3)
        return DatasetInfo(name, 10, shape, {"train": int((~is_test).sum()), "test": int(is_test.sum())})
    if name in KERAS_DATASETS:
        shape = (28, 28, 1) if image_size is None else (image_size, image_size, 3)
        return DatasetInfo(name, 10, shape, dict(_KERAS_SPLITS))
    if name in _KNOWN_TFDS:
        k, shape, splits = _KNOWN_TFDS[name]
    else:
        _check_tfds_name(name)
        builder = _tfds_builder(name, data_dir)
        _check_image_classification(name, builder)
        feature = builder.info.features["label"]
        k = feature.num_classes
        shape = tuple(builder.info.features["image"].shape)
        splits = {s: v.num_examples for s, v in builder.info.splits.items()}
    if image_size is not None:
        shape = (image_size, image_size, shape[-1] if shape[-1] == 3 else 3)
    return DatasetInfo(name, k, tuple(shape), dict(splits))


def _check_tfds_name(name):
    if name in _KNOWN_TFDS:
        return
    unchecked = ""
    try:
        names = _tfds_builder_names()
    except ImportError as err:  # tfds cannot be imported: a near miss of a name known here is still a typo
        if not difflib.get_close_matches(name, [DIGITS, *KERAS_DATASETS, *_KNOWN_TFDS], n=1):
            raise ImportError(f"{err} (asked for the dataset name={name!r})") from None
        names, unchecked = list(_KNOWN_TFDS), (" (tensorflow-datasets cannot be imported here, so its other "
                                               "names were not checked)")
    if name.split(":")[0] not in names:
        close = difflib.get_close_matches(name, [DIGITS, *KERAS_DATASETS, *names], n=3)
        hint = (f" Did you mean {', '.join(repr(c) for c in close)}?" if close else "") + unchecked
        raise ValueError(
            f"Unknown dataset name. Expected 'digits', 'fashion_mnist', 'mnist' or a "
            f"tensorflow-datasets image classification name such as 'cifar10'. "
            f"Received: name={name!r}.{hint}"
        )


def _resize(images, image_size):
    """Resizes (..., H, W, C) images to image_size x image_size and tiles grey to RGB."""
    if image_size is None:
        return images
    images = tf.image.resize(images, (image_size, image_size), method="bilinear")
    if images.shape[-1] == 1:
        images = tf.repeat(images, 3, axis=-1)
    return tf.clip_by_value(images, 0.0, 1.0)


def _resize_array(x, image_size, chunk=2048):
    if image_size is None:
        return x
    parts = [_resize(tf.constant(x[i : i + chunk]), image_size).numpy() for i in range(0, len(x), chunk)]
    channels = 3 if x.shape[-1] in (1, 3) else x.shape[-1]
    return np.concatenate(parts) if parts else np.zeros((0, image_size, image_size, channels), np.float32)


def _check_data_dir(data_dir):
    if data_dir is None:
        return None
    if not isinstance(data_dir, (str, os.PathLike)):
        raise TypeError(f"`data_dir` must be a path (str or os.PathLike) or None. Received: data_dir={data_dir!r}")
    return data_dir


def load_arrays(name: str, split: str = "train", *, image_size: int | None = None, data_dir: str | None = None):
    """Loads a whole split into memory as NumPy arrays.

    The same data as `load`, as arrays. For `"fashion_mnist"` and `"mnist"` the
    arrays come from an in-process cache and are read-only views (keyed by the
    source files, so repeated calls cost nothing); copy them (`x.copy()`) to
    modify them in place. `image_size` returns new arrays.

    Example:

    >>> from tf_dlthesis import data
    >>> x, y = data.load_arrays("digits", "test")
    >>> x.shape, y.dtype
    ((364, 8, 8, 1), dtype('int64'))

    Args:
        name: `"digits"`, `"fashion_mnist"`, `"mnist"` or a tfds name.
        split: `"train"` or `"test"` (also `"all"` for digits), optionally sliced
            (`"train[:20000]"`, `"test[:10%]"`); any tfds split string for tfds names.
        image_size: resize to image_size x image_size (grey tiled to 3 channels).
        data_dir: where the files are; see `load`.

    Returns:
        `(x, y)`: float32 (N, H, W, C) in [0, 1] and int64 (N,).

    Raises:
        ValueError: unknown dataset or split, a split slice that selects no
            examples, bad `image_size`, or files that are not the dataset's format
            (truncated, labels outside 0..9, not 28x28 uint8 images), or a tfds
            dataset of variable-size images without `image_size`.
        DatasetNotFoundError: the dataset's files are not on this machine (the
            message says what to install or where to point `data_dir`).
    """
    name = _check_name(name)
    image_size = _check_image_size(image_size)
    data_dir = _check_data_dir(data_dir)
    if name == DIGITS:
        x, y, is_test = _digits_arrays()
        masks = {"train": ~is_test, "test": is_test, "all": np.ones_like(is_test)}
        base, start, stop = _parse_split(DIGITS, split, masks)
        x, y = _take_split(DIGITS, split, base, x[masks[base]], y[masks[base]], start, stop)
        return _resize_array(x, image_size), y
    if name in KERAS_DATASETS:
        x, y = _keras_split(name, split, data_dir)
        return _resize_array(x, image_size), y
    ds = load(name, split, data_dir=data_dir, image_size=image_size)
    if not ds.element_spec[0].shape.is_fully_defined():
        raise ValueError(
            f"{name!r} has images of different sizes (shape {tuple(ds.element_spec[0].shape)}), which do not stack "
            f"into one array: pass `image_size=` to resize them all, or iterate `load(...)`. "
            f"Received: name={name!r}, image_size=None"
        )
    ds = ds.batch(1024)
    xs, ys = [], []
    for bx, by in ds.as_numpy_iterator():
        xs.append(bx)
        ys.append(by)
    return np.concatenate(xs), np.concatenate(ys)


def load(name: str, split: str = "train", *, data_dir: str | None = None, image_size: int | None = None) -> tf.data.Dataset:
    """Loads an image-classification dataset as `(image, label)` pairs.

    Images are float32 in [0, 1] with shape (H, W, C); labels are int64 scalars.
    The dataset is unbatched and in a fixed order (shuffle it yourself, or use
    `training_dataset`). Nothing is ever downloaded: a dataset that is not on this
    machine raises `DatasetNotFoundError` saying how to provide it.

    - `"digits"` is scikit-learn's 1,797 real 8x8 handwritten digits (shipped inside
      scikit-learn, so it works offline) with a fixed stratified split of 1,433 train
      and 364 test images (every fifth example of each class is a test example).
    - `"fashion_mnist"` and `"mnist"` (28x28x1, 10 classes, 60,000 train / 10,000
      test) are read by Keras's own loaders, `keras.datasets.fashion_mnist.load_data()`
      and `keras.datasets.mnist.load_data()`, from their original files: the four
      gzipped IDX files (`train-images-idx3-ubyte.gz`, `train-labels-idx1-ubyte.gz`,
      `t10k-images-idx3-ubyte.gz`, `t10k-labels-idx1-ubyte.gz`) in `data_dir`, or,
      with `data_dir=None`, for Fashion-MNIST those the Debian package
      `dataset-fashion-mnist` installed (found through `dpkg -L`), else whatever
      Keras's cache already holds. The files are copied into Keras's cache
      (`keras.utils.get_file` with a `file://` origin, replacing cached files that
      differ) so Keras finds them and downloads nothing. For MNIST, `data_dir` may
      instead hold Keras's own `mnist.npz`. Keras's MNIST loader accepts only that
      exact file (it checks a sha256 and would otherwise re-download), so MNIST's
      IDX files, or another `mnist.npz`, are read directly here, without Keras.
      Loaded arrays are cached in-process (read-only), so repeated loads are cheap.
    - Every other name is a tensorflow-datasets dataset, read from a prepared copy in
      `data_dir` (tfds's default folder when None); it is never downloaded or built
      here (run `tfds build NAME --data_dir DIR` where there is network access).

    Example:

    >>> from tf_dlthesis import data
    >>> ds = data.load("digits", "test", image_size=32)
    >>> image, label = next(iter(ds))
    >>> tuple(image.shape)
    (32, 32, 3)

    With the Debian package installed (`apt-get install dataset-fashion-mnist`):

    >>> ds = data.load("fashion_mnist", "train[:20000]")  # doctest: +SKIP
    >>> ds.cardinality().numpy()  # doctest: +SKIP
    20000

    Args:
        name: `"digits"`, `"fashion_mnist"`, `"mnist"` or a tfds name (`"cifar10"`,
            `"cifar100"`, `"svhn_cropped"`, ...).
        split: `"train"` or `"test"` (also `"all"` for digits), optionally sliced
            like `"train[:20000]"` or `"test[:10%]"`; any tfds split string for tfds
            datasets.
        data_dir: for `"fashion_mnist"` / `"mnist"`, a folder holding the four
            gzipped IDX files (or, for MNIST, `mnist.npz`), directly or in a subfolder
            named after the set (`data_dir/mnist/`, `data_dir/fashion_mnist/`: one
            folder for both, whose files share names); for tfds names, the tfds data
            directory. Ignored for digits.
        image_size: resize to image_size x image_size; greyscale is tiled to RGB so
            CIFAR-style models run on digits and (Fashion-)MNIST.

    Returns:
        A `tf.data.Dataset`.

    Raises:
        ValueError: unknown dataset or split, a split slice that selects no
            examples, bad `image_size`, or files that are not the dataset's format
            (truncated, labels outside 0..9, not 28x28 uint8 images).
        DatasetNotFoundError: (a `FileNotFoundError`) the dataset is not on this
            machine; the message names `data_dir`, the files it must contain and
            `apt-get install dataset-fashion-mnist` (or `tfds build NAME`).
        ImportError: a module tensorflow-datasets needs is missing, or tensorflow-datasets
            cannot be imported (the message names the known cause and its fix).
    """
    name = _check_name(name)
    image_size = _check_image_size(image_size)
    data_dir = _check_data_dir(data_dir)
    if name == DIGITS:
        x, y = load_arrays(DIGITS, split, image_size=image_size)
        return tf.data.Dataset.from_tensor_slices((x, y))
    if name in KERAS_DATASETS:
        x, y = _keras_split(name, split, data_dir)
        ds = tf.data.Dataset.from_tensor_slices((x, y))
        if image_size is not None:
            ds = ds.map(lambda image, label: (_resize(image, image_size), label),
                        num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
        return ds
    _check_tfds_name(name)
    ds = _load_tfds(name, split, data_dir)

    def convert(image, label):
        image = tf.image.convert_image_dtype(image, tf.float32)
        return _resize(image, image_size), tf.cast(label, tf.int64)

    return ds.map(convert, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)


def validation_splits(name: str) -> tuple[str, str]:
    """The thesis's (train, validation) split strings for a tfds dataset (Sec. 4.4.1).

    CIFAR-100: 40k/10k; SVHN (`"svhn_cropped"`): 80/20 of `train` + `extra`.
    Caltech-256's 40 / 10 / 30 images per class are a random draw: use
    `per_class_split`. Other names raise (CUB-2011: the thesis holds out 25% of its
    training set without saying which).
    """
    if not isinstance(name, str):
        raise TypeError(f"`name` must be a dataset name string. Received: name={name!r}")
    if name not in THESIS_VALIDATION_SPLITS:
        raise ValueError(
            f"No thesis validation protocol for this dataset. Expected one of "
            f"{sorted(THESIS_VALIDATION_SPLITS)}; for per-class splits use "
            f"`per_class_split`. Received: name={name!r}"
        )
    return THESIS_VALIDATION_SPLITS[name]


def _is_whole(value):
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, float, np.integer, np.floating)):
        return False
    return bool(np.isfinite(value)) and value == int(value)


def per_class_split(labels, sizes=(40, 10, 30), *, seed: int = 0):
    """Splits example indices into parts with a fixed number per class.

    The thesis's Caltech-256 protocol is 40 train / 10 validation / 30 test
    images per class (`sizes=(40, 10, 30)`). Selection is a seeded permutation
    within each class.

    Args:
        labels: int array (N,).
        sizes: examples per class for each returned part.
        seed: permutation seed (an int >= 0; `None`: fresh entropy).

    Returns:
        A tuple of sorted int64 index arrays, one per entry of `sizes`.

    Raises:
        ValueError: if a class has fewer than `sum(sizes)` examples, a size is < 0 or `seed` < 0.
        TypeError: `seed` is not an int or None.
    """
    labels = np.asarray(labels)
    if labels.ndim != 1:
        raise ValueError(f"`labels` must be 1-D. Received shape {labels.shape}")
    if len(labels) == 0:
        raise ValueError("`labels` is empty: there are no classes to split. Received: labels of shape (0,)")
    if isinstance(sizes, (str, bytes)) or not hasattr(sizes, "__iter__"):
        raise ValueError(f"`sizes` must be a sequence of examples-per-class counts, e.g. (40, 10, 30). "
                         f"Received: sizes={sizes!r}")
    raw = tuple(sizes)
    if not all(_is_whole(s) for s in raw):
        raise ValueError(f"`sizes` must be whole numbers of examples per class, e.g. (40, 10, 30). "
                         f"Received: sizes={raw!r}")
    sizes = tuple(int(s) for s in raw)
    if any(s < 0 for s in sizes):
        raise ValueError(f"`sizes` must be >= 0. Received: sizes={sizes}")
    from tf_dlthesis._seeds import check_int_seed

    rng = np.random.default_rng(check_int_seed(seed))  # None: fresh entropy, as everywhere
    parts = [[] for _ in sizes]
    for c in np.unique(labels):
        idx = np.flatnonzero(labels == c)
        if len(idx) < sum(sizes):
            raise ValueError(
                f"Class {c} has {len(idx)} examples, fewer than sum(sizes)={sum(sizes)}. Received: sizes={sizes}"
            )
        idx = rng.permutation(idx)
        start = 0
        for part, s in zip(parts, sizes):
            part.append(idx[start:start + s])
            start += s
    return tuple(np.sort(np.concatenate(p)).astype(np.int64) for p in parts)
