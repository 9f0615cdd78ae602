"""The app in real Chromium (Debian's /usr/bin/chromium driven by Playwright; never `playwright install`).

``DPHYPER_SCREENSHOT=docs/app.png python -m pytest tests/test_browser.py`` also writes the
README's screenshot.
"""

import os
import shutil

import pytest

from dphyper.config import EXAMPLES_DIR

from .test_app import app_module, app_url  # noqa: F401  (fixtures)
from .test_hypernet import needs_models

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
pytestmark = [pytest.mark.browser,
              pytest.mark.skipif(not shutil.which("chromium"), reason="apt-get install chromium")]
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", "--no-first-run"]
MARKER_JS = "() => { const p = document.querySelectorAll('.js-plotly-plot')[0]; " \
            "return p && p.layout && p.layout.shapes && p.layout.shapes.length ? p.layout.shapes[0].x0 : null; }"


@pytest.fixture(scope="module")
def page(app_url):  # noqa: F811
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        pg = browser.new_page(viewport={"width": 1400, "height": 1000})
        pg.goto(app_url)
        pg.wait_for_selector("text=dphyper", timeout=30000)
        yield pg
        browser.close()


@needs_models
def test_upload_folder_move_slider_run_and_compare(page, tmp_path):
    folder = tmp_path / "my_trousers"
    folder.mkdir()
    for p in sorted((EXAMPLES_DIR / "trousers").glob("*.png"))[:40]:
        shutil.copy(p, folder / p.name)
    (folder / "notes.txt").write_text("not an image")
    page.get_by_text("…or upload your own").click()
    page.locator("input[webkitdirectory]").set_input_files(str(folder))
    page.wait_for_selector("text=40 images", timeout=60000)
    assert page.get_by_text("notes.txt").count() >= 1  # the rejected file is listed with its reason

    # The epsilon slider moves the marker on the privacy-utility plot and the explanation.
    page.wait_for_function(f"() => ({MARKER_JS})() !== null", timeout=30000)
    before = page.evaluate(MARKER_JS)
    summary_before = page.locator("text=Noise multiplier").first.inner_text()
    slider = page.locator("input[type=range]").first
    slider.focus()
    for _ in range(6):
        page.keyboard.press("ArrowLeft")  # log10 eps 0 -> -0.3
    target = 10 ** -0.3
    page.wait_for_function(f"() => Math.abs(({MARKER_JS})() - {target}) < 1e-3", timeout=10000)
    assert page.evaluate(MARKER_JS) != before
    assert page.locator("text=Noise multiplier").first.inner_text() != summary_before

    page.get_by_role("button", name="Hypernetwork (seconds)").click()
    page.wait_for_selector("text=Total spent on this dataset", timeout=90000)
    page.wait_for_selector("text=Base model (no fine-tuning", timeout=60000)
    galleries = page.locator("[data-testid='gallery'], .gallery, .grid-wrap")
    imgs = page.locator("img[src*='/file='], img[src*='gradio_api/file']")
    assert imgs.count() >= 32, f"{imgs.count()} gallery images (hypernetwork + base expected), {galleries.count()} galleries"
    shot = os.environ.get("DPHYPER_SCREENSHOT") or str(tmp_path / "app.png")
    page.screenshot(path=shot, full_page=True)
    assert os.path.getsize(shot) > 20_000
