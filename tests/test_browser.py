"""The app in real Chromium (Debian's /usr/bin/chromium driven by Playwright; never `playwright install`).

``DPHYPER_SCREENSHOT=docs/app.png python -m pytest tests/test_browser.py -k upload_folder`` also writes the
README's screenshot (``DPHYPER_SCREENSHOT_WIDTH=1280`` or ``1920`` sets the page's width).
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
        # DPHYPER_SCREENSHOT_WIDTH: the width of a screenshot for the docs (a projector's 1,280 or 1,920)
        pg = browser.new_page(viewport={"width": int(os.environ.get("DPHYPER_SCREENSHOT_WIDTH", 1400)), "height": 1000})
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
    # The upload is on the page, not behind a closed accordion.
    # The title renders before every component has mounted (seconds on a loaded machine): wait for the box.
    page.wait_for_selector("input[webkitdirectory]", state="attached", timeout=30000)
    assert page.locator("input[webkitdirectory]").count() == 1
    page.locator("input[webkitdirectory]").set_input_files(str(folder))
    page.wait_for_selector("text=40 images", timeout=120000)  # 60 s was once too short beside other jobs
    assert page.get_by_text("notes.txt").count() >= 1  # the rejected file is listed with its reason

    # ε from the quality one needs: the page answers per method from the committed curves (issue 38).
    assert page.get_by_text("Class agreement ≥", exact=False).count() >= 1
    # The epsilon slider moves the marker on the privacy-utility plot and the explanation.
    page.wait_for_function(f"() => ({MARKER_JS})() !== null", timeout=30000)
    before = page.evaluate(MARKER_JS)
    summary_before = page.locator("text=Noise multiplier").first.inner_text()
    plan_js = "() => document.body.innerText.split('\\n').filter(l => l.includes(' plan: ')).join('|')"
    plan_before = page.evaluate(plan_js)
    assert "σ =" in plan_before
    slider = page.locator("input[type=range]").first
    slider.focus()
    for _ in range(6):
        page.keyboard.press("ArrowLeft")  # log10 eps 0 -> -0.3
    target = 10 ** -0.3
    page.wait_for_function(f"() => Math.abs(({MARKER_JS})() - {target}) < 1e-3", timeout=10000)
    assert page.evaluate(MARKER_JS) != before
    assert page.locator("text=Noise multiplier").first.inner_text() != summary_before
    assert page.get_by_text("1.65× more confident", exact=False).count() >= 1  # plain words follow ε (e^0.501)
    # The plan line follows keyboard moves too (not only the end of a mouse drag).
    page.wait_for_function(f"() => ({plan_js})() !== {plan_before!r}", timeout=30000)

    page.get_by_role("button", name="Hypernetwork (seconds)").click()
    page.wait_for_selector("text=Total spent on these images", timeout=90000)
    page.wait_for_selector("text=Base model (no fine-tuning", timeout=60000)
    galleries = page.locator("[data-testid='gallery'], .gallery, .grid-wrap")
    imgs = page.locator("img[src*='/file='], img[src*='gradio_api/file']")
    assert imgs.count() >= 32, f"{imgs.count()} gallery images (hypernetwork + base expected), {galleries.count()} galleries"
    # Every method's thumbnails fit their column (no sample cut off behind a horizontal scroll).
    overflowing = page.evaluate("() => Array.from(document.querySelectorAll('.method-gallery .grid-container'))"
                                ".filter(e => e.scrollWidth > e.clientWidth + 2).length")
    assert page.locator(".method-gallery").count() >= 2 and overflowing == 0
    shot = os.environ.get("DPHYPER_SCREENSHOT") or str(tmp_path / "app.png")
    page.screenshot(path=shot, full_page=True)
    assert os.path.getsize(shot) > 20_000


@needs_models
def test_closing_the_tab_forgets_its_private_views(page, app_url, app_module):  # noqa: F811
    """demo.unload: thumbnails, file names and images of a closed tab leave the server's session store."""
    import time

    from .test_concurrency import _session_text

    demo = app_module.TEST_DEMO

    def sessions_with_thumbnails() -> set:
        return {sid for sid in list(demo.state_holder.session_data)
                if "data:image/png;base64" in _session_text(demo, sid)}

    page.wait_for_function("() => document.body.innerText.includes(' images from ')", timeout=60000)
    before = sessions_with_thumbnails()  # the fixture page's own session stays (its tab stays open)
    tab = page.context.browser.new_page()
    tab.goto(app_url)
    tab.wait_for_selector("text=example set", timeout=60000)
    t0 = time.time()
    while not (sessions_with_thumbnails() - before):
        assert time.time() - t0 < 30
        time.sleep(0.2)
    mine = sessions_with_thumbnails() - before
    tab.close()
    t0 = time.time()
    while mine & set(demo.state_holder.session_data):
        assert time.time() - t0 < 60, "the closed tab's session (thumbnails) is still on the server"
        time.sleep(0.5)


@needs_models
def test_the_audit_tab_draws_a_picture(page, tmp_path):
    """Issue 38: the audit answers with a figure (two histograms and the threshold), the JSON one click away; at
    a projector's 1,280 px width."""
    page.set_viewport_size({"width": 1280, "height": 900})
    page.get_by_role("tab", name="Privacy audit").click()
    page.get_by_role("button", name="Run the audit (public data only)").click()
    hist_js = ("() => Array.from(document.querySelectorAll('.js-plotly-plot')).map(p => (p.data || [])"
               ".filter(t => t.type === 'histogram').length).reduce((a, b) => Math.max(a, b), 0)")
    page.wait_for_function(f"() => ({hist_js})() === 2", timeout=120000)
    assert page.get_by_text("measured ε ≥", exact=False).count() >= 1
    shot = os.environ.get("DPHYPER_AUDIT_SCREENSHOT") or str(tmp_path / "audit.png")
    page.screenshot(path=shot, full_page=True)
    assert os.path.getsize(shot) > 20_000
    page.get_by_role("tab", name="Private LoRA").first.click()  # back to the first tab for any later test
    page.set_viewport_size({"width": 1400, "height": 1000})


@needs_models
def test_the_lecture_steps_through_epsilon_at_a_projectors_width(page, tmp_path):
    """Issue 38: the lecture tab at 1,920 px: a step shows its samples and its sentence, the next step lowers ε."""
    page.set_viewport_size({"width": 1920, "height": 1080})
    page.get_by_role("tab", name="Lecture: ε step by step").click()
    page.get_by_role("button", name="Next step ▶").click()
    page.wait_for_function("() => document.body.innerText.includes('Step 1 of 7')", timeout=180000)
    assert page.get_by_text("No privacy", exact=False).count() >= 1
    page.get_by_role("button", name="Next step ▶").click()
    page.wait_for_function("() => document.body.innerText.includes('Step 2 of 7')", timeout=180000)
    assert page.get_by_text("ε = 8", exact=False).count() >= 1
    assert page.get_by_text("this step took", exact=False).count() >= 1
    shot = os.environ.get("DPHYPER_LECTURE_SCREENSHOT") or str(tmp_path / "lecture.png")
    page.screenshot(path=shot, full_page=True)
    assert os.path.getsize(shot) > 20_000
    page.get_by_role("tab", name="Private LoRA").first.click()
    page.set_viewport_size({"width": 1400, "height": 1000})
