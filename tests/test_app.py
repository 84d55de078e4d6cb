"""The app over real HTTP: app.py runs on 127.0.0.1 (fixture in conftest.py), gradio_client calls
/grade, /compare and /batch, and a corpus of bad uploads gets specific answers without taking it down."""

import csv
import io
import struct
import urllib.request
import zlib
from pathlib import Path

import numpy as np
import pytest
from gradio_client import Client, handle_file
from PIL import Image

from drdemo.data.synthetic import generate_fundus

ROOT = Path(__file__).resolve().parents[1]
GRADES = {"No DR", "Mild NPDR", "Moderate NPDR", "Severe NPDR", "Proliferative DR"}


@pytest.fixture(scope="module")
def client(app_url):
    return Client(app_url, verbose=False)


@pytest.fixture(scope="module")
def fundus(tmp_path_factory) -> Image.Image:
    return Image.fromarray(generate_fundus(5, 2, size=384).image)


def _save(image: Image.Image, path: Path, **kwargs) -> Path:
    image.save(path, **kwargs)
    return path


def _probabilities(label: dict) -> dict[str, float]:
    confidences = {c["label"]: c["confidence"] for c in label["confidences"]}
    assert set(confidences) == GRADES
    assert abs(sum(confidences.values()) - 1) < 1e-4
    assert label["label"] == max(confidences, key=confidences.get)
    return confidences


def _dme_probabilities(label: dict) -> None:
    """The bundled checkpoints have three heads: a DME risk label with IDRiD's three levels."""
    confidences = {c["label"]: c["confidence"] for c in label["confidences"]}
    assert len(confidences) == 3 and all(name.startswith(("No DME", "DME risk")) for name in confidences)
    assert abs(sum(confidences.values()) - 1) < 1e-4


def test_the_lesion_map_is_a_heat_map_choice_and_the_verdict_gives_the_referral_reason(client, fundus, tmp_path):
    path = handle_file(str(_save(fundus, tmp_path / "eye.png")))
    text, _, _, _, pair, explanation, _, result = client.predict(path, "medmamba", "lesions", "predicted", 0.8, 0.01,
                                                                 False, api_name="/grade")
    assert "Lesion map" in explanation and "Refer: retinopathy" in text   # threshold 1%: referred for retinopathy
    assert "retinopathy" in result["referral_reasons"] and result["referable_threshold"] == 0.01
    # the grade named agrees with that referral, whatever the most probable grade is
    assert result["grade"] in ("Moderate NPDR", "Severe NPDR", "Proliferative DR")
    assert result["most_likely_grade"] == max(result["grade_probabilities"], key=result["grade_probabilities"].get)
    assert result["dme_risk"] in result["dme_probabilities"]
    original, drawn = (np.asarray(Image.open(p), float) for p in pair)
    assert original.shape == drawn.shape


def test_grade_takes_just_an_image(client, fundus, tmp_path):
    text, note, label, dme, pair, explanation, check, result = client.predict(
        handle_file(str(_save(fundus, tmp_path / "eye.jpeg"))), api_name="/grade")
    _probabilities(label)
    _dme_probabilities(dme)
    original, overlay = (Image.open(p) for p in pair)
    assert original.size == overlay.size and original.width >= 192
    assert np.abs(np.asarray(original, float) - np.asarray(overlay, float)).mean() > 5  # the heat map is drawn
    # the decision first, each probability beside its threshold, then the grade named and the check
    assert text.startswith("### MedMamba-T: ") and "P(grade ≥ 2)" in text and "P(DME risk 2)" in text
    assert text.index("P(grade ≥ 2)") < text.index("Grade: ") < text.index("**Image check:")
    assert " ms" in explanation and note.startswith("**Image check:") and note in text
    assert "Answered by MedMamba-T: `checkpoints/medmamba_t` (**a fallback**" in text
    assert result["answered_by"]["checkpoint"] == "checkpoints/medmamba_t" and result["answered_by"]["fallback"]
    assert set(result["grade_probabilities"]) == GRADES
    # the check's outcome beside the grade, its measured values and the model's own score in the details
    assert "rim step" not in text and "feature distance" not in text
    assert check.startswith("**Measured by the rules:** field of view:") and "rim step" in check
    assert "- MedMamba-T: feature distance" in check


