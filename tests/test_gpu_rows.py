"""The GPU suite's row runner (benchmarks/gpu/row.py): a result, a skip note for a failure, a stop at the limit."""

from __future__ import annotations

import importlib.util
import json
import sys
import time
from pathlib import Path

ROW = Path(__file__).parents[1] / "benchmarks" / "gpu" / "row.py"
spec = importlib.util.spec_from_file_location("gpu_row", ROW)
row = importlib.util.module_from_spec(spec)
spec.loader.exec_module(row)


def _run(tmp_path: Path, *args: str) -> dict:
    assert row.main([str(tmp_path), "r", *args]) == 0
    return json.loads((tmp_path / "r.json").read_text())


def test_a_row_keeps_the_last_json_line(tmp_path):
    record = _run(tmp_path, "--", sys.executable, "-c", "print('{\"a\": 1}'); print('noise'); print('{\"b\": 2}')")
    assert record["b"] == 2 and "a" not in record and "skipped" not in record


def test_a_failing_row_writes_a_skip_note(tmp_path):
    record = _run(tmp_path, "--", sys.executable, "-c", "import no_such_package_here")
    assert record["skipped"] and "No module named 'no_such_package_here'" in record["note"]


def test_a_row_past_its_limit_is_stopped_with_its_children(tmp_path):
    marker = tmp_path / "child-alive"
    child = f"import time; time.sleep(3); open({str(marker)!r}, 'w')"
    parent = f"import subprocess, sys, time; subprocess.Popen([sys.executable, '-c', {child!r}]); time.sleep(30)"
    start = time.perf_counter()
    record = _run(tmp_path, "--timeout", "0.5", "--", sys.executable, "-c", parent)
    assert time.perf_counter() - start < 10 and record["skipped"] and "limit of 0.5 s" in record["note"]
    time.sleep(3.5)
    assert not marker.exists()
