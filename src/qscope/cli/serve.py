"""`qscope serve`: the local web app (feature browser, text inspector, steering, comparison)."""

from __future__ import annotations

from typing import TYPE_CHECKING, List, Optional

import typer

from ..errors import QScopeError
from ..parse import int_list
from .common import DeviceOpt, DtypeOpt, ModelOpt, SaeOpt, console

if TYPE_CHECKING:
    from ..features.store import FeatureStore
    from ..model import LM
    from ..sae import SAE


def register(root: typer.Typer) -> None:
    root.command("serve")(serve)


def parse_layers(spec: str | None) -> list[int] | None:
    """'6,15,24' -> [6, 15, 24]."""
    if not spec:
        return None
    layers = sorted(set(int_list(spec, "--layers")))
    if not layers:
        raise QScopeError("--layers: give at least one layer")
    return layers


def load_served(model: str, sae: str, layers: list[int] | None, store_files: list[str], device=None,
                dtype=None) -> tuple[LM, dict[int, SAE], dict[int, FeatureStore | None]]:
    """Model, {layer: SAE} and {layer: FeatureStore | None}; stores default to
    QSCOPE_HOME/stores/<model>-<sae>-layer<L>.sqlite where such a file exists."""
    from ..features.store import FeatureStore, default_store_path
    from ..model import load

    if layers is None and sae != "default":
        raise QScopeError("--layers is needed with a non-default --sae, e.g. --layers 12")
    lm, saes = load(model, sae, layers, device=device, dtype=dtype)
    layers = list(saes)
    stores: dict[int, FeatureStore | None] = {}
    for path in store_files:
        store = FeatureStore(path)
        if store.layer not in saes:
            raise QScopeError(f"{path}: store is for layer {store.layer}, not one of the served layers {layers}")
        stores[store.layer] = store
    for layer in layers:
        path = default_store_path(model, sae, layer)
        if layer not in stores and path.is_file():
            stores[layer] = FeatureStore(path)
    return lm, saes, stores


def served_hosts(host: str, extra: list[str]) -> list[str]:
    """Host names a request may carry: the bound address, loopback names, and `--allow-host` ones.
    Any other Host header is refused, so a web page (or a DNS-rebound name) cannot drive the model."""
    from ..web.guard import LOCAL_HOSTS

    hosts = [host, *LOCAL_HOSTS, *extra]
    if host in ("0.0.0.0", "::"):  # every interface: also this machine's own names
        import socket

        hosts += [socket.gethostname(), socket.getfqdn()]
    # a Host header writes an IPv6 address in brackets
    return list(dict.fromkeys(f"[{h}]" if ":" in h and not h.startswith("[") else h for h in hosts if h))


def serve(
    model: ModelOpt = "default",
    sae: SaeOpt = "default",
    layers: Optional[str] = typer.Option(None, "--layers", help="Comma-separated layers (default: every shipped layer)."),
    store: List[str] = typer.Option([], "--store", help="Feature store (.sqlite) to serve; repeatable, one per layer."),
    host: str = typer.Option("127.0.0.1", help="Interface to bind (0.0.0.0 exposes the model to your network)."),
    port: int = typer.Option(8000, min=1, max=65535, help="TCP port."),
    allow_host: List[str] = typer.Option([], "--allow-host", help="Also accept requests whose Host header is this name "
                                         "(repeatable; e.g. the name of a proxy in front; '*' accepts any)."),
    endpoint: Optional[str] = typer.Option(None, help="OpenAI-compatible API base URL of the LLM that judges "
                                           "explanations on feature pages (detection score), e.g. "
                                           "http://localhost:11434/v1."),
    api_model: Optional[str] = typer.Option(None, "--api-model", help="Model name that endpoint serves."),
    api_key_env: str = typer.Option("OPENAI_API_KEY", help="Environment variable holding its API key (if any)."),
    device: DeviceOpt = None,
    dtype: DtypeOpt = None,
) -> None:
    """Serve the web app: browse features, inspect texts, steer generation, compare texts.

    Example: qscope serve --layers 6,15,24 --port 8000   (then open http://127.0.0.1:8000)
    """
    import os

    import uvicorn

    from ..features.detection import LLMJudge
    from ..web import create_app

    if (endpoint is None) != (api_model is None):
        raise QScopeError("--endpoint and --api-model go together (the judge of explanations)")
    judge = LLMJudge(endpoint, api_model, os.environ.get(api_key_env)) if endpoint else None

    with console.status("loading model, SAEs and feature stores"):
        lm, saes, stores = load_served(model, sae, parse_layers(layers), store, device, dtype)
        app = create_app(lm, saes, stores, allowed_hosts=served_hosts(host, allow_host), judge=judge)
    with_store = ", ".join(str(l) for l in sorted(stores)) or "none"
    console.print(f"serving {lm.name} · layers {', '.join(map(str, sorted(saes)))} · stores for layers {with_store}")
    console.print(f"open http://{host}:{port}  (API schema at /openapi.json, docs at /docs)")
    uvicorn.run(app, host=host, port=port, log_level="warning")
