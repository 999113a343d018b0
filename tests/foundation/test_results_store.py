import json
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest

from tf_dlthesis.experiments.results_store import ResultsStore, config_hash


def test_record_has_get_rows_roundtrip_with_arrays(tmp_path):
    store = ResultsStore(tmp_path / "r.sqlite")
    logits = np.random.default_rng(0).normal(size=(5, 3)).astype(np.float32)
    store.record("5.1", {"source": "init", "lr": 0.1}, 0, {"logits": logits, "acc": 0.5, "nan": float("nan")})
    assert store.has("5.1", {"lr": 0.1, "source": "init"}, 0)  # key order irrelevant
    assert not store.has("5.1", {"source": "init", "lr": 0.1}, 1)
    got = store.get("5.1", {"source": "init", "lr": 0.1}, 0)
    assert got["logits"].dtype == np.float32 and got["logits"].tobytes() == logits.tobytes()
    assert np.isnan(got["nan"])
    rows = store.rows("5.1")
    assert len(rows) == 1 and rows[0]["run"] == 0 and rows[0]["config"]["source"] == "init"
    (flat,) = store.table("5.1")
    assert np.isnan(flat.pop("nan"))
    assert flat == {"source": "init", "lr": 0.1, "run": 0, "acc": 0.5}  # arrays left out of the flat table
    store.record("5.1", {"source": "init", "lr": 0.1}, 0, {"acc": 0.7})  # same key replaces
    assert len(store.rows("5.1")) == 1 and store.get("5.1", {"source": "init", "lr": 0.1}, 0) == {"acc": 0.7}
    assert store.get("missing", {}, 0) is None


def test_bad_input(tmp_path):
    store = ResultsStore(tmp_path / "r.sqlite")
    with pytest.raises(TypeError, match="JSON-able"):
        store.record("x", {}, 0, {"obj": object()})
    with pytest.raises(ValueError, match="run"):
        store.record("x", {}, -1, {})
    with pytest.raises(TypeError, match="config"):
        store.has("x", [1], 0)
    with pytest.raises(ValueError, match="Cannot open"):
        ResultsStore("/proc/forbidden/r.sqlite")


def test_kill_9_mid_write_leaves_every_finished_run(tmp_path):
    path = tmp_path / "r.sqlite"
    script = textwrap.dedent(
        f"""
        import numpy as np, sys
        from tf_dlthesis.experiments.results_store import ResultsStore
        store = ResultsStore({str(path)!r})
        for run in range(100000):
            store.record("kill", {{"k": 1}}, run, {{"payload": np.full(20000, run, np.float64)}})
            if run == 2:
                print("ready", flush=True)
        """
    )
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "ready"
    time.sleep(0.5)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    store = ResultsStore(path)
    rows = store.rows("kill")
    assert len(rows) >= 3
    runs = sorted(r["run"] for r in rows)
    assert runs == list(range(len(runs)))  # every finished run, no gaps, no partial row
    for r in rows:
        assert r["result"]["payload"].shape == (20000,) and np.all(r["result"]["payload"] == r["run"])
    assert sqlite3.connect(path).execute("PRAGMA integrity_check").fetchone()[0] == "ok"


def test_get_or_compute_records_once(tmp_path):
    from tf_dlthesis.experiments import ResultsStore

    store = ResultsStore(tmp_path / "s.sqlite")
    calls = []

    def fn():
        calls.append(1)
        return {"value": 3}

    assert store.get_or_compute("e", {"k": 1}, 0, fn) == {"value": 3}
    assert store.get_or_compute("e", {"k": 1}, 0, fn) == {"value": 3} and calls == [1]
    import pytest

    with pytest.raises(TypeError, match="callable"):
        store.get_or_compute("e", {"k": 2}, 0, 3)
    with pytest.raises(TypeError, match="dict"):
        store.get_or_compute("e", {"k": 2}, 0, lambda: [1])


