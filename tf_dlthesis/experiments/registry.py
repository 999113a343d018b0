"""Registry of the thesis's tables and figures, and what each returns."""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import difflib
import functools
import json
import math
import numbers
import re
from importlib import resources
from typing import Mapping

import numpy as np

from tf_dlthesis._checks import check_int

VERDICTS = ("reproduced", "not reproduced", "inconclusive", "not comparable at this scale")
SCALES = ("quick", "standard", "full")
#: The dataset each scale runs on when none is given (full: each table's thesis dataset).
DEFAULT_DATASETS = {"quick": "digits", "standard": "fashion_mnist", "full": "the thesis's dataset of each table"}


def for_scale(settings: dict, scale: str):
    """`settings[scale]`, or a ValueError naming the scales `settings` knows.

    Raises:
        ValueError: `scale` is not a key of `settings`.
    """
    if scale not in settings:
        raise ValueError(f"`scale` must be one of {tuple(settings)}. Received: scale={scale!r}")
    return settings[scale]


@dataclasses.dataclass
class Table:
    """A result table, printed with the thesis's number beside ours per column.

    Attributes:
        id: thesis table id, e.g. `"2.1"`.
        title: what the table shows.
        setting: our setting (dataset, model, epochs, runs, scale) and how it was chosen.
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


def _check_region(above, below) -> None:
    """The claimed region's bounds: finite numbers (or None), `above` < `below` when both are given."""
    for name, bound in (("above", above), ("below", below)):
        if bound is not None and (isinstance(bound, (bool, np.bool_)) or not isinstance(bound, numbers.Real)
                                  or not math.isfinite(bound)):
            raise ValueError(f"`{name}` must be a finite number or None. Received: {name}={bound!r}")
    if above is not None and below is not None and not above < below:
        raise ValueError(f"`above` must be < `below`. Received: above={above}, below={below}")


def _region_text(above, below) -> str:
    if above is not None and below is not None:
        return f"in ({fmt(float(above))}, {fmt(float(below))})"
    return f"> {fmt(float(above))}" if above is not None else f"< {fmt(float(below))}"


@dataclasses.dataclass
class Finding:
    """A finding of the thesis tested against our numbers.

    Build it with `Finding.test` (a measured `stats.Effect` and the region of effects
    the thesis claims; the verdict follows from the interval) or
    `Finding.not_comparable` (a claim this scale cannot test, with the reason).

    Attributes:
        claim: the thesis's claim.
        verdict: one of `VERDICTS`.
        evidence: numbers behind the effect, in words.
        effect: the measured `stats.Effect` (estimate, 95% interval, statistic).
        region: the claimed region of the effect, e.g. "> 0" or "in (0.5, 2)".
    """

    claim: str
    verdict: str
    evidence: str = ""
    effect: object = None
    region: str = ""

    def __post_init__(self):
        if self.verdict not in VERDICTS:
            raise ValueError(f"`verdict` must be one of {VERDICTS}. Received: verdict={self.verdict!r}")
        from tf_dlthesis.experiments.stats import Effect

        if self.verdict != VERDICTS[3] and not isinstance(self.effect, Effect):
            raise ValueError(f"A {self.verdict!r} verdict needs the measured effect with its interval. "
                             f"Received: effect={self.effect!r} for claim {self.claim!r}")
        if self.effect is not None and not isinstance(self.effect, Effect):
            raise TypeError(f"`effect` must be a stats.Effect or None. Received: effect={self.effect!r} "
                            f"for claim {self.claim!r}")
        if self.verdict != VERDICTS[3] and not self.region:
            raise ValueError(f"A {self.verdict!r} verdict needs the claimed region it was judged against "
                             f"(build it with Finding.test). Received: region={self.region!r} for claim "
                             f"{self.claim!r}")
        if self.verdict in VERDICTS[:2] and (math.isnan(self.effect.low) or math.isnan(self.effect.high)):
            raise ValueError(f"A {self.verdict!r} verdict needs an interval; a NaN interval is 'inconclusive'. "
                             f"Received: effect={self.effect!r} for claim {self.claim!r}")

    @classmethod
    def test(cls, claim: str, effect, *, above=None, below=None, evidence: str = "") -> "Finding":
        """The finding whose verdict compares `effect`'s interval with the claimed region (`above`, `below`)."""
        from tf_dlthesis.experiments.stats import Effect, verdict

        if not isinstance(effect, Effect):
            raise TypeError(f"`effect` must be a stats.Effect (estimate and 95% interval). Received: "
                            f"effect={effect!r} for claim {claim!r}")
        if above is not None or below is not None:
            _check_region(above, below)
        return cls(claim, verdict(effect, above, below), evidence, effect, _region_text(above, below))

    @classmethod
    def not_comparable(cls, claim: str, reason: str, effect=None, *, above=None, below=None) -> "Finding":
        """A claim this scale cannot test; `reason` says why (a measured effect may still be shown)."""
        region = ""
        if above is not None or below is not None:
            _check_region(above, below)
            region = _region_text(above, below)
        return cls(claim, VERDICTS[3], reason, effect, region)


