"""Time a command's wall clock and print it as one JSON line (for rows whose result is their duration).

python benchmarks/gpu/wall.py LABEL -- COMMAND ...
"""

from __future__ import annotations

import json
import subprocess
import sys
import time


def main(argv: list[str]) -> int:
    if len(argv) < 3 or argv[1] != "--":
        print(__doc__, file=sys.stderr)
        return 2
    start = time.perf_counter()
    proc = subprocess.run(argv[2:])
    seconds = time.perf_counter() - start
    if proc.returncode != 0:
        return proc.returncode
    print(json.dumps({"benchmark": argv[0], "seconds": round(seconds, 2)}))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