def test_get_or_compute_returns_the_stored_form_on_the_first_run_too(tmp_path):
    """A first run got fn()'s own objects (tuples, float32 scalars, the caller's array), a resumed one the
    decoded copy (lists, Python floats, a fresh array): code after the call could differ between the two."""
    from tf_dlthesis.experiments import ResultsStore

    array = np.arange(3, dtype=np.float32)
    result = {"pair": (1, 2), "acc": np.float32(0.1), "x": array, "nan": np.float64("nan")}
    store = ResultsStore(tmp_path / "s.sqlite")
    first = store.get_or_compute("e", {"k": 1}, 0, lambda: result)
    resumed = ResultsStore(tmp_path / "s.sqlite").get_or_compute("e", {"k": 1}, 0, lambda: 1 / 0)
    for got in (first, resumed):
        assert got["pair"] == [1, 2] and type(got["acc"]) is float and got["acc"] == float(np.float32(0.1))
        assert got["x"] is not array and got["x"].dtype == np.float32
        np.testing.assert_array_equal(got["x"], array)
        assert type(got["nan"]) is float and np.isnan(got["nan"])
    assert repr(first) == repr(resumed)
    first["x"][0] = 7  # the caller's array and the stored one are not the same memory
    assert array[0] == 0 and store.get("e", {"k": 1}, 0)["x"][0] == 0


def test_after_record_calls_back_with_each_recorded_key_inside_its_context_only(tmp_path):
    store = ResultsStore(tmp_path / "r.sqlite")
    store.record("a", {"k": 0}, 0, {"v": 0})  # before: not seen
    seen = []

    def note(key):
        seen.append(key)
        if key[0] != "note":  # a row the callback records calls it again
            store.record("note", {"of": key[0]}, 0, {"v": 1})

    with store.after_record(note):
        store.record("a", {"k": 1}, 3, {"v": 1})
        store.get_or_compute("b", {"k": 2}, 0, lambda: {"v": 2})
        store.get_or_compute("b", {"k": 2}, 0, lambda: {"v": 3})  # read back: nothing recorded
        store.get("a", {"k": 0}, 0)
    store.record("a", {"k": 4}, 0, {"v": 4})  # after: not seen
    assert seen == [("a", config_hash({"k": 1}), 3), ("note", config_hash({"of": "a"}), 0),
                    ("b", config_hash({"k": 2}), 0), ("note", config_hash({"of": "b"}), 0)]
    with pytest.raises(TypeError, match="fn"):
        with store.after_record("not a function"):
            pass


def test_rows_an_after_record_callback_records_are_no_result_s_provenance_or_input(tmp_path):
    store = ResultsStore(tmp_path / "r.sqlite")

    def note(key):
        if key[0] != "note":
            store.record("note", {"of": key[0]}, 0, {"v": 1})

    def outer():  # a result computed from a run recorded inside it
        store.record("inner", {"k": 1}, 0, {"v": 1})
        return {"v": 2}

    with store.after_record(note), store.provenance() as seen:
        store.get_or_compute("outer", {"k": 2}, 0, outer)
    assert len(store.rows("note")) == 2  # the callback did record, after each of the two rows
    assert sorted(seen) == sorted([("inner", config_hash({"k": 1}), 0), ("outer", config_hash({"k": 2}), 0)])
    with sqlite3.connect(tmp_path / "r.sqlite") as conn:
        [(inputs,)] = conn.execute("SELECT inputs FROM results WHERE experiment='outer'").fetchall()
    assert [row[0] for row in json.loads(inputs)] == ["inner"]  # not the callback's row
    with store.provenance() as later:  # outside the callback, the same rows are tracked again
        store.record("note", {"of": "x"}, 0, {"v": 3})
    assert list(later) == [("note", config_hash({"of": "x"}), 0)]


def test_export_import_rows_moves_every_run_to_a_fresh_store(tmp_path):
    store = ResultsStore(tmp_path / "a.sqlite")
    logits = np.random.default_rng(1).normal(size=(50, 10)).astype(np.float32)
    store.record("ch5.runs", {"spec": {"epochs": 20, "norm": "batch"}, "seeds": [1, 2]}, 3,
                 {"logits": logits, "variants": {"flip_tta": logits[:, ::-1]}, "acc": 0.5, "inf": float("inf")})
    store.record("3.1/white box", {"row": "lrm"}, 0, {"pct": {"pgd10": 34.8}})
    archive = tmp_path / "rows"
    assert store.export_rows(archive) == 2
    files = sorted(p.relative_to(archive).as_posix() for p in archive.rglob("*.json.gz"))
    assert len(files) == 2 and all(" " not in f for f in files)
    first = {p: p.read_bytes() for p in archive.rglob("*.json.gz")}
    assert store.export_rows(archive) == 0  # nothing new: no file touched
    store.record("3.1/white box", {"row": "pgd"}, 0, {"pct": {"pgd10": 54.9}})
    assert store.export_rows(archive) == 1
    assert all(p.read_bytes() == b for p, b in first.items())

    fresh = ResultsStore(tmp_path / "b.sqlite")
    assert fresh.import_rows(archive) == 3
    assert fresh.import_rows(archive) == 0  # already held
    got = fresh.get("ch5.runs", {"seeds": [1, 2], "spec": {"norm": "batch", "epochs": 20}}, 3)
    assert got["logits"].tobytes() == logits.tobytes() and got["logits"].dtype == np.float32
    assert got["variants"]["flip_tta"].tobytes() == np.ascontiguousarray(logits[:, ::-1]).tobytes()
    assert got["acc"] == 0.5 and got["inf"] == float("inf")
    assert fresh.get("3.1/white box", {"row": "lrm"}, 0) == {"pct": {"pgd10": 34.8}}
    assert [r["config"] for r in fresh.rows()] == [r["config"] for r in store.rows()]  # same order
    # exporting the imported store gives byte-identical files: the folder is stable under git
    again = tmp_path / "again"
    fresh.export_rows(again)
    assert {p.relative_to(again): p.read_bytes() for p in again.rglob("*.json.gz")} == \
        {p.relative_to(archive): p.read_bytes() for p in archive.rglob("*.json.gz")}


