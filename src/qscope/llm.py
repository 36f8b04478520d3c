"""One client for any OpenAI-compatible chat-completions endpoint (OpenAI, vLLM, llama.cpp, Ollama,
LM Studio ...), on the official `openai` SDK.

Local servers need no API key. Every failure - unreachable host, timeout, HTTP error, a reply
that is not a chat completion - becomes one QScopeError line naming the endpoint.
"""

from __future__ import annotations

from typing import Any

from .errors import QScopeError


def base_url(endpoint: str) -> str:
    """Accept a base URL (`http://host:8000/v1`) or the full chat-completions URL."""
    endpoint = endpoint.strip().rstrip("/")
    if not endpoint.startswith(("http://", "https://")):
        raise QScopeError(f"endpoint {endpoint!r} must start with http:// or https://, e.g. http://localhost:8000/v1")
    return endpoint.removesuffix("/chat/completions")


class ChatClient:
    """Chat completions from one endpoint; safe to share between threads."""

    def __init__(self, endpoint: str, api_key: str | None = None, timeout: float = 120, retries: int = 2,
                 http_client=None):
        from openai import OpenAI

        self.url = base_url(endpoint) + "/chat/completions"
        self.timeout = timeout
        # The SDK insists on a key; local servers ignore the placeholder.
        self._client = OpenAI(base_url=base_url(endpoint), api_key=api_key or "none", timeout=timeout,
                              max_retries=retries, http_client=http_client)

    def complete(self, messages: list[dict], model: str, **params: Any) -> str:
        """The reply text of one chat completion; `params` (temperature, max_tokens, seed ...) go
        to the API as given."""
        import openai

        try:
            reply = self._client.chat.completions.create(model=model, messages=messages, **params)
        except openai.APIStatusError as exc:
            detail = str(exc.message)[:200].replace("\n", " ")
            raise QScopeError(f"{self.url}: HTTP {exc.status_code}: {detail}") from None
        except openai.APITimeoutError:
            raise QScopeError(f"{self.url}: no answer within {self.timeout:g} s") from None
        except openai.APIConnectionError as exc:
            raise QScopeError(f"{self.url}: cannot reach the endpoint ({exc.__cause__ or exc})") from None
        except openai.OpenAIError as exc:
            raise QScopeError(f"{self.url}: {exc}; is this an OpenAI-compatible endpoint?") from None
        try:
            return reply.choices[0].message.content or ""
        except (AttributeError, IndexError, TypeError):
            raise QScopeError(f"{self.url}: the reply is not a chat completion (no choices[0].message.content)") from None