@dataclasses.dataclass
class Check:
    """A regime or health check printed with its table (e.g. "baseline reaches ~0 training error").

    Attributes:
        name: what is checked.
        passed: whether it holds.
        detail: the measured numbers.
        regime: the item's findings assume it (the regime in which the thesis makes
            its claims). When a regime check fails, the item's findings are reported
            "not comparable at this scale" with the failed check as the reason; their
            measured effects are still shown.
    """

    name: str
    passed: bool
    detail: str
    regime: bool = False

    def __post_init__(self):
        for field in ("passed", "regime"):  # a string such as "no" would read as passed
            if not isinstance(getattr(self, field), (bool, np.bool_)):
                raise TypeError(f"Check `{field}` must be a bool. Received: {field}={getattr(self, field)!r} "
                                f"for check {self.name!r}")


@dataclasses.dataclass
class Output:
    """What an experiment returns: tables, (name, matplotlib figure) pairs, findings, checks.

    `machines` is filled by the registry, not by the experiment: the number of stored
    results (trained runs, evaluations) the item read or recorded, per id of the
    machine that computed them (`runtime.machine()["id"]`; None: not recorded).
    """

    tables: list = dataclasses.field(default_factory=list)
    figures: list = dataclasses.field(default_factory=list)
    findings: list = dataclasses.field(default_factory=list)
    checks: list = dataclasses.field(default_factory=list)
    notes: list = dataclasses.field(default_factory=list)
    machines: dict = dataclasses.field(default_factory=dict)

    def validate(self, item: str = "") -> None:
        """Raises `TypeError` for an entry the report cannot show, `ValueError` for a figure name that is
        not a plain file name or is given twice (checked before the report is written, so a malformed item
        fails alone instead of stopping the whole report).

        Args:
            item: The experiment id, for the message.
        """
        where = f" in the output of {item!r}" if item else ""
        kinds = {"tables": Table, "findings": Finding, "checks": Check, "notes": str}
        for field, kind in kinds.items():
            for i, entry in enumerate(getattr(self, field)):
                if not isinstance(entry, kind):
                    raise TypeError(f"`{field}[{i}]`{where} must be a {kind.__name__}. Received: {entry!r}")
        for i, table in enumerate(self.tables):
            if not isinstance(table.columns, (list, tuple)):  # a string would print one column per letter
                raise TypeError(f"Table {table.id!r}{where}: `columns` must be a list of column names. "
                                f"Received: columns={table.columns!r}")
            for name, rows in (("rows", table.rows), ("thesis", table.thesis or {})):
                if not isinstance(rows, Mapping) or not all(isinstance(r, Mapping) for r in rows.values()):
                    raise TypeError(f"Table {table.id!r}{where}: `{name}` must map each row name to a dict "
                                    f"{{column: value}}. Received: {name}={rows!r}")
        for i, figure in enumerate(self.figures):
            if not (isinstance(figure, (tuple, list)) and len(figure) == 2 and isinstance(figure[0], str)
                    and figure[0] and (figure[1] is None or callable(getattr(figure[1], "savefig", None)))):
                raise TypeError(f"`figures[{i}]`{where} must be a (name, matplotlib figure) pair. "
                                f"Received: {figure!r}")
            # the name is the PNG's file name under figures/ and the report's link to it
            if not re.fullmatch(r"[A-Za-z0-9_-][A-Za-z0-9_.-]*", figure[0]):
                raise ValueError(f"`figures[{i}]`{where}: a figure's name must be a plain file name of letters, "
                                 f"digits, '_', '-' and '.' (it is saved as figures/<name>.png and linked from "
                                 f"the report). Received: name={figure[0]!r}")
            if any(other[0] == figure[0] for other in self.figures[:i]):
                raise ValueError(f"`figures[{i}]`{where}: two figures are named {figure[0]!r}; the second would "
                                 f"overwrite the first's figures/{figure[0]}.png. Give each figure its own name.")


