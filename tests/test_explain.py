"""CAMs: they find what a model reacts to, come from the same forward pass as the probabilities,
and leave no hooks behind."""

import numpy as np
import pytest
import torch
from PIL import Image
from pytorch_grad_cam.utils.image import scale_cam_image
from torch import nn

from drdemo.cam.explain import CAM_METHODS, Explainer, ExplainError, overlay
from drdemo.cam.methods import CLASS_INDEPENDENT_METHODS
from drdemo.models import create_model


def _bright_spot_detector() -> nn.Module:
    """Class 1 scores how much bright red there is; a conv layer marks where it is."""
    conv = nn.Conv2d(3, 2, 3, padding=1)
    with torch.no_grad():
        conv.weight.zero_()
        conv.weight[0, 0, 1, 1] = 1.0        # channel 0: the red value
        conv.weight[1, 2, 1, 1] = 1.0        # channel 1: the blue value
        conv.bias.fill_(-0.5)
    head = nn.Linear(2, 2)
    with torch.no_grad():
        head.weight.copy_(torch.tensor([[0.0, 1.0], [1.0, 0.0]]))
        head.bias.zero_()
    return nn.Sequential(conv, nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), head).eval()


def _image_with_spot(row: int, col: int, size: int = 32) -> torch.Tensor:
    image = torch.zeros(1, 3, size, size)
    image[0, 0, row - 2:row + 3, col - 2:col + 3] = 1.0
    return image


@pytest.mark.parametrize("method", sorted(CAM_METHODS))
def test_every_method_points_at_the_spot_the_model_reacts_to(method):
    explainer = Explainer(_bright_spot_detector(), "1", None, num_classes=2)  # after the ReLU
    explanation = explainer.explain(_image_with_spot(8, 22), method=method, target=1)
    assert explanation.heatmap.shape == (32, 32) and explanation.heatmap.dtype == np.float32
    assert 0.0 <= explanation.heatmap.min() and explanation.heatmap.max() <= 1.0
    row, col = np.unravel_index(explanation.heatmap.argmax(), explanation.heatmap.shape)
    assert abs(row - 8) <= 2 and abs(col - 22) <= 2, (method, row, col)


@pytest.mark.parametrize("method", sorted(CAM_METHODS))
def test_only_the_methods_named_class_independent_give_one_map_for_every_class(method):
    """The page says so for these methods; for the others the class asked for must change the map."""
    image = _image_with_spot(8, 22)
    image[0, 2, 20:26, 4:10] = 1.0                  # a blue spot: evidence for class 0, the red one for class 1
    explainer = Explainer(_bright_spot_detector(), "1", None, num_classes=2)
    maps = [explainer.explain(image, method=method, target=t).heatmap for t in (0, 1)]
    assert np.allclose(maps[0], maps[1]) == (method in CLASS_INDEPENDENT_METHODS)


def test_probabilities_come_from_the_same_forward_pass_and_hooks_are_removed():
    torch.manual_seed(0)
    model = create_model("medmamba_t", num_classes=5).eval()
    batch = torch.randn(1, 3, 64, 64)
    explainer = Explainer(model, "layers.3", "bhwc_to_bchw", num_classes=5)
    explanation = explainer.explain(batch)
    with torch.inference_mode():
        expected = torch.softmax(model(batch).double(), dim=1)[0].numpy()
    np.testing.assert_allclose(explanation.probabilities, expected, atol=1e-6)
    assert explanation.target == int(expected.argmax()) and explanation.heatmap.shape == (64, 64)
    assert not any(module._forward_hooks for module in model.modules())
    chosen = explainer.explain(batch, target=4)
    assert chosen.target == 4


@pytest.mark.parametrize("layer", ["layers.1.blocks.1", "layers.1.blocks.1+layers.3"])
@pytest.mark.parametrize("method", ["gradcam", "layercam", "eigencam"])
def test_frozen_weights_give_the_same_map_without_weight_gradients(method, layer):
    """A served model's weights are frozen: backward then stops at the (first) target layer (half the
    cost), and the map must not change."""
    torch.manual_seed(0)
    model = create_model("medmamba_t", num_classes=5).eval()
    batch = torch.randn(1, 3, 64, 64)
    full = Explainer(model, layer, "bhwc_to_bchw", num_classes=5).explain(batch, method=method)
    model.zero_grad(set_to_none=True)
    model.requires_grad_(False)
    frozen = Explainer(model, layer, "bhwc_to_bchw", num_classes=5).explain(batch, method=method)
    np.testing.assert_allclose(frozen.heatmap, full.heatmap, atol=1e-6)
    np.testing.assert_allclose(frozen.probabilities, full.probabilities, atol=1e-9)
    assert all(p.grad is None for p in model.parameters())
    assert not any(module._forward_hooks for module in model.modules())


