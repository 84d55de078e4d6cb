"""Where the real photos of ../shared/data are, for the tests that read them at run time (never committed).

`DRDEMO_SHARED_DATA` moves it; tests that need it skip with `needs_real_data` or `skip_without_real_data` when
it is absent, and fail instead when DRDEMO_REQUIRE_DATA=1 (.ci/run sets it where the data are), so a
missing or moved data folder cannot pass as a green run.
"""

import os
from pathlib import Path

import pytest
from PIL import Image

SHARED_DATA = Path(os.environ.get("DRDEMO_SHARED_DATA", Path(__file__).resolve().parents[1].parent / "shared" / "data"))
IDRID_GRADING = SHARED_DATA / "idrid" / "B. Disease Grading"
IDRID_SEGMENTATION = SHARED_DATA / "idrid" / "A. Segmentation"
IDRID_OVERLAP = SHARED_DATA / "idrid" / "segmentation_grading_overlap.csv"

REQUIRE_DATA = os.environ.get("DRDEMO_REQUIRE_DATA") == "1"


def skip_without_real_data(what: Path | None = None) -> None:
    """Skip the calling test when `what` (default: IDRiD's grading folder) is absent; fail under
    DRDEMO_REQUIRE_DATA=1."""
    what = IDRID_GRADING if what is None else what
    if what.exists():
        return
    message = f"the real photos are not on this machine ({what})"
    if REQUIRE_DATA:
        pytest.fail(f"{message}, and DRDEMO_REQUIRE_DATA=1 requires them")
    pytest.skip(message)


needs_real_data = pytest.mark.skipif(not IDRID_GRADING.is_dir() and not REQUIRE_DATA,
                                     reason=f"the real photos are not on this machine ({SHARED_DATA})")

DRIVE = SHARED_DATA / "drive"


def tiny_idrid(root: Path, per_grade: int = 3, side: int = 192) -> Path:
    """A small copy of IDRiD in its own layout: `per_grade` training photos of each grade and two test
    photos, downscaled to `side` px wide, and the two CSVs with the published quirks kept (the header
    line copied byte for byte). A temporary folder, never committed."""
    from drdemo.data import load_samples

    images, labels = root / "1. Original Images", root / "2. Groundtruths"
    labels.mkdir(parents=True)
    for part, folder, csv_name, take in (
            ("train", "a. Training Set", "a. IDRiD_Disease Grading_Training Labels.csv", per_grade),
            ("test", "b. Testing Set", "b. IDRiD_Disease Grading_Testing Labels.csv", 1)):
        samples = load_samples(IDRID_GRADING, part=part)
        chosen = [s for grade in range(5) for s in [x for x in samples if x.grade == grade][:take]]
        (images / folder).mkdir(parents=True)
        source_csv = next((IDRID_GRADING / "2. Groundtruths").glob(f"{csv_name[0]}.*.csv"))
        header = source_csv.read_bytes().split(b"\n", 1)[0] + b"\n"
        extra = b"," * (header.count(b",") - 2)   # the training CSV's empty trailing columns
        body = b"".join(f"{s.image_id},{s.grade},0".encode() + extra + b"\r\n" for s in chosen)
        (labels / csv_name).write_bytes(header + body + b"\r\n")
        for sample in chosen:
            with Image.open(sample.path) as photo:
                photo.resize((side, round(side * photo.height / photo.width))).save(images / folder / sample.path.name,
                                                                                   quality=92)
    return root


def tiny_segmentation(root: Path, count: int = 3, side: int = 192) -> Path:
    """The first `count` IDRiD segmentation photos with their lesion masks, downscaled alike (a box
    average above zero keeps every lesion, microaneurysms included)."""
    from drdemo.data.lesions import load_lesion_samples

    for sample in load_lesion_samples(IDRID_SEGMENTATION, part="train")[:count]:
        target = root / "1. Original Images" / "a. Training Set"
        target.mkdir(parents=True, exist_ok=True)
        with Image.open(sample.path) as photo:
            size = (side, round(side * photo.height / photo.width))
            photo.resize(size).save(target / sample.path.name, quality=92)
        for path in sample.masks.values():
            folder = path.parent.name
            out = root / "2. All Segmentation Groundtruths" / "a. Training Set" / folder
            out.mkdir(parents=True, exist_ok=True)
            with Image.open(path) as mask:  # a box average above 0: any lesion pixel under it keeps the pixel
                small = mask.convert("L").resize(size, Image.Resampling.BOX).point(lambda v: 255 if v else 0)
                small.convert("1").save(out / path.name)
    return root
