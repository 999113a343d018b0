"""Chapter 3 experiments are registered and configured (the runs themselves are in the slow findings tests)."""

import pytest

from tf_dlthesis.experiments import chapter3
from tf_dlthesis.experiments.registry import REGISTRY


def test_chapter3_ids_registered():
    for id_ in ("3.1", "3.2", "3.3", "3.4", "3.5", "3.6", "fig3.1", "fig3.2"):
        assert id_ in REGISTRY and REGISTRY[id_].chapter == 3


def test_settings_follow_the_thesis_at_full_scale():
    full = chapter3._settings("full")
    assert (full["epsilon"], full["step_size"], full["model"]) == (0.03, 0.0078, "preact_resnet18")
    assert chapter3._defense("cifar10", "lrm", full)[1] == {"alpha": 0.0, "smoothing": 0.1, "beta": 1e-3,
                                                            "ratio": 0.125, "mixing": "vh_mixup"}
    assert chapter3._defense("cifar100", "alp", full)[1]["pairing_weight"] == 5.0
    assert chapter3._dataset_name("digits", "full", "cifar100") == "cifar100"
    with pytest.raises(ValueError, match="scale"):
        chapter3._settings("medium")
