"""A scripted OpenAI-compatible HTTP server on 127.0.0.1 (stdlib only): tests and demos of the client and the
scorers without a model. `respond(payload)` returns the reply text, a {token: probability} dict (answered as a
1-token chat completion with OpenAI-style `logprobs`, the most likely token as the text), or `(status, raw body)`
to script failures."""

from __future__ import annotations

import json
import math
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

Responder = Callable[[dict[str, Any]], "str | dict[str, float] | tuple[int, str]"]


def completion(content: str) -> str:
    """A minimal chat-completion JSON body carrying `content`."""
    return json.dumps({"object": "chat.completion", "choices": [{"index": 0, "message": {"role": "assistant",
                       "content": content}, "finish_reason": "stop"}]})  # fmt: skip


def logprob_completion(probabilities: dict[str, float]) -> str:
    """A chat-completion body whose one generated token is the likeliest of `probabilities`, with every candidate
    in `logprobs.content[0].top_logprobs` (the OpenAI / vLLM / llama.cpp shape)."""
    ranked = sorted(probabilities.items(), key=lambda kv: -kv[1])
    top = [{"token": t, "logprob": math.log(p), "bytes": list(t.encode())} for t, p in ranked if p > 0]
    first = {**top[0], "top_logprobs": top}
    return json.dumps({"object": "chat.completion", "choices": [{"index": 0, "finish_reason": "length",
                       "message": {"role": "assistant", "content": ranked[0][0]},
                       "logprobs": {"content": [first]}}]})  # fmt: skip


class FakeLLMServer:
    """`with FakeLLMServer(respond) as srv:` serves `srv.base_url` and records requests in `srv.payloads`."""

    def __init__(self, respond: Responder) -> None:
        self.respond = respond
        self.payloads: list[dict[str, Any]] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                payload = json.loads(body or b"{}")
                outer.payloads.append(payload)
                reply = outer.respond(payload)
                if isinstance(reply, tuple):
                    status, text = reply
                elif isinstance(reply, dict):
                    status, text = 200, logprob_completion(reply)
                else:
                    status, text = 200, completion(reply)
                data = text.encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self) -> None:
                data = b'{"status":"ok"}'
                self.send_response(200)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def base_url(self) -> str:
        """The OpenAI-style base URL (ends in /v1)."""
        return f"http://127.0.0.1:{self._server.server_address[1]}/v1"

    def __enter__(self) -> FakeLLMServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join()
