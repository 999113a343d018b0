"""Stopping `reproduce` part-way keeps the running item's finished runs and its compute time
up to its last finished run (Ctrl-C, SIGTERM and a hard kill alike); Ctrl-C and SIGTERM also
write the archive and end the training workers at once, and a rerun resumes."""

import contextlib
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time

import pytest

from tf_dlthesis import experiments
from tf_dlthesis.experiments import Output, report

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _register_stopping_item(item_id, calls):
    """An item that records two runs, works 0.4 s more, and is then interrupted (first call only)."""

    @experiments.register(item_id, title="stopped part-way", chapter="T", quick_minutes=0.0)
    def _item(scale, dataset, store, *, out=None):
        calls.append(time.time())
        for run in (0, 1):
            store.get_or_compute("T.stop", {"x": 1}, run, lambda: {"value": float(run)})
        if len(calls) == 1:
            time.sleep(0.4)  # a third run in progress when the stop comes
            raise KeyboardInterrupt
        return Output([], [], [], [])


def test_a_stopped_item_keeps_its_runs_and_its_time_up_to_the_last_run(tmp_path):
    calls = []
    _register_stopping_item("T.s0", calls)
    try:
        before = time.time()
        with pytest.raises(KeyboardInterrupt):
            experiments.reproduce(out_dir=str(tmp_path / "out"), only=["T.s0"], progress=False,
                                  archive=str(tmp_path / "rows"))
        elapsed = time.time() - before
        store = experiments.ResultsStore(tmp_path / "out" / "results.sqlite")
        assert [row["run"] for row in store.rows("T.stop")] == [0, 1]
        seconds = report.item_seconds(store, "quick", None, experiments.get("T.s0"))
        # the share up to the second run: it excludes the 0.4 s of work that was lost
        assert 0.0 < seconds <= elapsed - 0.4
        # the archive holds both runs and the time row: a fresh machine resumes from it
        assert len(list((tmp_path / "rows").rglob("*.json.gz"))) == 3
        fresh = experiments.ResultsStore(tmp_path / "fresh.sqlite")
        assert fresh.import_rows(tmp_path / "rows") == 3
        # the resumed run trains nothing again and adds its own (read-back) share
        path, failed = experiments.reproduce(out_dir=str(tmp_path / "out"), only=["T.s0"], progress=False)
        assert failed == 0 and len(calls) == 2
        assert len(store.rows("T.stop")) == 2
        assert report.item_seconds(store, "quick", None, experiments.get("T.s0")) == seconds  # nothing new trained
    finally:
        experiments.REGISTRY.pop("T.s0")


def test_a_hard_kill_keeps_the_running_items_time_up_to_its_last_run(tmp_path, process_session):
    """SIGKILL (no handler runs) while an item works after its second run: the store already
    holds the item's time up to that run, and nothing of the work after it."""
    marker, started, out = tmp_path / "second-run-stored", tmp_path / "item-started", tmp_path / "out"
    script = tmp_path / "hard.py"
    script.write_text(textwrap.dedent(f"""
        import sys, time
        from tf_dlthesis import cli, experiments

        @experiments.register("T.kill", title="killed part-way", chapter="T", quick_minutes=0.0)
        def item(scale, dataset, store, *, out=None):
            open({str(started)!r}, "w").write(repr(time.time()))
            store.record("T.kill.run", {{"x": 1}}, 0, {{"value": 0.0}})
            time.sleep(0.5)  # the work of the second run
            store.record("T.kill.run", {{"x": 1}}, 1, {{"value": 1.0}})
            open({str(marker)!r}, "w").write("stored")
            time.sleep(300)  # a third run, cut short by the kill

        if __name__ == "__main__":
            sys.exit(cli.main(["reproduce", "--only", "T.kill", "--out", {str(out)!r}, "--no-progress"]))
    """))
    env = dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = process_session.start([sys.executable, str(script)], env=env, stdout=subprocess.PIPE,
                                 stderr=subprocess.PIPE)
    process_session.wait_for(marker, proc, timeout=120)
    time.sleep(1.0)  # work after the last run, which the kill loses
    os.killpg(proc.pid, signal.SIGKILL)
    proc.communicate(timeout=30)
    store = experiments.ResultsStore(out / "results.sqlite")
    [time_row] = store.rows(report.ITEM_SECONDS)
    assert [row["run"] for row in store.rows("T.kill.run")] == [0, 1] and time_row["config"]["item"] == "T.kill"
    with contextlib.closing(sqlite3.connect(out / "results.sqlite")) as conn:
        created = dict(conn.execute("SELECT experiment, MAX(created) FROM results GROUP BY experiment").fetchall())
    # from the item's start to its second run (the 0.5 s between the runs included), not the 1 s after it
    up_to_second_run = created["T.kill.run"] - float(started.read_text())
    # (the tolerance is the time between the item's start stamp and its first line, ms here, under the 1 s lost
    # after the run that the time must leave out)
    assert up_to_second_run >= 0.5 and abs(time_row["result"]["seconds"] - up_to_second_run) < 0.5
    assert 0 <= created[report.ITEM_SECONDS] - created["T.kill.run"] < 1.0  # written after that run, before the kill


