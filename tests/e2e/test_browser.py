"""A real visitor's flow in headless Chromium (Debian `chromium`, driven by Playwright): label pairs, see the
ternary plot, watch the steered and base outputs stream."""
import os
from pathlib import Path

import pytest

CHROMIUM = Path("/usr/bin/chromium")
FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--disable-dev-shm-usage"]


@pytest.fixture(scope="module")
def page(live_app):
    if not CHROMIUM.is_file():
        if os.environ.get("CI"):
            pytest.fail("CI must install Debian chromium (.ci/run does): /usr/bin/chromium is missing")
        pytest.skip("no /usr/bin/chromium: `apt-get install chromium` to run the browser test")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=FLAGS)
        page = browser.new_page(viewport={"width": 1400, "height": 1300})
        page.errors = []
        page.on("pageerror", lambda e: page.errors.append(str(e)))
        page.goto(live_app)
        yield page
        browser.close()


def test_click_through_label_plot_and_stream(page):
    from playwright.sync_api import expect

    expect(page.locator("#simplex .ternarylayer").first).to_be_attached(timeout=120_000)
    expect(page.locator("#progress")).to_contain_text("0 / 10", timeout=60_000)
    first_a = page.locator("#resp-a textarea").input_value()
    for i, button in enumerate(["#btn-a", "#btn-b", "#btn-a"], start=1):
        page.click(button)
        expect(page.locator("#progress")).to_contain_text(f"{i} / 10", timeout=60_000)
    assert page.locator("#resp-a textarea").input_value() != first_a  # a new pair is on screen
    expect(page.locator("#summary")).to_contain_text("3 labelled pairs")
    assert page.locator("#simplex .scatterlayer .trace").count() >= 3  # cloud, trajectory, estimate

    page.fill("#prompt textarea", "Give me one tip for staying focused.")
    page.click("#btn-generate")
    steered = page.locator("#out-steered textarea")
    expect(steered).not_to_have_value("", timeout=120_000)
    first = len(steered.input_value())
    page.wait_for_function("n => document.querySelector('#out-steered textarea').value.length > n", arg=first,
                           timeout=120_000)
    expect(page.locator("#out-base textarea")).not_to_have_value("", timeout=120_000)
    if os.environ.get("NPDEMO_SCREENSHOT"):
        page.wait_for_timeout(3000)
        page.screenshot(path=os.environ["NPDEMO_SCREENSHOT"], full_page=True)
    assert not page.errors, page.errors
