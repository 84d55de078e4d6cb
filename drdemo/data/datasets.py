"""Public fundus data sets on disk -> a sorted list of `Sample`s, and a torch Dataset over them.

Layouts, tried in this order by `detect_layout` (the first that fits wins):

    synthetic    generator.json + labels.csv (image,level) + images/     drdemo.data.synthetic's output
    eyepacs      a CSV with columns image,level (trainLabels.csv preferred); ids without extension,
                 images in train/, images/ or the folder itself            Kaggle EyePACS 2015
    aptos        a CSV with columns id_code,diagnosis (train.csv preferred); images in train_images/,
                 images/ or the folder itself                              APTOS 2019
    idrid        IDRiD's "B. Disease Grading" folder: 1. Original Images/{a. Training Set,b. Testing Set}/
                 and 2. Groundtruths/*.csv (Image name,Retinopathy grade,...; the header's trailing
                 space and the empty trailing columns as published)          IDRiD 2018
    imagefolder  subfolders 0 .. 4 (any of them) named after the ICDR grade, images inside

A layout with an official split (IDRiD's training and testing sets) has `PARTS`; `load_samples`
then needs `part` ("train" or "test"), so no caller mixes test photos into training by default.

The patient id groups a person's two eyes so that a split never puts them in different parts:
EyePACS-style ids `<patient>_left` / `<patient>_right` give `<patient>`; other ids are their own patient.

Over 400 lines because the five layouts' detection and loading rules are one table read top to
bottom: they share the CSV reader, the image index and the messages that say what a folder lacks.
"""

from __future__ import annotations

import csv
import json
import logging
import os
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from PIL import Image
from torch.utils.data import Dataset

from drdemo.errors import DrdemoError
from drdemo.intake.decode import read_image
from drdemo.tasks import DME_RISKS, NUM_GRADES, num_classes, task_target

log = logging.getLogger(__name__)

LAYOUTS = ("synthetic", "idrid", "eyepacs", "aptos", "imagefolder")
# Where IDRiD's photos come from, as a reader of a number measured on them needs it.
IDRID_CAMERA = "one Kowa VX-10 alpha camera (50 degree field) at one hospital, Aravind Eye Hospital in Nanded, India"
IDRID_CITATION = "IDRiD: Porwal et al., IEEE Dataport 2018, doi:10.21227/H25W98, CC BY 4.0"
# What CC BY 4.0 asks us to print wherever IDRiD photos, or weights trained on them, are shown.
IDRID_ATTRIBUTION = ("Prasanna Porwal, Samiksha Pachade, Ravi Kamble, Manesh Kokare, Girish Deshmukh, Vivek "
                     "Sahasrabuddhe, Fabrice Meriaudeau, \"Indian Diabetic Retinopathy Image Dataset (IDRiD)\", IEEE "
                     "Dataport, 2018, doi:10.21227/H25W98, licensed CC BY 4.0 "
                     "(https://creativecommons.org/licenses/by/4.0/).")
# Official parts of the layouts that have them: part -> the word naming it in folder and CSV names.
PARTS: dict[str, dict[str, str]] = {"idrid": {"train": "training", "test": "testing"}}
# Preference when one id has files with several extensions; compared case-insensitively.
IMAGE_EXTENSIONS = (".jpeg", ".jpg", ".png", ".tif", ".tiff")

_EYE_SUFFIX = re.compile(r"^(?P<patient>.+)_(?:left|right)$", re.IGNORECASE)
_INTEGER = re.compile(r"^[+-]?\d+$")
_GENERATOR_FILE = "generator.json"
IDRID_IMAGES = "1. Original Images"
_IDRID_LABELS = "2. Groundtruths"
IDRID_SEGMENTATION_LABELS = "2. All Segmentation Groundtruths"
_SYNTHETIC_CSV = "labels.csv"


class DatasetError(DrdemoError, ValueError):
    """A data folder that cannot be used; the message names the file and the fix."""


@dataclass(frozen=True)
class Sample:
    """One graded fundus image."""

    image_id: str
    path: Path
    grade: int
    patient: str
    dme: int | None = None   # IDRiD's risk of macular oedema (0-2), where the data set grades it


@dataclass(frozen=True)
class _CsvLayout:
    id_column: str
    label_column: str
    preferred_csv: str
    image_dirs: tuple[str, ...]  # searched in this order; "." is the data folder itself
    dme_column: str | None = None  # the risk of macular oedema, where the layout has it


