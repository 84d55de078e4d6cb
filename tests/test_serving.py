"""Which checkpoint each app slot serves: settings precedence and the fallback chain."""

import json
from dataclasses import replace

import pytest
import torch
from hub_server import point_hub_at
from huggingface_hub import constants as hub_constants

from drdemo.predictor import Predictor
from drdemo.serving.slots import SLOTS, load_settings, serve


def test_defaults_are_the_bundled_folders():
    settings = {s.slot: s for s in load_settings(environ={})}
    assert set(settings) == set(SLOTS) == {"medmamba", "inception"}
    assert settings["medmamba"].source.endswith("checkpoints/medmamba_t") and settings["medmamba"].revision is None
    assert settings["inception"].source.endswith("checkpoints/inception_v3")


def test_toml_then_environment(tmp_path):
    path = tmp_path / "drdemo.toml"
    path.write_text('[models.medmamba]\nsource = "org/medmamba"\nrevision = "v1"\n'
                    '[models.inception]\nsource = "org/inception"\n')
    settings = {s.slot: s for s in load_settings(path, environ={"DRDEMO_INCEPTION_REVISION": "abc1234",
                                                                 "DRDEMO_MEDMAMBA_SOURCE": "other/medmamba"})}
    assert (settings["medmamba"].source, settings["medmamba"].revision) == ("other/medmamba", "v1")
    assert (settings["inception"].source, settings["inception"].revision) == ("org/inception", "abc1234")


@pytest.mark.parametrize("content, message", [
    ("[models.vgg]\nsource = 'x/y'\n", "unknown model slot"),
    ("[models\n", "not valid TOML"),
])
def test_bad_settings_file(tmp_path, content, message):
    path = tmp_path / "drdemo.toml"
    path.write_text(content)
    with pytest.raises(ValueError, match=message):
        load_settings(path, environ={})


def test_named_settings_file_must_exist(tmp_path):
    with pytest.raises(ValueError, match="does not exist"):
        load_settings(environ={"DRDEMO_SETTINGS": str(tmp_path / "nope.toml")})


def _slot(tmp_path, **changes):
    medmamba = next(s for s in load_settings(environ={}) if s.slot == "medmamba")
    return replace(medmamba, **changes)


def test_configured_folder_is_served(tmp_path, untrained_checkpoint):
    folder = untrained_checkpoint(tmp_path / "mine")
    served = serve(_slot(tmp_path, source=str(folder), bundled=tmp_path / "no-bundle"))
    assert not served.fallback and served.status == str(folder)
    assert served.predictor.input_size == 224 and not served.predictor.trained


