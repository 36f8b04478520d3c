"""Shared CLI plumbing: stderr console, JSON to stdout, one-line errors."""

from __future__ import annotations

import json
import math
import sys
from typing import TYPE_CHECKING, Any

from rich.console import Console

if TYPE_CHECKING:
    from ..model import Loaded

# Everything human-facing goes to stderr so that `--json` output on stdout stays clean.
console = Console(stderr=True)


def emit_json(obj: Any) -> None:
    """Print a JSON-ready object (or anything with `.to_dict()`) to stdout. NaN and infinities,
    which JSON has no words for, are printed as null (a bare NaN breaks every JSON reader)."""
    if hasattr(obj, "to_dict"):
        obj = obj.to_dict()
    sys.stdout.write(json.dumps(_finite(obj), indent=2, ensure_ascii=False, default=str, allow_nan=False) + "\n")
    sys.stdout.flush()


def _finite(obj: Any) -> Any:
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {key: _finite(value) for key, value in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite(value) for value in obj]
    if hasattr(obj, "to_dict"):
        return _finite(obj.to_dict())
    return obj


# Options shared by every command that runs a model with an SAE (typer reads `Annotated`).
from typing import Annotated, Optional  # noqa: E402

import typer  # noqa: E402

ModelOpt = Annotated[str, typer.Option("--model", "-m", help="Model: 'default', an HF folder, a .gguf file or a hub id.")]
SaeOpt = Annotated[str, typer.Option("--sae", "-s", help="SAE: 'default', a layer<n>.sae.pt (add :k=<k> if its path "
                                                        "has no L0_<k>), a folder or a hub repo id.")]
LayerOpt = Annotated[Optional[int], typer.Option("--layer", "-l", help="Layer (needed when the SAE source holds several).")]
DeviceOpt = Annotated[Optional[str], typer.Option(help="cpu, cuda, cuda:1 ..., or multi (layers spread over all "
                                                     "GPUs) (default: cuda if available).")]
DtypeOpt = Annotated[Optional[str], typer.Option(
    help="The LM's dtype: auto (default: bf16 on GPUs and on CPUs with AMX or AVX512-BF16, else fp32; "
         "see `qscope models list`), float32, bfloat16.")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print the result as JSON on stdout.")]


def progress_bar(label: str = "{task.description}"):
    """The transient stderr progress bar of the CLI (description, bar, n/total, time left)."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    return Progress(TextColumn(label), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                    console=console, transient=True)


def load_models(model: str | None, sae: str | None, layers, device: str | None = None,
                dtype: str | None = None) -> Loaded:
    """`qscope.load` (the model and its SAEs, each on its layer's device) behind a spinner on stderr."""
    from ..model import load

    with console.status("loading model and SAEs"):
        return load(model, sae, layers, device=device, dtype=dtype)


def read_texts(spec: str, limit: int | None = None) -> list[str]:
    """Texts from a data spec (file, folder, corpus name; see `qscope data show`)."""
    from ..data import iter_texts

    texts = list(iter_texts(spec, limit=limit))
    if not texts:
        from ..errors import QScopeError

        raise QScopeError(f"{spec}: no texts found")
    return texts
