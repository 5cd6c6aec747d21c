"""Run one row of the GPU suite as a subprocess and write its JSON (or a skip note) into the output folder.

    python benchmarks/gpu/row.py OUT NAME [--timeout SECONDS] -- COMMAND ...

The row's result is the last JSON line the command prints; a command that fails (a missing package, no model) or
runs past `--timeout` (it is stopped with all its child processes) writes `{"row": NAME, "skipped": true, "note":
...}` instead, so one missing piece never stops the suite and one slow row never eats the others' time.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path


def last_json(text: str) -> dict | None:
    """The last line of `text` that parses as a JSON object, or None."""
    for line in reversed(text.splitlines()):
        line = line.strip()
        if line.startswith("{"):
            try:
                return json.loads(line)
            except json.JSONDecodeError:
                continue
    return None


def run(command: list[str], timeout: float | None) -> tuple[int | None, str, str]:
    """(exit status or None on timeout, stdout, stderr) of `command`, run in its own process group so that a
    timeout stops its workers too."""
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        out, err = proc.communicate(timeout=timeout)
        return proc.returncode, out, err
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        return None, out, err


def main(argv: list[str]) -> int:
    timeout = None
    if len(argv) >= 4 and argv[2] == "--timeout":
        timeout, argv = float(argv[3]), argv[:2] + argv[4:]
    if len(argv) < 4 or argv[2] != "--":
        print(__doc__, file=sys.stderr)
        return 2
    out, name, command = Path(argv[0]), argv[1], argv[3:]
    out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    status, stdout, stderr = run(command, timeout)
    seconds = time.perf_counter() - start
    (out / f"{name}.log").write_text(stdout + stderr)
    record = last_json(stdout) if status == 0 else None
    if status is None:
        record = {"skipped": True, "note": f"stopped after the row's limit of {timeout:g} s"}
    elif record is None:
        tail = (stderr or stdout).strip().splitlines()[-1:] or ["no output"]
        record = {"skipped": True, "note": f"exit {status}: {tail[0][:300]}"}
    record = {"row": name, "command": " ".join(command), "wall_s": round(seconds, 2), **record}
    (out / f"{name}.json").write_text(json.dumps(record, indent=1))
    print(f"{name}: {'skipped (' + record['note'] + ')' if record.get('skipped') else 'ok'} in {seconds:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
