"""The OpenAI-compatible client against a scripted local HTTP server: replies, retries, cache, errors, config."""

from __future__ import annotations

import pytest

from sparseinfer.errors import SparseInferError
from sparseinfer.interp.client import ChatClient, LLMConfig
from sparseinfer.interp.fake import FakeLLMServer
from sparseinfer.interp.server import free_port

MSG = [{"role": "user", "content": "hello"}]


def _config(url: str, **kw) -> LLMConfig:
    return LLMConfig(base_url=url, backoff=0.0, timeout=5, **kw)


def test_reply_payload_and_key():
    with FakeLLMServer(lambda p: "hi " + p["messages"][0]["content"]) as srv:
        with ChatClient(_config(srv.base_url, model="m1", api_key="sekret", max_tokens=7)) as client:
            assert client.chat(MSG) == "hi hello"
            assert client.chat(MSG, temperature=0.5) == "hi hello"
    first, second = srv.payloads
    assert first["model"] == "m1" and first["max_tokens"] == 7 and first["temperature"] == 0.0
    assert second["temperature"] == 0.5


def test_retries_transient_errors_then_succeeds():
    replies = iter([(503, "busy"), (429, "slow down"), (200, "not json"), "ok"])
    with FakeLLMServer(lambda p: next(replies)) as srv, ChatClient(_config(srv.base_url, retries=3)) as client:
        assert client.chat(MSG) == "ok"
        assert client.requests == 4


def test_gives_up_with_a_clear_error():
    with FakeLLMServer(lambda p: (500, "boom")) as srv, ChatClient(_config(srv.base_url, retries=2)) as client:
        with pytest.raises(SparseInferError, match=r"failed after 3 attempt\(s\): HTTP 500: boom"):
            client.chat(MSG)
        assert client.requests == 3
    with FakeLLMServer(lambda p: (200, '{"choices": []}')) as srv, ChatClient(_config(srv.base_url, retries=0)) as c:
        with pytest.raises(SparseInferError, match="not a chat completion"):
            c.chat(MSG)
    with FakeLLMServer(lambda p: (401, "bad key")) as srv, ChatClient(_config(srv.base_url, retries=5)) as client:
        with pytest.raises(SparseInferError, match="refused the request: HTTP 401"):
            client.chat(MSG)
        assert client.requests == 1  # client errors are not retried


def test_server_down():
    url = f"http://127.0.0.1:{free_port()}/v1"
    with ChatClient(_config(url, retries=1)) as client, pytest.raises(SparseInferError, match="cannot connect"):
        client.chat(MSG)


def test_disk_cache_answers_repeated_requests(tmp_path):
    calls = []
    with FakeLLMServer(lambda p: calls.append(1) or f"n{len(calls)}") as srv:
        with ChatClient(_config(srv.base_url, cache_dir=tmp_path)) as client:
            assert client.chat(MSG) == "n1"
            assert client.chat(MSG) == "n1"  # cached
            assert client.chat(MSG, max_tokens=3) == "n2"  # another request
        with ChatClient(_config(srv.base_url, cache_dir=tmp_path)) as again:  # a new process would see the same
            assert again.chat(MSG) == "n1" and again.requests == 0
    assert len(calls) == 2 and len(list(tmp_path.rglob("*.json"))) == 2


def test_concurrent_requests_keep_order():
    with FakeLLMServer(lambda p: p["messages"][0]["content"].upper()) as srv:
        with ChatClient(_config(srv.base_url, concurrency=4)) as client:
            convs = [[{"role": "user", "content": f"m{i}"}] for i in range(12)]
            assert client.chat_many(convs) == [f"M{i}" for i in range(12)]


def test_config_from_environment(monkeypatch):
    monkeypatch.setenv("SPARSEINFER_LLM_BASE_URL", "http://example.invalid/v1")
    monkeypatch.setenv("SPARSEINFER_LLM_MODEL", "gpt-x")
    monkeypatch.setenv("SPARSEINFER_LLM_API_KEY", "k")
    cfg = LLMConfig.from_env(model=None, concurrency=3)
    assert (cfg.base_url, cfg.model, cfg.api_key, cfg.concurrency) == ("http://example.invalid/v1", "gpt-x", "k", 3)
    assert LLMConfig.from_env(model="other").model == "other"
    with pytest.raises(ValueError):
        LLMConfig(concurrency=0)


def test_map_latents_spreads_items_over_clients_and_keeps_order():
    import threading
    import time

    from sparseinfer.interp.client import map_latents

    seen: dict[str, set[str]] = {}
    lock = threading.Lock()

    def work(client: ChatClient, item: int) -> tuple[int, str]:
        replies = {client.chat([{"role": "user", "content": f"{item}-{q}"}]) for q in range(3)}
        time.sleep(0.01 * (item % 3))  # finish out of order
        with lock:
            seen.setdefault(str(item), set()).update(replies)
        return item, client.config.base_url

    with FakeLLMServer(lambda p: "a") as one, FakeLLMServer(lambda p: "b") as two:
        with ChatClient(_config(one.base_url)) as c1, ChatClient(_config(two.base_url)) as c2:
            results = list(map_latents([c1, c2], work, list(range(8))))
            assert [i for i, _ in results] == list(range(8))  # input order
            assert {url for _, url in results} == {one.base_url, two.base_url}  # both servers worked
            assert all(len(replies) == 1 for replies in seen.values())  # one item's questions go to one server
            assert [i for i, _ in map_latents(c1, work, [3, 1])] == [3, 1]  # a single client, in turn
    with pytest.raises(SparseInferError, match="at least one"):
        list(map_latents([], work, [1]))
