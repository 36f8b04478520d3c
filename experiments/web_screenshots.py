"""Screenshots of the web app's pages for docs/web.md: docs/web/*.png.

    python experiments/web_screenshots.py [--store ~/.cache/qscope/stores/default-default-layer15.sqlite] [--out docs/web]

Starts `qscope serve` (default model, shipped SAEs) on a free local port, drives the system Chromium
with Playwright (`pip install playwright`, `apt-get install chromium`) and saves one full-page PNG per
page, each stamped with its provenance. The feature and steering pages show layer-15 feature 6644
(French), steered at strength 25 on "Tell me about your weekend."; the feature page needs a layer-15
feature store (`qscope features build --layer 15`, found in QSCOPE_HOME or given with --store);
feature-no-store.png shows a layer without one (24).
"""

from __future__ import annotations

import argparse
import json
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from qscope.provenance import record, stamp_png

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until_up(url: str, server: subprocess.Popen, timeout: float) -> None:
    end = time.time() + timeout
    while time.time() < end:
        if server.poll() is not None:
            sys.exit(f"qscope serve exited with code {server.returncode}")
        try:
            urllib.request.urlopen(url + "/api/info", timeout=5)
            return
        except OSError:
            time.sleep(1)
    sys.exit(f"qscope serve did not answer at {url} within {timeout:.0f} s")


def shoot(page, url: str, out: Path, layer: int, feature: int, strength: float, no_store_layer: int) -> list[Path]:
    """Visit each page, wait for its content, save a full-page PNG; returns the paths."""
    shots = []

    def save(name: str) -> None:
        shots.append(out / f"{name}.png")
        page.screenshot(path=str(shots[-1]), full_page=True)

    page.goto(url + "/#/features")
    page.click("#by-text button")
    page.wait_for_selector("#results table a.feat")
    save("features")
    page.goto(url + f"/#/feature/{layer}/{feature}")
    page.wait_for_selector(f"h2:has-text('Feature #{feature}')")
    page.click("#live button")
    page.wait_for_selector("#live-out .tokens .tok")
    save("feature")
    page.goto(url + f"/#/feature/{no_store_layer}/{feature}")
    page.wait_for_selector("text=No feature store for this layer")
    save("feature-no-store")
    page.goto(url + "/#/inspect")
    page.click("form button")
    page.wait_for_selector("#tokens .tok")
    save("inspect")
    page.goto(url + f"/#/steer/{layer}/{feature}")
    page.wait_for_selector("#steer-go")
    page.fill(".e-strength", str(strength))
    page.click("#steer-go")
    page.wait_for_selector("#steered[data-done='1']", timeout=300_000)
    save("steer")
    page.goto(url + "/#/compare")
    page.click("form button")
    page.wait_for_selector("#compare-out .card")
    save("compare")
    return shots


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--store", action="append", default=[], help="feature store to serve (passed to qscope serve)")
    ap.add_argument("--layer", type=int, default=15)
    ap.add_argument("--feature", type=int, default=6644)
    ap.add_argument("--strength", type=float, default=25.0)
    ap.add_argument("--no-store-layer", type=int, default=24, help="a served layer without a feature store")
    ap.add_argument("--chromium", default="/usr/bin/chromium")
    ap.add_argument("--out", type=Path, default=ROOT / "docs/web")
    args = ap.parse_args()
    from playwright.sync_api import sync_playwright

    port = free_port()
    cmd = [sys.executable, "-m", "qscope", "serve", "--port", str(port)] + [x for s in args.store for x in ("--store", s)]
    server = subprocess.Popen(cmd)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until_up(url, server, timeout=600)
        info = json.load(urllib.request.urlopen(url + "/api/info", timeout=30))
        if not any(l["layer"] == args.layer and l["store"] for l in info["layers"]):
            print(f"note: no feature store for layer {args.layer}: feature.png will lack top contexts "
                  f"(build one with `qscope features build --layer {args.layer}`)", file=sys.stderr)
        args.out.mkdir(parents=True, exist_ok=True)
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=args.chromium, args=CHROMIUM_ARGS)
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            page.set_default_timeout(120_000)
            shots = shoot(page, url, args.out, args.layer, args.feature, args.strength, args.no_store_layer)
            browser.close()
    finally:
        server.terminate()
        server.wait(30)
    prov = record()
    for path in shots:
        stamp_png(path, prov)
        print(path)


if __name__ == "__main__":
    main()
