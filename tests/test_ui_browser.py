"""A real browser (Debian's chromium driven by Playwright, at 1366 x 768) uploads a fundus photo, sees it at once,
grades it and reads the decision first, has an everyday photo refused on Grade and Compare, compares both models on
an example chosen by its thumbnail, grades a batch, and saves a screenshot of the Grade and Compare tabs."""

import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import pytest
from PIL import Image

from drdemo.data.synthetic import generate_fundus

CHROMIUM = os.environ.get("DRDEMO_CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
GRADES = ("No DR", "Mild NPDR", "Moderate NPDR", "Severe NPDR", "Proliferative DR")


EVERYDAY = Path(__file__).parent / "everyday" / "sweets_on_a_table.jpg"   # round things on a plain table
SCREEN = {"width": 1366, "height": 768}   # a common clinic laptop


@dataclass(frozen=True)
class BrowserRun:
    """What the browser saw."""

    grade_button_bottom: float         # the Grade button's lower edge on first view (CSS px from the top)
    verdict: str                       # the Grade tab's decision panel
    upload_note: str                   # the line under the photo after grading
    grade_order: tuple[float, ...]     # top of: decision, probabilities, heat map, lesion legend (CSS px)
    map_bottom_to_legend: float        # gap between the heat map and its legend
    everyday_grade: str                # the decision panel for an everyday photo, on Grade ...
    agreement: str                     # the Compare tab's decision panel
    compare_order: tuple[float, float]  # top of: decision, first chart
    chart_drawn: bool                  # the probability chart is drawn by the browser (svg or canvas)
    heat_map_boxes: tuple[dict, dict]  # the two Compare heat maps' displayed bounding boxes (CSS px)
    everyday_compare: str              # ... and on Compare
    batch_header: str                  # the Batch table's header row


def compare_screenshot_path(grade_screenshot: Path) -> Path:
    """assets/screenshot.png -> assets/screenshot_compare.png"""
    return grade_screenshot.with_name(f"{grade_screenshot.stem}_compare{grade_screenshot.suffix}")


def use_in_browser(url: str, photo: Path, screenshot: Path) -> BrowserRun:
    """Open the app at 1366 x 768; on Grade upload `photo`, grade it and save a full-page screenshot, then an
    everyday photo; on Compare pick the first example by its thumbnail, compare and save a second screenshot,
    then the everyday photo; on Batch grade both photos."""
    from playwright.sync_api import expect, sync_playwright

    def top(selector: str) -> float:
        return page.locator(selector).first.bounding_box()["y"]

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=["--no-sandbox"])
        try:
            page = browser.new_page(viewport=SCREEN)

            def fresh_page() -> None:
                page.goto(url)
                expect(page.get_by_text("not a medical device", exact=False).first).to_be_visible(timeout=30_000)

            fresh_page()
            button = page.get_by_role("button", name="Grade", exact=True)
            box = button.bounding_box()
            button_bottom = box["y"] + box["height"]

            page.locator("#grade-file input[type=file]").set_input_files(str(photo))
            expect(page.locator("#grade-preview img")).to_be_visible(timeout=60_000)   # shown before grading
            expect(page.locator("#grade-check")).to_contain_text("Image check", timeout=30_000)
            button.click()
            verdict = page.locator("#verdict")
            expect(verdict).to_contain_text("Grade: ", timeout=120_000)
            expect(page.locator("#explanation")).to_contain_text("ms")
            expect(page.get_by_text("Referral line").first).to_be_visible()
            verdict_text, note = verdict.inner_text(), page.locator("#grade-check").inner_text()
            order = tuple(top(s) for s in ("#verdict", "#grade-probabilities", "#grade-maps", "#lesion-legend"))
            maps = page.locator("#grade-maps").bounding_box()
            gap = top("#lesion-legend") - (maps["y"] + maps["height"])
            page.screenshot(path=str(screenshot), full_page=True)

            fresh_page()    # a new visit: the upload box is empty again
            page.locator("#grade-file input[type=file]").set_input_files(str(EVERYDAY))
            expect(page.locator("#grade-check")).to_contain_text("Image check", timeout=30_000)
            button.click()
            expect(page.locator("#verdict")).to_contain_text("Not graded", timeout=120_000)
            everyday_grade = page.locator("#verdict").inner_text()

            fresh_page()
            page.get_by_role("tab", name="Compare").click()
            page.locator("#compare-examples img").first.click()
            expect(page.locator("#compare-preview img")).to_be_visible(timeout=60_000)
            compare_button = page.get_by_role("button", name="Compare both models")
            compare_button.click()
            agreement = page.locator("#agreement")
            expect(agreement).to_contain_text("grade", timeout=180_000)
            chart = page.locator("#compare-chart-a")
            expect(chart.locator("svg, canvas").first).to_be_visible(timeout=30_000)
            cams = [page.locator(f"#compare-cam-{side} img") for side in ("a", "b")]
            for cam in cams:
                expect(cam).to_be_visible(timeout=30_000)
            agreement_text = agreement.inner_text()
            compare_order = (top("#agreement"), top("#compare-chart-a"))
            boxes = tuple(cam.bounding_box() for cam in cams)
            page.screenshot(path=str(compare_screenshot_path(screenshot)), full_page=True)

            fresh_page()
            page.get_by_role("tab", name="Compare").click()
            page.locator("#compare-file input[type=file]").set_input_files(str(EVERYDAY))
            expect(page.locator("#compare-check")).to_contain_text("Image check", timeout=30_000)
            page.get_by_role("button", name="Compare both models").click()
            expect(page.locator("#agreement")).to_contain_text("Not graded", timeout=120_000)
            everyday_compare = page.locator("#agreement").inner_text()

            fresh_page()
            page.get_by_role("tab", name="Batch").click()
            page.locator("#batch-files input[type=file]").set_input_files([str(photo), str(EVERYDAY)])
            page.get_by_role("button", name="Grade all").click()
            summary = page.locator("#batch-summary")
            expect(summary).to_contain_text("Graded", timeout=180_000)
            header = summary.locator("table tr").first.inner_text()
            return BrowserRun(button_bottom, verdict_text, note, order, gap, everyday_grade, agreement_text,
                              compare_order, True, boxes, everyday_compare, header)
        finally:
            browser.close()


