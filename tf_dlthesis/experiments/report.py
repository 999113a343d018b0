"""Runs registered experiments and writes the Markdown report."""

from __future__ import annotations

import contextlib
import datetime
import os
import signal
import sys
import threading
import time
import traceback

from tf_dlthesis.experiments.registry import DEFAULT_DATASETS, VERDICTS, Output, fmt, select


def _cell(text) -> str:
    """Table-cell text: a literal `|` would end the cell, a newline the row."""
    return str(text).replace("|", "\\|").replace("\n", " ")


def _table_md(table) -> list:
    thesis = table.thesis or {}
    # a "(thesis)" column only where the thesis reports that metric
    with_thesis = {col for col in table.columns if any(col in row for row in thesis.values())}
    header = ["row"]
    for col in table.columns:
        header += ([f"{col} (thesis)"] if col in with_thesis else []) + [f"{col} (ours)" if col in with_thesis else col]
    lines = [
        f"**Table {table.id}: {table.title}**",
        "",
        f"- ours: {table.setting}",
    ]
    if thesis:
        lines.append(f"- thesis: {table.thesis_setting}")
    lines += ["", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    keys = list(table.rows) + [k for k in thesis if k not in table.rows]
    for key in keys:
        ours = table.rows.get(key, {})
        theirs = thesis.get(key, {})
        cells = [str(key)]
        for col in table.columns:
            if col in with_thesis:
                cells.append(fmt(theirs.get(col)))
            cells.append(fmt(ours.get(col)))
        lines.append("| " + " | ".join(_cell(c) for c in cells) + " |")
    return lines + [""]


def save_figures(output: Output, out_dir) -> list:
    """Saves an output's figures as `out_dir/figures/<name>.png` and closes them."""
    import matplotlib.pyplot as plt

    fig_dir = os.path.join(out_dir, "figures")
    os.makedirs(fig_dir, exist_ok=True)
    paths = []
    for name, figure in output.figures:
        path = os.path.join(fig_dir, f"{name}.png")
        figure.savefig(path, dpi=110, bbox_inches="tight")
        plt.close(figure)
        paths.append(path)
    return paths


#: The store's experiment name for the compute time of a `reproduce` item (one run per
#: process that trained or evaluated part of it), so resumed runs keep their times.
ITEM_SECONDS = "reproduce.item_seconds"


def _item_key(scale, dataset, exp) -> dict:
    return {"scale": scale, "dataset": dataset or DEFAULT_DATASETS[scale], "item": exp.id}


def _recorded(store, key) -> tuple:
    """`(total seconds, number of rows)` recorded under `ITEM_SECONDS` for `key`."""
    total, run = 0.0, 0
    while (row := store.get(ITEM_SECONDS, key, run)) is not None:
        total, run = total + float(row["seconds"]), run + 1
    return total, run


def item_seconds(store, scale: str, dataset, exp) -> float:
    """The compute seconds recorded in `store` for item `exp` (0 if none)."""
    return _recorded(store, _item_key(scale, dataset, exp))[0]


def record_item_seconds(store, scale: str, dataset, exp, seconds: float) -> float:
    """Adds one process's compute `seconds` for item `exp` to `store`; returns the item's total.

    Each process's share is its own row (a recorded row never changes, so an
    exported archive only grows), and the total is their sum.
    """
    if not isinstance(seconds, (int, float)) or not seconds >= 0:
        raise ValueError(f"`seconds` must be a number >= 0. Received: seconds={seconds!r}")
    key = _item_key(scale, dataset, exp)
    total, run = _recorded(store, key)
    store.record(ITEM_SECONDS, key, run, {"seconds": float(seconds)})
    return total + float(seconds)


def write_report(sections, out_dir, *, scale: str, dataset: str, total_seconds: float, absent=()) -> str:
    """Writes `report.md` (and figure PNGs under `figures/`) into `out_dir`.

    Args:
        sections: list of `(experiment, Output or None, seconds, error text or None)`;
            `seconds` is the item's compute time (`reproduce`: summed over the
            processes that computed part of it, so a resumed item keeps its time).
        total_seconds: this process's wall time.
        absent: ids of registered items this report does not cover (named in its header,
            so a partial report never reads as a complete one).

    Returns:
        The report path.
    """
    fig_dir = os.path.join(out_dir, "figures")
    os.makedirs(fig_dir, exist_ok=True)
    verdicts = {}
    n_checks, failed = 0, []
    for exp, output, _, _ in sections:
        for finding in (output.findings if output else []):
            verdicts[finding.verdict] = verdicts.get(finding.verdict, 0) + 1
        for check in (output.checks if output else []):
            n_checks += 1
            if not check.passed:
                failed.append(f"{exp.id}: {check.name}")
    n_failed = len(failed)
    compute = sum(seconds for _, _, seconds, _ in sections)
    lines = [
        "# tf_dlthesis reproduction report",
        "",
        f"Scale `{scale}`, dataset `{dataset or DEFAULT_DATASETS[scale]}`; generated {datetime.datetime.now().isoformat(timespec='seconds')} "
        f"in {total_seconds / 60:.1f} min"
        + (f" (the items' compute time, including earlier processes of a resumed run: {compute / 60:.1f} min)"
           if compute > total_seconds + 60 else "")
        + ". Thesis numbers come from `thesis_tables.json`; "
        "verdicts are computed from the numbers below.",
        "",
        "Verdicts: " + (", ".join(f"{v}: {verdicts[v]}" for v in VERDICTS if v in verdicts) or "none"),
        "",
        "Each finding names its statistic and shows the effect with its 95% interval. A finding is "
        "*reproduced* only when the whole interval lies in the region the thesis claims, *not reproduced* "
        "when the whole interval lies outside it, and *inconclusive* otherwise; *not comparable* findings "
        "say why this scale cannot test them.",
        "",
        f"Regime and health checks: {n_checks - n_failed} of {n_checks} passed"
        + (f" (failed: {', '.join(failed)})" if failed else "") + ".",
        "",
    ]
    if absent:
        lines += [f"**Partial report: {len(sections)} of {len(sections) + len(absent)} registered items.** Not in "
                  f"this report: {', '.join(absent)}.", ""]
    lines += [
        "| id | title | time (s) | status |",
        "|---|---|---|---|",
    ]
    for exp, output, seconds, error in sections:
        status = "failed" if error else "ok"
        lines.append(f"| {exp.id} | {exp.title} | {seconds:.0f} | {status} |")
    lines.append("")
    for exp, output, seconds, error in sections:
        lines += [f"## {exp.id}: {exp.title}", ""]
        if error:
            lines += ["Failed:", "", "```", error.strip(), "```", ""]
            continue
        for table in output.tables:
            lines += _table_md(table)
        for name, figure in output.figures:
            if not os.path.exists(os.path.join(fig_dir, f"{name}.png")):
                save_figures(output, out_dir)
            lines += [f"![{name}](figures/{name}.png)", ""]
        if output.checks:
            lines += ["| regime / health check | status | measured |", "|---|---|---|"]
            for c in output.checks:
                lines.append(f"| {_cell(c.name)} | {'ok' if c.passed else '**FAILED**'} | {_cell(c.detail)} |")
            lines.append("")
        if output.findings:
            lines += ["| finding | statistic | effect [95% CI] | claimed | verdict | evidence |",
                      "|---|---|---|---|---|---|"]
            for f in output.findings:
                effect = f.effect.text() if f.effect is not None else "—"
                statistic = f.effect.statistic if f.effect is not None else "—"
                lines.append(f"| {_cell(f.claim)} | {_cell(statistic)} | {effect} | {f.region or '—'} | "
                             f"**{f.verdict}** | {_cell(f.evidence)} |")
            lines.append("")
        for note in output.notes:
            lines += [note, ""]
    path = os.path.join(out_dir, "report.md")
    tmp = path + ".tmp"
    with open(tmp, "w") as fh:
        fh.write("\n".join(lines) + "\n")
    os.replace(tmp, path)
    return path


@contextlib.contextmanager
def _sigterm_as_interrupt():
    """Within: SIGTERM (`kill PID`, a batch system's stop) raises KeyboardInterrupt, as Ctrl-C does.

    Only in the main thread (the only one Python delivers signals to); the previous
    handler comes back on exit.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def stop(signum, frame):
        raise KeyboardInterrupt(f"stopped by signal {signum}")

    previous = signal.signal(signal.SIGTERM, stop)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous if previous is not None else signal.SIG_DFL)


def _keep_stopped_item(store, scale, dataset, exp, t0: float | None, held: int, archive) -> None:
    """What `reproduce` keeps of an item stopped part-way: its finished runs and their compute time.

    The item's share of this process is the time up to its last recorded run: the
    runs cut short are lost and will be trained again by the resuming process, so
    their time is not the item's cost. `t0` None: the item's time is already recorded
    (the stop came while its figures, archive or report were being written). The
    archive then gets every finished run.
    """
    last = store.last_created(exclude=ITEM_SECONDS)
    if t0 is not None and len(store) > held and last is not None and last > t0:
        record_item_seconds(store, scale, dataset, exp, last - t0)
    if archive is not None:
        store.export_rows(archive)


def reproduce(*, scale: str = "quick", dataset: str | None = None, out_dir="tf-dlthesis-out", only=None,
              tensorboard=None, progress: bool = True, data_dir=None, archive=None):
    """Runs every registered table/figure and writes the report.

    Finished training runs are recorded in `out_dir/results.sqlite`, so a rerun
    (after an interruption, say) skips them. An experiment that raises is reported
    as failed and the others still run.

    With `archive` (a folder), the runs it holds are read into the store first and
    every finished run is written to it after each item (`ResultsStore.export_rows`:
    one small file per run), so a long run can be committed to git part-way and
    resumed on a fresh machine.

    Each item's time in the report is its compute time: the seconds of every
    process that trained or evaluated part of it, recorded in the store (and so in
    the archive) under `ITEM_SECONDS`. An item read back entirely from the store
    shows its recorded time.

    Stopping a run (Ctrl-C, or SIGTERM from `kill` or a batch system) keeps its work:
    the running item's finished runs stay in the store, its compute time up to its
    last finished run is recorded, the archive (if any) is written, running training
    workers are ended, and KeyboardInterrupt propagates. The report on disk is the one
    written after the last finished item. Rerunning the same call resumes.

    Returns:
        `(report_path, number_of_failed_experiments)`.
    """
    from tf_dlthesis import runtime
    from tf_dlthesis.experiments.results_store import ResultsStore
    from tf_dlthesis.experiments.training import data_dir as data_dir_context

    experiments = select(only)
    chosen = {exp.id for exp in experiments}
    absent = [exp.id for exp in select() if exp.id not in chosen]
    os.makedirs(out_dir, exist_ok=True)
    store = ResultsStore(os.path.join(out_dir, "results.sqlite"))
    if archive is not None and os.path.isdir(archive):
        store.import_rows(archive)
    sections = []
    start = time.time()
    from tqdm.auto import tqdm

    # Off a terminal (logs, CI, pipes) refresh only on close: one final line with the final count.
    interactive = sys.stderr.isatty()
    bar = tqdm(total=len(experiments), desc="reproduce", unit="item", disable=not progress,
               mininterval=0.1 if interactive else float("inf"))
    with _sigterm_as_interrupt():
        for exp in experiments:
            bar.set_postfix_str(f"{exp.id}: {exp.title[:40]}", refresh=interactive)
            runtime.configure(seed=0, deterministic=True)
            t0, held, timed = time.time(), len(store), False
            try:
                try:
                    with data_dir_context(data_dir):
                        output, error = exp(scale, dataset, store, out=out_dir, tensorboard=tensorboard), None
                except Exception:  # keep going: one failure must not lose the others' results
                    output, error = None, traceback.format_exc(limit=8)
                    bar.write(f"[{exp.id}] failed: {error.strip().splitlines()[-1]}")
                if output is not None:
                    save_figures(output, out_dir)
                seconds = time.time() - t0
                if error is None and len(store) > held:  # a failed item's time is not the item's cost
                    seconds, timed = record_item_seconds(store, scale, dataset, exp, seconds), True
                elif error is None:  # read back: its recorded time
                    seconds = item_seconds(store, scale, dataset, exp) or seconds
                sections.append((exp, output, seconds, error))
                if archive is not None:
                    store.export_rows(archive)
                write_report(sections, out_dir, scale=scale, dataset=dataset, total_seconds=time.time() - start,
                             absent=absent + [e.id for e in experiments[len(sections):]])
            except KeyboardInterrupt:  # Ctrl-C or SIGTERM: keep what this item finished, then stop
                bar.close()
                _keep_stopped_item(store, scale, dataset, exp, None if timed else t0, held, archive)
                raise
            bar.update(1)
    bar.close()
    path = write_report(sections, out_dir, scale=scale, dataset=dataset, total_seconds=time.time() - start,
                        absent=absent)
    return path, sum(1 for s in sections if s[3])


__all__ = ["ITEM_SECONDS", "Output", "item_seconds", "record_item_seconds", "reproduce", "save_figures",
           "write_report"]
