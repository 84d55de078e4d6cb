"""A real browser (Debian's chromium driven by Playwright) uploads a fundus photo, sees it at once, grades
it, compares both models on an example chosen by its thumbnail, and saves a screenshot of each tab."""

import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import pytest
from PIL import Image

from drdemo.data.synthetic import generate_fundus

CHROMIUM = os.environ.get("DRDEMO_CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
GRADES = ("No DR", "Mild NPDR", "Moderate NPDR", "Severe NPDR", "Proliferative DR")


@dataclass(frozen=True)
class BrowserRun:
    """What the browser saw."""

    verdict: str                       # the Grade tab's verdict text
    agreement: str                     # the Compare tab's agreement line
    heat_map_boxes: tuple[dict, dict]  # the two Compare heat maps' displayed bounding boxes (CSS px)


def compare_screenshot_path(grade_screenshot: Path) -> Path:
    """assets/screenshot.png -> assets/screenshot_compare.png"""
    return grade_screenshot.with_name(f"{grade_screenshot.stem}_compare{grade_screenshot.suffix}")


def use_in_browser(url: str, photo: Path, screenshot: Path) -> BrowserRun:
    """Open the app; on Grade upload `photo`, wait for its preview, grade it and save a full-page
    screenshot; on Compare pick the first example by its thumbnail, wait for its preview, compare and
    save a second screenshot beside the first."""
    from playwright.sync_api import expect, sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=["--no-sandbox"])
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.goto(url)
            expect(page.get_by_text("not a medical device", exact=False).first).to_be_visible(timeout=30_000)

            page.locator("#grade-file input[type=file]").set_input_files(str(photo))
            expect(page.locator("#grade-preview img")).to_be_visible(timeout=60_000)   # shown before grading
            expect(page.locator("#grade-check")).to_contain_text("Image check", timeout=30_000)
            page.get_by_role("button", name="Grade", exact=True).click()
            verdict = page.locator("#verdict")
            expect(verdict).to_contain_text("probability", timeout=120_000)
            expect(verdict).to_contain_text("ms")
            expect(page.get_by_text("Referral line").first).to_be_visible()
            page.screenshot(path=str(screenshot), full_page=True)
            verdict_text = verdict.inner_text()

            page.get_by_role("tab", name="Compare").click()
            page.locator("#compare-examples img").first.click()
            expect(page.locator("#compare-preview img")).to_be_visible(timeout=60_000)
            page.get_by_role("button", name="Compare both models").click()
            agreement = page.locator("#agreement")
            expect(agreement).to_contain_text("grade", timeout=180_000)
            expect(page.locator("#compare-chart img")).to_be_visible(timeout=30_000)
            cams = [page.locator(f"#compare-cam-{side} img") for side in ("a", "b")]
            for cam in cams:
                expect(cam).to_be_visible(timeout=30_000)
            page.screenshot(path=str(compare_screenshot_path(screenshot)), full_page=True)
            return BrowserRun(verdict_text, agreement.inner_text(), tuple(cam.bounding_box() for cam in cams))
        finally:
            browser.close()


def _photo(folder: Path) -> Path:
    photo = folder / "fundus.jpeg"
    Image.fromarray(generate_fundus(11, 3, size=384).image).save(photo, quality=92)
    return photo


@pytest.mark.skipif(CHROMIUM is None, reason="needs Debian's chromium (apt install chromium); Playwright cannot "
                                              "download its own browser here")
def test_upload_preview_grade_compare_and_screenshots(app_url, tmp_path):
    screenshot = Path(os.environ.get("DRDEMO_SCREENSHOT", tmp_path / "screenshot.png"))
    run = use_in_browser(app_url, _photo(tmp_path), screenshot)
    assert any(name in run.verdict for name in GRADES) and "MedMamba-T" in run.verdict
    assert "MedMamba-T" in run.agreement and "InceptionV3" in run.agreement
    first, second = run.heat_map_boxes
    assert abs(first["width"] - second["width"]) <= 1 and abs(first["height"] - second["height"]) <= 1
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