def test_grade_options_change_the_answer_they_should(client, fundus, tmp_path):
    path = handle_file(str(_save(fundus, tmp_path / "eye.png")))
    text, _, _, _, pair, explanation, _, _ = client.predict(path, "inception", "hirescam", "4", 0.0, 0.05, True,
                                                            api_name="/grade")
    assert "InceptionV3" in text and 'HiResCAM for "Proliferative DR"' in explanation and "threshold 5%" in text
    assert "over 8 flips/rotations" in explanation
    original, overlay = (np.asarray(Image.open(p), float) for p in pair)
    assert np.abs(original - overlay).max() <= 1   # opacity 0: the overlay is the image itself


def test_compare_shows_both_models_and_their_agreement(client, fundus, tmp_path):
    (text, _, chart, second_chart, first, second, cam_first, cam_second, dme_first, dme_second, check,
     result) = client.predict(handle_file(str(_save(fundus, tmp_path / "eye.jpeg"))), api_name="/compare")
    _probabilities(first)
    _probabilities(second)
    _dme_probabilities(dme_first)
    _dme_probabilities(dme_second)
    assert Image.open(cam_first).size == Image.open(cam_second).size == (299, 299)   # one display size
    assert ("Same grade" in text or "Different grades" in text) and "Largest probability difference" in text
    assert "MedMamba-T" in text and "InceptionV3" in text and "rim step" not in text
    assert "- MedMamba-T: feature distance" in check and "- InceptionV3: feature distance" in check
    assert text.startswith("### MedMamba-T: ") and "### InceptionV3: " in text    # both decisions come first
    assert text.index("### InceptionV3") < text.index("Largest probability difference")
    rows = chart["data"]     # a table the browser draws (a bar mark), not a picture made on the server
    assert chart["mark"] == "bar" and {r[2] for r in rows} == {"MedMamba-T"}
    labelled = _probabilities(first)
    assert len(rows) == 5 and all(abs(labelled[name] - r[1]) < 1e-4 for name, r in zip(sorted(
        labelled, key=["No DR", "Mild NPDR", "Moderate NPDR", "Severe NPDR", "Proliferative DR"].index), rows))
    assert [m["model"] for m in result["models"]] == ["MedMamba-T", "InceptionV3"]


def test_batch_grades_a_zip_and_explains_refusals(client, fundus, tmp_path):
    import zipfile
    archive = tmp_path / "clinic.zip"
    with zipfile.ZipFile(archive, "w") as bundle:
        bundle.writestr("a.jpeg", _encode(fundus, "JPEG"))
        bundle.writestr("b.png", _encode(fundus.rotate(90), "PNG"))
        bundle.writestr("broken.jpeg", b"\xff\xd8\xff\xe0 not really")
    summary, csv_path, gallery = client.predict([handle_file(str(archive))], api_name="/batch")
    rows = list(csv.DictReader(open(csv_path, newline="")))
    assert [r["file"] for r in rows] == ["clinic.zip/a.jpeg", "clinic.zip/b.png", "clinic.zip/broken.jpeg"]
    assert rows[0]["medmamba_t_grade_name"] in GRADES and rows[1]["inception_v3_grade_name"] in GRADES
    assert rows[2]["notes"].startswith("refused:") and rows[2]["medmamba_t_grade"] == ""
    assert "Graded 2 of 3 images; 1 refused" in summary and len(gallery) >= 2
    assert rows[0]["medmamba_t_decision"] in ("refer", "do not refer") and "medmamba_t_referable" not in rows[0]
    header = next(line for line in summary.splitlines() if line.startswith("| file"))
    assert "MedMamba-T: decision" in header and "InceptionV3: decision" in header


def _encode(image: Image.Image, fmt: str, **kwargs) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **kwargs)
    return buffer.getvalue()


