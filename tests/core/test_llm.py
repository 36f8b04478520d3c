"""`qscope.llm.ChatClient`: chat completions from any OpenAI-compatible endpoint, every failure one line."""

import json

import httpx
import pytest

from qscope import QScopeError
from qscope.llm import ChatClient, base_url


def _client(handler, **kw):
    return ChatClient("http://llm.local/v1", http_client=httpx.Client(transport=httpx.MockTransport(handler)), **kw)


def _completion(content):
    return {"id": "c1", "object": "chat.completion", "created": 0, "model": "m",
            "choices": [{"index": 0, "finish_reason": "stop", "message": {"role": "assistant", "content": content}}]}


def test_a_completion_sends_the_model_messages_and_params():
    seen = []

    def handler(request):
        seen.append((request.url.path, request.headers.get("authorization"), json.loads(request.content)))
        return httpx.Response(200, json=_completion("a reply"))

    client = _client(handler, api_key="sekret")
    messages = [{"role": "user", "content": "hello"}]
    assert client.complete(messages, "fake-model", temperature=0.5, seed=3) == "a reply"
    path, auth, body = seen[0]
    assert path == "/v1/chat/completions" and auth == "Bearer sekret"
    assert (body["model"], body["messages"], body["temperature"], body["seed"]) == ("fake-model", messages, 0.5, 3)


def test_http_errors_and_non_completions_are_one_line():
    client = _client(lambda request: httpx.Response(500, json={"error": {"message": "boom"}}), retries=0)
    with pytest.raises(QScopeError, match=r"^http://llm.local/v1/chat/completions: HTTP 500: .*boom"):
        client.complete([{"role": "user", "content": "x"}], "m")
    client = _client(lambda request: httpx.Response(200, json={"nothing": "here"}))
    with pytest.raises(QScopeError, match="http://llm.local/v1/chat/completions: .*choices"):
        client.complete([{"role": "user", "content": "x"}], "m")


def test_an_unreachable_endpoint_names_itself():
    with pytest.raises(QScopeError, match=r"^http://127.0.0.1:9/v1/chat/completions: cannot reach the endpoint"):
        ChatClient("http://127.0.0.1:9/v1", timeout=5, retries=0).complete([{"role": "user", "content": "x"}], "m")


def test_base_url_accepts_the_full_url_and_refuses_a_bare_host():
    assert base_url("http://h:8000/v1/chat/completions/") == "http://h:8000/v1"
    with pytest.raises(QScopeError, match="must start with http"):
        base_url("localhost:8000")
