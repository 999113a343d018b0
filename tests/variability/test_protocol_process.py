"""run_protocol as a process tree: nothing outlives a `kill -9` of its process, a script
without a `__main__` guard gets a clear error (not silent reruns), and `store` accepts a
path (anything else: a TypeError naming `store`); the process pool behind it ends cleanly at a
stop."""

import multiprocessing
import os
import pathlib
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest

from tf_dlthesis.experiments import ResultsStore
from tf_dlthesis.variability import run_protocol

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
LABELS = np.arange(12) % 3


def toy_train(plan):
    """Logits that depend on the init seed only (one-hot labels + seeded noise)."""
    noise = np.random.default_rng(plan.init).normal(size=(12, 3))
    return {"logits": np.eye(3)[LABELS] * 2.0 + noise, "init_hash": str(plan.init)}


def _env():
    env = dict(os.environ)
    env["PYTHONPATH"] = REPO + os.pathsep + env.get("PYTHONPATH", "")
    return env


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_nothing_of_the_protocol_outlives_a_kill_9_of_its_process(tmp_path, process_session, short_tmp):
    marker = tmp_path / "started"
    script = tmp_path / "protocol.py"
    script.write_text(textwrap.dedent(f"""
        import time
        import numpy as np
        from tf_dlthesis.variability import run_protocol

        def train(plan):
            open({str(marker)!r}, "a").write("run\\n")
            time.sleep(120)  # a long training run
            return np.zeros((4, 2))

        if __name__ == "__main__":
            run_protocol(train, sources=["init"], runs=2, labels=np.arange(4) % 2, workers=2, progress=False)
    """))
    proc = process_session.start([sys.executable, str(script)], env=dict(_env(), TMPDIR=str(short_tmp)),
                                 stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    # two TF imports in a row (the script, then the forkserver's preload): ~7 s here, up to ~30 s on a
    # loaded 2-core CI machine
    process_session.wait_for(marker, proc, timeout=180)  # a worker started a run
    time.sleep(0.5)
    family = process_session.members(proc.pid)
    assert len(family) >= 4, family  # the protocol, its forkserver, resource tracker and >= 1 worker
    os.kill(proc.pid, signal.SIGKILL)  # the protocol's process only, as an OOM killer or `kill -9` would
    proc.wait(timeout=10)
    left = process_session.wait_gone(proc.pid, timeout=30)  # ~1 s here
    assert not left, [pathlib.Path(f"/proc/{p}/cmdline").read_bytes()[:120] for p in left]
    assert "the protocol's process" in proc.stderr.read().decode()  # the workers said why they stopped
    # each worker removed its own temporary folder (the killed pool could not); before: one empty folder each
    assert [p.name for p in short_tmp.iterdir() if p.name.startswith("tf_dlthesis-task-")] == []


_PROTOCOL_CALLS = {
    "image": ("from tf_dlthesis.variability import run_protocol",
              'run_protocol(train, sources=["init"], runs=2, labels=np.arange(4) % 2, progress=False)'),
    # refused before the corpus is read: the check needs no `fortunes` package
    "language model": ("from tf_dlthesis.variability.language_model import LanguageModelSpec, run_lm_protocol",
                       'run_lm_protocol(LanguageModelSpec(), sources=["init"], runs=2, progress=False)'),
}


@pytest.mark.parametrize("protocol", list(_PROTOCOL_CALLS))
def test_a_script_without_main_guard_gets_a_clear_error_and_runs_once(tmp_path, protocol):
    imports, call = _PROTOCOL_CALLS[protocol]
    script = tmp_path / "unguarded.py"
    script.write_text(textwrap.dedent(f"""
        import numpy as np
        {imports}
        print("top level ran")

        def train(plan):
            return np.zeros((4, 2))

        def main():
            {call}

        main()
    """))
    proc = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=120, env=_env(),
                          cwd=str(tmp_path))
    assert proc.returncode == 1
    assert proc.stdout.count("top level ran") == 1  # not rerun by any worker
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("RuntimeError: run_protocol / run_lm_protocol (executor='local') start a process per run")
    assert 'if __name__ == "__main__":' in last and "README's Chapter 5 examples" in last
    assert f"{script}, line 12" in last  # the unguarded top-level line: `main()`


def test_a_worker_importing_the_main_script_refuses_to_start_a_protocol(monkeypatch):
    # What a forkserver/spawn worker sees while it re-imports an unguarded script.
    monkeypatch.setattr(multiprocessing.current_process(), "_inheriting", True, raising=False)
    with pytest.raises(RuntimeError, match="while a worker process was importing the main script"):
        run_protocol(toy_train, sources=["init"], runs=2, labels=LABELS, progress=False)