def _photo(folder: Path) -> Path:
    photo = folder / "fundus.jpeg"
    Image.fromarray(generate_fundus(11, 3, size=384).image).save(photo, quality=92)
    return photo


@pytest.mark.skipif(CHROMIUM is None, reason="needs Debian's chromium (apt install chromium); Playwright cannot "
                                              "download its own browser here")
def test_the_page_a_clinician_sees(app_url, tmp_path):
    screenshot = tmp_path / "screenshot.png"   # the README's come from __main__ below: an app without fallbacks
    run = use_in_browser(app_url, _photo(tmp_path), screenshot)
    assert run.grade_button_bottom <= SCREEN["height"]          # Grade is reachable without scrolling
    # the decision first: refer or not, and why, then each probability beside its threshold
    first_line = run.verdict.splitlines()[0]
    assert first_line.startswith("MedMamba-T: ") and ("Refer" in first_line or "Do not refer" in first_line)
    assert "P(grade ≥ 2)" in run.verdict and "threshold" in run.verdict and "Grade: " in run.verdict
    assert not any(first_line.endswith(name) for name in GRADES)  # the heading is never a grade
    assert run.grade_order == tuple(sorted(run.grade_order))    # decision, probabilities, heat map, legend
    assert 0 <= run.map_bottom_to_legend <= 60                  # the legend sits right under the map
    assert run.upload_note.startswith("Image check:") and run.upload_note in run.verdict
    assert run.everyday_grade.startswith("Not graded") and run.everyday_compare.startswith("Not graded")
    assert "MedMamba-T: " in run.agreement.splitlines()[0] and "InceptionV3: " in run.agreement
    assert run.compare_order[0] < run.compare_order[1]           # both decisions above the charts
    first, second = run.heat_map_boxes
    assert abs(first["width"] - second["width"]) <= 1 and abs(first["height"] - second["height"]) <= 1
    assert "MedMamba-T: decision" in run.batch_header and "InceptionV3: decision" in run.batch_header
    for path in (screenshot, compare_screenshot_path(screenshot)):
        with Image.open(path) as image:
            assert image.width >= 1000 and image.height >= 600


if __name__ == "__main__":  # PYTHONPATH=. python tests/test_ui_browser.py assets/screenshot.png [PHOTO]
    import sys
    import tempfile

    from benchmarks.app_process import start_app, wait_until_serving

    with tempfile.TemporaryDirectory() as tmp:
        app = start_app(Path(tmp))
        try:
            wait_until_serving(app)
            photo = Path(sys.argv[2]) if len(sys.argv) > 2 else _photo(Path(tmp))
            print(use_in_browser(app.url, photo, Path(sys.argv[1])))
        finally:
            app.stop()
