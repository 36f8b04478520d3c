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

NO_OVERFLOW = "document.documentElement.scrollWidth <= window.innerWidth"


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        yield b
        b.close()


@pytest.fixture(scope="module")
def page(browser, live_url):  # noqa: F811
    pg = browser.new_page(viewport={"width": 1280, "height": 900})
    pg.set_default_timeout(30_000)
    errors = []
    pg.on("pageerror", lambda exc: errors.append(str(exc)))
    # Offline, as on a machine without internet: anything not served by qscope fails.
    pg.route("**/*", lambda route: route.continue_() if route.request.url.startswith(live_url) else route.abort())
    pg.goto(live_url + "/")
    yield pg
    pg.close()
    assert not errors, errors


def _shot(pg, tmp_path, name):
    pg.screenshot(path=str(tmp_path / f"{name}.png"), full_page=True)
    assert (tmp_path / f"{name}.png").stat().st_size > 1000


def _hash(pg) -> str:
    return json.loads(pg.evaluate("JSON.stringify(location.hash)"))


@pytest.mark.slow
def test_browse_pages_filters_and_labels(page, live_url, tmp_path):  # noqa: F811
    pg = page
    pg.goto(live_url + "/#/features")
    pg.wait_for_selector("#browse-list table")
    assert not pg.is_checked("#browse-dense")  # dense features are hidden by default
    sparse = [float(x.rstrip("%")) for x in pg.locator("#browse-list .density").all_inner_texts()]
    assert sparse and max(sparse) <= 10.0
    pg.check("#browse-dense")
    pg.wait_for_function("location.hash.includes('dense=1')")
    pg.wait_for_function("!document.querySelector('#browse-info').textContent.includes('hidden')")
    first = pg.locator("#browse-list a.feat").all_inner_texts()
    assert len(first) == 25 and pg.locator("#browse-list .label .src").count() == 25  # every row labelled
    assert pg.locator("#browse-list .density .dbar").count() == 25 and "%" in pg.inner_text("#browse-list .density")
    assert max(float(x.rstrip("%")) for x in pg.locator("#browse-list .density").all_inner_texts()) > 10.0
    assert pg.is_disabled("#browse-prev")
    pg.click("#browse-next")
    pg.wait_for_function(f"document.querySelector('#browse-list a.feat').textContent !== {json.dumps(first[0])}")
    assert "page=2" in _hash(pg) and pg.inner_text("#browse-info").startswith("26–")
    pg.select_option("#browse-order", "rare")
    pg.wait_for_function("location.hash.includes('order=rare') && !location.hash.includes('page=')")
    pg.wait_for_selector("#browse-list:not([aria-busy]) a.feat")
    label = pg.locator("#browse-list .label").first.inner_text().split(";")[0].split()[-1]
    pg.fill("#browse-q", label)
    pg.press("#browse-q", "Enter")
    pg.wait_for_function("location.hash.includes('q=')")
    pg.wait_for_selector("#browse-list:not([aria-busy]) a.feat")
    assert all(label.lower() in t.lower() for t in pg.locator("#browse-list .label").all_inner_texts())
    shared = pg.url
    pg.goto(live_url + "/#/inspect")
    pg.goto(shared)  # the link brings back the same list
    pg.wait_for_selector("#browse-list a.feat")
    assert pg.input_value("#browse-q") == label and pg.input_value("#browse-order") == "rare"
    pg.fill("#expl-q", "cats")
    pg.click("#by-expl button")
    pg.wait_for_selector("#results td:has-text('cats and mats')")
    pg.click("#by-text button")
    pg.wait_for_selector("#results h3:has-text('Features active on the text')")
    assert pg.locator("#results table a.feat").count() == 20 and pg.locator("#results .label .src").count() == 20
    assert pg.title() == "Features · qscope"
    _shot(pg, tmp_path, "features")


def test_feature_page(page, live_url, tmp_path):  # noqa: F811
    pg = page
    pg.goto(live_url + "/#/features")
    pg.select_option("#id-layer", "2")
    pg.fill("#id-feature", "7")
    pg.click("#by-id button")
    pg.wait_for_selector("#top .ctx")
    assert "cats and mats" in pg.inner_text("#explanation") and "cats and mats" in pg.title() and "2/7" in pg.title()
    assert pg.locator("#histogram svg rect").count() >= 1 and pg.locator("#histogram svg text.tick").count() >= 3
    assert "firings" in pg.inner_text("#histogram") and "%" in pg.inner_text("#density")
    assert pg.locator("#top .tok.focus").count() >= 1  # the activating token is marked
    focus = pg.locator("#top .ctx").first.locator(".tok.focus").bounding_box()
    line = pg.locator("#top .ctx").first.locator(".ctx-line").bounding_box()
    centre = line["x"] + line["width"] / 2
    assert focus["x"] - 40 <= centre <= focus["x"] + focus["width"] + 40  # centred on the strongest token
    pg.click("#live button")
    pg.wait_for_selector("#live-out .tokens .tok")
    _shot(pg, tmp_path, "feature")
    pg.click("#next-feature")
    pg.wait_for_selector("h2:has-text('Feature #8')")
    pg.click("#prev-feature")
    pg.wait_for_selector("h2:has-text('Feature #7')")
    pg.wait_for_selector("#top .ctx")
    pg.locator("#top .ctx a:has-text('inspect')").first.click()  # one click: the context in the inspector
    pg.wait_for_selector("#tokens .tok")
    assert "feature #7" in pg.inner_text("#paint-label") and "text=" in _hash(pg)

    pg.goto(live_url + "/#/feature/1/5")  # no store on layer 1: token effects + live activations only
    pg.wait_for_selector("text=No feature store for this layer")
    assert pg.locator("#explanation .src.auto").count() == 1 and "promotes" in pg.inner_text("#explanation")
    pg.goto(live_url + "/#/feature/2/abc")
    pg.wait_for_selector(".error:has-text('feature must be a whole number')")


