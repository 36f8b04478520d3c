"""Lists of integers typed on a command line or in a config ("6,15,24"): layers, feature ids, Ks.

One parser, so every option accepts the same forms (commas and/or whitespace between numbers)
and a typo fails the same way: a QScopeError naming the option and an example.
"""

from __future__ import annotations

import re

from .errors import QScopeError


def int_list(spec: str, option: str, example: str = "6,15,24") -> list[int]:
    """'6,15,24' (or '6, 15 24', one per line, ...) -> [6, 15, 24]; empty pieces are skipped."""
    try:
        return [int(piece) for piece in re.split(r"[\s,]+", spec) if piece]
    except ValueError:
        shown = spec if len(spec) <= 40 else spec[:40] + "..."
        raise QScopeError(f"{option}: expected comma-separated integers like {example}, got {shown!r}") from None