def test_export_rows_rewrites_a_row_recorded_again(tmp_path):
    """A bit-change draw is stored pending, then replaced by its judgement: the archive must get the judgement."""
    store = ResultsStore(tmp_path / "a.sqlite")
    key = {"source": "bit_change", "bit_change_attempt": 0}
    store.record("ch5.runs", key, 2, {"logits": [1.0], "pending": True})
    archive = tmp_path / "rows"
    assert store.export_rows(archive) == 1
    time.sleep(0.01)
    store.record("ch5.runs", key, 2, {"attempt": 0, "effective": True})
    assert store.export_rows(archive) == 1
    assert store.export_rows(archive) == 0
    fresh = ResultsStore(tmp_path / "b.sqlite")
    assert fresh.import_rows(archive) == 1
    assert fresh.get("ch5.runs", key, 2) == {"attempt": 0, "effective": True}
    # a checked-out archive (files newer than their rows) is left alone by the store that imported it
    for path in archive.rglob("*.json.gz"):
        os.utime(path, None)
    assert fresh.export_rows(archive) == 0


def test_export_rows_replace_keeps_exactly_the_stores_runs_of_its_configs(tmp_path):
    """Merging a retrain: an item's whole record (all run indices) is replaced, other configs are left alone."""
    old, archive = ResultsStore(tmp_path / "old.sqlite"), tmp_path / "rows"
    item = {"scale": "standard", "item": "5.2"}
    for run, seconds in enumerate([100.0, 40.0, 7.0]):  # three processes' time rows
        old.record("reproduce.item_seconds", item, run, {"seconds": seconds})
    old.record("ch5.lm_runs", {"seed": 1}, 0, {"ppl": 90.0})
    old.record("ch5.lm_runs", {"seed": 1}, 1, {"ppl": 91.0})
    old.record("ch5.runs", {"seed": 1}, 0, {"acc": 0.5})  # another item's run: must survive
    assert old.export_rows(archive) == 6
    other = {p.relative_to(archive): p.read_bytes() for p in archive.rglob("*.json.gz")
             if p.parent.name.startswith("ch5.runs-")}

    fresh = ResultsStore(tmp_path / "fresh.sqlite")
    fresh.record("reproduce.item_seconds", item, 0, {"seconds": 80.0})
    fresh.record("ch5.lm_runs", {"seed": 1}, 0, {"ppl": 89.0})
    assert fresh.export_rows(archive, replace=True) == 2
    merged = ResultsStore(tmp_path / "merged.sqlite")
    assert merged.import_rows(archive) == 3
    assert [(r["experiment"], r["run"], r["result"]) for r in merged.rows()
            if r["experiment"] != "ch5.runs"] == [("reproduce.item_seconds", 0, {"seconds": 80.0}),
                                                   ("ch5.lm_runs", 0, {"ppl": 89.0})]
    assert merged.get("ch5.runs", {"seed": 1}, 0) == {"acc": 0.5}
    assert {p.relative_to(archive): p.read_bytes() for p in archive.rglob("*.json.gz")
            if p.parent.name.startswith("ch5.runs-")} == other
    # without `replace` the old runs 1 and 2 would have stayed (the time summed over 3 rows)
    plain = tmp_path / "plain"
    old.export_rows(plain)
    fresh.export_rows(plain)
    assert ResultsStore(tmp_path / "p.sqlite").import_rows(plain) == 6
    with pytest.raises(TypeError, match="`replace` must be True or False. Received: replace='yes'"):
        fresh.export_rows(archive, replace="yes")