_CSV_LAYOUTS = {
    "synthetic": _CsvLayout("image", "level", _SYNTHETIC_CSV, ("images",)),
    "eyepacs": _CsvLayout("image", "level", "trainLabels.csv", ("train", "images", ".")),
    "aptos": _CsvLayout("id_code", "diagnosis", "train.csv", ("train_images", "images", ".")),
    "idrid": _CsvLayout("image name", "retinopathy grade", "", (),  # files found per part, see _idrid_files
                        dme_column="risk of macular edema"),
}

_NEEDS = {
    "synthetic": f"{_GENERATOR_FILE} from drdemo.data.synthetic, {_SYNTHETIC_CSV} (image,level) and images/",
    "eyepacs": "a CSV with columns image,level (e.g. trainLabels.csv) and the images in train/, images/ or the folder",
    "aptos": "a CSV with columns id_code,diagnosis (e.g. train.csv) and the images in train_images/, images/ "
             "or the folder",
    "idrid": f"IDRiD's disease grading folder ('B. Disease Grading'): {IDRID_IMAGES}/ with the training and "
             f"testing image folders, and {_IDRID_LABELS}/ with their CSVs (Image name,Retinopathy grade)",
    "imagefolder": "subfolders named 0 to 4 (the ICDR grade) holding the images",
}


def patient_of(image_id: str) -> str:
    """The patient an image belongs to: `10_left` and `10_right` -> `10`; other ids are their own patient."""
    match = _EYE_SUFFIX.match(image_id)
    return match.group("patient") if match else image_id


def class_counts(samples: Iterable[Sample], task: str) -> list[int]:
    """Samples per class of `task` (zeros included), for class weights and reports."""
    counts = [0] * num_classes(task)
    for sample in samples:
        counts[task_target(sample.grade, task)] += 1
    return counts


# ---------------------------------------------------------------------------------------------- detection

def _csv_header(path: Path) -> list[str] | None:
    """The lower-cased, stripped column names of a CSV, or None when it cannot be read."""
    try:
        with open(path, newline="", encoding="utf-8-sig") as handle:
            row = next(csv.reader(handle), None)
    except (OSError, UnicodeDecodeError, csv.Error):
        return None
    return [name.strip().lower() for name in row] if row else None


def _find_csv(root: Path, layout: _CsvLayout) -> Path | None:
    """The CSV of `root` that has the layout's two columns; the layout's usual file name first."""
    candidates = sorted(p for p in root.glob("*.csv") if p.is_file())
    candidates.sort(key=lambda p: p.name != layout.preferred_csv)  # stable: preferred name, then by name
    for path in candidates:
        header = _csv_header(path)
        if header and layout.id_column in header and layout.label_column in header:
            return path
    return None


def generator_info(root: Path) -> dict | None:
    """The settings drdemo.data.synthetic wrote into `root`'s generator.json (n, seed, size,
    class_balance, version, ...), or None for a folder it did not make."""
    path = Path(root) / _GENERATOR_FILE
    return json.loads(path.read_text()) if path.is_file() else None


def _is_synthetic(root: Path) -> bool:
    return (root / _GENERATOR_FILE).is_file() and (root / _SYNTHETIC_CSV).is_file()


def _grade_dirs(root: Path) -> list[Path]:
    return [root / str(grade) for grade in range(NUM_GRADES) if (root / str(grade)).is_dir()]


def _check_root(root: Path | str) -> Path:
    root = Path(root)
    if not root.exists():
        raise DatasetError(f"{root}: no such folder; pass the folder that holds the data set")
    if not root.is_dir():
        raise DatasetError(f"{root}: not a folder; pass the folder that holds the data set, not a file in it")
    return root


def _describe_entry(path: Path) -> str:
    if path.is_dir():
        return path.name + "/"
    if path.suffix.lower() == ".csv":
        header = _csv_header(path)
        return f"{path.name} (columns {','.join(header)})" if header else f"{path.name} (unreadable or empty)"
    return path.name


def _describe_contents(root: Path) -> str:
    entries = sorted(os.listdir(root))
    if not entries:
        return "the folder is empty"
    shown = [_describe_entry(root / name) for name in entries[:12]]
    more = f" and {len(entries) - 12} more" if len(entries) > 12 else ""
    return "found " + ", ".join(shown) + more


