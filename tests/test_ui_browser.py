"""A real browser (Debian's chromium driven by Playwright) uploads a fundus photo and reads the answer."""

import os
import shutil
from pathlib import Path

import pytest
from PIL import Image

from drdemo.data.synthetic import generate_fundus

CHROMIUM = os.environ.get("DRDEMO_CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")


def grade_in_browser(url: str, photo: Path, screenshot: Path) -> str:
    """Open the app, upload `photo` on the Grade tab, wait for the verdict, save a full-page
    screenshot; returns the verdict's text."""
    from playwright.sync_api import expect, sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=["--no-sandbox"])
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.goto(url)
            expect(page.get_by_text("not a medical device", exact=False).first).to_be_visible(timeout=30_000)
            page.locator("input[type=file]").first.set_input_files(str(photo))
            page.get_by_role("button", name="Grade", exact=True).click()
            verdict = page.locator("#verdict")
            expect(verdict).to_contain_text("probability", timeout=120_000)
            expect(verdict).to_contain_text("ms")
            page.screenshot(path=str(screenshot), full_page=True)
            return verdict.inner_text()
        finally:
            browser.close()


def _photo(folder: Path) -> Path:
    photo = folder / "fundus.jpeg"
    Image.fromarray(generate_fundus(11, 3, size=384).image).save(photo, quality=92)
    return photo


@pytest.mark.skipif(CHROMIUM is None, reason="needs Debian's chromium (apt install chromium); Playwright cannot "
                                              "download its own browser here")
def test_upload_grade_and_screenshot(app_url, tmp_path):
    screenshot = Path(os.environ.get("DRDEMO_SCREENSHOT", tmp_path / "screenshot.png"))
    verdict = grade_in_browser(app_url, _photo(tmp_path), screenshot)
    assert any(name in verdict for name in
               ("No DR", "Mild NPDR", "Moderate NPDR", "Severe NPDR", "Proliferative DR"))
    with Image.open(screenshot) as image:
        assert image.width >= 1000 and image.height >= 600


if __name__ == "__main__":  # PYTHONPATH=. python tests/test_ui_browser.py assets/screenshot.png [PHOTO]
    import sys
    import tempfile

    from drdemo.bench_app import start_app, wait_until_serving

    with tempfile.TemporaryDirectory() as tmp:
        app = start_app(Path(tmp))
        try:
            wait_until_serving(app)
            photo = Path(sys.argv[2]) if len(sys.argv) > 2 else _photo(Path(tmp))
            print(grade_in_browser(app.url, photo, Path(sys.argv[1])))
        finally:
            app.stop()
