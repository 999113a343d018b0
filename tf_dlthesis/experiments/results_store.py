"""SQLite results store: one atomic row per finished run, resumable."""

from __future__ import annotations

import base64
import contextlib
import gzip
import hashlib
import json
import os
import re
import sqlite3
import threading
import time
import uuid
import zlib

import numpy as np

from tf_dlthesis._checks import check_int

_SCHEMA = """
CREATE TABLE IF NOT EXISTS results (
    experiment TEXT NOT NULL,
    config_hash TEXT NOT NULL,
    run INTEGER NOT NULL,
    config TEXT NOT NULL,
    result TEXT NOT NULL,
    created REAL NOT NULL,
    machine TEXT,
    inputs TEXT,
    PRIMARY KEY (experiment, config_hash, run)
)
"""


_TAGS = ("__ndarray__", "__float__")  # dicts holding these keys decode as arrays / floats
#: The `runtime.machine()` id of the machine that computed a row, in the `machine` column (kept since
#: 2026-12-05); rows stored before then fall back to the id their result recorded (`_machine_in`).
_MACHINE_COLUMN = "machine"
#: The rows a `get_or_compute` result was computed from: a JSON list of `[experiment, config hash, run,
#: machine]` (kept since 2026-12-05; NULL for rows recorded otherwise or earlier). Reading the result marks
#: them as used (`provenance`), so a report read back from a store names the machines of its inputs too.
_INPUTS_COLUMN = "inputs"
#: Columns added after the first release, in order: a store written before gains them when opened.
_LATER_COLUMNS = (_MACHINE_COLUMN, _INPUTS_COLUMN)


def _ml_dtype(dtype) -> bool:
    """Whether `dtype` is one of TensorFlow's `ml_dtypes` (bfloat16, float8_*, int4, ...): numeric, though
    NumPy gives them the kind "V" of structured arrays."""
    return dtype.kind == "V" and dtype.names is None and getattr(dtype.type, "__module__", "") == "ml_dtypes"


def _dtype(text: str):
    """The NumPy dtype a stored array names (`dtype.str`, or an `ml_dtypes` type's name)."""
    try:
        return np.dtype(text)
    except TypeError:  # "bfloat16" & co. are known to NumPy once ml_dtypes (a TensorFlow dependency) is imported
        import ml_dtypes  # noqa: F401

        return np.dtype(text)


def _encode(obj, key=None):
    """JSON-able form of `obj`; `key` is the dict key above it (named in errors)."""
    if isinstance(obj, np.ndarray):
        if isinstance(obj, np.ma.MaskedArray):  # its bytes are the data alone (masked entries filled in)
            raise TypeError(f"Masked arrays cannot be stored: the mask would be lost and the masked entries read "
                            f"back as their fill value. Store the data and the mask as two arrays (`arr.data`, "
                            f"`np.ma.getmaskarray(arr)`), or `arr.filled(...)`. Received: key {key!r} with a "
                            f"masked array of shape {obj.shape}")
        extension = _ml_dtype(obj.dtype)
        if obj.dtype.hasobject or (obj.dtype.kind == "V" and not extension):  # pointers / the fields lost
            raise TypeError(f"Arrays must have a numeric, bool or string dtype (object and structured arrays "
                            f"cannot be stored). Received: key {key!r} with dtype={obj.dtype}")
        arr = np.require(obj, requirements="C")  # (np.ascontiguousarray made a 0-d array 1-d)
        raw = arr.tobytes()
        dtype = arr.dtype.name if extension else arr.dtype.str  # (a bfloat16's `str` is "<V2")
        packed = zlib.compress(raw, 6)
        if len(packed) < len(raw):  # lossless; per-example results and bools shrink several-fold
            return {"__ndarray__": base64.b64encode(packed).decode("ascii"), "dtype": dtype,
                    "shape": list(arr.shape), "zlib": True}
        return {"__ndarray__": base64.b64encode(raw).decode("ascii"), "dtype": dtype, "shape": list(arr.shape)}
    if isinstance(obj, np.generic):  # then as the Python value: np.float64("nan") is tagged as float("nan") is
        return _encode(obj.item(), key)
    if isinstance(obj, dict):
        encoded = {str(k): _encode(v, k) for k, v in obj.items()}
        if len(encoded) < len(obj):  # e.g. 1 and "1": one would silently replace the other
            seen: dict = {}
            for k in obj:
                if str(k) in seen:
                    raise TypeError(f"Dict keys are stored as strings, and {seen[str(k)]!r} and {k!r} would both be "
                                    f"{str(k)!r}. Use distinct string keys.")
                seen[str(k)] = k
        for tag in _TAGS:
            if tag in encoded:
                raise ValueError(f"The dict keys {_TAGS} are reserved by the results store. Received: a dict "
                                 f"with key {tag!r}")
        return encoded
    if isinstance(obj, (list, tuple)):
        return [_encode(v, key) for v in obj]
    if isinstance(obj, float) and not np.isfinite(obj):
        return {"__float__": repr(obj)}
    if obj is None or isinstance(obj, (str, int, float, bool)):
        return obj
    where = "" if key is None else f" under key {key!r}"
    raise TypeError(f"Results must be JSON-able (dicts, lists, numbers, strings, NumPy arrays). Received: "
                    f"{type(obj).__name__}{where}")