def _is_idrid_grading(root: Path) -> bool:
    labels = root / _IDRID_LABELS
    return (root / IDRID_IMAGES).is_dir() and labels.is_dir() and _find_csv(labels, _CSV_LAYOUTS["idrid"]) is not None


def is_idrid_segmentation(root: Path) -> bool:
    """IDRiD's "A. Segmentation" folder: photos and lesion masks, no grades (drdemo.data.lesions reads it)."""
    return (root / IDRID_IMAGES).is_dir() and (root / IDRID_SEGMENTATION_LABELS).is_dir()


def detect_layout(root: Path | str) -> str:
    """Which of `LAYOUTS` a data folder follows; precedence synthetic > idrid > eyepacs > aptos > imagefolder."""
    root = _check_root(root)
    if _is_synthetic(root):
        return "synthetic"
    if _is_idrid_grading(root):
        return "idrid"
    if is_idrid_segmentation(root):
        raise DatasetError(f"{root} is IDRiD's segmentation set: it has lesion masks but no grades, so it can "
                           "score heat maps (python -m drdemo.evaluate cams) but not grade; for grading pass "
                           "the 'B. Disease Grading' folder")
    if (root / "B. Disease Grading").is_dir():
        raise DatasetError(f"{root} holds IDRiD's parts: pass {root / 'B. Disease Grading'} (grades) or "
                           f"{root / 'A. Segmentation'} (lesion masks, for heat maps)")
    for name in ("eyepacs", "aptos"):
        if _find_csv(root, _CSV_LAYOUTS[name]) is not None:
            return name
    if _grade_dirs(root):
        return "imagefolder"
    needs = "; ".join(f"{name}: {what}" for name, what in _NEEDS.items())
    raise DatasetError(f"{root}: no known data set layout ({_describe_contents(root)}). Each layout needs - {needs}")


# ---------------------------------------------------------------------------------------------- loading

def _is_image(name: str) -> bool:
    return os.path.splitext(name)[1].lower() in IMAGE_EXTENSIONS


def _image_index(folder: Path) -> dict[str, Path]:
    """stem -> path of the images directly in `folder`; the preferred extension wins a tie."""
    rank = {ext: i for i, ext in enumerate(IMAGE_EXTENSIONS)}
    index: dict[str, Path] = {}
    with os.scandir(folder) as entries:
        for entry in sorted(entries, key=lambda e: (rank.get(os.path.splitext(e.name)[1].lower(), 99), e.name)):
            stem, ext = os.path.splitext(entry.name)
            if ext.lower() in rank and entry.is_file() and stem not in index:
                index[stem] = Path(entry.path)
    return index


def _parse_grade(text: str | None, where: str) -> int:
    if text is None or not _INTEGER.match(text.strip()):
        raise DatasetError(f"{where}: grade {text!r} is not an integer; ICDR grades are 0 to 4")
    grade = int(text.strip())
    if not 0 <= grade < NUM_GRADES:
        raise DatasetError(f"{where}: grade {grade} is outside 0 to 4 (the ICDR scale); fix or remove the row")
    return grade


def _parse_dme(text: str | None, where: str) -> int:
    if text is None or not _INTEGER.match(text.strip()) or not 0 <= int(text.strip()) < len(DME_RISKS):
        raise DatasetError(f"{where}: risk of macular oedema {text!r} is not 0, 1 or 2")
    return int(text.strip())