def test_histogram_ticks_and_detection_note(page, live_url):  # noqa: F811
    pg = page
    pg.goto(live_url + "/#/feature/2/7")
    pg.wait_for_selector("#histogram svg rect")
    for axis in ("x", "y"):
        labels = [float(t.replace(",", "").replace("e+", "e")) for t in pg.locator(f"#histogram text.tick.{axis}").all_text_contents()]
        assert len(labels) >= 2 and labels == sorted(labels) and len(set(labels)) == len(labels), (axis, labels)
    assert "No LLM endpoint" in pg.inner_text("#detection")  # served without --endpoint: said, not failed


def test_direction_steering_matches_api(page, live_url):  # noqa: F811
    import httpx

    body = {**{k: v for k, v in STEER.items() if k != "edits"}, "method": "diffmean", "strength": 200}
    want = httpx.post(live_url + "/api/steer", json=body, timeout=60).json()
    pg = page
    pg.goto(live_url + "/#/steer")
    pg.wait_for_selector("#steer-go")
    assert pg.is_hidden("#direction") and pg.is_visible("#features-box")
    pg.select_option("#st-method", "diffmean")
    assert pg.is_visible("#direction") and pg.is_hidden("#features-box") and pg.is_hidden("#st-mode")
    assert "I love this" in pg.input_value("#st-pos-texts")  # defaults to start from
    pg.fill("#st-prompt", STEER["prompt"])
    pg.select_option("#st-layer", str(STEER["layer"]))
    pg.uncheck("#st-chat")
    pg.fill("#st-max", str(STEER["max_new_tokens"]))
    pg.fill("#st-strength", "")
    pg.click("#steer-go")
    pg.wait_for_selector("#steer-msg .error:has-text('strength is empty')")
    pg.fill("#st-strength", "200")
    pg.click("#steer-go")
    pg.wait_for_selector("#steered[data-done='1']")
    assert pg.eval_on_selector("#steered", "e => e.textContent") == want["steered"] != want["plain"]
    shared = pg.url
    assert "method=diffmean" in shared and "strength=200" in shared
    pg.goto(live_url + "/#/compare")
    pg.goto(shared)  # the link chooses the method and generates again
    pg.wait_for_selector("#steered[data-done='1']")
    assert pg.input_value("#st-method") == "diffmean"
    assert pg.eval_on_selector("#steered", "e => e.textContent") == want["steered"]


def test_inspector_keyboard_links_and_shared_url(page, live_url, tmp_path):  # noqa: F811
    pg = page
    pg.goto(live_url + "/#/inspect")
    pg.fill("#ins-text", "The cat sat on the mat.")
    pg.click("form button")
    pg.wait_for_selector("#tokens .tok")
    assert pg.locator("#token-detail a.feat").count() >= 1 and pg.locator("#token-detail .label").count() >= 1
    pg.locator("#tokens .tok").nth(3).focus()
    pg.keyboard.press("Enter")  # tokens can be selected from the keyboard
    assert "token 3" in pg.inner_text("#token-detail h3")
    _shot(pg, tmp_path, "inspect")
    shared = pg.url
    assert "text=The" in shared
    pg.goto(live_url + "/#/compare")
    pg.goto(shared)  # the link re-runs the inspection
    pg.wait_for_selector("#tokens .tok")
    assert pg.input_value("#ins-text") == "The cat sat on the mat."
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
    pg.click("#steer-go")  # no strength yet: an error, not a silent zero
    pg.wait_for_selector("#steer-msg .error:has-text('strength is empty')")
    pg.wait_for_selector(".e-info .label")  # the feature's label and activation range
    assert "max seen" in pg.inner_text(".e-info")
    assert float(pg.get_attribute(".e-slider", "max")) > 0
    pg.fill(".e-strength", str(STEER["edits"][0]["strength"]))
    pg.uncheck("#st-chat")
    pg.fill("#st-max", str(STEER["max_new_tokens"]))
    pg.click("#steer-go")
    pg.wait_for_selector("#steered[data-done='1']")
    assert pg.eval_on_selector("#plain", "e => e.textContent") == want["plain"]
    assert pg.eval_on_selector("#steered", "e => e.textContent") == want["steered"]
    assert pg.locator("#steered mark").count() >= 1  # the differences are marked
    _shot(pg, tmp_path, "steer")
    shared = pg.url
    assert "edits=3%3A20" in shared or "edits=3:20" in shared
    pg.goto(live_url + "/#/compare")
    pg.goto(shared)  # the link fills the form and generates again
    pg.wait_for_selector("#steered[data-done='1']")
    assert pg.eval_on_selector("#steered", "e => e.textContent") == want["steered"]
    pg.check("#st-sweep-on")
    pg.fill("#st-sweep", "0, 20")
    pg.click("#steer-go")
    pg.wait_for_selector("#sweep-1[data-done='1']")
    assert pg.eval_on_selector("#sweep-0", "e => e.textContent") == want["plain"]
    assert pg.eval_on_selector("#sweep-1", "e => e.textContent") == want["steered"]
    pg.uncheck("#st-sweep-on")
    pg.fill(".e-feature", "100000")  # out of range: a clear message, no crash
    pg.click("#steer-go")
    pg.wait_for_selector("#steer-msg .error:has-text('out of range')")


