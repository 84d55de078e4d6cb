"""Lesion evidence: the DR grade and DME risk read from a three-head model's own lesion maps.

A grade follows from lesions: how many, how large, how widely spread over the retina (ICDR's severe grade is
haemorrhages in all four quadrants), and for macular oedema where hard exudates lie (IDRiD's risk 2 is exudates
near the macula, at the centre of its macula-centred photos). `lesion_statistics` turns each lesion type's
probability map into ten numbers of that kind; `LesionEvidence` is a multinomial logistic regression on them for
the grade and another for the DME risk (fitted after the network by drdemo.train.lesion_evidence, on the
training photos' maps), and `blend` mixes its log-probabilities with the network's, so the served grade weighs
what the pooled features say against what the lesion maps show. The grade's regression is multinomial (a weight
vector per grade) or proportional-odds (`ProportionalOdds`: one direction along which the grades lie in order,
cut at four thresholds; five times fewer weights).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

STATISTIC_NAMES = ("mean_per_mille", "cells_over_half", "max", "quadrant_least", "quadrant_second",
                   "quadrant_third", "quadrant_most", "centre", "middle_ring", "outer_ring")
STATISTICS_PER_TYPE = len(STATISTIC_NAMES)
GRADE_REGRESSIONS = ("multinomial", "proportional_odds")
_RINGS = (0.25, 0.5)  # radii, as fractions of half the map's side, bounding the centre and the middle ring


def is_blend_weight(value: object) -> bool:
    """Whether `value` can weigh the evidence: a number in (0, 1] (0 would be no evidence at all)."""
    return not isinstance(value, bool) and isinstance(value, (int, float)) and 0 < value <= 1


def _regions(size: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """(4, size, size) quadrant masks about the map's centre and (3, size, size) concentric ring masks."""
    coordinates = torch.arange(size, device=device, dtype=torch.float32)
    rows, columns = torch.meshgrid(coordinates, coordinates, indexing="ij")
    centre = (size - 1) / 2
    top, left = rows < centre, columns < centre
    quadrants = torch.stack([top & left, top & ~left, ~top & left, ~top & ~left])
    radius = torch.hypot(rows - centre, columns - centre) / (size / 2)
    inner, outer = _RINGS
    rings = torch.stack([radius < inner, (radius >= inner) & (radius < outer), radius >= outer])
    return quadrants.float(), rings.float()


def lesion_statistics(probabilities: torch.Tensor) -> torch.Tensor:
    """(B, T, h, w) lesion probability maps (square, h == w) -> (B, T * 10) statistics, type by type in
    STATISTIC_NAMES' order: log(1 + 1000 x the mean probability), log(1 + the cells above 0.5), the largest
    probability, log(1 + each quadrant's probability mass) from the least to the most affected quadrant, and
    log(1 + the mass) in the central disc, the middle ring and the rest."""
    if probabilities.ndim != 4 or probabilities.shape[-1] != probabilities.shape[-2]:
        raise ValueError(f"expected (B, T, h, h) lesion maps, got {tuple(probabilities.shape)}")
    p = probabilities.float()
    quadrants, rings = _regions(p.shape[-1], p.device)
    per_quadrant = torch.log1p(torch.einsum("bthw,qhw->btq", p, quadrants)).sort(dim=-1).values
    per_ring = torch.log1p(torch.einsum("bthw,rhw->btr", p, rings))
    statistics = torch.cat([torch.log1p(p.mean(dim=(2, 3)) * 1000)[..., None],
                            torch.log1p((p > 0.5).sum(dim=(2, 3)).float())[..., None],
                            p.amax(dim=(2, 3))[..., None], per_quadrant, per_ring], dim=-1)
    return statistics.flatten(1)


def blend(network_logits: torch.Tensor, evidence_logits: torch.Tensor, weight: float) -> torch.Tensor:
    """Log-probabilities (1 - weight) x the network's + weight x the evidence's (a weighted geometric mean of the
    two distributions, which softmax renormalises); valid logits for every later step."""
    return ((1 - weight) * F.log_softmax(network_logits.float(), dim=-1)
            + weight * F.log_softmax(evidence_logits.float(), dim=-1))


def proportional_odds_log_probabilities(scores: torch.Tensor, thresholds: torch.Tensor) -> torch.Tensor:
    """(B,) scores along an ordinal regression's direction and its (K - 1,) ordered thresholds -> (B, K) float64
    log-probabilities: P(grade > k) = sigmoid(score - thresholds[k]), and each grade's probability the difference
    of two of those (in float64: differences of nearly equal sigmoids lose float32's digits)."""
    above = torch.sigmoid(scores.double()[:, None] - thresholds.double()[None, :])
    ones, zeros = torch.ones_like(above[:, :1]), torch.zeros_like(above[:, :1])
    probabilities = torch.cat([ones, above], 1) - torch.cat([above, zeros], 1)
    return torch.log(probabilities.clamp_min(1e-12))


class ProportionalOdds(nn.Module):
    """An ordinal logistic regression: one direction along which the grades lie in order, cut at K - 1 thresholds
    (`proportional_odds_log_probabilities`). Its log-probabilities are valid logits."""

    def __init__(self, features: int, num_grades: int):
        super().__init__()
        self.direction = nn.Parameter(torch.zeros(features))
        self.thresholds = nn.Parameter(torch.arange(num_grades - 1, dtype=torch.float32) - (num_grades - 2) / 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, features) standardised statistics -> (B, K) log-probabilities."""
        scores = x.double() @ self.direction.double()
        return proportional_odds_log_probabilities(scores, self.thresholds).to(x.dtype)


class LesionEvidence(nn.Module):
    """Lesion maps -> grade and DME logits: statistics, standardised with the training photos' mean and scale,
    then one regression per task (the fitted logistic regressions' coefficients): the DME risk's multinomial,
    the grade's `grade_regression` (GRADE_REGRESSIONS)."""

    def __init__(self, lesion_types: int, num_grades: int, dme_classes: int, grade_regression: str = "multinomial"):
        super().__init__()
        if grade_regression not in GRADE_REGRESSIONS:
            raise ValueError(f"grade_regression must be one of {', '.join(GRADE_REGRESSIONS)}, "
                             f"got {grade_regression!r}")
        features = lesion_types * STATISTICS_PER_TYPE
        self.register_buffer("mean", torch.zeros(features))
        self.register_buffer("scale", torch.ones(features))
        self.grade = (nn.Linear(features, num_grades) if grade_regression == "multinomial"
                      else ProportionalOdds(features, num_grades))
        self.dme = nn.Linear(features, dme_classes)

    def read(self, statistics: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, T * 10) `lesion_statistics` -> ((B, grades), (B, DME classes)) logits."""
        x = (statistics - self.mean) / self.scale
        return self.grade(x), self.dme(x)

    def forward(self, probabilities: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, T, h, h) lesion probabilities -> ((B, grades), (B, DME classes)) logits."""
        return self.read(lesion_statistics(probabilities))