def test_import_rows_bad_input(tmp_path):
    store = ResultsStore(tmp_path / "a.sqlite")
    with pytest.raises(ValueError, match="must be a folder written by `export_rows`"):
        store.import_rows(tmp_path / "missing")
    (tmp_path / "rows" / "x").mkdir(parents=True)
    (tmp_path / "rows" / "x" / "bad.json.gz").write_bytes(b"not gzip")
    with pytest.raises(ValueError, match="bad.json.gz.*is not a run exported by `export_rows`"):
        store.import_rows(tmp_path / "rows")
    (tmp_path / "file").write_text("")
    with pytest.raises(ValueError, match="Cannot write the results archive"):
        store.record("x", {}, 0, {})
        store.export_rows(tmp_path / "file")


def test_import_rows_of_one_machine_only(tmp_path, monkeypatch):
    """`machine=` imports the runs computed on that machine: a retrain resumed on a fresh machine
    of its class starts from them and trains only the rest."""
    store = ResultsStore(tmp_path / "a.sqlite")
    for run, who in enumerate(["A", "B", "A"]):
        monkeypatch.setattr(store, "_machine", who)
        store.record("e", {"k": 1}, run, {"v": run})
    store.export_rows(tmp_path / "rows")
    import gzip
    import json

    # rows stored before machines were recorded: no file-level machine; one result names its own
    for run, result in ((3, {"v": 3}), (4, {"v": 4, "info": {"machine": "A"}})):
        path = tmp_path / "rows" / "old" / f"{run}.json.gz"
        path.parent.mkdir(exist_ok=True)
        path.write_bytes(gzip.compress(json.dumps({"experiment": "e", "run": run, "config": {"k": 1},
                                                   "result": result, "created": 0.0}).encode()))
    fresh = ResultsStore(tmp_path / "b.sqlite")
    assert fresh.import_rows(tmp_path / "rows", machine="A") == 3
    assert sorted(r["run"] for r in fresh.rows()) == [0, 2, 4]
    assert [r["machine"] for r in sorted(fresh.rows(), key=lambda r: r["run"])] == ["A", "A", "A"]
    assert fresh.import_rows(tmp_path / "rows", machine="nowhere") == 0
    assert fresh.import_rows(tmp_path / "rows") == 2  # the rest: B's run and the unrecorded one
    with pytest.raises(TypeError, match=r"`machine` must be a machine id .* Received: machine=7"):
        fresh.import_rows(tmp_path / "rows", machine=7)


def test_recorded_counts_only_this_objects_own_runs(tmp_path):
    """`recorded` / `last_recorded` tell `reproduce` whether an item trained anything, even
    while another process writes to the same store at the same time."""
    store = ResultsStore(tmp_path / "a.sqlite")
    assert (store.recorded, store.last_recorded) == (0, None)
    before = time.time()
    store.record("e", {"k": 1}, 0, {"v": 1.0})
    store.get_or_compute("e", {"k": 1}, 0, lambda: {"v": 2.0})  # read back: not a new record
    store.get_or_compute("e", {"k": 1}, 1, lambda: {"v": 2.0})
    assert store.recorded == 2 and before <= store.last_recorded <= time.time()
    other = ResultsStore(tmp_path / "a.sqlite")  # another writer (another process, say)
    other.record("e", {"k": 2}, 0, {"v": 3.0})
    assert store.recorded == 2 and other.recorded == 1 and len(store) == 3
    store.export_rows(tmp_path / "rows")
    fresh = ResultsStore(tmp_path / "b.sqlite")
    assert fresh.import_rows(tmp_path / "rows") == 3 and fresh.recorded == 0  # imported, not recorded here


def test_record_rejects_arrays_it_cannot_read_back(tmp_path):
    """Object arrays would be stored as pointers and structured ones without their fields: rejected, not stored."""
    store = ResultsStore(tmp_path / "r.sqlite")
    with pytest.raises(TypeError, match=r"key 'a' with dtype=object"):
        store.record("e", {}, 0, {"a": np.array([1, "x"], dtype=object)})
    with pytest.raises(TypeError, match=r"key 'pairs' with dtype=\[\('x', '<f4'\), \('y', '<i2'\)\]"):
        store.record("e", {}, 1, {"nested": {"pairs": np.zeros(2, dtype=[("x", "f4"), ("y", "i2")])}})
    assert not store.has("e", {}, 0) and not store.has("e", {}, 1) and len(store) == 0
    store.record("e", {}, 2, {"s": np.array(["ab", "c"]), "t": np.array(["2020-01-01"], dtype="datetime64[D]")})
    got = store.get("e", {}, 2)
    assert got["s"].tolist() == ["ab", "c"] and got["t"].tolist() == np.array(["2020-01-01"], "datetime64[D]").tolist()