def test_the_guard_check_accepts_calls_under_the_guard(tmp_path):
    script = tmp_path / "guarded.py"
    script.write_text(textwrap.dedent("""
        import numpy as np
        from tf_dlthesis.variability import run_protocol

        def train(plan):
            return np.eye(2)[np.arange(4) % 2] + np.random.default_rng(plan.init).normal(size=(4, 2))

        if __name__ == "__main__":
            result = run_protocol(train, sources=["init"], runs=2, labels=np.arange(4) % 2, workers=1,
                                  progress=False, store="runs.sqlite")
            print("rows", sorted(result.rows))
    """))
    proc = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=120, env=_env(),
                          cwd=str(tmp_path))
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "rows ['init']" in proc.stdout
    assert len(ResultsStore(tmp_path / "runs.sqlite").rows("variability")) == 2  # the path opened a ResultsStore


@pytest.mark.parametrize("as_path", [str, pathlib.Path])
def test_store_may_be_a_path(tmp_path, as_path):
    path = tmp_path / "protocol.sqlite"
    first = run_protocol(toy_train, sources=["init"], runs=3, labels=LABELS, store=as_path(path),
                         executor="serial", progress=False)
    rows = ResultsStore(path).rows("variability")
    assert len(rows) == 3 and sorted(r["run"] for r in rows) == [0, 1, 2]
    # resumed from the file: the same table, nothing retrained
    again = run_protocol(lambda plan: (_ for _ in ()).throw(AssertionError("retrained")), sources=["init"], runs=3,
                         labels=LABELS, store=as_path(path), executor="serial", progress=False)
    np.testing.assert_array_equal(again.logits["init"], first.logits["init"])
    # the accuracy SD by hand from the stored logits
    acc = (first.logits["init"].argmax(-1) == LABELS).mean(axis=1)
    assert first.rows["init"]["accuracy_sd"] == pytest.approx(np.std(acc, ddof=1))


def test_a_reading_only_store_reads_stored_runs_and_refuses_to_train_missing_ones(tmp_path):
    from tf_dlthesis.experiments import NotStoredError

    store = ResultsStore(tmp_path / "protocol.sqlite")
    first = run_protocol(toy_train, sources=["init"], runs=2, labels=LABELS, store=store, executor="serial",
                         progress=False)
    untrainable = lambda plan: (_ for _ in ()).throw(AssertionError("trained"))  # noqa: E731
    with store.reading_only():
        again = run_protocol(untrainable, sources=["init"], runs=2, labels=LABELS, store=store, executor="serial",
                             progress=False)
        np.testing.assert_array_equal(again.logits["init"], first.logits["init"])
        # more runs asked for: refused before any run is trained, in this process or in workers
        for executor in ("serial", "local"):
            with pytest.raises(NotStoredError, match=r"Not stored: \d+ run\(s\) of 'variability'"):
                run_protocol(untrainable, sources=["init"], runs=3, labels=LABELS, store=store, executor=executor,
                             progress=False)
    assert len(store.rows("variability")) == 2
    third = run_protocol(toy_train, sources=["init"], runs=3, labels=LABELS, store=store, executor="serial",
                         progress=False)  # outside the context the store computes again
    assert third.rows["init"]["runs"] == 3 and len(store.rows("variability")) == 3


@pytest.mark.parametrize("store, error, match", [
    (lambda: None, TypeError, r"`store` must be a ResultsStore, a path to one .*Received: store=<function"),
    (42, TypeError, r"`store` must be a ResultsStore.*int has no has/get/record. Received: store=42"),
    ({"has": 1}, TypeError, r"`store` must be a ResultsStore.*Received: store=\{'has': 1\}"),
    ("", ValueError, r"`store` must be a non-empty path. Received: store=''"),
])
def test_bad_store_names_store(store, error, match):
    with pytest.raises(error, match=match):
        run_protocol(toy_train, sources=["init"], runs=2, labels=LABELS, store=store, executor="serial",
                     progress=False)


def test_pool_stop_waits_for_a_task_that_stops_cleanly_and_the_process_exits(tmp_path, process_session):
    """A stop in the parent a second after one task finished, while another runs: the
    running one gets SIGTERM and turns it into a clean end (as `reproduce`'s chapters do);
    the pool waits for it, raises, and the parent process exits at once with no child left.
    (A `ProcessPoolExecutor(max_tasks_per_child=1)` hung here at exit: the finished task's
    idle replacement worker, killed by the stop inside the call queue's lock, left the lock
    held for the replacement the clean end started, which the executor then joined forever.)"""
    script = tmp_path / "stop.py"
    script.write_text(textwrap.dedent(f"""
        import os, signal, sys, time
        from tf_dlthesis.variability.protocol import _process_pool

        def job(plan):
            if plan == "slow":
                def stop(signum, frame):
                    raise KeyboardInterrupt

                signal.signal(signal.SIGTERM, stop)
                try:
                    time.sleep(60)
                finally:
                    open({str(tmp_path / "stopped")!r}, "w").close()
            return plan

        def on_done(label, result):
            time.sleep(2.0)  # the quick task's process is long gone
            raise KeyboardInterrupt  # the parent is stopped

        if __name__ == "__main__":
            try:
                _process_pool([("slow", "slow"), ("quick", "quick")], job, 2, None, on_done, None,
                              join_on_stop=True)
            except KeyboardInterrupt:
                time.sleep(2.0)  # still holding the stopped call's frames, as the CLI does while it reports
                sys.exit(130)
    """))
    env = dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = process_session.start([sys.executable, str(script)], env=env, stdout=subprocess.PIPE,
                                 stderr=subprocess.PIPE)
    _, err = proc.communicate(timeout=240)  # ~15 s here (4 s of it the script's own sleeps)
    assert proc.returncode == 130, err.decode()[-3000:]
    assert (tmp_path / "stopped").exists()  # the slow task ran its clean-up
    assert not process_session.wait_gone(proc.pid)


