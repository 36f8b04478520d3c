"""A stand-in OpenAI-compatible chat endpoint on loopback, for the tests of every LLM client."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class FakeChat:
    """`with FakeChat(reply) as llm:` serves `/v1/chat/completions` at `llm.url`; `reply(body)` makes
    the answer's text, `llm.requests` keeps (path, Authorization header, body) of every request and
    `llm.status` (settable) is the HTTP status it answers with."""

    def __init__(self, reply: Callable[[dict], str] = lambda body: "ok", status: int = 200):
        self.reply, self.status, self.requests = reply, status, []
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                fake.requests.append((self.path, self.headers.get("Authorization"), body))
                answer = {"id": "x", "object": "chat.completion", "created": 0, "model": body.get("model", ""),
                          "choices": [{"index": 0, "finish_reason": "stop",
                                       "message": {"role": "assistant", "content": fake.reply(body)}}]}
                data = json.dumps(answer if fake.status == 200 else {"error": "boom"}).encode()
                self.send_response(fake.status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}/v1"

    def __enter__(self) -> FakeChat:
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()
