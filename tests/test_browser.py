"""The app in real Chromium (Debian's /usr/bin/chromium driven by Playwright; never `playwright install`)."""

import shutil

import pytest

from .test_app import app_url  # noqa: F401  (fixture)
from .test_hypernet import needs_models

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
pytestmark = [pytest.mark.browser,
              pytest.mark.skipif(not shutil.which("chromium"), reason="apt-get install chromium")]
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", "--no-first-run"]


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
def test_slider_updates_explanation_and_generate_fills_gallery(page):
    summary = page.locator("text=Noise multiplier").first
    before = summary.inner_text()
    assert "3.731" in before  # epsilon = 1 at start
    slider = page.locator("input[type=range]").first
    slider.focus()
    for _ in range(6):
        page.keyboard.press("ArrowLeft")  # log10 eps 0 -> -0.3 (eps ~ 0.5)
    page.wait_for_function("(b) => !document.body.innerText.includes(b)", arg="σ/Δ = 3.731", timeout=10000)
    assert page.locator("text=Noise multiplier").first.inner_text() != before
    page.get_by_role("button", name="Generate with the hypernetwork").click()
    page.wait_for_selector("text=Total spent on this dataset", timeout=60000)
    assert page.locator(".gallery img, [data-testid='gallery'] img, button img").count() >= 16
