"""Explanations for features: typed by hand, or written by any LLM behind an OpenAI-compatible API.

The LLM sees what a person would look at on the dashboard - the top contexts with the
max-activating token marked, and the tokens the feature promotes - and is asked for one short
phrase. Any server that speaks `POST /v1/chat/completions` works (see `qscope.llm`).
`explain_all` explains a whole store in concurrent batches and can be stopped and rerun: features
that already have an explanation from the same model are skipped.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor

from ..errors import QScopeError
from ..llm import ChatClient
from .store import FeatureStore
from .store.results import Example, Explanation, FeatureDashboard

OPEN, CLOSE = "<<", ">>"
N_EXAMPLES = 12  # top contexts an explainer is shown (detection scoring holds them out)
SYSTEM = ("You interpret features of a sparse autoencoder trained on a language model's activations. "
          "Given text excerpts where a feature fires, reply with ONE short phrase (at most 12 words) saying what "
          "the feature detects. No preamble, no quotes.")


def example_text(ex: Example, open_: str = OPEN, close: str = CLOSE) -> str:
    """The context as one line, the activating token wrapped in `open_ ... close`."""
    parts = [f"{open_}{tok}{close}" if i == ex.focus else tok for i, tok in enumerate(ex.tokens)]
    return "".join(parts).replace("\r", "").replace("\n", "↵")


def explain_prompt(dash: FeatureDashboard, n_examples: int = N_EXAMPLES) -> list[dict]:
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


def clean_reply(text: str) -> str:
    """Drop reasoning blocks, quotes and extra lines from a model's reply."""
    text = re.sub(r"<think>.*?</think>", "", text, flags=re.S).strip()
    text = next((line for line in text.splitlines() if line.strip()), "")
    return " ".join(text.strip().strip("\"'`").split())[:300]


def ask_llm(messages: list[dict], endpoint: str, api_model: str, api_key: str | None = None, timeout: float = 120,
            max_tokens: int = 256, client: ChatClient | None = None) -> str:
    """One explanation (temperature 0), cleaned; an empty one is an error."""
    client = client or ChatClient(endpoint, api_key, timeout)
    text = clean_reply(client.complete(messages, api_model, temperature=0, max_tokens=max_tokens))
    if not text:
        raise QScopeError(f"{client.url}: the model returned an empty explanation")
    return text


def explain_feature(store: FeatureStore, feature: int, text: str | None = None, endpoint: str | None = None,
                    api_model: str | None = None, api_key_env: str = "OPENAI_API_KEY", n_examples: int = N_EXAMPLES,
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


def explain_all(store: FeatureStore, endpoint: str, api_model: str, api_key_env: str = "OPENAI_API_KEY",
                features: Iterable[int] | None = None, batch_size: int = 8, n_examples: int = N_EXAMPLES,
                timeout: float = 120, progress: Callable[[int, int], None] | None = None) -> list[Explanation]:
    """Explain `features` (default: every feature that fired, most frequent first) with `api_model`,
    `batch_size` requests at a time; each batch is stored before the next starts, so a rerun after
    a stop or a failure continues. Features already explained by `api_model` are skipped.
    `progress(done, total)` after each batch. Returns the new explanations."""
    if batch_size < 1:
        raise QScopeError("batch size must be at least 1")
    if features is None:
        table = store.feature_table()
        fired = table["fires"].nonzero()[0]
        features = fired[(-table["fires"][fired]).argsort(kind="stable")].tolist()
    done_before = {f for (f,) in store.conn.execute("SELECT DISTINCT feature FROM explanations WHERE source=?",
                                                    (api_model,))}
    todo = [int(f) for f in features if int(f) not in done_before]
    client = ChatClient(endpoint, os.environ.get(api_key_env), timeout)
    added: list[Explanation] = []
    with ThreadPoolExecutor(batch_size) as pool:
        for start in range(0, len(todo), batch_size):
            chunk = todo[start:start + batch_size]
            prompts = [explain_prompt(store.dashboard(f), n_examples) for f in chunk]
            replies = [pool.submit(ask_llm, m, endpoint, api_model, timeout=timeout, client=client) for m in prompts]
            for f, reply in zip(chunk, replies):
                try:
                    added.append(store.add_explanation(f, reply.result(), api_model))
                except QScopeError as exc:
                    raise QScopeError(f"feature {f}: {exc} ({len(added)} explained this run; rerun to continue)") from None
            if progress:
                progress(start + len(chunk), len(todo))
    return added
