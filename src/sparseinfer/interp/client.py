"""One OpenAI-compatible chat client (httpx): base URL, model and key from arguments or the environment, parallel
requests, retries with exponential backoff, timeouts, and an on-disk response cache keyed by the full request.

Works unchanged against the local llama.cpp server (`sparseinfer llm serve`), vLLM, OpenAI or OpenRouter.
"""

from __future__ import annotations

import hashlib
import json
import os
import queue
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
from pydantic import BaseModel, ConfigDict, Field

from sparseinfer.errors import SparseInferError
from sparseinfer.interp.logprobs import parse_top_logprobs

ENV_PREFIX = "SPARSEINFER_LLM_"
DEFAULT_BASE_URL = "http://127.0.0.1:8089/v1"
Message = dict[str, str]


class LLMConfig(BaseModel):
    """Where the LLM is and how to talk to it."""

    model_config = ConfigDict(extra="forbid")

    base_url: str = DEFAULT_BASE_URL
    model: str = "local"
    api_key: str | None = None
    concurrency: int = Field(1, ge=1)
    retries: int = Field(3, ge=0)
    backoff: float = Field(0.5, ge=0, description="first retry delay in seconds; doubles each retry")
    timeout: float = Field(120.0, gt=0)
    cache_dir: Path | None = None
    max_tokens: int = Field(64, ge=1)
    temperature: float = Field(0.0, ge=0)

    @classmethod
    def from_env(cls, **overrides: Any) -> LLMConfig:
        """Settings from SPARSEINFER_LLM_BASE_URL / _MODEL / _API_KEY, then `overrides` (None values ignored)."""
        env = {k: os.environ.get(ENV_PREFIX + k.upper()) for k in ("base_url", "model", "api_key")}
        values = {k: v for k, v in env.items() if v is not None}
        values |= {k: v for k, v in overrides.items() if v is not None}
        return cls(**values)