def test_unreachable_repo_falls_back_to_bundled(tmp_path, monkeypatch, untrained_checkpoint):
    point_hub_at(monkeypatch, "http://127.0.0.1:9")  # the discard port: nothing listens
    monkeypatch.setattr(hub_constants, "HF_HUB_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(hub_constants, "HF_HUB_OFFLINE", False)
    bundled = untrained_checkpoint(tmp_path / "bundled")
    monkeypatch.setattr("drdemo.serving.slots.ROOT", tmp_path)
    served = serve(_slot(tmp_path, source="org/medmamba", bundled=bundled))
    assert served.fallback
    assert served.status.startswith("cannot load org/medmamba: http://127.0.0.1:9 could not be reached")
    assert served.status.endswith("serving the bundled bundled instead")


def test_nothing_loadable_serves_untrained_and_says_so(tmp_path):
    served = serve(_slot(tmp_path, source=str(tmp_path / "missing"), bundled=tmp_path / "also-missing"))
    assert served.fallback and not served.predictor.trained
    assert "neither a folder nor a Hub repo id" in served.status
    assert served.status.endswith("no bundled checkpoint at " + str(tmp_path / "also-missing")
                                  + "; serving an UNTRAINED medmamba_t")


def test_checkpoint_naming_a_missing_cam_layer_falls_back_and_says_which(tmp_path, untrained_checkpoint):
    broken = untrained_checkpoint(tmp_path / "broken")
    config = json.loads((broken / "config.json").read_text())
    config["cam_target_layer"] = "layers.2.block.3"
    (broken / "config.json").write_text(json.dumps(config))
    bundled = untrained_checkpoint(tmp_path / "bundled")
    served = serve(_slot(tmp_path, source=str(broken), bundled=bundled))
    assert served.fallback and served.predictor.config.cam_target_layer == "layers.3"  # the default
    assert ("cam_target_layer in config.json: MedMamba has no submodule 'layers.2.block.3'" in served.status
            and "did you mean 'layers.2.blocks.3'" in served.status)
    assert served.status.endswith(f"serving the bundled {bundled} instead")


def test_checkpoint_that_loads_but_cannot_grade_falls_back(tmp_path, monkeypatch, untrained_checkpoint):
    """Whatever fails after loading (here the warm-up analysis) moves on to the bundled checkpoint."""
    configured = untrained_checkpoint(tmp_path / "configured")
    bundled = untrained_checkpoint(tmp_path / "bundled")
    original = Predictor.warm_up

    def warm_up(self):
        if self.config.provenance.get("broken"):
            raise RuntimeError("out of memory")
        original(self)

    provenance_file = configured / "training" / "provenance.json"
    provenance = json.loads(provenance_file.read_text())
    provenance["stages"][-1]["broken"] = True
    provenance_file.write_text(json.dumps(provenance))
    monkeypatch.setattr(Predictor, "warm_up", warm_up)
    served = serve(_slot(tmp_path, source=str(configured), bundled=bundled))
    assert served.fallback and not served.predictor.config.provenance.get("broken")
    assert served.status == (f"{configured} cannot be served (RuntimeError: out of memory); "
                             f"serving the bundled {bundled} instead")


def test_a_served_model_adds_its_feature_score_to_the_image_check_and_the_most_cautious_is_shown():
    import numpy as np
    from PIL import Image

    from drdemo.data.synthetic import generate_fundus
    from drdemo.intake.fundus_check import assess, most_cautious
    from drdemo.intake.ood import fit
    from drdemo.predictor import Analysis, Prediction
    from drdemo.serving.slots import ServedModel

    rng = np.random.default_rng(0)
    features = rng.normal(size=(60, 6))
    score = fit(features, [i % 3 for i in range(60)], components=4, fitted_on="60 random vectors")
    score = score.with_threshold(float(np.quantile(score.score(features), 0.99)) * 1.5, "test")
    predictor = Predictor.untrained("resnet50")
    scored, unscored = ServedModel("a", predictor, "ok", False, score), ServedModel("b", predictor, "ok", False)
    rules = assess(Image.fromarray(generate_fundus(np.random.SeedSequence(1), 2, size=256).image))
    assert rules.outcome == "accepted"

    def analysis(vector):
        prediction = Prediction(probabilities={}, grade=0, grade_name="", seconds=0.0)
        return Analysis(prediction=prediction, model_view=Image.new("RGB", (8, 8)), features=vector)

    near, far = scored.check(rules, analysis(features[0])), scored.check(rules, analysis(features[0] + 50))
    assert near.outcome == "accepted" and near.measurements["feature_distance"] <= score.threshold
    assert far.outcome == "warned" and far.measurements["feature_distance"] > score.threshold
    assert "unlike" in far.reason
    alone = unscored.check(rules, analysis(features[0]))
    assert alone.outcome == "accepted" and "feature_distance" not in alone.measurements
    assert most_cautious([near, far]) is far and most_cautious([alone, near]) is alone


def test_share_cores_puts_numpys_blas_on_one_thread_and_leaves_torch_its_threads():
    import numpy as np  # noqa: F401  (loads numpy's OpenBLAS, as the app has by then)
    from threadpoolctl import threadpool_info, threadpool_limits

    from drdemo.serving.runtime import share_cores

    before = {info["filepath"]: info["num_threads"] for info in threadpool_info() if info["user_api"] == "blas"}
    torch_threads = torch.get_num_threads()
    try:
        limited = share_cores()
        after = {info["filepath"]: info["num_threads"] for info in threadpool_info() if info["user_api"] == "blas"}
        assert before and set(limited) == set(before)
        assert set(after.values()) == {1}
        assert torch.get_num_threads() == torch_threads
    finally:
        threadpool_limits(limits=max(before.values()), user_api="blas")