def test_compare_page_and_link(page, live_url, tmp_path):  # noqa: F811
    pg = page
    pg.goto(live_url + "/#/compare")
    pg.click("form button")
    pg.wait_for_selector("#compare-out .card")
    assert [pg.locator("#compare-out h3").nth(i).inner_text().split()[:2] for i in range(2)] == [["Layer", "1"], ["Layer", "2"]]
    assert pg.locator("#compare-out .label").count() >= 2
    _shot(pg, tmp_path, "compare")
    assert _hash(pg).startswith("#/compare?a=") and pg.title() == "Compare texts · qscope"


@pytest.mark.slow
def test_not_found_favicon_docs_and_one_request_per_click(page, live_url):  # noqa: F811
    pg = page
    pg.goto(live_url + "/#/nonsense")
    pg.wait_for_selector("#not-found:has-text('Page not found')")
    assert pg.title() == "Not found · qscope"
    assert pg.get_attribute("link[rel=icon]", "href") == "/static/favicon.svg"
    pg.goto(live_url + "/#/features")
    pg.wait_for_selector("#by-text button")
    sent = []
    pg.on("request", lambda r: sent.append(r.url) if r.url.endswith("/api/search/text") else None)
    pg.evaluate("() => { const b = document.querySelector('#by-text button'); b.click(); b.click(); b.click(); }")
    assert pg.is_disabled("#by-text button")
    pg.wait_for_selector("#results table a.feat")
    assert len(sent) == 1  # the button is disabled while its request runs
    # Swagger UI from local files (the page blocks every other host). Its 1.5 MB bundle takes
    # Chromium over a minute to compile on two busy cores, hence the long waits: this checks that
    # /docs works offline, not how fast.
    pg.goto(live_url + "/docs", timeout=300_000)
    pg.wait_for_selector(".swagger-ui .info .title:has-text('qscope')", timeout=300_000)


PHONE_PAGES = ["#/features", "#/feature/2/7", "#/feature/1/5", "#/inspect?layer=2&text=The%20cat%20sat%20on%20the%20mat.",
               "#/steer?layer=2&edits=3:20", "#/compare?a=The%20cat%20sat.&b=def%20f()%3A%20pass", "#/nope"]


@pytest.mark.slow
def test_phone_layout_has_no_sideways_scroll(browser, live_url, tmp_path):  # noqa: F811
    pg = browser.new_page(viewport={"width": 390, "height": 844}, has_touch=True, is_mobile=True)
    pg.set_default_timeout(30_000)
    pg.goto(live_url + "/")
    for route in PHONE_PAGES:
        pg.goto(live_url + "/" + route)
        pg.wait_for_selector("#view > *")
        pg.wait_for_load_state("networkidle")
        pg.wait_for_function("!document.querySelector('#view').textContent.includes('loading…')")
        assert pg.evaluate(NO_OVERFLOW), (route, pg.evaluate("document.documentElement.scrollWidth"))
        assert "null" not in pg.inner_text("#view").split() and "undefined" not in pg.inner_text("#view")
    assert pg.is_hidden("nav") and pg.is_visible("#menu")  # the header collapses to a menu button
    pg.tap("#menu")
    assert pg.is_visible("nav a[data-page=steer]")
    pg.goto(live_url + "/#/inspect?layer=2&text=The%20cat%20sat.")
    pg.wait_for_selector("#tokens .tok")
    pg.locator("#tokens .tok").nth(2).tap()  # tokens can be selected by touch
    assert "token 2" in pg.inner_text("#token-detail h3")
    _shot(pg, tmp_path, "phone-inspect")
    pg.close()
