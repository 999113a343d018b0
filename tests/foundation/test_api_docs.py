"""The API reference (pdoc, `python docs/api/build.py`) builds cleanly, has no broken
cross-references, and documents every name of DESIGN.md's "Public API contract"."""

import importlib.util
import os
import re
from pathlib import Path

import pytest

pytest.importorskip("pdoc")

REPO = Path(__file__).resolve().parents[2]
DESIGN = REPO.parent / "shared" / "DESIGN.md"  # the project's design notes, where present (not in CI)

#: DESIGN.md's "Public API contract", copied (CI has only the repository): page -> names.
#: Methods are `Class.method`. A name counts as documented when its anchor is on the
#: page or on one of the page's submodule pages.
CONTRACT = {
    "runtime": ["configure"],
    "data": ["load", "info", "standard_augment", "non_iid_batches"],
    "models": ["build"],
    "experiments": ["ResultsStore", "ResultsStore.record", "ResultsStore.has", "ResultsStore.rows",
                    "ResultsStore.get_or_compute", "TrainSpec", "train", "register"],
    "augment": ["METHODS", "mix_pair", "mix_batch", "mix_dataset", "MixedExample"],
    "normalization": ["ExampleWeightedBatchNormalization", "GhostBatchNormalization", "BatchGroupNormalization",
                      "ExampleWeightedGroupNormalization", "patch_model", "set_example_weight",
                      "sweep_example_weight", "apply_normalization_weight_decay"],
    "normalization/slim": ["batch_norm", "patch_graph_def"],
    "robustness": ["LabelSmoothingCrossEntropy", "logit_squeezing", "logit_pairing", "decoupled_logit_pairing",
                   "fgsm", "pgd", "spsa", "RobustModel", "evaluate_white_box", "black_box_matrix",
                   "logit_statistics"],
    "variability": ["SeedPlan", "SeedPlan.vary", "bit_change", "run_protocol", "accuracy_sd", "cross_entropy_sd",
                    "pairwise_disagreement", "pairwise_correlation", "ensemble_delta", "linear_cka", "bootstrap_sd",
                    "CyclicCosineSchedule", "SnapshotEnsemble", "predict_tta"],
    "cli": ["main"],
}


def _load_builder():
    spec = importlib.util.spec_from_file_location("tf_dlthesis_api_docs_build", REPO / "docs" / "api" / "build.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    out = tmp_path_factory.mktemp("api")
    problems = _load_builder().build(out)
    return out, problems


def test_reference_builds_without_warnings_or_broken_references(site):
    out, problems = site
    assert (out / "index.html").exists() and (out / "tf_dlthesis" / "variability.html").exists()
    assert problems == []


def _anchors(out, page):
    base = out / "tf_dlthesis" / f"{page}.html"
    pages = [base] + sorted((out / "tf_dlthesis" / page).rglob("*.html"))
    found = set()
    for p in pages:
        if p.exists():
            found |= set(re.findall(r'id="([A-Za-z_][A-Za-z0-9_.]*)"', p.read_text(encoding="utf-8")))
    return found


def test_every_public_contract_name_is_documented(site):
    out, _ = site
    missing = [f"{page}: {name}" for page, names in CONTRACT.items() for name in names
               if name not in _anchors(out, page)]
    assert not missing, missing


@pytest.mark.skipif(not DESIGN.exists(), reason="DESIGN.md is outside the repository (not in CI)")
def test_contract_copy_covers_design_md():
    text = DESIGN.read_text(encoding="utf-8")
    section = text[text.index("## Public API contract"):text.index("\n## ", text.index("## Public API contract") + 5)]
    signatures = {m.group(1) for span in re.findall(r"`([^`]+)`", section)
                  if (m := re.match(r"^([A-Za-z_][A-Za-z0-9_.]*)\(", span))}
    ours = {name.split(".")[-1] for names in CONTRACT.values() for name in names}
    ignored = {"train_fn"}  # the user's function in run_protocol's signature
    missing = sorted(s for s in signatures if not s.startswith("tf.") and s not in ignored
                     and s.split(".")[-1] not in ours)
    assert not missing, f"DESIGN.md names not in CONTRACT: {missing}"


def test_broken_reference_detector_flags_an_unlinked_name(tmp_path):
    builder = _load_builder()
    page = tmp_path / "tf_dlthesis" / "x.html"
    page.parent.mkdir()
    page.write_text('<p><a href="y.html#f"><code>tf_dlthesis.y.f</code></a> and <code>tf_dlthesis._seeds.nope</code>'
                    " and <code>keras.Model</code></p>")
    assert builder.broken_references(tmp_path) == ["tf_dlthesis/x.html: unresolved reference "
                                                   "`tf_dlthesis._seeds.nope`"]
    assert os.path.basename(builder.DEFAULT_OUT) == "html"
