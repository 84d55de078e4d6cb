"""The inference-options benchmark: the keep rule, and a real small run on a saved checkpoint."""

import pytest
import torch

from benchmarks import inference as bench_inference
from drdemo.checkpoint import CheckpointConfig, save_checkpoint
from drdemo.models import create_model


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    folder = tmp_path_factory.mktemp("medmamba")
    config = CheckpointConfig.for_architecture("medmamba_t", input_size=96, provenance={"trained": False})
    save_checkpoint(create_model("medmamba_t", num_classes=5), config, folder, dtype=torch.float32)
    return folder


def test_options_are_compared_with_eager_on_the_same_images(checkpoint):
    images = bench_inference.agreement_images(3, size=128)
    rows = bench_inference.bench_checkpoint(checkpoint, images, repeats=1,
                                            options=["eager, 1 thread", "dynamic int8 (linear layers)"])
    by_option = {row["option"]: row for row in rows}
    assert list(by_option) == ["eager float32", "eager, 1 thread", "dynamic int8 (linear layers)"]
    eager, one_thread, int8 = by_option.values()
    assert eager["vs_eager"] == 1.0 and eager["grades_changed"] == 0 and eager["backward_for_cam"]
    assert one_thread["max_probability_change"] < 1e-5 and one_thread["backward_for_cam"]
    assert not int8["backward_for_cam"]          # quantised linear layers have no backward: no Grad-CAM
    assert int8["images"] == 3 and 0 < int8["max_probability_change"] < 0.2


def test_unknown_option_is_named(checkpoint):
    with pytest.raises(ValueError, match="unknown option.*fp8"):
        bench_inference.bench_checkpoint(checkpoint, [], repeats=1, options=["fp8"])


FAST = {"vs_eager": 0.7, "grades_changed": 0, "backward_for_cam": True, "first_call_s": 0.2}


@pytest.mark.parametrize("row, kept", [
    (FAST, True),
    ({**FAST, "grades_changed": 1}, False),
    ({**FAST, "vs_eager": 0.98}, False),
    ({**FAST, "backward_for_cam": False}, False),
    ({**FAST, "first_call_s": 47.0}, False),   # torch.compile: faster, but 47 s would break the cold start
    ({"error": "RuntimeError: no compiler"}, False),
])
def test_an_option_is_kept_only_if_faster_and_no_grade_changes(row, kept):
    assert bench_inference.keep(row) is kept


def test_table_marks_failures_and_kept_options():
    rows = [{"checkpoint": "m", "option": "eager float32", "ms": 10.0, "vs_eager": 1.0, "first_call_s": 0.1,
             "grades_changed": 0, "images": 5, "max_probability_change": 0.0, "backward_for_cam": True},
            {"checkpoint": "m", "option": "channels-last", "ms": 5.0, "vs_eager": 0.5, "first_call_s": 0.1,
             "grades_changed": 0, "images": 5, "max_probability_change": 1e-7, "backward_for_cam": True},
            {"checkpoint": "m", "option": "torch.compile (inductor)", "error": "RuntimeError: no compiler"}]
    table = bench_inference.markdown(rows, threads=2)
    assert "| m | channels-last | 5.0 | 0.5x | 0.1 | 0/5 | 1e-07 | yes | yes |" in table
    assert "| m | torch.compile (inductor) | fails: RuntimeError: no compiler |" in table