def _read_labels(path: Path, layout: _CsvLayout) -> list[tuple[str, int, int | None]]:
    """(image id, grade, DME risk or None) rows of a labels CSV, checked: integer grades 0-4, DME risks
    0-2 where the layout has them, no empty or duplicate ids."""
    rows: list[tuple[str, int, int | None]] = []
    first_line: dict[str, int] = {}
    try:
        with open(path, newline="", encoding="utf-8-sig") as handle:
            reader = csv.reader(handle)
            header = [name.strip().lower() for name in next(reader, [])]
            if layout.id_column not in header or layout.label_column not in header:
                raise DatasetError(f"{path}: needs columns {layout.id_column},{layout.label_column}; "
                                   f"the header is {','.join(header) or '(empty)'}")
            id_at, label_at = header.index(layout.id_column), header.index(layout.label_column)
            dme_at = header.index(layout.dme_column) if layout.dme_column in header else None
            for row in reader:
                if not any(cell.strip() for cell in row):
                    continue  # blank line
                where = f"{path}, line {reader.line_num}"
                if len(row) <= max(id_at, label_at):
                    raise DatasetError(f"{where}: {len(row)} fields, expected {len(header)} as in the header")
                image_id = row[id_at].strip()
                if _is_image(image_id):
                    image_id = os.path.splitext(image_id)[0]  # tolerate `10_left.jpeg` for `10_left`
                if not image_id:
                    raise DatasetError(f"{where}: empty {layout.id_column}")
                grade = _parse_grade(row[label_at], where)
                dme = _parse_dme(row[dme_at] if dme_at < len(row) else None, where) if dme_at is not None else None
                if image_id in first_line:
                    raise DatasetError(f"{where}: duplicate id {image_id!r} (first on line {first_line[image_id]}); "
                                       "each image must be listed once")
                first_line[image_id] = reader.line_num
                rows.append((image_id, grade, dme))
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise DatasetError(f"{path}: cannot read the labels CSV ({exc}); it must be UTF-8 text with a header "
                           f"row {layout.id_column},{layout.label_column}") from exc
    return rows


def named_entry(folder: Path, word: str, directories: bool = True) -> Path | None:
    """The one entry of `folder` (a subfolder, or a CSV file) whose name holds `word`, case-insensitively, as
    IDRiD names its parts ("a. Training Set") and lesion folders ("1. Microaneurysms"); None when there is
    none or `folder` is absent."""
    if not folder.is_dir():
        return None
    matches = sorted(p for p in folder.iterdir() if word in p.name.lower()
                     and (p.is_dir() if directories else p.suffix.lower() == ".csv" and p.is_file()))
    if len(matches) > 1:
        raise DatasetError(f"{folder}: {', '.join(m.name for m in matches)} all match '{word}'; keep one")
    return matches[0] if matches else None


def _idrid_files(root: Path, part: str) -> tuple[Path, list[Path]]:
    """(labels CSV, image folders) of one IDRiD part, found by the word in their names ("training")."""
    word = PARTS["idrid"][part]
    csv_path = named_entry(root / _IDRID_LABELS, word, directories=False)
    images = named_entry(root / IDRID_IMAGES, word, directories=True)
    if csv_path is None or images is None:
        raise DatasetError(f"{root}: the {part} part needs a CSV in {_IDRID_LABELS}/ and a folder in "
                           f"{IDRID_IMAGES}/ whose names contain '{word}'; found "
                           f"{csv_path.name if csv_path else 'no CSV'} and {images.name if images else 'no folder'}")
    return csv_path, [images]


def _load_csv_layout(root: Path, name: str, part: str | None = None) -> list[Sample]:
    layout = _CSV_LAYOUTS[name]
    if name == "idrid":
        csv_path, folders = _idrid_files(root, part)
    else:
        csv_path = root / _SYNTHETIC_CSV if name == "synthetic" else _find_csv(root, layout)
        if csv_path is None:  # an unreadable file of the usual name: let _read_labels say what is wrong with it
            csv_path = root / layout.preferred_csv
        if not csv_path.is_file():
            raise DatasetError(f"{root}: not a {name} data set; it needs {_NEEDS[name]}")
        folders = [root if d == "." else root / d for d in layout.image_dirs]
    rows = _read_labels(csv_path, layout)
    indexes = [_image_index(folder) for folder in folders if folder.is_dir()]
    samples, missing = [], []
    for image_id, grade, dme in rows:
        path = next((index[image_id] for index in indexes if image_id in index), None)
        if path is None:
            missing.append(image_id)
        else:
            samples.append(Sample(image_id, path, grade, patient_of(image_id), dme))
    if missing:
        looked = ", ".join(str(f) for f in folders)
        raise DatasetError(f"{csv_path}: {len(missing)} listed image(s) not found, e.g. "
                           f"{', '.join(missing[:3])}; looked for <id>{{{','.join(IMAGE_EXTENSIONS)}}} in {looked}")
    unlisted = sum(len(index) for index in indexes) - len(samples)
    if unlisted > 0:
        log.info("%s: ignoring %d image(s) not listed in %s", root, unlisted, csv_path.name)
    return samples


