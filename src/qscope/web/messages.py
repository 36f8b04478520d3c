"""Validation errors as people write them: "feature must be a whole number", not
"path.feature: Input should be a valid integer"."""

from __future__ import annotations

from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse

WHERE = {"body", "query", "path", "header"}


def error_response(status: int, message: str) -> JSONResponse:
    """Every refusal has the one shape the page reads: {"detail": one line}."""
    return JSONResponse({"detail": message}, status_code=status)


def field_name(loc) -> str:
    """('body', 'edits', 0, 'strength') -> 'edits[0].strength'."""
    out = ""
    for i, part in enumerate(loc):
        if i == 0 and part in WHERE:
            continue
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "the request"


def plain_message(err: dict) -> str:
    """One error of pydantic's list in plain words (falls back to pydantic's own message)."""
    name, kind, ctx = field_name(err.get("loc", ())), err.get("type", ""), err.get("ctx") or {}
    if kind == "extra_forbidden":
        return f"unknown field {name}"
    words = {
        "missing": "is required",
        "string_too_short": "must not be empty" if ctx.get("min_length") == 1 else f"must have at least {ctx.get('min_length')} characters",
        "string_too_long": f"must have at most {ctx.get('max_length')} characters",
        "string_type": "must be text",
        "int_parsing": "must be a whole number", "int_type": "must be a whole number", "int_from_float": "must be a whole number",
        "float_parsing": "must be a number", "float_type": "must be a number", "finite_number": "must be a finite number",
        "bool_parsing": "must be true or false", "bool_type": "must be true or false",
        "greater_than_equal": f"must be at least {ctx.get('ge')}", "less_than_equal": f"must be at most {ctx.get('le')}",
        "greater_than": f"must be more than {ctx.get('gt')}", "less_than": f"must be less than {ctx.get('lt')}",
        "too_short": f"needs at least {ctx.get('min_length')} item{'s' if ctx.get('min_length') != 1 else ''}",
        "too_long": f"takes at most {ctx.get('max_length')} items",
        "literal_error": f"must be {ctx.get('expected')}",
        "list_type": "must be a list", "model_attributes_type": "must be an object", "dict_type": "must be an object",
    }.get(kind)
    if kind == "json_invalid":
        return "the request body is not valid JSON"
    return f"{name} {words}" if words else f"{name}: {err.get('msg')}"


def validation_message(exc: RequestValidationError) -> str:
    """All problems of a request in one line."""
    return "; ".join(dict.fromkeys(plain_message(e) for e in exc.errors())) or "invalid request"
