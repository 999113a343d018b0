"""Registry of the thesis's tables and figures, and what each returns."""

from __future__ import annotations

import dataclasses
import difflib
import functools
import json
import math
import os
from importlib import resources

VERDICTS = ("reproduced", "not reproduced", "not comparable at this scale")
SCALES = ("quick", "full")


@dataclasses.dataclass
class Table:
    """A result table, printed with the thesis's number beside ours per column.

    Attributes:
        id: thesis table id, e.g. `"2.1"`.
        title: what the table shows.
        setting: our setting (dataset, model, epochs, runs, scale).
        columns: column names (metrics).
        rows: row key -> {column: value}.
        thesis: row key -> {column: value} from the thesis, or None.
        thesis_setting: the thesis's setting (dataset, model).
    """

    id: str
    title: str
    setting: str
    columns: list
    rows: dict
    thesis: dict | None = None
    thesis_setting: str = ""


@dataclasses.dataclass
class Finding:
    """A finding of the thesis checked against our numbers.

    `verdict` must be computed from the numbers (use `Finding.check`).
    """

    claim: str
    verdict: str
    evidence: str

    def __post_init__(self):
        if self.verdict not in VERDICTS:
            raise ValueError(f"`verdict` must be one of {VERDICTS}. Received: verdict={self.verdict!r}")

    @classmethod
    def check(cls, claim: str, holds: bool, evidence: str, *, comparable: bool = True) -> "Finding":
        """Builds a finding whose verdict follows from `holds` (a comparison of numbers)."""
        if not comparable:
            verdict = "not comparable at this scale"
        else:
            verdict = "reproduced" if bool(holds) else "not reproduced"
        return cls(claim, verdict, evidence)


@dataclasses.dataclass
class Output:
    """What an experiment returns: tables, (name, matplotlib figure) pairs, findings."""

    tables: list = dataclasses.field(default_factory=list)
    figures: list = dataclasses.field(default_factory=list)
    findings: list = dataclasses.field(default_factory=list)


@dataclasses.dataclass
class Experiment:
    """A registered table or figure."""

    id: str
    title: str
    chapter: int | str
    fn: object
    quick_minutes: float

    def __call__(self, scale, dataset, store, *, out=None) -> Output:
        if scale not in SCALES:
            raise ValueError(f"`scale` must be one of {SCALES}. Received: scale={scale!r}")
        result = self.fn(scale, dataset, store, out=out)
        if not isinstance(result, Output):
            raise TypeError(f"Experiment {self.id!r} must return an Output. Received: {type(result).__name__}")
        return result


REGISTRY: dict = {}


def register(id: str, *, title: str, chapter, quick_minutes: float = 1.0):
    """Decorator registering `fn(scale, dataset, store, *, out=None) -> Output`.

    Example:

    >>> from tf_dlthesis.experiments import register, Output
    >>> @register("X.0", title="An example", chapter="X")
    ... def example(scale, dataset, store, *, out=None):
    ...     return Output()
    """
    if not isinstance(id, str) or not id:
        raise ValueError(f"`id` must be a non-empty string. Received: id={id!r}")

    def decorator(fn):
        if id in REGISTRY and REGISTRY[id].fn is not fn:
            raise ValueError(f"Experiment id {id!r} is already registered by {REGISTRY[id].fn.__module__}")
        REGISTRY[id] = Experiment(id, title, chapter, fn, float(quick_minutes))
        return fn

    return decorator


def _order(exp):
    chapter = str(exp.chapter)
    return (0 if chapter.isdigit() else 1, chapter.zfill(3), exp.id)


def get(id: str) -> Experiment:
    """The registered experiment with this id (e.g. `"2.1"`, `"fig4.1"`).

    Raises:
        ValueError: unknown id, with the closest names.
    """
    if id in REGISTRY:
        return REGISTRY[id]
    if f"fig{id}" in REGISTRY:  # `figure 4.1` names "fig4.1"
        return REGISTRY[f"fig{id}"]
    close = difflib.get_close_matches(str(id), list(REGISTRY), n=3)
    hint = f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""
    raise ValueError(f"Unknown table/figure id {id!r}. Known: {', '.join(all_ids())}.{hint}")


def all_ids() -> list:
    return [e.id for e in sorted(REGISTRY.values(), key=_order)]


def select(only=None) -> list:
    """Registered experiments in report order, optionally only the given ids."""
    if only is None:
        return sorted(REGISTRY.values(), key=_order)
    chosen = {get(i).id for i in only}
    return [e for e in sorted(REGISTRY.values(), key=_order) if e.id in chosen]


@functools.lru_cache(maxsize=None)
def _thesis_tables() -> dict:
    text = resources.files("tf_dlthesis.experiments").joinpath("thesis_tables.json").read_text()
    return json.loads(text)["tables"]


def thesis_table(id: str) -> dict:
    """The raw tables.json entry of a thesis table (caption, metric, columns, rows)."""
    tables = _thesis_tables()
    if id not in tables:
        raise ValueError(f"No thesis table {id!r}. Known: {sorted(tables)}")
    return tables[id]


def thesis_rows(id: str) -> dict:
    """A thesis table's rows as {row: {column: value}}.

    Single-metric tables (rows of plain numbers) use the table's `metric` as the
    column name.
    """
    table = thesis_table(id)
    metric = table.get("metric", "value")
    return {row: (dict(vals) if isinstance(vals, dict) else {metric: vals}) for row, vals in table["rows"].items()}


# --- run-wide settings the CLI sets (TensorBoard) ---------------------------------
_SETTINGS: dict = {"tensorboard": None}


def set_tensorboard(log_dir) -> None:
    """Makes `fit_callbacks` add a TensorBoard callback writing under `log_dir` (None: off)."""
    _SETTINGS["tensorboard"] = None if log_dir is None else os.fspath(log_dir)


def fit_callbacks(run_name: str) -> list:
    """The Keras callbacks every experiment passes to `model.fit`.

    With `tf-dlthesis reproduce --tensorboard DIR`, this is a
    `keras.callbacks.TensorBoard` writing to `DIR/<run_name>`; otherwise empty.
    """
    if _SETTINGS["tensorboard"] is None:
        return []
    import keras

    safe = "".join(c if (c.isalnum() or c in "-_.") else "_" for c in str(run_name))
    return [keras.callbacks.TensorBoard(log_dir=os.path.join(_SETTINGS["tensorboard"], safe), update_freq="epoch")]


def fmt(value) -> str:
    """Formats a table cell."""
    if value is None:
        return "—"
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        if value == 0:
            return "0"
        a = abs(value)
        if a >= 1000 or a < 1e-3:
            return f"{value:.2e}"
        if a >= 100:
            return f"{value:.1f}"
        if a >= 1:
            return f"{value:.2f}"
        return f"{value:.4g}"  # 0.1, 0.0074, 0.8716: significant digits, no padding
    if isinstance(value, (list, tuple)):
        return ", ".join(fmt(v) for v in value)
    return str(value)
