"""The one inference path: logits of each symmetric view, in the order the views are listed."""

import numpy as np
import pytest
import torch
from torch import nn

from drdemo.inference import SYMMETRIES, symmetric_view, view_logits


class _Corner(nn.Module):
    """Logits that tell the eight symmetries of an image apart: its four corner pixels and more."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.stack([x[:, 0, 0, 0], x[:, 0, 0, -1], x[:, 0, -1, 0], x[:, 0, -1, -1], x[:, 0, 0, 1]], dim=1)


def test_each_view_is_its_symmetry_of_its_image():
    batch = torch.arange(2 * 3 * 4 * 4, dtype=torch.float32).reshape(2, 3, 4, 4)
    logits = view_logits(_Corner(), batch, views=8)
    assert logits.shape == (2, 8, 5) and logits.dtype == np.float64
    for v, symmetry in enumerate(SYMMETRIES):
        expected = _Corner()(symmetric_view(batch, *symmetry)).double().numpy()
        np.testing.assert_array_equal(logits[:, v], expected)
    assert len({tuple(row) for row in logits[0]}) == 8          # eight different views
    np.testing.assert_array_equal(view_logits(_Corner(), batch)[:, 0], logits[:, 0])


def test_only_one_or_eight_views():
    with pytest.raises(ValueError, match="one of"):
        view_logits(_Corner(), torch.zeros(1, 3, 4, 4), views=3)