def _decode(obj):
    if isinstance(obj, dict):
        if "__ndarray__" in obj:
            data = base64.b64decode(obj["__ndarray__"])
            if obj.get("zlib"):
                data = zlib.decompress(data)
            return np.frombuffer(data, dtype=_dtype(obj["dtype"])).reshape(obj["shape"]).copy()
        if "__float__" in obj:
            return float(obj["__float__"])
        return {k: _decode(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_decode(v) for v in obj]
    return obj


def _machine_in(result) -> str | None:
    """The machine id a result recorded itself: a training run's `info["machine"]` (since
    2026-12-04) or a protocol run's `machine`; None when it recorded none."""
    for holder in (result, result.get("info") if isinstance(result, dict) else None):
        if isinstance(holder, dict) and isinstance(holder.get("machine"), str):
            return holder["machine"]
    return None


#: Result entries that time a run, name its machine or fingerprint its data files (runs stored before
#: 2026-12-07 have no fingerprint): `confirm_rows` compares results without them.
_TIMING_KEYS = frozenset({"seconds", "cpu_seconds", "process_cpu_seconds", "machine", "data_files"})


def _without_timings(obj):
    """Stored result JSON `obj` without its `_TIMING_KEYS` entries (at any depth; `info:`-prefixed keys too)."""
    if isinstance(obj, dict):
        return {k: _without_timings(v) for k, v in obj.items() if k.rsplit(":", 1)[-1] not in _TIMING_KEYS}
    if isinstance(obj, list):
        return [_without_timings(v) for v in obj]
    return obj


def _checked_inputs(inputs):
    """An archived row's `inputs` (None or a list of `[experiment, config hash, run, machine or None]`)."""
    if inputs is None:
        return None
    if not isinstance(inputs, list) or not all(
            isinstance(i, list) and len(i) == 4 and isinstance(i[0], str) and isinstance(i[1], str)
            and isinstance(i[2], int) and not isinstance(i[2], bool) and (i[3] is None or isinstance(i[3], str))
            for i in inputs):
        raise TypeError("its inputs must be a list of [experiment, config hash, run, machine]. "
                        f"Received: {inputs!r:.200}")
    return inputs


_MAX_RUN = 2**63 - 1


def _path(value, name: str = "folder", what: str = "a folder path") -> str:
    """`value` as a path string, or a TypeError naming `name` when it is not a non-empty path."""
    if not isinstance(value, (str, os.PathLike)) or not os.fspath(value):
        raise TypeError(f"`{name}` must be {what}. Received: {name}={value!r}")
    return os.fspath(value)


def _in_memory(path: str) -> bool:
    """Whether SQLite would open `path` as an in-memory database: `":memory:"`, or a `file:` URI naming
    `:memory:` or with `mode=memory` (SQLite builds with URI filenames on, as Debian's, read `file:` paths
    as URIs even though `sqlite3.connect` is not given `uri=True`)."""
    if path == ":memory:":
        return True
    if path[:5].lower() != "file:":
        return False
    name, _, query = path[5:].partition("?")
    return name == ":memory:" or "memory" in [v for k, v in (p.partition("=")[::2] for p in query.split("&"))
                                             if k == "mode"]


def config_hash(config: dict) -> str:
    """Stable hash of a JSON-able config (key order does not matter).

    The hash follows the JSON text, so it depends on each value's type: `{"lr": 1}`
    and `{"lr": 1.0}` are two configs (`TrainSpec` stores its numbers as plain
    `int` / `float` so that its own keys do not split this way). Normalising here
    would change the keys of every stored run.
    """
    text = json.dumps(_encode(config), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


class NotStoredError(LookupError):
    """A run was needed that the store lacks while it computes nothing (`ResultsStore.reading_only`)."""


class ResultsStore:
    """Experiment results in one SQLite file (WAL mode), keyed by run.

    Every finished run is one row keyed by `(experiment, config hash, run index)`,
    written in a single transaction, so a process killed at any moment leaves a
    readable store holding every run that finished before it; a rerun asks `has`
    and skips them. Results may hold NumPy arrays (stored losslessly: dtype, shape
    and bytes; masked arrays are refused, since their bytes hold no mask). Safe to use from several processes at once (each opens its own
    connection; writers wait for each other).

    Each row also keeps the `runtime.machine()` id of the machine that computed it
    (TensorFlow's CPU results are bit-exact on one machine, not across machines);
    `provenance()` collects the ids of the rows a piece of code read or recorded,
    which is how the report names the machines behind each of its sections.

    Example:

    >>> import tempfile, os
    >>> from tf_dlthesis.experiments import ResultsStore
    >>> store = ResultsStore(os.path.join(tempfile.mkdtemp(), "results.sqlite"))
    >>> store.record("2.1", {"method": "mixup"}, 0, {"error_pct": 4.3})
    >>> store.has("2.1", {"method": "mixup"}, 0)
    True

    Args:
        path: the SQLite file (created with its folder if missing; a relative path is taken from the
            working folder when the store is opened, for every thread and worker process after).

    Attributes:
        recorded: how many runs this object has recorded (`record`, `get_or_compute`;
            not rows imported or written by other processes).
        last_recorded: when this object last recorded a run (seconds since the epoch),
            or None.

    Raises:
        TypeError: `path` is not a non-empty path.
        ValueError: if the path names an in-memory database (`":memory:"`, or a `file:` URI
            with `mode=memory`: each thread and process would see its own, empty one), or
            cannot be created or opened as a results store.
    """

    def __init__(self, path):
        self.path = _path(path, "path", "a non-empty file path (SQLite would keep an empty one in memory and lose "
                                        "every record)")
        if _in_memory(self.path):  # each thread's (and worker process's) connection would open its own, empty one
            raise ValueError(f"`path` must be a file: an in-memory SQLite database is private to one connection, and "
                             f"the store opens one per thread and per process, so records written in one would be "
                             f"lost to the others. Use a file path, e.g. os.path.join(tempfile.mkdtemp(), "
                             f"'results.sqlite'). Received: path={path!r}")
        # the file every connection opens: a thread or worker process connecting after a `chdir` would
        # otherwise open (and write into) another store (a `file:` URI is left to SQLite as given)
        self._file = self.path if self.path[:5].lower() == "file:" else os.path.abspath(self.path)
        self.recorded, self.last_recorded = 0, None
        self._machine, self._trackers, self._tracker_lock = None, [], threading.Lock()
        self._listeners: list = []  # `after_record` callbacks
        self._reading_only = 0  # open `reading_only()` contexts
        folder = os.path.dirname(os.path.abspath(self.path))
        try:
            os.makedirs(folder, exist_ok=True)
            self._local = threading.local()
            self._connect()
        except (OSError, sqlite3.Error) as err:
            raise ValueError(f"Cannot open results store at {self.path!r}: {err}") from None

    def __getstate__(self):
        return {"path": self._file}

    def __setstate__(self, state):
        self.__init__(state["path"])

    def _connect(self) -> sqlite3.Connection:
        conn = getattr(self._local, "conn", None)
        if conn is None or getattr(self._local, "pid", None) != os.getpid():
            conn = sqlite3.connect(self._file, timeout=120, isolation_level=None)
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=FULL")
            conn.execute(_SCHEMA)
            self._add_later_columns(conn)
            self._local.conn, self._local.pid = conn, os.getpid()
        return conn

    @staticmethod
    def _add_later_columns(conn) -> None:
        """Gives a store written by an earlier release the columns added since (NULL in its old rows)."""
        def columns():
            return {row[1] for row in conn.execute("PRAGMA table_info(results)")}

        for column in [c for c in _LATER_COLUMNS if c not in columns()]:
            try:
                conn.execute(f"ALTER TABLE results ADD COLUMN {column} TEXT")
            except sqlite3.OperationalError:  # another process added it first
                if column not in columns():
                    raise

    @property
    def machine(self) -> str:
        """The `runtime.machine()` id this object records with each row it computes."""
        if self._machine is None:
            from tf_dlthesis import runtime

            self._machine = runtime.machine()["id"]
        return self._machine

    @contextlib.contextmanager
    def provenance(self):
        """Within: which machines computed the rows this object reads (`get`, `get_or_compute`) or records.

        Yields a dict, filled as rows are read or recorded, from each row's key
        `(experiment, config hash, run)` to the id of the machine that computed it
        (`runtime.machine()["id"]`; None for a row stored before machines were
        recorded). `collections.Counter(seen.values())` counts them per machine.
        Contexts may nest; each sees every row used inside it. Reading a result that
        `get_or_compute` recorded also marks the rows it was computed from (read or
        recorded inside its `fn`, recursively), so code that reads a stored result sees
        the same rows, and machines, as the code that computed it.

        Example:

        >>> with store.provenance() as seen:
        ...     _ = store.get("2.1", {"method": "mixup"}, 0)
        >>> sorted(set(seen.values())) == [store.machine]
        True
        """
        seen: dict = {}
        with self._tracker_lock:
            self._trackers.append(seen)
        try:
            yield seen
        finally:
            with self._tracker_lock:  # by identity: two contexts' dicts may be equal
                self._trackers = [t for t in self._trackers if t is not seen]

    @contextlib.contextmanager
    def after_record(self, fn):
        """Within: `fn(key)` runs after every row this object records (`record`,
        `get_or_compute`), with the row's key `(experiment, config hash, run)`, in the
        thread that recorded it. Rows `fn` records itself call it again (it tells them by
        their key). What `fn` reads or records is bookkeeping, not a result: no
        `provenance()` context sees it, so it is neither a section's machine nor an input
        of a result recorded around it. `reproduce` keeps each item's compute time up to
        date this way, so that a hard kill loses none of it up to the last finished run.

        Raises:
            TypeError: if `fn` is not callable.
        """
        if not callable(fn):
            raise TypeError(f"`fn` must be callable. Received: fn={fn!r}")
        with self._tracker_lock:
            self._listeners = [*self._listeners, fn]
        try:
            yield
        finally:
            with self._tracker_lock:
                self._listeners = [f for f in self._listeners if f is not fn]

    def _seen(self, key: tuple, machine, inputs=None) -> None:
        """Marks row `key` (and the rows it was computed from: `[experiment, hash, run, machine]`s) as used."""
        if self._trackers and not getattr(self._local, "in_listener", False):
            with self._tracker_lock:
                for seen in self._trackers:
                    for experiment, digest, run, source in inputs or ():
                        seen[(experiment, digest, int(run))] = source
                    seen[key] = machine

    @contextlib.contextmanager
    def reading_only(self):
        """Within: this store computes nothing. It reads as usual, but `get_or_compute` of a run it
        lacks, `record`, and `run_protocol` / `run_lm_protocol` with runs left to train raise
        `NotStoredError` (naming the run) before anything is computed. `report.archive_reads` rebuilds
        a report this way, so that an incomplete archive fails at once instead of training for hours.

        Example:

        >>> with store.reading_only():
        ...     store.get_or_compute("2.1", {"method": "cutmix"}, 0, lambda: {"accuracy": 0.5})
        Traceback (most recent call last):
        NotStoredError: ...
        """
        self._reading_only += 1
        try:
            yield self
        finally:
            self._reading_only -= 1

    def before_compute(self, what: str) -> None:
        """Called before something is computed for this store (`what` names it): raises
        `NotStoredError` within `reading_only()`, else does nothing."""
        if self._reading_only:
            raise NotStoredError(f"Not stored: {what}. The store computes nothing within `reading_only()`.")

    @staticmethod
    def _check(experiment, config, run):
        if not isinstance(experiment, str) or not experiment:
            raise TypeError(f"`experiment` must be a non-empty string. Received: experiment={experiment!r}")
        if not isinstance(config, dict):
            raise TypeError(f"`config` must be a dict. Received: config={config!r}")
        check_int("run", run, 0)
        if run > _MAX_RUN:
            raise ValueError(f"`run` must fit SQLite's integers (<= 2**63 - 1). Received: run={run}")

    def _key(self, experiment, config, run) -> tuple:
        """The checked row key `(experiment, config hash, run)`."""
        self._check(experiment, config, run)
        return experiment, config_hash(config), int(run)

    def record(self, experiment: str, config: dict, run: int, result: dict) -> None:
        """Stores one finished run atomically (replacing an earlier row with the same key).

        Raises:
            TypeError: non-JSON-able config/result (object, structured or masked arrays included), or
                wrong argument types.
            ValueError: a dict key is one the store reserves (`"__ndarray__"`, `"__float__"`), or a bad `run`.
            NotStoredError: within `reading_only()`.
        """
        key = self._key(experiment, config, run)
        self.before_compute(f"Run {run} of {experiment!r} (config {key[1]})")
        self._record(key, config, result, None)

    def _record(self, key, config, result, inputs) -> str:
        """`record` under the checked `key`, keeping `inputs` ({row key: machine} of the rows
        `result` was computed from).

        Returns the stored JSON text of `result`.
        """
        if not isinstance(result, dict):
            raise TypeError(f"`result` must be a dict. Received: result={type(result).__name__}")
        created = time.time()
        used = [[*k, m] for k, m in sorted((inputs or {}).items(), key=lambda item: item[0]) if k != key]
        text = json.dumps(_encode(result))
        self._insert((*key, json.dumps(_encode(config), sort_keys=True), text, created,
                      self.machine, json.dumps(used, separators=(",", ":")) if used else None))
        self._seen(key, self.machine)
        self.recorded, self.last_recorded = self.recorded + 1, created
        if self._listeners:
            outer, self._local.in_listener = getattr(self._local, "in_listener", False), True
            try:  # what the callbacks read or record is not tracked
                for fn in self._listeners:  # a list replaced, never changed in place: safe to iterate
                    fn(key)
            finally:
                self._local.in_listener = outer
        return text

    def _insert(self, row) -> None:
        conn = self._connect()
        conn.execute("BEGIN IMMEDIATE")
        try:
            conn.execute("INSERT OR REPLACE INTO results (experiment, config_hash, run, config, result, created, "
                         f"{_MACHINE_COLUMN}, {_INPUTS_COLUMN}) VALUES (?, ?, ?, ?, ?, ?, ?, ?)", row)
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise

    def has(self, experiment: str, config: dict, run: int) -> bool:
        """Whether this run has finished and been recorded."""
        cur = self._connect().execute(
            "SELECT 1 FROM results WHERE experiment=? AND config_hash=? AND run=?", self._key(experiment, config, run))
        return cur.fetchone() is not None

    def get(self, experiment: str, config: dict, run: int):
        """The recorded result dict of a run, or None."""
        return self._get(self._key(experiment, config, run))

    def _get(self, key):
        row = self._connect().execute(
            f"SELECT result, {_MACHINE_COLUMN}, {_INPUTS_COLUMN} FROM results WHERE experiment=? AND config_hash=? "
            "AND run=?", key).fetchone()
        if row is None:
            return None
        result = _decode(json.loads(row[0]))
        self._seen(key, row[1] or _machine_in(result), json.loads(row[2]) if row[2] else None)
        return result

    def get_or_compute(self, experiment: str, config: dict, run: int, fn):
        """The recorded result of a run, or `fn()` recorded first: the one resume idiom.

        The rows `fn` reads or records are kept with the result, so that reading it
        later marks them as used too (`provenance`). Either way the caller gets the
        stored form (tuples as lists, NumPy scalars as Python numbers, fresh arrays),
        so a resumed run computes from exactly what a first run did.

        Example:

        >>> result = store.get_or_compute("3.2", {"source": "pgd"}, 0, lambda: {"accuracy": 0.5})

        Raises:
            TypeError: `fn` is not callable or returns something other than a dict.
            NotStoredError: the run is not stored, within `reading_only()`.
        """
        if not callable(fn):
            raise TypeError(f"`fn` must be callable. Received: fn={fn!r}")
        key = self._key(experiment, config, run)
        result = self._get(key)
        if result is None:
            self.before_compute(f"Run {run} of {experiment!r} (config {key[1]})")
            with self.provenance() as used:
                result = fn()
            if not isinstance(result, dict):
                raise TypeError(f"`fn` must return a dict of results. Received: {type(result).__name__}")
            result = _decode(json.loads(self._record(key, config, result, used)))
        return result

    def __len__(self) -> int:
        """The number of recorded runs (of every experiment)."""
        return int(self._connect().execute("SELECT COUNT(*) FROM results").fetchone()[0])

    def rows(self, experiment: str | None = None) -> list[dict]:
        """All recorded runs (of one experiment, or all), oldest first.

        Returns:
            A list of dicts with keys `experiment`, `config`, `run`, `result` and `machine`
            (the id of the machine that computed the row; None where it was not recorded).
        """
        if experiment is not None and not isinstance(experiment, str):
            raise TypeError(f"`experiment` must be a string (or None for every row). Received: experiment={experiment!r}")
        query = f"SELECT experiment, config, run, result, {_MACHINE_COLUMN} FROM results"
        args: tuple = ()
        if experiment is not None:
            query += " WHERE experiment=?"
            args = (experiment,)
        cur = self._connect().execute(query + " ORDER BY created, rowid", args)
        rows = []
        for e, c, r, res, machine in cur.fetchall():
            result = _decode(json.loads(res))
            rows.append({"experiment": e, "config": _decode(json.loads(c)), "run": r, "result": result,
                         "machine": machine or _machine_in(result)})
        return rows

    def table(self, experiment: str) -> list[dict]:
        """One flat dict per run: config keys, `run`, and the result's scalar entries.

        Raises:
            ValueError: a result's scalar entry has the name of a config key or `run` (one would hide the
                other; `rows()` keeps them apart).
        """
        if not isinstance(experiment, str):
            raise TypeError(f"`experiment` must be a string. Received: experiment={experiment!r}")
        flat = []
        for row in self.rows(experiment):
            entry = dict(row["config"])
            entry["run"] = row["run"]
            scalars = {k: v for k, v in row["result"].items() if not isinstance(v, (np.ndarray, list, dict))}
            clash = sorted(set(scalars) & set(entry))
            if clash:
                raise ValueError(f"Run {row['run']} of {experiment!r} has result entries named as its config keys "
                                 f"or `run`, which a flat table would merge: {clash}. Read them apart with "
                                 f"`rows({experiment!r})` (each row's `config`, `run` and `result`).")
            entry.update(scalars)
            flat.append(entry)
        return flat

    # ------------------------------------------------------------------ archive
    @staticmethod
    def _archive_name(experiment: str, digest: str, run: int) -> str:
        folder = re.sub(r"[^A-Za-z0-9_.-]", "_", experiment)
        return os.path.join(f"{folder}-{hashlib.sha256(experiment.encode()).hexdigest()[:6]}", f"{digest}-{run}.json.gz")

    @staticmethod
    def _write_file(conn, path, key) -> None:
        """Writes row `key` (`(experiment, config hash, run)`) of `conn`'s store to archive file `path`."""
        config, result, created, machine, inputs = conn.execute(
            f"SELECT config, result, created, {_MACHINE_COLUMN}, {_INPUTS_COLUMN} FROM results WHERE experiment=? "
            "AND config_hash=? AND run=?", key).fetchone()
        entry = {"experiment": key[0], "run": key[2], "config": json.loads(config), "result": json.loads(result),
                 "created": created}
        if machine is not None:  # (rows stored before machines were recorded keep their old bytes)
            entry["machine"] = machine
        if inputs is not None:
            entry["inputs"] = json.loads(inputs)
        text = json.dumps(entry, separators=(",", ":"))  # key order as stored: deterministic, and kept
        os.makedirs(os.path.dirname(path), exist_ok=True)
        tmp = f"{path}.{uuid.uuid4().hex}.tmp"  # unique: other processes may export here at once
        try:
            with open(tmp, "wb") as fh:
                fh.write(gzip.compress(text.encode(), compresslevel=9, mtime=0))
            os.utime(tmp, (created, created))
            os.replace(tmp, path)
        finally:
            if os.path.exists(tmp):
                os.remove(tmp)

    @classmethod
    def _read_file(cls, path) -> tuple:
        """Archive file `path`'s row (its `inputs` checked) and decoded config; ValueError naming it otherwise."""
        try:
            with open(path, "rb") as fh:
                row = json.loads(gzip.decompress(fh.read()))
            decoded = _decode(row["config"])
            cls._check(row["experiment"], decoded, row["run"])
            if not isinstance(row["result"], dict):
                raise TypeError(f"its result must be a dict. Received: {type(row['result']).__name__}")
            row["inputs"] = _checked_inputs(row.get("inputs"))
        except (OSError, EOFError, zlib.error, ValueError, KeyError, TypeError) as err:
            raise ValueError(f"{path!r} is not a run exported by `export_rows`: {err}") from None
        return row, decoded

    def export_rows(self, folder, *, replace: bool = False, experiment: str | None = None) -> int:
        """Writes every recorded run into `folder` as one small file per run, for version control.

        Each file (`<experiment>-<id>/<config hash>-<run>.json.gz`) holds one run's
        experiment, config, result and machine id, compressed deterministically: exporting the
        same run twice gives the same bytes, so a folder kept in git only grows by
        the runs that finished since the last export. `import_rows` reads it back on
        another machine (e.g. to resume a long `reproduce` run).

        `replace=True` merges a retrain into an archive: every file in `folder` of a
        config this store holds is removed first, whatever its run index, so the folder
        keeps exactly this store's runs of those configs (e.g. an item's time, which is
        one row per process that ran it, or runs of another machine) and every other
        config's files untouched. Configs the retrain did not produce are kept (e.g. a
        bit change's later redraws in the old runs, which the protocol still reads):
        `provenance` over a rebuild shows which rows each item reads.

        `experiment` exports only that experiment's runs (e.g. `reproduce`'s item times,
        `"reproduce.item_seconds"`, after `confirm_rows` re-recorded a retrain's runs).

        Example (an item retrained in a fresh folder replaces its runs in the archive):

        >>> fresh = ResultsStore("retrain/results.sqlite")  # doctest: +SKIP
        >>> fresh.export_rows("docs/standard-report/store", replace=True)  # doctest: +SKIP

        Returns:
            The number of files written (runs already in `folder` are left alone,
            unless their row was recorded again since, or `replace`).

        Raises:
            ValueError: `folder` cannot be created or written.
        """
        if not isinstance(replace, bool):
            raise TypeError(f"`replace` must be True or False. Received: replace={replace!r}")
        if experiment is not None and not isinstance(experiment, str):
            raise TypeError(f"`experiment` must be an experiment name (a string) or None. "
                            f"Received: experiment={experiment!r}")
        folder = _path(folder)
        written, conn = 0, self._connect()
        keys = [key for key in conn.execute("SELECT experiment, config_hash, run, created FROM results ORDER BY "
                                            "created, rowid").fetchall() if experiment in (None, key[0])]
        try:
            if replace:
                for name_of, digest in sorted({(e, d) for e, d, _, _ in keys}):
                    sub = os.path.dirname(os.path.join(os.fspath(folder), self._archive_name(name_of, digest, 0)))
                    for name in os.listdir(sub) if os.path.isdir(sub) else ():
                        if re.fullmatch(rf"{re.escape(digest)}-\d+\.json\.gz", name):
                            os.remove(os.path.join(sub, name))
            for name_of, digest, run, created in keys:
                path = os.path.join(os.fspath(folder), self._archive_name(name_of, digest, run))
                # a file is rewritten only when its row was recorded again after the file was written (a
                # bit-change draw's pending result replaced by its judgement): the file's mtime is its row's
                # `created`, and a checked-out file is newer than every row it holds
                if os.path.exists(path) and os.path.getmtime(path) >= created - 1e-3:  # (float rounding)
                    continue
                self._write_file(conn, path, (name_of, digest, run))
                written += 1
        except OSError as err:
            raise ValueError(f"Cannot write the results archive at {os.fspath(folder)!r}: {err}") from None
        return written

    def confirm_rows(self, folder) -> dict:
        """Re-records in an `export_rows` archive the runs this store computed again, bit for bit.

        For a retrain on the machine class that computed an archive's runs: each run
        this store holds whose archived file has the same config and the same result,
        timing entries aside (`seconds`, `cpu_seconds`, `process_cpu_seconds`, `machine`,
        at any depth, also as `info:` keys), is written over that file, so the archive
        names the machine (and the times) of the retrain; no other entry of a result
        changes. Everything else is left as it is and listed: runs whose result differs
        (a retrain on another class is a new measurement: merge it with
        `export_rows(replace=True)` instead), runs the archive lacks, and rows that hold
        only timings (e.g. `reproduce`'s item times: once an item's retrain has finished,
        `export_rows(folder, replace=True, experiment="reproduce.item_seconds")` swaps them).

        Example (a bit-identical retrain of App. B.2 merged into the archive):

        >>> fresh = ResultsStore("retrain/results.sqlite")  # doctest: +SKIP
        >>> done = fresh.confirm_rows("docs/standard-report/store")  # doctest: +SKIP
        >>> len(done["differing"]) == 0  # doctest: +SKIP
        True

        Returns:
            A dict of sorted lists of archive file names (relative to `folder`):
            `"confirmed"` (rewritten from this store), `"differing"`, `"absent"`, `"timings"`.

        Raises:
            ValueError: `folder` is not a folder, holds an unreadable file of one of this
                store's runs, or cannot be written.
        """
        folder = _path(folder)
        if not os.path.isdir(folder):
            raise ValueError(f"`folder` must be a folder written by `export_rows`. Received: {folder!r}")
        found: dict = {"confirmed": [], "differing": [], "absent": [], "timings": []}
        conn = self._connect()
        for *key, config, result in conn.execute("SELECT experiment, config_hash, run, config, result FROM results "
                                                 "ORDER BY created, rowid"):
            name = self._archive_name(*key)
            path = os.path.join(folder, name)
            mine = _without_timings(json.loads(result))
            if not mine:
                found["timings"].append(name)
                continue
            if not os.path.exists(path):
                found["absent"].append(name)
                continue
            row, _ = self._read_file(path)
            if (row["config"], _without_timings(row["result"])) != (json.loads(config), mine):
                found["differing"].append(name)
                continue
            try:
                self._write_file(conn, path, tuple(key))
            except OSError as err:
                raise ValueError(f"Cannot write the results archive at {folder!r}: {err}") from None
            found["confirmed"].append(name)
        return {kind: sorted(names) for kind, names in found.items()}

    def import_rows(self, folder, *, machine: str | None = None) -> int:
        """Records every run of an `export_rows` folder that this store does not hold yet.

        `machine` imports only the runs computed on that machine id (the file's recorded
        machine, else the one its result recorded; runs with none count as not that
        machine). It resumes a retrain on a fresh machine of the class that began it: seed
        the retrain's store with the runs already merged from that class, and `reproduce`
        trains only the rest.

        Example (finish an item's retrain on this machine's class; `retrain/` is fresh):

        >>> store = ResultsStore("retrain/results.sqlite")  # doctest: +SKIP
        >>> store.import_rows("docs/standard-report/store", machine=runtime.machine()["id"])  # doctest: +SKIP

        Then `tf-dlthesis reproduce --scale standard --only B.2 --out retrain`.

        Returns:
            The number of runs added.

        Raises:
            ValueError: `folder` is not a folder, or holds a file that is not an exported run
                (named in the message).
            TypeError: `machine` is not a string or None.
        """
        folder = _path(folder)
        if not os.path.isdir(folder):
            raise ValueError(f"`folder` must be a folder written by `export_rows`. Received: {folder!r}")
        if machine is not None and not isinstance(machine, str):
            raise TypeError(f"`machine` must be a machine id (a string, e.g. runtime.machine()['id']) or None. "
                            f"Received: machine={machine!r}")
        # runs already held are skipped by file name (as `export_rows` does), without reading them
        held = {self._archive_name(*key) for key in
                self._connect().execute("SELECT experiment, config_hash, run FROM results").fetchall()}
        added = 0
        for root, _, files in sorted(os.walk(folder)):
            for name in sorted(files):
                path = os.path.join(root, name)
                if not name.endswith(".json.gz") or os.path.relpath(path, folder) in held:
                    continue
                row, decoded = self._read_file(path)
                experiment, run, config, result, inputs = (row[k] for k in ("experiment", "run", "config", "result",
                                                                            "inputs"))
                recorded_on = row.get("machine") if isinstance(row.get("machine"), str) else None
                if machine is not None and (recorded_on or _machine_in(result)) != machine:
                    continue
                if not self.has(experiment, decoded, run):  # held under another file name (a renamed file)
                    # the exported JSON is the stored JSON: re-encoding would give the same text
                    self._insert((experiment, config_hash(decoded), int(run), json.dumps(config, sort_keys=True),
                                  json.dumps(result), float(row.get("created", time.time())), recorded_on,
                                  json.dumps(inputs, separators=(",", ":")) if inputs else None))
                    added += 1
        return added

    def __repr__(self):
        return f"ResultsStore({self.path!r})"
