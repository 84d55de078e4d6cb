"""Distillation (drdemo.train.distill): the loss, and which unlabelled photos a student may learn from."""

from pathlib import Path

import pytest
import torch
from real_data import IDRID_OVERLAP, IDRID_SEGMENTATION, SHARED_DATA, skip_without_real_data
from torch import nn

from drdemo.train.distill import distillation_loss, teacher_map_indices, unlabelled_photos
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


def test_a_teachers_lesion_maps_become_soft_masks_that_move_with_the_photo():
    """A photo without drawn masks learns the teacher's maps, resized to the input and moved by the same flips
    and warps as the photo; drawn masks stay binary; a photo given both is refused."""
    import numpy as np

    from drdemo.data.augment import JointAugment
    from drdemo.data.datasets import Sample
    from drdemo.data.prepared import LesionGradingDataset
    from drdemo.tasks import LESION_TYPES
    size, types = 32, len(LESION_TYPES)
    images = np.zeros((2, size, size, 3), np.uint8)
    images[:, 4:28, 4:28] = 120
    teacher = np.zeros((types, 8, 8), np.float16)
    teacher[1, :, :4] = 0.8   # haemorrhage probability 0.8 over the left half
    drawn = np.zeros((types, size, size), bool)
    drawn[2, 10:12, 10:12] = True
    samples = [Sample("a", Path("a.jpg"), 2, "a"), Sample("b", Path("b.jpg"), -1, "b")]
    kwargs = dict(mean=(0.5,) * 3, std=(0.5,) * 3, local_contrast_sigma=0.0, colour_balance=False)
    plain = LesionGradingDataset(samples, images, {0: drawn}, kwargs, teacher_maps={1: teacher})
    _, taught = plain[1]
    assert taught["has_masks"] and taught["masks"].dtype == torch.float32
    assert taught["masks"][1, :, :14].min() == pytest.approx(0.8, abs=0.01) and taught["masks"][1, :, 18:].max() == 0
    _, labelled = plain[0]
    assert set(labelled["masks"].unique().tolist()) == {0.0, 1.0}
    recipe = PRESETS["distill"]
    flip_only = type(recipe.augmentation)(horizontal_flip=True)
    augmented = LesionGradingDataset(samples, images, {}, kwargs, JointAugment(flip_only), teacher_maps={1: teacher})
    halves = set()
    for seed in range(8):
        torch.manual_seed(seed)
        masks = augmented[1][1]["masks"][1]
        halves.add("left" if masks[:, :14].min() > 0.7 else "right" if masks[:, 18:].min() > 0.7 else "?")
    assert halves == {"left", "right"}
    with pytest.raises(ValueError, match="one of them"):
        LesionGradingDataset(samples, images, {1: drawn}, kwargs, teacher_maps={1: teacher})


def test_no_teacher_map_of_a_photo_whose_lesion_maps_are_scored():
    skip_without_real_data(IDRID_SEGMENTATION)
    photos = unlabelled_photos([IDRID_SEGMENTATION, SHARED_DATA / "chase_db1"], IDRID_OVERLAP)
    allowed = teacher_map_indices(photos, [IDRID_SEGMENTATION, SHARED_DATA / "chase_db1"])
    assert [photos[i].image_id.split("/")[0] for i in allowed] == ["chase_db1"] * 28