def test_a_failed_item_keeps_its_time_up_to_its_last_run(tmp_path):
    """The rerun reads the failed item's finished runs back, so their time is the item's cost;
    the work after them is not."""
    @experiments.register("T.fail", title="fails after a run", chapter="T", quick_minutes=0.0)
    def _item(scale, dataset, store, *, out=None):
        store.record("T.fail.run", {"x": 1}, 0, {"value": 0.0})
        time.sleep(0.5)
        raise RuntimeError("boom")

    try:
        path, failed = experiments.reproduce(out_dir=str(tmp_path), only=["T.fail"], progress=False)
        store = experiments.ResultsStore(tmp_path / "results.sqlite")
        assert failed == 1 and len(store.rows("T.fail.run")) == 1
        assert 0.0 < report.item_seconds(store, "quick", None, experiments.get("T.fail")) < 0.5
    finally:
        experiments.REGISTRY.pop("T.fail")


def test_an_item_stopped_before_its_first_run_records_no_time(tmp_path):
    @experiments.register("T.s1", title="stopped at once", chapter="T", quick_minutes=0.0)
    def _item(scale, dataset, store, *, out=None):
        raise KeyboardInterrupt

    try:
        with pytest.raises(KeyboardInterrupt):
            experiments.reproduce(out_dir=str(tmp_path), only=["T.s1"], progress=False, archive=str(tmp_path / "rows"))
        store = experiments.ResultsStore(tmp_path / "results.sqlite")
        assert len(store) == 0 and report.item_seconds(store, "quick", None, experiments.get("T.s1")) == 0.0
    finally:
        experiments.REGISTRY.pop("T.s1")


def test_a_stop_while_the_archive_is_written_records_the_item_time_once(tmp_path, monkeypatch):
    calls = []
    _register_stopping_item("T.s3", calls)
    calls.append(0.0)  # the item finishes at once: the stop comes while the archive is written
    real_export = experiments.ResultsStore.export_rows

    def export_then_stop(self, folder):
        real_export(self, folder)
        raise KeyboardInterrupt

    monkeypatch.setattr(experiments.ResultsStore, "export_rows", export_then_stop)
    try:
        with pytest.raises(KeyboardInterrupt):
            experiments.reproduce(out_dir=str(tmp_path), only=["T.s3"], progress=False, archive=str(tmp_path / "rows"))
    finally:
        experiments.REGISTRY.pop("T.s3")
    store = experiments.ResultsStore(tmp_path / "results.sqlite")
    assert len(store.rows(report.ITEM_SECONDS)) == 1  # recorded when the item finished, not again at the stop
    assert len(store.rows("T.stop")) == 2


def test_the_sigterm_handler_is_only_installed_while_reproduce_runs(tmp_path):
    before = signal.getsignal(signal.SIGTERM)
    seen = []

    @experiments.register("T.s2", title="looks at the handler", chapter="T", quick_minutes=0.0)
    def _item(scale, dataset, store, *, out=None):
        seen.append(signal.getsignal(signal.SIGTERM))
        return Output([], [], [], [])

    try:
        experiments.reproduce(out_dir=str(tmp_path), only=["T.s2"], progress=False)
    finally:
        experiments.REGISTRY.pop("T.s2")
    assert seen and seen[0] is not before and callable(seen[0])
    assert signal.getsignal(signal.SIGTERM) == before


