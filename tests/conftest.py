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