def _png_bomb(path: Path, side: int = 20000) -> Path:
    """A valid 1-bit PNG header declaring side x side pixels, with a tiny compressed body (never allocated here)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
    row = b"\0" + b"\0" * (side // 8)
    body = zlib.compress(row * 64, 9)  # only the first rows: enough for the header to be read
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", side, side, 1, 0, 0, 0, 0))
                     + chunk(b"IDAT", body) + chunk(b"IEND", b""))
    return path


def _bad_corpus(tmp_path: Path, fundus: Image.Image) -> list[tuple[str, Path, str]]:
    """(case, file, what the refusal must say)."""
    empty = tmp_path / "empty.jpeg"
    empty.write_bytes(b"")
    text = tmp_path / "notes.png"
    text.write_text("this is not an image")
    truncated = tmp_path / "truncated.jpeg"
    truncated.write_bytes(_encode(fundus, "JPEG")[:3000])
    tiny = _save(fundus.resize((40, 40)), tmp_path / "tiny.png")
    rng = np.random.default_rng(0)
    sky = np.zeros((300, 400, 3), np.uint8)
    sky[:150] = np.linspace([90, 150, 230], [170, 210, 250], 150)[:, None, :]   # blue sky
    sky[150:] = (rng.normal([60, 140, 50], 25, (150, 400, 3))).clip(0, 255)    # green grass
    landscape = _save(Image.fromarray(sky), tmp_path / "holiday.jpeg")
    blank = _save(Image.new("RGB", (500, 400), (255, 255, 255)), tmp_path / "blank.png")
    return [
        ("empty", empty, "empty"),
        ("not an image", text, "not an image"),
        ("truncated", truncated, "truncated"),
        ("too small", tiny, "too small"),
        ("decompression bomb", _png_bomb(tmp_path / "bomb.png"), "megapixels"),
        ("landscape photo", landscape, "does not look like a fundus photo"),
        ("blank frame", blank, "does not look like a fundus photo"),
    ]


def test_bad_uploads_get_specific_messages_and_the_app_stays_up(client, fundus, tmp_path):
    for case, path, message in _bad_corpus(tmp_path, fundus):
        text, note, label, *_, result = client.predict(handle_file(str(path)), api_name="/grade")
        assert text.startswith("### Not graded") and message in text and "Traceback" not in text, case
        assert note.startswith("**Image check: refused.**") and not label and result["graded"] is False, case
    text, *_ = client.predict(handle_file(str(tmp_path / "holiday.jpeg")), api_name="/compare")
    assert text.startswith("### Not graded") and "does not look like a fundus photo" in text
    _, _, label, *_ = client.predict(handle_file(str(_save(fundus, tmp_path / "after.jpeg"))), api_name="/grade")
    _probabilities(label)


def test_awkward_but_valid_fundus_files_are_graded(client, fundus, tmp_path):
    rotated = fundus.rotate(90, expand=True)
    exif = Image.Exif()
    exif[0x0112] = 6
    cases = {
        "exif-rotated.jpeg": _encode(rotated, "JPEG", exif=exif.tobytes()),
        "cmyk.jpeg": _encode(fundus.convert("CMYK"), "JPEG"),
        "rgba.png": _encode(fundus.convert("RGBA"), "PNG"),
        "palette.png": _encode(fundus.quantize(256), "PNG"),
        "png-named.jpg": _encode(fundus, "PNG"),
        "camera-file.jpeg": _encode(fundus.resize((3000, 3000)), "JPEG", quality=85),
    }
    for name, data in cases.items():
        path = tmp_path / name
        path.write_bytes(data)
        text, _, label, *_ = client.predict(handle_file(str(path)), api_name="/grade")
        _probabilities(label)
        assert "Grade: " in text, name


def test_page_says_what_it_serves_and_that_it_is_not_a_device(app_url):
    page = urllib.request.urlopen(app_url + "config", timeout=10).read().decode()
    assert "not a medical device" in page
    assert "cannot load drdemo/unreachable: http://127.0.0.1:9 could not be reached" in page
    if (ROOT / "checkpoints" / "medmamba_t" / "model.safetensors").is_file():
        from drdemo.checkpoint import read_config
        bundled = read_config(ROOT / "checkpoints" / "medmamba_t")
        assert "serving the bundled checkpoints/medmamba_t instead" in page
        assert ("cam_target_layer in config.json: MultiHeadNet has no submodule 'backbone.Mixed_6z'" in page
                and "did you mean 'backbone.Mixed_6e'" in page)          # loads, cannot explain: named, and fallen back
        assert "serving the bundled checkpoints/inception_v3 instead" in page
        if bundled.trained_on_idrid:       # the default since the real-data checkpoints
            assert "trained on photos of one camera from one hospital in India (IDRiD)" in page
            assert "Other cameras, populations and image quality were not validated" in page
            assert "IDRiD test photo" in page and "doi:10.21227/H25W98" in page     # the examples, attributed
        else:
            assert "trained only on synthetic fundus images" in page
    else:
        assert "no bundled checkpoint at checkpoints/medmamba_t; serving an UNTRAINED medmamba_t" in page
        assert "untrained" in page
    for tab in ("Grade", "Compare", "Batch", "About"):
        assert f'"label": "{tab}"' in page or f'"label":"{tab}"' in page