def test_joined_layers_average_each_layers_own_map():
    """"A+B" is pytorch-grad-cam's multi-layer CAM: the rescaled mean of each layer's [0, 1] map (up to
    the ~1% its per-layer rescaling before upsampling leaves), so the earlier layer, where the frozen
    graph starts, must still get its gradient."""
    torch.manual_seed(0)
    model = create_model("medmamba_t", num_classes=5).eval().requires_grad_(False)
    batch = torch.randn(1, 3, 64, 64)
    single = [Explainer(model, layer, "bhwc_to_bchw", 5).explain(batch, method="gradcam", target=2).heatmap
              for layer in ("layers.1.blocks.1", "layers.3")]
    joined = Explainer(model, "layers.1.blocks.1+layers.3", "bhwc_to_bchw", 5).explain(batch, method="gradcam",
                                                                                         target=2).heatmap
    assert min(np.abs(joined - single[0]).max(), np.abs(joined - single[1]).max()) > 0.2
    np.testing.assert_allclose(joined, scale_cam_image(np.mean(single, axis=0)[None])[0], atol=0.02)
    with pytest.raises(ExplainError, match="no submodule 'layers.9'"):
        Explainer(model, "layers.1+layers.9", "bhwc_to_bchw", 5)


class _FailsAfterTheLayer(nn.Module):
    """Runs the bright-spot detector's conv layer, then raises IndexError as a buggy model would."""

    def __init__(self):
        super().__init__()
        self.body = _bright_spot_detector()

    def forward(self, x):
        self.body[0](x)
        raise IndexError("index 7 is out of bounds in the model")


def test_an_index_error_inside_the_cam_reaches_the_caller_and_hooks_are_removed(capsys):
    """pytorch-grad-cam's BaseCAM.__exit__ prints and swallows an IndexError: the explainer must not
    use the CAM as a context manager, or a model's bug would surface later as an unrelated error."""
    model = _FailsAfterTheLayer().eval()
    with pytest.raises(IndexError, match="index 7 is out of bounds in the model"):
        Explainer(model, "body.0", None, num_classes=2).explain(_image_with_spot(10, 10), method="gradcam")
    assert "An exception occurred in CAM" not in capsys.readouterr().out
    assert not any(module._forward_hooks or module._backward_hooks for module in model.modules())


def test_bad_requests_are_refused_with_a_message():
    model = _bright_spot_detector()
    with pytest.raises(ExplainError, match="unknown CAM method"):
        Explainer(model, "0", None, 2).explain(_image_with_spot(8, 8), method="magic")
    with pytest.raises(ExplainError, match="class 7 does not exist"):
        Explainer(model, "0", None, 2).explain(_image_with_spot(8, 8), target=7)
    with pytest.raises(ExplainError, match="no submodule"):
        Explainer(model, "9", None, 2)
    with pytest.raises(ExplainError, match="one image"):
        Explainer(model, "0", None, 2).explain(torch.zeros(2, 3, 16, 16))


def test_overlay_blends_at_the_maps_resolution():
    image = Image.new("RGB", (100, 80), (200, 100, 50))
    heatmap = np.zeros((40, 40), np.float32)
    heatmap[10, 10] = 1.0
    assert overlay(image, heatmap, opacity=0.0).size == (40, 40)
    assert np.asarray(overlay(image, heatmap, opacity=0.0))[0, 0].tolist() == [200, 100, 50]
    assert np.asarray(overlay(image, heatmap, opacity=1.0))[10, 10].tolist() != [200, 100, 50]
    with pytest.raises(ExplainError, match="opacity"):
        overlay(image, heatmap, opacity=1.5)


def test_the_economy_eigen_projection_gives_pytorch_grad_cams_maps():
    """drdemo's EigenCAM projects on the first principal direction from the economy SVD: the same maps as
    pytorch-grad-cam's full SVD, at MedMamba-T's and InceptionV3's last-stage shapes."""
    import numpy as np
    from pytorch_grad_cam.utils.svd_on_activations import get_2d_projection

    from drdemo.cam.explain import eigen_projection
    rng = np.random.default_rng(0)
    for shape in ((1, 768, 7, 7), (1, 2048, 8, 8), (2, 96, 14, 14)):
        activations = rng.normal(size=shape).astype(np.float32)
        activations[0, 0, 0, 0] = np.nan
        assert np.allclose(eigen_projection(activations), get_2d_projection(activations), atol=1e-5)
