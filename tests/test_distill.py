"""Distillation (drdemo.train.distill): the loss, and which unlabelled photos a student may learn from."""

from pathlib import Path

import pytest
import torch
from real_data import IDRID_OVERLAP, IDRID_SEGMENTATION, SHARED_DATA, skip_without_real_data
from torch import nn

from drdemo.train.distill import distillation_loss, unlabelled_photos
from drdemo.train.recipes import PRESETS
from drdemo.train.trainer import three_head_loss


def test_distillation_loss_is_zero_only_at_the_teacher():
    teacher = torch.log_softmax(torch.tensor([[2.0, 0.5, -1.0, 0.0, 0.3]]), dim=-1)
    assert distillation_loss(teacher.clone(), teacher, temperature=2.0).item() == pytest.approx(0.0, abs=1e-6)
    assert distillation_loss(torch.zeros(1, 5), teacher, temperature=2.0).item() > 0.05


def test_a_tiny_student_learns_the_teachers_probabilities(one_torch_thread):
    torch.manual_seed(0)
    inputs = torch.randn(64, 8)
    teacher = nn.Sequential(nn.Linear(8, 16), nn.Tanh(), nn.Linear(16, 5))
    with torch.no_grad():
        targets = torch.log_softmax(teacher(inputs), dim=-1)
    student = nn.Linear(8, 5)
    optimiser = torch.optim.Adam(student.parameters(), lr=0.05)
    losses = []
    for _ in range(150):
        loss = distillation_loss(student(inputs), targets, temperature=2.0)
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        losses.append(loss.item())
    assert losses[-1] < 0.25 * losses[0]
    with torch.no_grad():  # the student's grades follow the teacher's on most inputs
        agreement = (student(inputs).argmax(-1) == targets.argmax(-1)).float().mean().item()
    assert agreement > 0.8


def test_ungraded_photos_add_only_the_teachers_loss():
    """A photo with grade -1 (only the teacher labels it) contributes no label loss, and without a teacher's
    weight nothing at all."""
    from drdemo.models.heads import HeadsOutput
    torch.manual_seed(0)
    output = HeadsOutput(logits=torch.randn(2, 5), softmax_logits=torch.randn(2, 5, requires_grad=True),
                         ordinal_logits=torch.randn(2, 4), dme_logits=torch.randn(2, 3, requires_grad=True),
                         lesion_logits=torch.zeros(2, 4, 8, 8), features=torch.zeros(2, 8))
    targets = {"grade": torch.tensor([-1, -1]), "dme": torch.tensor([-1, -1]), "masks": torch.zeros(2, 4, 8, 8),
               "has_masks": torch.tensor([False, False]),
               "teacher_grade": torch.log_softmax(torch.randn(2, 5), -1),
               "teacher_dme": torch.log_softmax(torch.randn(2, 3), -1)}
    recipe = PRESETS["distill"]
    loss = three_head_loss(output, targets, recipe, nn.CrossEntropyLoss(), nn.CrossEntropyLoss())
    expected = (distillation_loss(output.softmax_logits, targets["teacher_grade"], recipe.distill_temperature)
                + distillation_loss(output.dme_logits, targets["teacher_dme"], recipe.distill_temperature))
    assert loss.item() == pytest.approx(expected.item(), rel=1e-6)
    without_teacher = three_head_loss(output, targets, PRESETS["lesions"], nn.CrossEntropyLoss(),
                                      nn.CrossEntropyLoss())
    assert without_teacher.item() == 0.0


def test_unlabelled_idrid_photos_copy_no_grading_photo():
    skip_without_real_data(IDRID_SEGMENTATION)
    segmentation, overlap = IDRID_SEGMENTATION, IDRID_OVERLAP
    photos = unlabelled_photos([segmentation, SHARED_DATA / "chase_db1"], overlap)
    idrid = [p for p in photos if p.image_id.startswith("A. Segmentation/")]
    assert len(idrid) == 19 and len(photos) == 19 + 28  # 81 segmentation photos, 62 of them copies
    assert all(p.grade == -1 for p in photos)
    import csv
    with open(overlap, newline="") as handle:
        copies = {Path(r["segmentation_image"]).stem for r in csv.DictReader(handle) if r["grading_image"]}
    assert not {p.image_id.split("/")[-1] for p in idrid} & copies
    with pytest.raises(ValueError, match="--lesion-overlap"):
        unlabelled_photos([segmentation], None)
