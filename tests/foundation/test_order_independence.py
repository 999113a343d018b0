"""An item's numbers do not depend on which items ran before it in the process (issue 13).

Two items that train their own models run in both orders, each order with a fresh
results store (so every model is trained, not read back); their tables and findings
must be bit-identical. A.2 is the item whose numbers used to change under `--only`.
"""
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

from tf_dlthesis import runtime
from tf_dlthesis.experiments import registry
from tf_dlthesis.experiments.results_store import ResultsStore

ITEMS = ("A.2", "fig4.2")


def _run(order, path):
    store = ResultsStore(str(path))
    results = {}
    for item in order:
        runtime.configure(seed=0, deterministic=True)  # what `reproduce` does before each item
        output = registry.get(item)("quick", None, store)
        plt.close("all")
        results[item] = (
            [(t.id, repr(t.rows)) for t in output.tables],
            [(f.claim, f.verdict, repr(f.effect)) for f in output.findings],
        )
    return results


def test_items_give_identical_numbers_in_either_order(tmp_path):
    forward = _run(ITEMS, tmp_path / "forward.sqlite")
    backward = _run(ITEMS[::-1], tmp_path / "backward.sqlite")
    for item in ITEMS:
        assert forward[item][0], f"{item} returned no table"
        assert forward[item] == backward[item], f"{item} changed with the order of items"


def _sections(report_path) -> str:
    """A report's item sections (everything but the header and its table of compute times)."""
    text = open(report_path).read()
    return text[text.index("\n## "):]


def test_chapters_run_in_parallel_processes_give_the_serial_report(tmp_path):
    from tf_dlthesis import experiments
    from tf_dlthesis.experiments import report

    items = [*ITEMS, "fig2.2"]  # two chapters (modules): two processes
    assert len({registry.get(i).fn.__module__ for i in items}) == 2
    serial, _ = experiments.reproduce(out_dir=str(tmp_path / "serial"), only=items, progress=False)
    parallel, failed = experiments.reproduce(out_dir=str(tmp_path / "parallel"), only=items, progress=False,
                                             jobs=2)
    assert failed == 0
    assert _sections(parallel) == _sections(serial)
    for name in sorted(p.name for p in (tmp_path / "serial" / "figures").iterdir()):
        assert (tmp_path / "parallel" / "figures" / name).read_bytes() == \
            (tmp_path / "serial" / "figures" / name).read_bytes(), name
    # each training item's compute time was recorded by the process that ran it (fig2.2 trains nothing)
    store = ResultsStore(str(tmp_path / "parallel" / "results.sqlite"))
    assert sorted(r["config"]["item"] for r in store.rows(report.ITEM_SECONDS)) == sorted(ITEMS)
