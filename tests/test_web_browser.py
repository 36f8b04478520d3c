"""The web pages in a real browser (Playwright driving the system Chromium) on tiny models."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

pytestmark = pytest.mark.browser

CHROMIUM = "/usr/bin/chromium"
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
        "--disable-component-update", "--disable-sync"]

if not Path(CHROMIUM).exists() and not shutil.which("chromium"):
    pytest.skip("browser tests need Debian chromium at /usr/bin/chromium (apt-get install -y chromium)",
                allow_module_level=True)
pytest.importorskip("playwright.sync_api", reason="browser tests need playwright (pip install playwright)")
pytest.importorskip("fastapi", reason="the web app needs fastapi and uvicorn")

from test_web_api import STEER, live_url, served  # noqa: E402,F401  (fixtures: tiny app on loopback)


@pytest.fixture(scope="module")
def page(live_url):  # noqa: F811
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        pg = browser.new_page(viewport={"width": 1280, "height": 900})
        pg.set_default_timeout(30_000)
        errors = []
        pg.on("pageerror", lambda exc: errors.append(str(exc)))
        pg.goto(live_url + "/")
        yield pg
        browser.close()
        assert not errors, errors


def _shot(pg, tmp_path, name):
    pg.screenshot(path=str(tmp_path / f"{name}.png"), full_page=True)
    assert (tmp_path / f"{name}.png").stat().st_size > 1000


def test_feature_browser_search_and_pages(page, live_url, tmp_path):  # noqa: F811
    pg = page
    pg.goto(live_url + "/#/features")
    pg.wait_for_selector("#frequent table")  # layer 2 has a store: most frequent features listed
    pg.click("#by-text button")
    pg.wait_for_selector("#results table a.feat")
    assert pg.locator("#results table a.feat").count() == 20
    pg.click("#by-contrast button")
    pg.wait_for_selector("#results h3:has-text('Features firing more on A')")
    pg.fill("#expl-q", "cats")
    pg.click("#by-expl button")
    pg.wait_for_selector("#results td:has-text('cats and mats')")
    _shot(pg, tmp_path, "features")

    pg.select_option("#id-layer", "2")
    pg.fill("#id-feature", "7")
    pg.click("#by-id button")
    pg.wait_for_selector("#top .ctx")
    assert "cats and mats" in pg.inner_text("#explanation")
    assert pg.locator("#histogram svg rect").count() >= 1 and "fires on" in pg.inner_text("#density")
    assert pg.locator("#top .tok.focus").count() >= 1  # the activating token is marked
    pg.click("#live button")
    pg.wait_for_selector("#live-out .tokens .tok")
    _shot(pg, tmp_path, "feature")

    pg.goto(live_url + "/#/feature/1/5")  # no store on layer 1: token effects + live activations only
    pg.wait_for_selector("text=No feature store for this layer")
    assert pg.locator("table").count() == 2


def test_inspector_links_to_feature_page(page, live_url, tmp_path):  # noqa: F811
    pg = page
    pg.goto(live_url + "/#/inspect")
    pg.click("form button")
    pg.wait_for_selector("#tokens .tok")
    assert pg.locator("#token-detail a.feat").count() >= 1
    _shot(pg, tmp_path, "inspect")
    link = pg.locator("#token-detail a.feat").first
    feature = link.inner_text().lstrip("#")
    link.click()
    pg.wait_for_selector(f"h2:has-text('Feature #{feature}')")


def test_steering_side_by_side_matches_api(page, live_url, tmp_path):  # noqa: F811
    import httpx

    want = httpx.post(live_url + "/api/steer", json=STEER, timeout=60).json()
    pg = page
    pg.goto(live_url + "/#/steer")
    pg.wait_for_selector("#steer-go")
    pg.fill("#st-prompt", STEER["prompt"])
    pg.select_option("#st-layer", str(STEER["layer"]))
    pg.fill(".e-feature", str(STEER["edits"][0]["feature"]))
    pg.fill(".e-strength", str(STEER["edits"][0]["strength"]))
    pg.uncheck("#st-chat")
    pg.fill("#st-max", str(STEER["max_new_tokens"]))
    pg.click("#steer-go")
    pg.wait_for_selector("#steered[data-done='1']")
    assert pg.eval_on_selector("#plain", "e => e.textContent") == want["plain"]
    assert pg.eval_on_selector("#steered", "e => e.textContent") == want["steered"]
    _shot(pg, tmp_path, "steer")
    pg.fill(".e-feature", "100000")  # out of range: a clear message, no crash
    pg.click("#steer-go")
    pg.wait_for_selector("#steer-msg .error:has-text('out of range')")


def test_compare_page(page, live_url, tmp_path):  # noqa: F811
    pg = page
    pg.goto(live_url + "/#/compare")
    pg.click("form button")
    pg.wait_for_selector("#compare-out .card")
    assert [pg.locator("#compare-out h3").nth(i).inner_text().split()[:2] for i in range(2)] == [["Layer", "1"], ["Layer", "2"]]
    _shot(pg, tmp_path, "compare")
    assert json.loads(pg.evaluate("JSON.stringify(location.hash)")) == "#/compare"