def test_each_task_has_a_temporary_folder_of_its_own_removed_when_it_ends(tmp_path, short_tmp):
    """Task processes leave through `os._exit`, which skips `atexit`: AutoGraph's generated
    source files (deleted at exit) used to stay in the system's temporary folder, one set
    per task process. Each task now writes into a folder the pool removes, after a result
    and after an exception alike."""
    script = tmp_path / "temp.py"
    script.write_text(textwrap.dedent("""
        import os, tempfile
        from tf_dlthesis.variability.protocol import _process_pool

        def job(plan):
            import tensorflow as tf

            def branchy(x):  # AutoGraph converts this one and writes its source to a temporary file
                return x + 1 if x.shape[0] else x
            tf.function(branchy)(tf.ones(2))
            files = sorted(os.listdir(tempfile.gettempdir()))
            if plan == "fail":
                raise ValueError("failed after converting")
            return tempfile.gettempdir(), os.environ["TMPDIR"], files

        if __name__ == "__main__":
            seen = []
            _process_pool([("a", "ok")], job, 1, None, lambda label, result: seen.append(result), None)
            (task_dir, env_dir, files), = seen
            print("DIR", task_dir == env_dir, os.path.dirname(task_dir) == tempfile.gettempdir(),
                  any(f.startswith("__autograph_generated_file") for f in files), os.path.exists(task_dir))
            try:
                _process_pool([("b", "fail")], job, 1, None, None, None)
            except ValueError as exc:
                print("RAISED", exc)
            print("LEFT", sorted(f for f in os.listdir(tempfile.gettempdir()) if not f.startswith("pymp-")))
    """))
    env = dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""), TMPDIR=str(short_tmp))
    out = subprocess.run([sys.executable, str(script)], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-3000:]
    lines = dict(line.split(" ", 1) for line in out.stdout.splitlines())
    # the task's own folder (also its TMPDIR), inside the system's; AutoGraph wrote there; gone once it ended
    assert lines["DIR"] == "True True True False"
    assert lines["RAISED"] == "failed after converting"
    assert lines["LEFT"] == "[]"
    assert sorted(os.listdir(short_tmp)) == []  # the forkserver's socket lived here too


def test_a_temporary_folder_too_long_for_the_forkserver_socket_is_a_clear_error(tmp_path):
    """Before: `OSError: AF_UNIX path too long` from deep inside multiprocessing's forkserver."""
    long_tmp = tmp_path / ("t" * 60) / ("u" * 60)
    long_tmp.mkdir(parents=True)
    script = tmp_path / "long.py"
    script.write_text(textwrap.dedent("""
        from tf_dlthesis.variability.protocol import _process_pool

        def job(plan):
            return plan

        if __name__ == "__main__":
            try:
                _process_pool([("a", 1)], job, 1, None, lambda label, result: None, None)
            except OSError as exc:
                print("RAISED", exc)
    """))
    env = dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""), TMPDIR=str(long_tmp))
    out = subprocess.run([sys.executable, str(script)], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "RAISED The forkserver start method could not open its Unix socket" in out.stdout
    assert "Set TMPDIR to a shorter folder" in out.stdout and f"TMPDIR={str(long_tmp)!r}" in out.stdout
    assert [p.name for p in long_tmp.iterdir() if p.name.startswith("tf_dlthesis-task-")] == []  # its folder removed


def test_the_keras_cache_lock_holds_across_processes_with_their_own_temporary_folders(tmp_path, monkeypatch):
    from tf_dlthesis.data import _registry

    (tmp_path / "keras").mkdir()  # as importing Keras makes it
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras"))
    probe = textwrap.dedent("""
        import fcntl
        flock = fcntl.flock
        fcntl.flock = lambda fd, op: flock(fd, op | fcntl.LOCK_NB)  # fail instead of waiting
        from tf_dlthesis.data import _registry
        try:
            with _registry._cache_lock():
                print("acquired")
        except BlockingIOError:
            print("blocked")
    """)
    other_tmp = tmp_path / "other-tmp"
    other_tmp.mkdir()
    env = dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""), TMPDIR=str(other_tmp))

    def run_probe():
        out = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, text=True, timeout=120)
        assert out.returncode == 0, out.stderr[-3000:]
        return out.stdout.strip()

    with _registry._cache_lock():
        assert run_probe() == "blocked"
    assert run_probe() == "acquired"
