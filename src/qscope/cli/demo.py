"""`qscope demo`: the main job on the embedded default - encode a text with the default model and
shipped SAE, and show its strongest features with the tokens each one promotes."""

from __future__ import annotations

import typer
from rich.table import Table

from .common import console, emit_json, load_models

DEMO_TEXT = "The Eiffel Tower in Paris was finished in 1889. def area(r): return 3.14159 * r ** 2"


def register(root: typer.Typer) -> None:
    root.command("demo")(demo)


def demo(
    text: str = typer.Argument(DEMO_TEXT, help="Text to analyse."),
    layer: int = typer.Option(None, "--layer", "-l", help="Shipped layer (default: the middle one)."),
    top: int = typer.Option(8, min=1, help="Features listed."),
    json: bool = typer.Option(False, "--json", help="Print the result as JSON on stdout."),
) -> None:
    """Encode a text with the default model and its shipped SAE; list the strongest features,
    where they fire and which tokens they promote.

    Example: qscope demo "Der Hund spielt im Garten."
    """
    from ..errors import QScopeError
    from ..features.active import encode_text
    from ..features.logits import token_effects
    from ..sae.registry import default_layers

    layers = default_layers()
    if not layers:
        raise QScopeError("no shipped SAEs found in this install (qscope/assets/saes)")
    layer = layers[len(layers) // 2] if layer is None else layer
    loaded = load_models("default", "default", layer)
    lm, sae = loaded.lm, loaded.sae
    encoded = encode_text(lm, sae, text, top=top, layer=layer)
    strongest = encoded.strongest(top)
    effects = {e.feature: e for e in token_effects(lm, sae, [f for f, _ in strongest], n=6)}
    rows = []
    for feature, value in strongest:
        where = [t.token for t in encoded.tokens[1:] if any(f == feature for f, _ in t.features)]
        rows.append({"feature": feature, "max_activation": round(value, 3), "fires_on": where[:6],
                     "promotes": [tok for tok, _ in effects[feature].promoted]})
    result = {"model": lm.name, "sae": f"default layer {layer}", "text": text, "features": rows,
              "tokens": encoded.to_dict()["tokens"]}
    if json:
        emit_json(result)
        return
    console.print(f"[bold]{lm.name}[/] · shipped SAE layer {layer} (d_sae={sae.cfg.d_sae}, k={sae.cfg.k})")
    console.print(f"text: {text!r}\n")
    table = Table("feature", "max act", "fires on (tokens)", "promotes (logit lens)", title="strongest features")
    for row in rows:
        table.add_row(str(row["feature"]), f"{row['max_activation']:.2f}", " ".join(repr(t) for t in row["fires_on"]),
                      " ".join(repr(t) for t in row["promotes"]))
    console.print(table)
    console.print("next: qscope encode --layer N \"your text\"  ·  qscope sae info default --layer N")
