"""What the server refuses before any endpoint runs, because a web page on another site could send it.

A page anywhere can make the user's browser POST to 127.0.0.1 (a form, or `fetch` with
`no-cors`: bodies `text/plain`, form or multipart, no CORS preflight), or reach it under its own
name after rebinding that name's DNS to 127.0.0.1. So: the Host header must be a served name
(400), POST bodies must be JSON (415, which such pages cannot send without a preflight we never
answer), and bodies are capped at `MAX_BODY` as they arrive, chunked ones included (413).
"""

from __future__ import annotations

from collections.abc import Sequence

from fastapi import FastAPI
from starlette.datastructures import Headers
from starlette.middleware.trustedhost import TrustedHostMiddleware

from . import schemas as S
from .messages import error_response

LOCAL_HOSTS = ("localhost", "127.0.0.1", "[::1]")  # as Host headers write them (IPv6 in brackets)


def guard(app: FastAPI, allowed_hosts: Sequence[str]) -> None:
    """Install the checks on `app`; `allowed_hosts` are Host names ('*' accepts any)."""
    app.add_middleware(RequestGuard)
    app.add_middleware(TrustedHostMiddleware, allowed_hosts=list(allowed_hosts))  # added last: runs first


def _is_json(content_type: str | None) -> bool:
    kind = (content_type or "").split(";")[0].strip().lower()
    return kind == "application/json" or (kind.startswith("application/") and kind.endswith("+json"))


class RequestGuard:
    """ASGI middleware: POST bodies must be JSON (415) and at most `S.MAX_BODY` bytes (413), counted
    as they arrive, so a chunked body without content-length is cut off at the cap, not parsed.
    The accepted body is handed on in one piece."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope["method"] in ("GET", "HEAD", "OPTIONS"):
            await self.app(scope, receive, send)
            return
        headers = Headers(scope=scope)
        if scope["method"] == "POST" and not _is_json(headers.get("content-type")):
            await error_response(415, f"POST bodies must be JSON (content-type application/json), not "
                               f"{headers.get('content-type') or 'none'}")(scope, receive, send)
            return
        size = headers.get("content-length")
        if size and (not size.isdigit() or int(size) > S.MAX_BODY):
            await error_response(413, f"request body over {S.MAX_BODY} bytes")(scope, receive, send)
            return
        body = bytearray()
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            body += message.get("body", b"")
            if len(body) > S.MAX_BODY:
                await error_response(413, f"request body over {S.MAX_BODY} bytes")(scope, receive, send)
                return
            if not message.get("more_body", False):
                break
        replayed = False

        async def replay():
            nonlocal replayed
            if replayed:
                return await receive()
            replayed = True
            return {"type": "http.request", "body": bytes(body), "more_body": False}

        await self.app(scope, replay, send)