def _load_imagefolder(root: Path) -> list[Sample]:
    grade_names = {str(grade) for grade in range(NUM_GRADES)}
    others = sorted(p.name for p in root.iterdir() if p.is_dir() and p.name not in grade_names
                    and not p.name.startswith("."))
    if others:
        raise DatasetError(f"{root}: subfolders {', '.join(others)} are not ICDR grades; an image-folder data set "
                           "has only subfolders 0 to 4 - move or remove the others")
    samples: list[Sample] = []
    seen: dict[str, Path] = {}
    for folder in _grade_dirs(root):
        for path in sorted(p for p in folder.iterdir() if _is_image(p.name) and p.is_file()):
            if path.stem in seen:
                raise DatasetError(f"{seen[path.stem]} and {path}: the same image id {path.stem!r} twice; "
                                   "ids must be unique")
            seen[path.stem] = path
            samples.append(Sample(path.stem, path, int(folder.name), patient_of(path.stem)))
    return samples


def check_part(layout: str, part: str | None) -> str | None:
    """`part` checked against the layout's official parts: required where there are some, refused where not."""
    parts = PARTS.get(layout)
    if parts is None:
        if part is not None:
            raise DatasetError(f"the {layout} layout has no official parts, so part {part!r} means nothing; "
                               "make a split with python -m drdemo.data.split")
        return None
    if part not in parts:
        raise DatasetError(f"the {layout} data set has an official split: choose part {' or '.join(parts)} "
                           f"(got {part!r})")
    return part


def load_samples(root: Path | str, layout: str | None = None, part: str | None = None) -> list[Sample]:
    """Every graded image of a data folder (of one official `part`, where the layout has parts),
    sorted by image id; `layout` None detects it."""
    root = _check_root(root)
    if layout is None:
        layout = detect_layout(root)
    elif layout not in LAYOUTS:
        raise DatasetError(f"unknown layout {layout!r}; choose from {', '.join(LAYOUTS)}")
    part = check_part(layout, part)
    samples = _load_imagefolder(root) if layout == "imagefolder" else _load_csv_layout(root, layout, part)
    if not samples:
        raise DatasetError(f"{root}: the {layout} data set has no images; it needs {_NEEDS[layout]}")
    return sorted(samples, key=lambda s: s.image_id)


# ---------------------------------------------------------------------------------------------- torch

# File names of the masks that ungraded vessel data sets keep beside their photos (CHASE_DB1's
# Image_01L_1stHO.png, DRIVE's 21_manual1.gif), and the folders DRIVE keeps them in.
_MASK_NAME = re.compile(r"_(?:1st|2nd)HO$|_manual\d$|_mask$", re.IGNORECASE)
_MASK_FOLDERS = {"1st_manual", "2nd_manual", "mask", "masks", "manual"}


def load_photos(root: Path | str) -> list[Sample]:
    """The photos of an ungraded folder (DRIVE, CHASE_DB1, or any folder of fundus photos), found
    recursively, vessel and field-of-view masks left out; grade -1 marks "not graded"."""
    root = _check_root(root)
    photos = []
    for path in sorted(root.rglob("*")):
        relative = path.relative_to(root)
        if (path.is_file() and _is_image(path.name) and not _MASK_NAME.search(path.stem)
                and not _MASK_FOLDERS.intersection(part.lower() for part in relative.parts[:-1])):
            image_id = "/".join(relative.with_suffix("").parts)
            photos.append(Sample(image_id, path, -1, image_id))
    if not photos:
        raise DatasetError(f"{root}: no photos found ({_describe_contents(root)})")
    return photos


def open_image(path: Path | str) -> Image.Image:
    """An upright RGB image from a file, decoded as the app decodes an upload (drdemo.intake.decode); a file
    that cannot be decoded raises DatasetError."""
    try:
        rgb = read_image(path)
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
        raise DatasetError(f"{path}: cannot read the image ({exc}); replace the file or remove it "
                           "from the labels") from exc
    return rgb


class FundusDataset(Dataset):
    """(transform(RGB image), class index) per sample; `.targets` holds every class index, for samplers."""

    def __init__(self, samples: Sequence[Sample], transform: Callable | None = None, task: str = "icdr5"):
        num_classes(task)  # an unknown task fails here, not at the first item
        self.samples = list(samples)
        self.transform = transform
        self.task = task
        self.targets = [task_target(sample.grade, task) for sample in self.samples]

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int):
        image = open_image(self.samples[index].path)
        return (self.transform(image) if self.transform is not None else image), self.targets[index]
