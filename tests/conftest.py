import os

import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


@pytest.fixture(autouse=True)
def _no_leaked_op_determinism():
    """Op determinism is process-global (and exported to subprocesses through the
    environment): a test that turns it on must not change the tests after it."""
    yield
    from tf_dlthesis import runtime

    if runtime.is_deterministic() or os.environ.get("TF_DETERMINISTIC_OPS"):
        runtime.configure(deterministic=False)


@pytest.fixture(autouse=True)
def _close_figures():
    """Report items return matplotlib figures; close them after each test (the report writer does)."""
    yield
    import sys

    if "matplotlib.pyplot" in sys.modules:
        sys.modules["matplotlib.pyplot"].close("all")


@pytest.fixture
def short_tmp():
    """A folder with a short path (under /tmp where writable), removed at teardown: a system
    `TMPDIR` for a script that starts a forkserver, whose Unix socket lives in it (a socket path
    may hold at most ~107 bytes; pytest's `tmp_path` plus the socket's name came to 106 on CI)."""
    import pathlib
    import shutil
    import tempfile

    path = pathlib.Path(tempfile.mkdtemp(prefix="tfd-", dir="/tmp" if os.access("/tmp", os.W_OK) else None))
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def tfds_tempdir(tmp_path, monkeypatch):
    """`tempfile`'s folder pointed into the test's own `tmp_path`: tfds's
    `DatasetInfo.initialize_from_bucket` makes a `tmp*tfds` folder with `tempfile.mkdtemp`
    and never removes it, which left one in TMPDIR per tfds test."""
    import tempfile

    folder = tmp_path / "tempfile"
    folder.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(folder))
    return folder


class ProcessSession:
    """Scripts started in a session of their own, so that everything they spawn (a forkserver,
    pool workers, a resource tracker) can be found through /proc (Linux) and killed."""

    def __init__(self):
        self._sids = []

    def start(self, args, **kwargs):
        """`subprocess.Popen(args, start_new_session=True, **kwargs)`; killed with its session at teardown."""
        import subprocess

        proc = subprocess.Popen(args, start_new_session=True, **kwargs)
        self._sids.append(proc.pid)
        return proc

    @staticmethod
    def wait_for(path, proc, timeout: float) -> None:
        """Waits until file `path` exists (a script's marker); fails with its stderr if `proc` ends first."""
        import time

        deadline = time.time() + timeout
        while not os.path.exists(path) and time.time() < deadline:
            assert proc.poll() is None, proc.stderr.read().decode()[-3000:]
            time.sleep(0.2)
        assert os.path.exists(path), f"{path} did not appear within {timeout} s"

    @staticmethod
    def members(sid) -> list:
        """Pids of the live (not zombie) processes of session `sid`."""
        import pathlib

        pids = []
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            try:
                stat = pathlib.Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            fields = stat[stat.rindex(")") + 2:].split()  # after "pid (comm) "
            if int(fields[3]) == sid and fields[0] != "Z":
                pids.append(int(entry))
        return pids

    def wait_gone(self, sid, timeout: float = 10.0) -> list:
        """Waits up to `timeout` s for session `sid` to empty; returns the pids still alive."""
        import time

        deadline = time.time() + timeout
        while self.members(sid) and time.time() < deadline:
            time.sleep(0.2)
        return self.members(sid)

    def kill_all(self) -> None:
        import signal

        for sid in self._sids:
            for pid in self.members(sid):
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass


@pytest.fixture
def process_session():
    """A `ProcessSession`: nothing it started outlives the test, even when the test fails."""
    session = ProcessSession()
    yield session
    session.kill_all()
