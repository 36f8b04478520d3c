"""Explanations for features: typed by hand, or written by any LLM behind an OpenAI-compatible API.

The LLM sees what a person would look at on the dashboard - the top contexts with the
max-activating token marked, and the tokens the feature promotes - and is asked for one short
phrase. Any server that speaks `POST /v1/chat/completions` works (OpenAI, vLLM, llama.cpp,
Ollama, LM Studio ...); only the standard library is used to call it.
"""

from __future__ import annotations

import json
import os
import re
import urllib.error
import urllib.request

from ..errors import QScopeError
from .store import Example, Explanation, FeatureDashboard, FeatureStore

OPEN, CLOSE = "<<", ">>"
SYSTEM = ("You interpret features of a sparse autoencoder trained on a language model's activations. "
          "Given text excerpts where a feature fires, reply with ONE short phrase (at most 12 words) saying what "
          "the feature detects. No preamble, no quotes.")


def example_text(ex: Example, open_: str = OPEN, close: str = CLOSE) -> str:
    """The context as one line, the activating token wrapped in `open_ ... close`."""
    parts = [f"{open_}{tok}{close}" if i == ex.focus else tok for i, tok in enumerate(ex.tokens)]
    return "".join(parts).replace("\r", "").replace("\n", "↵")


def explain_prompt(dash: FeatureDashboard, n_examples: int = 12) -> list[dict]:
    """Chat messages asking for an explanation of `dash`'s feature."""
    if not dash.top:
        raise QScopeError(f"feature {dash.feature} never fired in this store's {dash.n_texts} texts: nothing to explain")
    lines = [f"Feature fires on {dash.density:.3%} of tokens. Excerpts where it fires most strongly; the token with the "
             f"highest activation is marked {OPEN}like this{CLOSE}:"]
    lines += [f"{i}. (activation {ex.act:.2f}) {example_text(ex)}" for i, ex in enumerate(dash.top[:n_examples], 1)]
    if dash.promoted:
        lines.append("Tokens it makes more likely next: " + ", ".join(repr(t) for t, _ in dash.promoted[:10]))
    lines.append("What does this feature detect? One short phrase.")
    return [{"role": "system", "content": SYSTEM}, {"role": "user", "content": "\n".join(lines)}]


def chat_url(endpoint: str) -> str:
    """Accept a base URL (`http://host:8000/v1`) or the full chat-completions URL."""
    endpoint = endpoint.strip().rstrip("/")
    if not endpoint.startswith(("http://", "https://")):
        raise QScopeError(f"endpoint {endpoint!r} must be an http(s) URL, e.g. http://localhost:8000/v1")
    return endpoint if endpoint.endswith("/chat/completions") else endpoint + "/chat/completions"


def clean_reply(text: str) -> str:
    """Drop reasoning blocks, quotes and extra lines from a model's reply."""
    text = re.sub(r"<think>.*?</think>", "", text, flags=re.S).strip()
    text = next((line for line in text.splitlines() if line.strip()), "")
    return " ".join(text.strip().strip("\"'`").split())[:300]


def ask_llm(messages: list[dict], endpoint: str, api_model: str, api_key: str | None = None, timeout: float = 120,
            max_tokens: int = 256) -> str:
    """One chat completion (temperature 0); every failure becomes one QScopeError line."""
    url = chat_url(endpoint)
    body = json.dumps({"model": api_model, "messages": messages, "temperature": 0, "max_tokens": max_tokens}).encode()
    headers = {"Content-Type": "application/json"}
    if api_key:
        headers["Authorization"] = f"Bearer {api_key}"
    request = urllib.request.Request(url, data=body, headers=headers, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            payload = json.loads(response.read().decode("utf-8"))
    except urllib.error.HTTPError as exc:
        detail = exc.read().decode("utf-8", "replace")[:200].replace("\n", " ")
        raise QScopeError(f"{url}: HTTP {exc.code} {exc.reason}: {detail}") from None
    except urllib.error.URLError as exc:
        raise QScopeError(f"{url}: cannot reach the endpoint ({exc.reason})") from None
    except (TimeoutError, OSError) as exc:
        raise QScopeError(f"{url}: request failed ({exc})") from None
    except json.JSONDecodeError:
        raise QScopeError(f"{url}: the reply is not JSON; is this an OpenAI-compatible endpoint?") from None
    try:
        content = payload["choices"][0]["message"]["content"]
    except (KeyError, IndexError, TypeError):
        raise QScopeError(f"{url}: the reply has no choices[0].message.content") from None
    reply = clean_reply(content or "")
    if not reply:
        raise QScopeError(f"{url}: the model returned an empty explanation")
    return reply


def explain_feature(store: FeatureStore, feature: int, text: str | None = None, endpoint: str | None = None,
                    api_model: str | None = None, api_key_env: str = "OPENAI_API_KEY", n_examples: int = 12,
                    timeout: float = 120) -> Explanation:
    """Store an explanation for `feature`: `text` by hand (source "manual"), or one asked of
    `api_model` at `endpoint` (source = the model's name; API key read from `api_key_env`)."""
    if (text is None) == (endpoint is None):
        raise QScopeError("give either an explanation text or an endpoint (with an API model name)")
    if text is not None:
        return store.add_explanation(feature, text, "manual")
    if not api_model:
        raise QScopeError("--endpoint needs --api-model (the model name the server expects)")
    messages = explain_prompt(store.dashboard(feature), n_examples)
    reply = ask_llm(messages, endpoint, api_model, os.environ.get(api_key_env), timeout=timeout)
    return store.add_explanation(feature, reply, api_model)
