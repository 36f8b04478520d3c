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
