"""A results-store path that the store refuses, given to the variability protocol."""

import pytest

from tf_dlthesis.experiments import report
from tf_dlthesis.experiments.results_store import ResultsStore
from tf_dlthesis.variability import protocol


@pytest.mark.parametrize("path", [":memory:", "file::memory:"])
def test_an_in_memory_store_path_is_refused_naming_store(path):
    with pytest.raises(ValueError, match=r"`store` .*memory.*store=None"):
        protocol._as_store(path)


@pytest.mark.parametrize("seconds", [True, float("inf"), float("nan"), -1.0])
def test_item_seconds_must_be_a_finite_number(tmp_path, seconds):
    store = ResultsStore(tmp_path / "s.sqlite")
    exp = type("Exp", (), {"id": "2.1"})()
    with pytest.raises(ValueError, match="finite number >= 0"):
        report.record_item_seconds(store, "quick", None, exp, seconds)
    assert len(store) == 0