class ChatClient:
    """Chat completions with retries, a disk cache and a thread pool; errors are one-line `SparseInferError`s."""

    def __init__(self, config: LLMConfig | None = None) -> None:
        self.config = config or LLMConfig.from_env()
        headers = {"Authorization": f"Bearer {self.config.api_key}"} if self.config.api_key else {}
        self._http = httpx.Client(base_url=self.config.base_url.rstrip("/"), headers=headers,
                                  timeout=self.config.timeout)  # fmt: skip
        self.requests = 0  # HTTP requests actually sent (cache hits send none)

    def close(self) -> None:
        """Close the connection pool."""
        self._http.close()

    def __enter__(self) -> ChatClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _payload(self, messages: Sequence[Message], params: dict[str, Any]) -> dict[str, Any]:
        base = {"max_tokens": self.config.max_tokens, "temperature": self.config.temperature}
        return {"model": self.config.model, "messages": list(messages), **base, **params}

    def _cache_path(self, payload: dict[str, Any]) -> Path | None:
        if self.config.cache_dir is None:
            return None
        key = json.dumps({"base_url": self.config.base_url, **payload}, sort_keys=True)
        digest = hashlib.sha256(key.encode()).hexdigest()
        return Path(self.config.cache_dir) / digest[:2] / f"{digest}.json"

    def chat(self, messages: Sequence[Message], **params: Any) -> str:
        """The assistant's reply to `messages` (from the cache when this exact request was answered before)."""
        return self._cached(self._payload(messages, params), _content)

    def next_token(self, messages: Sequence[Message], top_logprobs: int = 20) -> tuple[str, dict[str, float]]:
        """One forward pass: (the reply's first token, {candidate token: log-probability}) for the assistant's
        next token, from an OpenAI-style `logprobs` request with `max_tokens` 1 (the dict is empty when the server
        ignores logprobs; then only the reply text is known)."""
        payload = self._payload(messages, {"max_tokens": 1, "logprobs": True, "top_logprobs": top_logprobs,
                                           "temperature": 0.0})  # fmt: skip
        content, top = self._cached(payload, lambda body: (_content(body), parse_top_logprobs(body)))
        return content, dict(top)

    def _cached(self, payload: dict[str, Any], extract: Callable[[Any], Any]) -> Any:
        """`extract(response JSON)` for `payload`, from the disk cache when this exact request was answered."""
        path = self._cache_path(payload)
        if path is not None and path.exists():
            try:
                return json.loads(path.read_text())["content"]
            except (json.JSONDecodeError, KeyError):
                path.unlink(missing_ok=True)  # a torn cache entry: ask again
        result = self._post(payload, extract)
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(f".{os.getpid()}.{threading.get_ident()}.tmp")
            tmp.write_text(json.dumps({"content": result, "request": payload}))
            tmp.replace(path)
        return result

    def chat_many(self, conversations: Sequence[Sequence[Message]], **params: Any) -> list[str]:
        """Replies to many conversations, `config.concurrency` at a time, in input order."""
        if self.config.concurrency == 1 or len(conversations) < 2:
            return [self.chat(c, **params) for c in conversations]
        with ThreadPoolExecutor(self.config.concurrency) as pool:
            return list(pool.map(lambda c: self.chat(c, **params), conversations))

    def _post(self, payload: dict[str, Any], extract: Callable[[Any], Any]) -> Any:
        url = f"{self.config.base_url.rstrip('/')}/chat/completions"
        problem = "no attempt"
        for attempt in range(self.config.retries + 1):
            if attempt:
                time.sleep(self.config.backoff * 2 ** (attempt - 1))
            try:
                self.requests += 1
                response = self._http.post("/chat/completions", json=payload)
            except httpx.TimeoutException:
                problem = f"timed out after {self.config.timeout:g} s"
                continue
            except httpx.TransportError as err:
                problem = f"cannot connect ({type(err).__name__}); start one with `sparseinfer llm serve` or set "
                problem += f"{ENV_PREFIX}BASE_URL"
                continue
            if response.status_code == 429 or response.status_code >= 500:
                problem = f"HTTP {response.status_code}: {_short(response.text)}"
                continue
            if response.status_code >= 400:
                raise SparseInferError(f"LLM server {url} refused the request: HTTP {response.status_code}: "
                                       f"{_short(response.text)}")  # fmt: skip
            try:
                return extract(response.json())
            except (json.JSONDecodeError, KeyError, IndexError, TypeError, ValueError) as err:
                problem = f"answered something that is not a chat completion ({type(err).__name__}: "
                problem += f"{_short(response.text)})"
        tries = self.config.retries + 1
        raise SparseInferError(f"LLM server {url} failed after {tries} attempt(s): {problem}")


def _content(body: Any) -> str:
    """The assistant message of a chat-completion body."""
    content = body["choices"][0]["message"].get("content")
    if content is None and "logprobs" in body["choices"][0]:  # a 1-token logprob request may carry no text
        return ""
    if not isinstance(content, str):
        raise TypeError("content is not a string")
    return content


def _short(text: str, limit: int = 160) -> str:
    """One line, at most `limit` characters, for error messages."""
    flat = " ".join(text.split())
    return flat if len(flat) <= limit else flat[: limit - 3] + "..."


def map_latents(clients: ChatClient | Sequence[ChatClient], work: Callable[[ChatClient, Any], Any],
                items: Sequence[Any]) -> Iterator[Any]:  # fmt: skip
    """`work(client, item)` for every item, as many at a time as there are clients (each call holds one client
    for its whole duration, so a server's prompt cache keeps one latent's prefix); results in input order.

    Several single-threaded llama.cpp servers, one per core, are what keeps a busy 2-core machine fast: one server
    with two threads slowed ~4x per question when another process ran (docs/interp.md)."""
    pool = [clients] if isinstance(clients, ChatClient) else list(clients)
    if not pool:
        raise SparseInferError("give at least one LLM client")
    if len(pool) == 1 or len(items) < 2:
        for item in items:
            yield work(pool[0], item)
        return
    free: queue.Queue[ChatClient] = queue.Queue()
    for client in pool:
        free.put(client)

    def run(item: Any) -> Any:
        client = free.get()
        try:
            return work(client, item)
        finally:
            free.put(client)

    with ThreadPoolExecutor(len(pool)) as executor:
        futures = [executor.submit(run, item) for item in items]
        try:
            for future in futures:
                yield future.result()
        finally:
            for future in futures:
                future.cancel()