def _health_checks(runs) -> list:
    """One check per collapsed model, or one passing check for all of them (each model counted once)."""
    runs = list({(r.spec.key(), repr(r.plan.to_config())): r for r in runs}.values())
    collapsed = [r for r in runs if r.collapsed]
    checks = [Check("model not collapsed", False,
                    f"{r.spec.describe()}, seeds {r.plan.source}/{r.plan.run} (init {r.plan.init}): predicts "
                    f"{r.info['distinct_predictions']} of {r.info['num_classes']} classes, test accuracy "
                    f"{100 * r.metrics['test_accuracy']:.1f}%") for r in collapsed]
    if runs and not collapsed:
        fewest = min(r.info["distinct_predictions"] for r in runs)
        checks.append(Check("no collapsed model", True,
                            f"{len(runs)} trained model(s); each predicts >= {fewest} of "
                            f"{runs[0].info['num_classes']} classes on the test set"))
    return checks


@dataclasses.dataclass
class Experiment:
    """A registered table or figure."""

    id: str
    title: str
    chapter: int | str
    fn: object
    quick_minutes: float
    kind: str = "table"
    workers: int = 1

    def __call__(self, scale, dataset, store, *, out=None, tensorboard=None) -> Output:
        if scale not in SCALES:
            raise ValueError(f"`scale` must be one of {SCALES}. Received: scale={scale!r}")
        from tf_dlthesis.experiments.training import RUN_LOG, TENSORBOARD_DIR

        runs: list = []
        log_token, tb_token = RUN_LOG.set(runs), TENSORBOARD_DIR.set(tensorboard)
        tracked = getattr(store, "provenance", None)  # a ResultsStore; other stores name no machines
        try:
            with (tracked() if callable(tracked) else contextlib.nullcontext({})) as seen:
                result = self.fn(scale, dataset, store, out=out)
        finally:
            RUN_LOG.reset(log_token)
            TENSORBOARD_DIR.reset(tb_token)
        if not isinstance(result, Output):
            raise TypeError(f"Experiment {self.id!r} must return an Output. Received: {type(result).__name__}")
        result.validate(self.id)
        result.machines = dict(collections.Counter(seen.values()))
        result.checks = list(result.checks) + _health_checks(runs)
        failed = [c for c in result.checks if c.regime and not c.passed]
        if failed:
            reason = "; ".join(f"{c.name}: {c.detail}" for c in failed)
            result.findings = [f if f.verdict == VERDICTS[3] else dataclasses.replace(
                f, verdict=VERDICTS[3], evidence=f"the thesis's regime was not reached ({reason}); measured: "
                                                 f"{f.evidence}") for f in result.findings]
        return result


REGISTRY: dict = {}


