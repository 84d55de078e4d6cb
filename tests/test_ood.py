"""The models' feature score: fitted on a tiny model, stored beside a checkpoint, and what serving does without it."""

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from drdemo.checkpoint import CheckpointConfig, save_checkpoint
from drdemo.data.synthetic import generate_fundus
from drdemo.intake.ood import OOD_NAME, OodError, choose_threshold, describe, fit, load_feature_score, save
from drdemo.models import create_model
from drdemo.models.heads import pooled_features


class TinyNet(nn.Module):
    """Two convolutions, global pooling and a classifier named `fc`, as registry backbones name theirs."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.features = nn.Sequential(nn.Conv2d(3, 16, 5, stride=2), nn.ReLU(), nn.Conv2d(16, 32, 5, stride=2),
                                      nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.fc = nn.Linear(32, 5)

    def forward(self, x):
        return self.fc(self.features(x))


def _batch(images) -> torch.Tensor:
    return torch.stack([torch.from_numpy(np.asarray(i, np.float32) / 255).permute(2, 0, 1) for i in images])


def _fundus(seed: int) -> np.ndarray:
    image = generate_fundus(np.random.SeedSequence([4242, seed]), seed % 5, size=128).image
    return np.asarray(Image.fromarray(image).resize((128, 128)))


def _shuffled(image: np.ndarray, seed: int) -> np.ndarray:
    flat = image.reshape(-1, 3).copy()
    np.random.default_rng(seed).shuffle(flat)
    return flat.reshape(image.shape)


@pytest.fixture(scope="module")
def tiny_score():
    model = TinyNet().eval()
    with torch.no_grad():
        _, train = pooled_features(model, "fc", _batch([_fundus(i) for i in range(40)]))
        _, held_out = pooled_features(model, "fc", _batch([_fundus(i) for i in range(100, 110)]))
        _, shuffled = pooled_features(model, "fc", _batch([_shuffled(_fundus(i), i) for i in range(100, 110)]))
    score = fit(train.numpy(), [i % 5 for i in range(40)], components=8, fitted_on="40 synthetic photos")
    return score, held_out.numpy(), shuffled.numpy()


def test_photos_like_the_training_photos_score_low_and_shuffled_pixels_high(tiny_score):
    score, held_out, shuffled = tiny_score
    inside, outside = score.score(held_out), score.score(shuffled)
    assert inside.max() < outside.min()
    threshold, how = choose_threshold(inside)
    assert inside.max() <= threshold < outside.min() and "10 held-out" in how
    chosen = score.with_threshold(threshold, how)
    assert chosen.in_distribution(held_out).all() and not chosen.in_distribution(shuffled).any()


def test_the_threshold_moves_towards_everyday_photos_only_while_fundus_photos_stay_below():
    validation = np.linspace(0.5, 1.0, 50)
    threshold, _ = choose_threshold(validation, np.linspace(1.1, 3.0, 50))
    assert 1.0 < threshold < 1.2
    overlapping, _ = choose_threshold(validation, np.linspace(0.2, 3.0, 50))
    assert overlapping > 1.0


def test_fit_refuses_features_that_do_not_match_their_labels():
    with pytest.raises(OodError, match="one label each"):
        fit(np.zeros((5, 4)), [0, 1])


def test_the_score_is_stored_and_reloaded_with_a_checkpoint(tmp_path, tiny_score):
    score, held_out, shuffled = tiny_score
    folder = tmp_path / "checkpoint"
    save_checkpoint(create_model("inception_v3"),
                    CheckpointConfig.for_architecture("inception_v3", provenance={"trained": False}), folder)
    assert load_feature_score(folder) is None
    save(score.with_threshold(1.5, "chosen by hand"), folder)
    loaded = load_feature_score(folder)
    assert loaded.threshold == pytest.approx(1.5) and loaded.fitted_on == "40 synthetic photos"
    assert loaded.threshold_from == "chosen by hand"
    np.testing.assert_allclose(loaded.score(shuffled), score.score(shuffled), rtol=1e-4)
    assert "40 synthetic photos" in describe(loaded)


def test_a_damaged_score_file_says_so(tmp_path):
    (tmp_path / OOD_NAME).write_bytes(b"not safetensors")
    with pytest.raises(OodError, match="not a readable"):
        load_feature_score(tmp_path)


def test_a_checkpoint_without_a_score_serves_with_rules_only_and_says_so(tmp_path, untrained_checkpoint):
    from test_serving import _slot

    from drdemo.serving.slots import serve
    folder = untrained_checkpoint(tmp_path / "mine", "inception_v3")
    served = serve(_slot(tmp_path, source=str(folder), bundled=tmp_path / "no-bundle"))
    assert not served.fallback and served.feature_score is None
    assert "rules only" in describe(served.feature_score)
    from drdemo.ui import views
    assert "rules only" in views.about([served])


def test_features_for_the_score_are_the_ones_the_grading_forward_computes():
    from drdemo.predictor import Predictor
    from drdemo.serving.ood_fit import image_features
    predictor = Predictor.untrained("inception_v3")
    image = Image.fromarray(_fundus(3)).resize((320, 320))
    np.testing.assert_allclose(image_features(predictor, [image])[0], predictor.analyse(image).features,
                               rtol=1e-4, atol=1e-5)


def test_the_score_is_handed_features_and_imports_no_network():
    """drdemo.intake.ood reads features whoever computes them; running a checkpoint's model to fit it is the serving
    layer's (drdemo.serving.ood_fit)."""
    import ast
    from pathlib import Path

    import drdemo.intake.ood as ood
    tree = ast.parse(Path(ood.__file__).read_text())
    imported = {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom) and node.module}
    imported |= {alias.name for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names}
    assert not {m for m in imported if m.startswith(("drdemo.models", "drdemo.predictor", "drdemo.checkpoint"))}
    from drdemo.serving import ood_fit
    with pytest.raises(SystemExit) as done:
        ood_fit.main(["fit", "--help"])
    assert done.value.code == 0