def test_record_rejects_the_stores_reserved_keys(tmp_path):
    """A user dict holding the store's tags would come back as an array or a float: rejected, not stored."""
    store = ResultsStore(tmp_path / "r.sqlite")
    with pytest.raises(ValueError, match="reserved.*Received: a dict with key '__float__'"):
        store.record("e", {}, 0, {"d": {"__float__": "1e5"}})
    with pytest.raises(ValueError, match="reserved.*'__ndarray__'"):
        store.record("e", {"k": [{"__ndarray__": "abc", "note": 1}]}, 0, {})
    assert len(store) == 0
    store.record("e", {}, 0, {"d": {"float": "1e5", "__other__": 1}, "nan": float("-inf")})  # the tags' own use
    assert store.get("e", {}, 0) == {"d": {"float": "1e5", "__other__": 1}, "nan": float("-inf")}


def test_export_rows_from_two_processes_at_once(tmp_path):
    from tf_dlthesis.experiments import results_store

    path, archive = tmp_path / "r.sqlite", tmp_path / "rows"
    store = ResultsStore(path)
    for run in range(300):  # both processes write the same files in the same order, in step
        store.record("e", {"k": 1}, run, {"v": run})
    # the module alone (stdlib + NumPy), not the package (TensorFlow): two processes start in seconds
    script = textwrap.dedent(
        f"""
        import importlib.util
        spec = importlib.util.spec_from_file_location("results_store", {results_store.__file__!r})
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        store = module.ResultsStore({str(path)!r})
        print("ready", flush=True)
        input()
        print(store.export_rows({str(archive)!r}), flush=True)
        """
    )
    procs = [subprocess.Popen([sys.executable, "-c", script], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for _ in range(2)]
    assert [p.stdout.readline().strip() for p in procs] == ["ready", "ready"]
    for p in procs:  # start both exports together
        p.stdin.write("go\n")
        p.stdin.flush()
    outs = [p.communicate(timeout=300) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [err for _, err in outs]
    assert all(name.endswith(".json.gz") for _, _, names in os.walk(archive) for name in names)  # no temp left
    fresh = ResultsStore(tmp_path / "b.sqlite")
    assert fresh.import_rows(archive) == 300 and fresh.get("e", {"k": 1}, 299) == {"v": 299}


def test_import_rows_names_a_corrupt_file(tmp_path):
    store = ResultsStore(tmp_path / "a.sqlite")
    (tmp_path / "rows" / "x").mkdir(parents=True)
    # a gzip header followed by an invalid deflate block: zlib.error, not BadGzipFile
    (tmp_path / "rows" / "x" / "broken.json.gz").write_bytes(b"\x1f\x8b\x08\x00" + bytes(6) + b"\xff\xff\xff\xff")
    with pytest.raises(ValueError, match="broken.json.gz.*is not a run exported by `export_rows`"):
        store.import_rows(tmp_path / "rows")


def test_import_rows_rejects_a_result_that_is_not_a_dict(tmp_path):
    import gzip

    store = ResultsStore(tmp_path / "a.sqlite")
    (tmp_path / "rows" / "x").mkdir(parents=True)
    (tmp_path / "rows" / "x" / "list.json.gz").write_bytes(
        gzip.compress(b'{"experiment": "e", "run": 0, "config": {}, "result": [1, 2]}'))
    with pytest.raises(ValueError, match="list.json.gz.*is not a run exported by `export_rows`.*result must be a dict"):
        store.import_rows(tmp_path / "rows")
    assert len(store) == 0


def test_a_store_from_before_machines_were_recorded_is_read_and_extended(tmp_path):
    """Old rows (no `machine` column) read as not recorded, or as the machine their result names."""
    import json

    from tf_dlthesis import runtime

    path = tmp_path / "old.sqlite"
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE results (experiment TEXT NOT NULL, config_hash TEXT NOT NULL, run INTEGER NOT NULL, "
                 "config TEXT NOT NULL, result TEXT NOT NULL, created REAL NOT NULL, "
                 "PRIMARY KEY (experiment, config_hash, run))")

    for run, result in enumerate([{"acc": 0.5}, {"acc": 0.6, "info": {"machine": "m-train"}}, {"machine": "m-proto"}]):
        conn.execute("INSERT INTO results VALUES (?, ?, ?, ?, ?, ?)",
                     ("old", config_hash({"k": 1}), run, json.dumps({"k": 1}), json.dumps(result), float(run)))
    conn.commit()
    conn.close()
    store = ResultsStore(path)
    assert [row[1] for row in sqlite3.connect(path).execute("PRAGMA table_info(results)")][-2:] == ["machine", "inputs"]
    with store.provenance() as outer:
        with store.provenance() as inner:
            assert store.get("old", {"k": 1}, 0) == {"acc": 0.5}
        store.get("old", {"k": 1}, 1), store.get("old", {"k": 1}, 2)
        store.record("new", {"k": 1}, 0, {"acc": 0.7})
    here = runtime.machine()["id"]
    assert list(inner.values()) == [None]
    assert sorted(outer.values(), key=str) == sorted([None, "m-train", "m-proto", here], key=str)
    assert [r["machine"] for r in store.rows()] == [None, "m-train", "m-proto", here]
    store.get("old", {"k": 1}, 0)  # outside a context: nothing tracked, nothing raised
    # the archive carries a row's machine; rows without one keep the old file format
    store.export_rows(tmp_path / "rows")
    fresh = ResultsStore(tmp_path / "fresh.sqlite")
    assert fresh.import_rows(tmp_path / "rows") == 4
    assert [r["machine"] for r in fresh.rows()] == [None, "m-train", "m-proto", here]
    import gzip

    texts = sorted(gzip.decompress(p.read_bytes()).decode() for p in (tmp_path / "rows").rglob("*.json.gz"))
    assert sum('"machine":"%s"' % here in t for t in texts) == 1 and sum(t.endswith('"created":0.0}') for t in texts) == 1


def test_a_stored_result_read_back_marks_the_rows_it_was_computed_from(tmp_path, monkeypatch):
    """A result `get_or_compute` recorded keeps the rows its `fn` used: reading it later sees what computing it saw."""
    import gzip
    import json

    store = ResultsStore(tmp_path / "r.sqlite")
    monkeypatch.setattr(store, "_machine", "A")
    store.record("weights", {"k": 0}, 0, {"w": 1.0})  # e.g. a model trained on machine A
    monkeypatch.setattr(store, "_machine", "B")

    def evaluate():  # on machine B, from A's weights, keeping a per-batch row on the way
        w = store.get("weights", {"k": 0}, 0)["w"]
        store.record("batch", {"k": 0}, 0, {"v": w})
        return {"acc": 2 * w}

    def summary():  # a result computed from the evaluation alone
        return {"acc": store.get_or_compute("eval", {"k": 0}, 0, evaluate)["acc"] + 1}

    with store.provenance() as fresh:
        assert store.get_or_compute("summary", {"k": 0}, 0, summary) == {"acc": 3.0}
    digest = config_hash({"k": 0})
    assert fresh == {("weights", digest, 0): "A", ("batch", digest, 0): "B", ("eval", digest, 0): "B",
                     ("summary", digest, 0): "B"}
    later = ResultsStore(tmp_path / "r.sqlite")  # another process, reading the stored result only
    with later.provenance() as read_back:
        assert later.get_or_compute("summary", {"k": 0}, 0, lambda: pytest.fail("recomputed")) == {"acc": 3.0}
    assert read_back == fresh  # inputs of inputs included
    with later.provenance() as one_level:
        later.get("eval", {"k": 0}, 0)
    assert one_level == {("weights", digest, 0): "A", ("batch", digest, 0): "B", ("eval", digest, 0): "B"}
    with later.provenance() as plain:
        later.get("weights", {"k": 0}, 0)  # recorded directly: no inputs
    assert plain == {("weights", digest, 0): "A"}

    # the archive carries the inputs; rows without any keep the earlier file format
    assert store.export_rows(tmp_path / "rows") == 4
    texts = {json.loads(gzip.decompress(p.read_bytes()))["experiment"]: gzip.decompress(p.read_bytes()).decode()
             for p in (tmp_path / "rows").rglob("*.json.gz")}
    assert [e for e, t in sorted(texts.items()) if '"inputs"' in t] == ["eval", "summary"]
    assert json.loads(texts["eval"])["inputs"] == [["batch", digest, 0, "B"], ["weights", digest, 0, "A"]]
    copy = ResultsStore(tmp_path / "copy.sqlite")
    assert copy.import_rows(tmp_path / "rows") == 4
    with copy.provenance() as imported:
        copy.get("summary", {"k": 0}, 0)
    assert imported == fresh


def test_an_archived_row_with_malformed_inputs_is_refused_by_name(tmp_path):
    import gzip

    store = ResultsStore(tmp_path / "r.sqlite")
    (tmp_path / "rows" / "x").mkdir(parents=True)
    (tmp_path / "rows" / "x" / "bad.json.gz").write_bytes(gzip.compress(
        b'{"experiment": "e", "run": 0, "config": {}, "result": {}, "inputs": [["e", "h", "0", null]]}'))
    with pytest.raises(ValueError, match=r"bad.json.gz.*is not a run exported by `export_rows`.*inputs must be a list "
                                         r"of \[experiment, config hash, run, machine\]"):
        store.import_rows(tmp_path / "rows")
    assert len(store) == 0


@pytest.mark.parametrize("value", [np.nan, np.inf, -np.inf])
def test_numpy_non_finite_values_share_the_python_values_key_and_survive_an_archive(value, tmp_path):
    # np.float64("nan") hashed apart from float("nan") and an import moved its row to the Python value's key
    py = {"a": float(value)}
    for np_value in (np.float64(value), np.float32(value)):
        assert config_hash({"a": np_value}) == config_hash(py)
    store = ResultsStore(tmp_path / "a.sqlite")
    store.record("x", {"a": np.float64(value)}, 0, {"v": np.float32(value)})
    store.export_rows(tmp_path / "arch")
    other = ResultsStore(tmp_path / "b.sqlite")
    other.import_rows(tmp_path / "arch")
    assert other.has("x", {"a": np.float64(value)}, 0) and other.has("x", py, 0)
    [row] = other.rows("x")
    got = row["result"]["v"]
    assert isinstance(got, float) and (np.isnan(got) if np.isnan(value) else got == value)


def test_confirm_rows_rerecords_only_runs_retrained_bit_for_bit(tmp_path, monkeypatch):
    """A retrain on the archive's machine class: identical runs (times and machine aside) take the
    retrain's machine and times; a different result, a run the archive lacks, and item times stay."""
    archive, logits = tmp_path / "rows", np.arange(6, dtype=np.float32).reshape(2, 3)
    old = ResultsStore(tmp_path / "old.sqlite")
    monkeypatch.setattr(old, "_machine", "unrecorded")
    old.record("ch5.runs", {"seed": 1}, 0, {"logits": logits, "info:seconds": 9.0, "info:acc": 0.5})
    old.record("runs", {"seed": 1}, 0, {"acc": 0.5, "info": {"seconds": 3.0, "machine": "X"}, "per": [1, 2]})
    old.record("runs", {"seed": 2}, 0, {"acc": 0.5})
    old.record("reproduce.item_seconds", {"item": "B.2"}, 0, {"seconds": 100.0})
    old.export_rows(archive)
    before = archive_bytes(archive)

    fresh = ResultsStore(tmp_path / "fresh.sqlite")
    monkeypatch.setattr(fresh, "_machine", "C")
    fresh.record("ch5.runs", {"seed": 1}, 0, {"logits": logits.copy(), "info:seconds": 4.0, "info:acc": 0.5,
                                              "info:process_cpu_seconds": 7.0})
    fresh.record("runs", {"seed": 1}, 0, {"acc": 0.5, "info": {"seconds": 1.0, "machine": "C"}, "per": [1, 2]})
    fresh.record("runs", {"seed": 2}, 0, {"acc": 0.5 + 2 ** -40})  # one bit off: a new measurement
    fresh.record("runs", {"seed": 3}, 0, {"acc": 0.7})
    fresh.record("reproduce.item_seconds", {"item": "B.2"}, 0, {"seconds": 60.0})
    name = ResultsStore._archive_name
    found = fresh.confirm_rows(archive)
    assert found == {"confirmed": sorted([name("ch5.runs", config_hash({"seed": 1}), 0),
                                          name("runs", config_hash({"seed": 1}), 0)]),
                     "differing": [name("runs", config_hash({"seed": 2}), 0)],
                     "absent": [name("runs", config_hash({"seed": 3}), 0)],
                     "timings": [name("reproduce.item_seconds", config_hash({"item": "B.2"}), 0)]}
    after = archive_bytes(archive)
    assert {p for p in after if after[p] != before[p]} == {archive / n for n in found["confirmed"]}
    assert set(after) == set(before)  # nothing added
    merged = ResultsStore(tmp_path / "merged.sqlite")
    merged.import_rows(archive)
    by_key = {(r["experiment"], r["config"]["seed"] if "seed" in r["config"] else None): r for r in merged.rows()}
    assert by_key[("ch5.runs", 1)]["machine"] == "C" and by_key[("ch5.runs", 1)]["result"]["info:seconds"] == 4.0
    assert by_key[("ch5.runs", 1)]["result"]["logits"].tobytes() == logits.tobytes()
    assert by_key[("runs", 1)]["machine"] == "C" and by_key[("runs", 2)]["machine"] == "unrecorded"
    assert merged.get("reproduce.item_seconds", {"item": "B.2"}, 0) == {"seconds": 100.0}
    # the finished item's times are swapped separately, and only they
    assert fresh.export_rows(archive, replace=True, experiment="reproduce.item_seconds") == 1
    assert {p for p, b in archive_bytes(archive).items() if b != after[p]} == \
        {archive / found["timings"][0]}
    with pytest.raises(TypeError, match=r"`experiment` must be an experiment name .* Received: experiment=3"):
        fresh.export_rows(archive, experiment=3)
    with pytest.raises(ValueError, match=r"`folder` must be a folder written by `export_rows`"):
        fresh.confirm_rows(tmp_path / "nowhere")
    (archive / found["absent"][0]).parent.mkdir(parents=True, exist_ok=True)
    (archive / found["absent"][0]).write_bytes(b"not gzip")
    with pytest.raises(ValueError, match=r"is not a run exported by `export_rows`"):
        fresh.confirm_rows(archive)


def archive_bytes(folder):
    return {p: p.read_bytes() for p in folder.rglob("*.json.gz")}


def test_reading_only_reads_but_computes_and_records_nothing(tmp_path):
    from tf_dlthesis.experiments.results_store import NotStoredError

    store = ResultsStore(tmp_path / "r.sqlite")
    store.record("5.1", {"source": "init"}, 0, {"acc": 0.5})
    calls = []
    with store.reading_only():
        assert store.get_or_compute("5.1", {"source": "init"}, 0, lambda: calls.append(1)) == {"acc": 0.5}
        with pytest.raises(NotStoredError, match=r"Not stored: Run 1 of '5.1' \(config [0-9a-f]{16}\)"):
            store.get_or_compute("5.1", {"source": "init"}, 1, lambda: calls.append(1) or {"acc": 0.7})
        with store.reading_only():  # contexts nest
            pass
        with pytest.raises(NotStoredError, match="reading_only"):
            store.record("5.1", {"source": "init"}, 2, {"acc": 0.1})
        with pytest.raises(LookupError):  # NotStoredError is a LookupError
            store.before_compute("anything")
    assert calls == [] and len(store) == 1
    store.before_compute("anything")  # outside: no-op
    assert store.get_or_compute("5.1", {"source": "init"}, 1, lambda: {"acc": 0.7}) == {"acc": 0.7}


def test_store_keeps_0d_arrays_and_refuses_colliding_keys_and_bad_arguments(tmp_path):
    store = ResultsStore(tmp_path / "s.sqlite")
    store.record("e", {"a": 1}, 0, {"scalar": np.array(2.5), "nested": {"x": np.zeros((2, 0))}})
    got = store.get("e", {"a": 1}, 0)
    assert got["scalar"].shape == () and got["scalar"] == 2.5  # once (1,): np.ascontiguousarray
    assert got["nested"]["x"].shape == (2, 0)
    with pytest.raises(TypeError, match="1 and '1' would both be '1'"):  # once: one silently replaced the other
        store.record("e", {1: "int", "1": "str"}, 0, {})
    with pytest.raises(TypeError, match="bytes under key 'inner'"):
        store.record("e", {"a": 2}, 0, {"outer": {"inner": [b"abc"]}})
    with pytest.raises(ValueError, match="run=9223372036854775808"):  # once: OverflowError from SQLite
        store.record("e", {"a": 3}, 2**63, {})
    for path in ("", None, 5):  # "": SQLite's private temporary database, every record lost
        with pytest.raises(TypeError, match="`path` must be a non-empty file path"):
            ResultsStore(path)
    with pytest.raises(TypeError, match="`experiment` must be a string"):
        store.rows(5)
    with pytest.raises(TypeError, match="`experiment` must be a string"):
        store.table(None)
    for call in (store.export_rows, store.import_rows, store.confirm_rows):
        with pytest.raises(TypeError, match="`folder` must be a folder path"):
            call(None)
