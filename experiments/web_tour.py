"""Screenshots and response times of the web app on the default model (what docs/web.md shows).

Serves the default model with the shipped SAEs (layers 6, 15, 24) and the given feature stores
on loopback, then
  --shots DIR   saves every page at 1280 and 390 px wide (Debian chromium via Playwright);
  --times       prints, as a markdown table, the median time of each page's requests
                (after one warm-up; --repeat per request); --times-json FILE also writes them.

    python experiments/web_tour.py --store ~/.cache/qscope/stores/default-default-layer15.sqlite \
        --feature 15/6644 --shots docs/web --times
"""

from __future__ import annotations

import argparse
import statistics
import threading
import time
from pathlib import Path

CHROMIUM = "/usr/bin/chromium"
PROMPT = "Tell me about your weekend."
CODE = "def add(a, b):\n    return a + b"
INSPECT = "Le chat est sur la table. The Eiffel Tower is in Paris. def add(a, b): return a + b"


def serve(stores: list[str], port: int) -> str:
    import uvicorn

    from qscope.cli.serve import load_served, served_hosts
    from qscope.web import create_app

    lm, saes, found = load_served("default", "default", None, stores)
    app = create_app(lm, saes, found, allowed_hosts=served_hosts("127.0.0.1", []))
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    threading.Thread(target=server.run, daemon=True).start()
    while not server.started:
        time.sleep(0.1)
    return f"http://127.0.0.1:{port}"


def pages(layer: int, feature: int, strength: int) -> list[tuple[str, str, str]]:
    """(name, route, selector that shows the page is ready)."""
    from urllib.parse import quote

    return [
        ("features", "#/features", "#browse-list table"),
        ("features-french", f"#/features?layer={layer}&q=french", "#browse-list:not([aria-busy]) table"),
        ("feature", f"#/feature/{layer}/{feature}", "#top .ctx"),
        ("feature-no-store", f"#/feature/6/{feature}", "#explanation"),
        ("inspect", f"#/inspect?layer={layer}&text={quote(INSPECT)}", "#token-detail table"),
        ("steer", f"#/steer?layer={layer}&edits={feature}:{strength}&prompt={quote(PROMPT)}&max=40",
         "#steered[data-done='1']"),
        ("compare", f"#/compare?a={quote(CODE)}&b={quote('Add the two numbers.')}",
         "#compare-out .card"),
    ]


def shots(url: str, out: Path, routes) -> None:
    from playwright.sync_api import sync_playwright

    from qscope.provenance import stamp_png

    out.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=["--headless", "--no-sandbox", "--disable-gpu"])
        for width, suffix in ((1280, ""), (390, "-390")):
            page = browser.new_page(viewport={"width": width, "height": 900 if width > 400 else 844},
                                    is_mobile=width < 400, has_touch=width < 400)
            page.set_default_timeout(300_000)
            for name, route, ready in routes:
                page.goto(f"{url}/{route}")
                page.wait_for_selector(ready)
                page.wait_for_load_state("networkidle")
                path = out / f"{name}{suffix}.png"
                page.screenshot(path=str(path), full_page=True)
                stamp_png(path)
                wide = page.evaluate("document.documentElement.scrollWidth")
                print(f"{path}  (page width {wide} px in a {width} px window)")
            page.close()
        browser.close()


def times(url: str, layer: int, feature: int, strength: int, repeat: int) -> list[dict]:
    import httpx

    steer = {"prompt": PROMPT, "layer": layer, "edits": [{"feature": feature, "strength": strength}], "max_new_tokens": 40}
    requests = [
        ("GET / (page)", "get", "/", None),
        ("GET /static/app.js", "get", "/static/app.js", None),
        ("GET /api/info", "get", "/api/info", None),
        (f"GET /api/browse/{layer} (25 most frequent, dense hidden)", "get", f"/api/browse/{layer}?max_density=0.1", None),
        (f"GET /api/browse/{layer}?q=french (label filter)", "get", f"/api/browse/{layer}?q=french", None),
        (f"GET /api/feature/{layer}/{feature} (store dashboard)", "get", f"/api/feature/{layer}/{feature}", None),
        (f"GET /api/feature/{layer}/{feature}/summary", "get", f"/api/feature/{layer}/{feature}/summary", None),
        (f"GET /api/feature/6/{feature} (no store)", "get", f"/api/feature/6/{feature}", None),
        ("GET /api/search/explanations?q=french", "get", "/api/search/explanations?q=french", None),
        ("POST /api/feature/activations", "post", "/api/feature/activations",
         {"text": INSPECT, "layer": layer, "feature": feature}),
        ("POST /api/search/text", "post", "/api/search/text", {"text": INSPECT, "layer": layer}),
        ("POST /api/search/contrast (2 vs 2 texts)", "post", "/api/search/contrast",
         {"positive": ["Le chat dort.", "Il fait beau."], "negative": ["The cat sleeps.", "It is sunny."], "layer": layer}),
        (f"POST /api/inspect (layer {layer})", "post", "/api/inspect", {"text": INSPECT, "layer": layer, "top": 10}),
        ("POST /api/compare (3 layers)", "post", "/api/compare", {"text_a": "def add(a, b): return a + b",
                                                               "text_b": "Add the two numbers."}),
        ("POST /api/steer (plain + steered, 40 tokens each)", "post", "/api/steer", steer),
        ("GET /docs", "get", "/docs", None),
    ]
    rows = []
    print("| request | median |\n|---|---|")
    with httpx.Client(base_url=url, timeout=600) as client:
        for name, method, path, body in requests:
            spent = []
            n = 1 + (min(repeat, 2) if "steer" in path else repeat)  # generations are slow: fewer of them
            for i in range(n):
                start = time.perf_counter()
                r = client.post(path, json=body) if method == "post" else client.get(path)
                r.raise_for_status()
                if i:
                    spent.append(time.perf_counter() - start)
            med = statistics.median(spent)
            rows.append({"request": name, "median_s": round(med, 4), "runs": len(spent)})
            print(f"| {name} | {med * 1000:.0f} ms |" if med < 1 else f"| {name} | {med:.1f} s |", flush=True)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--store", action="append", default=[], help="feature store to serve (repeatable)")
    ap.add_argument("--feature", default="15/6644", help="LAYER/FEATURE shown on the feature and steer pages")
    ap.add_argument("--strength", type=int, default=25)
    ap.add_argument("--shots", type=Path, help="folder for the screenshots")
    ap.add_argument("--times", action="store_true")
    ap.add_argument("--times-json", type=Path, help="also write the response times here (with provenance)")
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--port", type=int, default=8765)
    args = ap.parse_args()
    layer, feature = (int(x) for x in args.feature.split("/"))
    url = serve(args.store, args.port)
    if args.times or args.times_json:
        rows = times(url, layer, feature, args.strength, args.repeat)
        if args.times_json:
            import os

            from qscope.io import write_json
            from qscope.provenance import record

            write_json(args.times_json, {"rows": rows, "stores": args.store, "feature": args.feature,
                                         "strength": args.strength, "repeat": args.repeat,
                                         "load_average": os.getloadavg()}, provenance=record())
    if args.shots:
        shots(url, args.shots, pages(layer, feature, args.strength))


if __name__ == "__main__":
    main()