def register(id: str, *, title: str, chapter, quick_minutes: float = 1.0, workers: int = 1):
    """Decorator registering `fn(scale, dataset, store, *, out=None) -> Output`.

    `workers`: the processes the item trains in at once (Chapter 5's protocol starts
    its own); `reproduce(jobs=N)` counts them against its N.

    Example:

    >>> from tf_dlthesis.experiments import register, Output
    >>> @register("X.0", title="An example", chapter="X")
    ... def example(scale, dataset, store, *, out=None):
    ...     return Output()

    Raises:
        ValueError: an empty or taken `id`, a `quick_minutes` that is not finite and >= 0, `workers` < 1.
        TypeError: a `title` that is not a non-empty string, a non-number `quick_minutes` or `workers`, or
            a decorated `fn` that is not callable.
    """
    if not isinstance(id, str) or not id:
        raise ValueError(f"`id` must be a non-empty string. Received: id={id!r}")
    if not isinstance(title, str) or not title:  # the report's heading; `reproduce` shows it as each item starts
        raise TypeError(f"`title` must be a non-empty string. Received: title={title!r}")
    if isinstance(quick_minutes, (bool, np.bool_)) or not isinstance(quick_minutes, numbers.Real):
        raise TypeError(f"`quick_minutes` must be a finite number >= 0 (the item's estimated minutes at the quick "
                        f"scale). Received: quick_minutes={quick_minutes!r}")
    if not (math.isfinite(quick_minutes) and quick_minutes >= 0):  # `reproduce(jobs=N)` orders chapters by it
        raise ValueError(f"`quick_minutes` must be a finite number >= 0 (the item's estimated minutes at the quick "
                         f"scale). Received: quick_minutes={quick_minutes!r}")
    workers = check_int("workers", workers, 1)

    def decorator(fn):
        if not callable(fn):
            raise TypeError(f"`fn` of experiment {id!r} must be callable as fn(scale, dataset, store, *, out=None). "
                            f"Received: fn={fn!r}")
        if id in REGISTRY and REGISTRY[id].fn is not fn:
            raise ValueError(f"Experiment id {id!r} is already registered by {REGISTRY[id].fn.__module__}")
        kind = "figure" if id.startswith("fig") else "table"
        REGISTRY[id] = Experiment(id, title, chapter, fn, float(quick_minutes), kind, workers)
        return fn

    return decorator


def _order(exp):
    chapter = str(exp.chapter)
    return (0 if chapter.isdigit() else 1, chapter.zfill(3), exp.id)


def get(id: str, kind: str | None = None) -> Experiment:
    """The registered experiment with this id (e.g. `"2.1"`, `"fig4.1"`).

    Args:
        id: the item's id; a figure may be named without its "fig" prefix.
        kind: `"figure"` reads a bare number as the figure ("4.1" -> "fig4.1",
            though Table 4.1 exists too), `"table"` as the table; None: the
            table where both exist.

    Raises:
        ValueError: unknown id, with the closest names.
    """
    if kind not in (None, "table", "figure"):
        raise ValueError(f"`kind` must be 'table', 'figure' or None. Received: kind={kind!r}")
    if kind == "figure" and f"fig{id}" in REGISTRY:  # `tf-dlthesis figure 4.1` names "fig4.1"
        return REGISTRY[f"fig{id}"]
    if id in REGISTRY:
        return REGISTRY[id]
    if f"fig{id}" in REGISTRY:
        return REGISTRY[f"fig{id}"]
    close = difflib.get_close_matches(str(id), list(REGISTRY), n=3)
    hint = f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""
    raise ValueError(f"Unknown table/figure id {id!r}. Known: {', '.join(all_ids())}.{hint}")


def all_ids() -> list:
    return [e.id for e in sorted(REGISTRY.values(), key=_order)]


def select(only=None) -> list:
    """Registered experiments in report order, optionally only the given ids (a list, or one
    string of comma-separated ids as the command line's `--only`)."""
    if only is None:
        return sorted(REGISTRY.values(), key=_order)
    if isinstance(only, str):  # "2.1" or "2.1,fig4.1", as the command line's --only
        only = [part.strip() for part in only.split(",") if part.strip()]
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


def _fmt_float(value: float) -> str:
    a = abs(value)
    if a >= 1000 or a < 1e-3:
        return f"{value:.2e}"
    if a >= 100:
        return f"{value:.1f}"
    if a >= 1:
        return f"{value:.2f}"
    return f"{value:.4g}"  # 0.1, 0.0074, 0.8716: significant digits, no padding


def fmt(value) -> str:
    """Formats a table cell."""
    if value is None:
        return "—"
    if isinstance(value, (bool, np.bool_)):
        return str(value)
    if isinstance(value, (int, np.integer)):
        return str(value)
    if isinstance(value, np.floating):  # np.float32 / float16 (np.float64 is a float): formatted as a float
        value = float(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        if value == 0:
            return "0"
        # the rounded value is formatted again: one that rounds across a band's edge (0.99999... -> 1,
        # 99.996 -> 100) reads as the values on the far side do ("1.00", not "1"), so a float's last bit
        # never changes how a cell reads
        return _fmt_float(float(_fmt_float(value)))
    if isinstance(value, (list, tuple)):
        return ", ".join(fmt(v) for v in value)
    return str(value)
