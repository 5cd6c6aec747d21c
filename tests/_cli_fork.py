"""`python -m sparseinfer ARGS` in a fresh child process, forked from one interpreter that has imported the package.

Every CLI process spends about 3 s of CPU importing torch and friends before it parses its arguments; a table of
~100 bad inputs would spend minutes on imports alone. Here a server process imports the package once; each call
forks it and the child runs the `sparseinfer` module as `python -m` does (`runpy`, `__main__`, the same `main()`),
with its own stdin (/dev/null), stdout and stderr files, working folder, process group and exit status. A call that
outlives its timeout is killed with its process group (a hang fails the test instead of blocking it).
`SPARSEINFER_TEST_FRESH=1` runs every call in a fresh `python -m sparseinfer` instead.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

_SERVER = r"""
import atexit, json, os, runpy, signal, sys, tempfile, time, traceback

for name in sys.argv[1:]:
    __import__(name)
print(json.dumps({"ready": True}), flush=True)


def child(req, out_fd, err_fd):
    os.setpgid(0, 0)
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    os.dup2(out_fd, 1)
    os.dup2(err_fd, 2)
    os.chdir(req["cwd"])
    os.environ.update(req["env"])
    sys.argv = ["sparseinfer", *req["args"]]
    code = 0
    try:
        runpy.run_module("sparseinfer", run_name="__main__", alter_sys=True)
    except SystemExit as exc:
        if exc.code is None:
            code = 0
        elif isinstance(exc.code, int):
            code = exc.code
        else:
            print(exc.code, file=sys.stderr)
            code = 1
    except BaseException:
        traceback.print_exc()
        code = 1
    try:
        atexit._run_exitfuncs()
        sys.stdout.flush()
        sys.stderr.flush()
    finally:
        os._exit(code)


for line in sys.stdin:
    req = json.loads(line)
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        start = time.monotonic()
        pid = os.fork()
        if pid == 0:
            child(req, out.fileno(), err.fileno())
        deadline = start + req["timeout"]
        timed_out, status = False, 0
        while True:
            done, status = os.waitpid(pid, os.WNOHANG)
            if done:
                break
            if time.monotonic() > deadline:
                timed_out = True
                os.killpg(pid, signal.SIGKILL)
                _, status = os.waitpid(pid, 0)
                break
            time.sleep(0.01)
        try:
            os.killpg(pid, signal.SIGKILL)  # anything the command left running in its group
        except ProcessLookupError:
            pass
        rc = os.waitstatus_to_exitcode(status)
        texts = []
        for f in (out, err):
            f.seek(0)
            texts.append(f.read().decode("utf-8", "replace"))
    reply = {"rc": rc, "stdout": texts[0], "stderr": texts[1], "timed_out": timed_out,
             "seconds": time.monotonic() - start}
    print(json.dumps(reply), flush=True)
"""


class ForkedCLI:
    """Runs `python -m sparseinfer ARGS` in children forked from one server that has imported `preload` already."""

    def __init__(self, preload: tuple[str, ...] = ("sparseinfer.cli.app",)) -> None:
        self.fresh = os.environ.get("SPARSEINFER_TEST_FRESH") == "1"
        self.server: subprocess.Popen[str] | None = None
        if not self.fresh:
            self.server = subprocess.Popen(
                [sys.executable, "-c", _SERVER, *preload], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
            )
            assert self.server.stdout is not None
            ready = self.server.stdout.readline()
            if not ready:
                raise RuntimeError(f"the CLI fork server did not start (exit {self.server.wait()})")

    def __call__(
        self, *args: str, cwd: Path, timeout: float = 120, env: dict[str, str] | None = None
    ) -> subprocess.CompletedProcess[str]:
        """The finished command (returncode, stdout, stderr); a timeout gives returncode -9 and 'timed out' on
        stderr."""
        if self.server is None:
            return fresh_cli(*args, cwd=cwd, timeout=timeout, env=env)
        assert self.server.stdin is not None and self.server.stdout is not None
        request = {"args": list(args), "cwd": str(cwd), "timeout": timeout, "env": env or {}}
        self.server.stdin.write(json.dumps(request) + "\n")
        self.server.stdin.flush()
        reply = json.loads(self.server.stdout.readline())
        stderr = reply["stderr"] + (f"\n[timed out after {timeout} s]" if reply["timed_out"] else "")
        return subprocess.CompletedProcess(["sparseinfer", *args], reply["rc"], reply["stdout"], stderr)

    def close(self) -> None:
        """Stop the server."""
        if self.server is not None:
            assert self.server.stdin is not None
            self.server.stdin.close()
            try:
                self.server.wait(timeout=30)
            except subprocess.TimeoutExpired:  # an imported library's thread keeps it alive: stop it
                self.server.kill()
                self.server.wait()
            self.server = None


def fresh_cli(
    *args: str, cwd: Path, timeout: float = 120, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """`python -m sparseinfer ARGS` in a new interpreter (a timeout gives returncode -9)."""
    try:
        return subprocess.run(
            [sys.executable, "-m", "sparseinfer", *args], cwd=cwd, capture_output=True, text=True, timeout=timeout,
            stdin=subprocess.DEVNULL, env={**os.environ, **(env or {})},
        )  # fmt: skip
    except subprocess.TimeoutExpired as exc:
        out = exc.stdout.decode() if isinstance(exc.stdout, bytes) else exc.stdout or ""
        err = exc.stderr.decode() if isinstance(exc.stderr, bytes) else exc.stderr or ""
        return subprocess.CompletedProcess(["sparseinfer", *args], -9, out, err + f"\n[timed out after {timeout} s]")
