"""Run one row of the GPU suite as a subprocess and write its JSON (or a skip note) into the output folder.

    python benchmarks/gpu/row.py OUT NAME -- COMMAND ...

The row's result is the last JSON line the command prints; a command that fails (a missing package, no model)
writes `{"row": NAME, "skipped": true, "note": ...}` instead, so one missing piece never stops the suite.
"""

from __future__ import annotations

import json
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


def main(argv: list[str]) -> int:
    if len(argv) < 4 or argv[2] != "--":
        print(__doc__, file=sys.stderr)
        return 2
    out, name, command = Path(argv[0]), argv[1], argv[3:]
    out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    proc = subprocess.run(command, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    (out / f"{name}.log").write_text(proc.stdout + proc.stderr)
    record = last_json(proc.stdout) if proc.returncode == 0 else None
    if record is None:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["no output"]
        record = {"skipped": True, "note": f"exit {proc.returncode}: {tail[0][:300]}"}
    record = {"row": name, "command": " ".join(command), "wall_s": round(seconds, 2), **record}
    (out / f"{name}.json").write_text(json.dumps(record, indent=1))
    print(f"{name}: {'skipped (' + record['note'] + ')' if record.get('skipped') else 'ok'} in {seconds:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
