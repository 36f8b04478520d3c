"""Shared CLI plumbing: stderr console, JSON to stdout, one-line errors."""

from __future__ import annotations

import json
import sys
from typing import Any

from rich.console import Console

# Everything human-facing goes to stderr so that `--json` output on stdout stays clean.
console = Console(stderr=True)


def emit_json(obj: Any) -> None:
    """Print a JSON-ready object (or anything with `.to_dict()`) to stdout."""
    if hasattr(obj, "to_dict"):
        obj = obj.to_dict()
    sys.stdout.write(json.dumps(obj, indent=2, ensure_ascii=False, default=str) + "\n")
    sys.stdout.flush()


# Options shared by every command that runs a model with an SAE (typer reads `Annotated`).
from typing import Annotated, Optional  # noqa: E402

import typer  # noqa: E402

ModelOpt = Annotated[str, typer.Option("--model", "-m", help="Model: 'default', an HF folder, a .gguf file or a hub id.")]
SaeOpt = Annotated[str, typer.Option("--sae", "-s", help="SAE: 'default', a layer<n>.sae.pt, a folder or a hub repo id.")]
LayerOpt = Annotated[Optional[int], typer.Option("--layer", "-l", help="Layer (needed when the SAE source holds several).")]
DeviceOpt = Annotated[Optional[str], typer.Option(help="cpu, cuda, cuda:1 ... (default: cuda if available).")]
DtypeOpt = Annotated[Optional[str], typer.Option(
    help="The LM's dtype: auto (default: bf16 on GPUs and on CPUs with AMX or AVX512-BF16, else fp32; "
         "see `qscope models list`), float32, bfloat16.")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print the result as JSON on stdout.")]


def progress_bar(label: str = "{task.description}"):
    """The transient stderr progress bar of the CLI (description, bar, n/total, time left)."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    return Progress(TextColumn(label), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                    console=console, transient=True)


def load_pair(model: str, sae: str, layer: int | None, device: str | None = None, dtype: str | None = None):
    """Load a model and an SAE for it (spinner on stderr); checks they fit together."""
    from ..model import load_model
    from ..sae import SAE

    with console.status("loading model and SAE"):
        lm = load_model(model, device=device, dtype=dtype)
        sae_ = SAE.load(sae, layer=layer, device=lm.device)
    lm.check_sae(sae_, layer)
    return lm, sae_


def read_texts(spec: str, limit: int | None = None) -> list[str]:
    """Texts from a data spec (file, folder, corpus name; see `qscope data show`)."""
    from ..data import iter_texts

    texts = list(iter_texts(spec, limit=limit))
    if not texts:
        from ..errors import QScopeError

        raise QScopeError(f"{spec}: no texts found")
    return texts