def test_jobs_reports_each_item_as_it_finishes_not_when_its_chapter_ends(tmp_path, process_session):
    """With `--jobs 2`, an item's section is in report.md (and its log line on stderr) while
    the next item of its chapter still runs: the chapter's second item waits for it."""
    (tmp_path / "chapter_a.py").write_text(textwrap.dedent("""
        import os, time
        from tf_dlthesis import experiments
        from tf_dlthesis.experiments import Output

        @experiments.register("T.first", title="first of its chapter", chapter="T", quick_minutes=0.0)
        def first(scale, dataset, store, *, out=None):
            return Output()

        @experiments.register("T.second", title="waits for the first in the report", chapter="T",
                              quick_minutes=0.0)
        def second(scale, dataset, store, *, out=None):
            path, deadline = os.path.join(out, "report.md"), time.time() + 60
            while time.time() < deadline:
                if os.path.exists(path) and "## T.first:" in open(path).read():  # its section
                    return Output()
                time.sleep(0.1)
            raise RuntimeError("T.first is not in the report while its chapter runs")
    """))
    (tmp_path / "chapter_b.py").write_text(textwrap.dedent("""
        from tf_dlthesis import experiments
        from tf_dlthesis.experiments import Output

        @experiments.register("T.other", title="another chapter", chapter="T", quick_minutes=0.0)
        def other(scale, dataset, store, *, out=None):
            return Output()
    """))
    script = tmp_path / "run.py"
    script.write_text(textwrap.dedent(f"""
        import sys
        import chapter_a, chapter_b
        from tf_dlthesis import cli

        if __name__ == "__main__":
            sys.exit(cli.main(["reproduce", "--only", "T.first,T.second,T.other", "--out",
                               {str(tmp_path / "out")!r}, "--jobs", "2"]))
    """))
    env = dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = process_session.start([sys.executable, str(script)], env=env, stdout=subprocess.PIPE,
                                 stderr=subprocess.PIPE)
    _, err = proc.communicate(timeout=240)
    err = err.decode()
    assert proc.returncode == 0, err[-3000:]
    lines = [line for line in err.splitlines() if line.startswith("[")]
    assert sorted(line.split()[1] for line in lines) == ["T.first", "T.other", "T.second"], err[-3000:]
    assert all(line.split()[2] == "done" for line in lines), err[-3000:]


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
@pytest.mark.parametrize("jobs", [1, 2])
def test_sigterm_stops_the_cli_at_once_and_keeps_the_finished_runs(jobs, tmp_path, process_session):
    """The CLI under SIGTERM while a pool worker trains a long run: exit 130 within seconds,
    no worker left, the finished runs and the items' times in the archive. With `--jobs 2`
    the two items (of two modules) run side by side in processes of their own, and the
    stopped one keeps its time before its process ends."""
    marker = tmp_path / "started"
    script = tmp_path / "stop.py"
    (tmp_path / "other_items.py").write_text(textwrap.dedent("""
        from tf_dlthesis import experiments
        from tf_dlthesis.experiments import Output

        @experiments.register("T.other", title="finishes at once", chapter="T", quick_minutes=0.0)
        def other(scale, dataset, store, *, out=None):
            store.record("T.other.run", {"x": 1}, 0, {"value": 1.0})
            return Output()
    """))
    script.write_text(textwrap.dedent(f"""
        import sys, time
        import numpy as np
        import other_items
        from tf_dlthesis import cli, experiments
        from tf_dlthesis.experiments import report
        from tf_dlthesis.variability import run_protocol

        def train(plan):
            open({str(marker)!r}, "a").write("run\\n")
            time.sleep(300)  # a long training run
            return np.zeros((4, 2))

        @experiments.register("T.sig", title="stopped by SIGTERM", chapter="T", quick_minutes=0.0)
        def item(scale, dataset, store, *, out=None):
            store.record("T.sig.run", {{"x": 1}}, 0, {{"value": 1.0}})
            while not store.rows(report.ITEM_SECONDS):  # T.other has finished (it runs beside this one)
                time.sleep(0.1)
            run_protocol(train, sources=["init"], runs=2, labels=np.arange(4) % 2, workers=1, progress=False)

        if __name__ == "__main__":
            sys.exit(cli.main(["reproduce", "--only", "T.other,T.sig", "--out", {str(tmp_path / "out")!r},
                               "--archive", {str(tmp_path / "rows")!r}, "--no-progress", "--jobs", "{jobs}"]))
    """))
    env = dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = process_session.start([sys.executable, str(script)], env=env, stdout=subprocess.PIPE,
                                 stderr=subprocess.PIPE)
    # the start (the CLI, a forkserver and its worker each import TensorFlow): 7 s / 14 s with --jobs 1 / 2 on a
    # loaded 2-core machine
    process_session.wait_for(marker, proc, timeout=300)  # a worker started a run
    sent = time.time()
    os.kill(proc.pid, signal.SIGTERM)  # the reproduce process only, as `kill PID` would
    # 1-3 s measured; the bound only has to tell "at once" from waiting for the 300 s run to end
    _, err = proc.communicate(timeout=150)
    assert time.time() - sent < 150
    err = err.decode()
    assert proc.returncode == 130, err[-3000:]
    assert "stopped" in err and "run the same command again to resume" in err, err[-3000:]
    assert not process_session.wait_gone(proc.pid, timeout=60)  # no worker, forkserver or tracker left behind
    fresh = experiments.ResultsStore(tmp_path / "fresh.sqlite")
    fresh.import_rows(tmp_path / "rows")
    rows = sorted((row["experiment"], row["config"].get("item", "")) for row in fresh.rows())
    assert rows == sorted([(report.ITEM_SECONDS, "T.other"), (report.ITEM_SECONDS, "T.sig"), ("T.other.run", ""),
                           ("T.sig.run", "")])
