"""A scripted OpenAI-compatible HTTP server on 127.0.0.1 (stdlib only): tests and demos of the client and the
scorers without a model. `respond(payload)` returns the reply text, or `(status, raw body)` to script failures."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

Responder = Callable[[dict[str, Any]], "str | tuple[int, str]"]


def completion(content: str) -> str:
    """A minimal chat-completion JSON body carrying `content`."""
    return json.dumps({"object": "chat.completion", "choices": [{"index": 0, "message": {"role": "assistant",
                       "content": content}, "finish_reason": "stop"}]})  # fmt: skip


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
                status, text = reply if isinstance(reply, tuple) else (200, completion(reply))
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
