"""The result store: plain files (JSON, YAML, Parquet) written atomically, and the gathering of run folders.

Every write goes through the core atomic writer (`sparseinfer.atomic`: a temporary file beside the target, moved
into place), so a reader (or a resumed sweep after `kill -9`) sees either the old file or the complete new one.
A run folder is complete iff its `result.json` exists and parses: runs write it last, as their completion marker.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pandas as pd
import yaml

from sparseinfer import atomic
from sparseinfer.errors import SparseInferError

RESULT_FILE = "result.json"
RESULTS_TABLE = "results.parquet"
RUNS_DIR = "runs"


def write_text(path: Path, text: str) -> None:
    """Write UTF-8 text atomically."""
    atomic.write_text(path, text, parents=True)


def _read_text(path: Path, what: str) -> str:
    path = Path(path)
    if not path.is_file():
        raise SparseInferError(f"{what} file not found: {path}")
    return path.read_text(encoding="utf-8")


def _json_default(obj: Any) -> Any:
    """Turn numpy/torch scalars and arrays and paths into JSON values; anything else is an error."""
    if isinstance(obj, Path):
        return str(obj)
    if hasattr(obj, "tolist"):  # numpy arrays and scalars, torch tensors
        return obj.tolist()
    raise TypeError(f"value of type {type(obj).__name__} is not JSON serialisable")


def to_plain(obj: Any) -> Any:
    """Convert to plain JSON data (dicts with str keys, lists, str, numbers, bools, None): tuples become lists,
    numpy/torch values plain numbers/lists, paths strings; anything else is a SparseInferError."""
    try:
        return json.loads(json.dumps(obj, default=_json_default))
    except (TypeError, ValueError) as exc:
        raise SparseInferError(f"not plain data: {exc}") from exc


def write_json(path: Path, obj: Any) -> None:
    """Write `obj` as indented JSON, atomically. Numpy/torch values are converted to plain numbers/lists."""
    try:
        text = json.dumps(obj, indent=2, sort_keys=True, default=_json_default)
    except (TypeError, ValueError) as exc:
        raise SparseInferError(f"cannot write {path} as JSON: {exc}") from exc
    write_text(Path(path), text + "\n")


def read_json(path: Path) -> Any:
    """Read a JSON file; a missing or corrupt file is a SparseInferError."""
    text = _read_text(path, "JSON")
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise SparseInferError(f"corrupt JSON file {path}: {exc}") from exc


def write_yaml(path: Path, obj: Any) -> None:
    """Write `obj` (plain data: dicts, lists, str, numbers, bools, None) as YAML, atomically, keys in given order."""
    try:
        text = yaml.safe_dump(obj, sort_keys=False, allow_unicode=True)
    except yaml.YAMLError as exc:
        raise SparseInferError(f"cannot write {path} as YAML (plain data only): {exc}") from exc
    write_text(Path(path), text)


def read_yaml(path: Path) -> Any:
    """Read a YAML file with `yaml.safe_load`; a missing or corrupt file is a SparseInferError."""
    text = _read_text(path, "YAML")
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        first_line = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise SparseInferError(f"corrupt YAML file {path}: {first_line}") from exc


def write_parquet(path: Path, df: pd.DataFrame) -> None:
    """Write a DataFrame as Parquet (pyarrow), atomically; columns of mixed types are a SparseInferError."""
    atomic.write_parquet(Path(path), df, parents=True)


def read_parquet(path: Path) -> pd.DataFrame:
    """Read a Parquet file; a missing or corrupt file is a SparseInferError."""
    import pyarrow as pa

    path = Path(path)
    if not path.is_file():
        raise SparseInferError(f"Parquet file not found: {path}")
    try:
        return pd.read_parquet(path, engine="pyarrow")
    except (pa.ArrowInvalid, OSError) as exc:
        raise SparseInferError(f"corrupt Parquet file {path}: {exc}") from exc


def is_complete(run_dir: Path) -> bool:
    """True iff `run_dir/result.json` exists and parses as a JSON object (the run's completion marker)."""
    try:
        return isinstance(read_json(Path(run_dir) / RESULT_FILE), dict)
    except (SparseInferError, OSError, UnicodeDecodeError):
        return False


def flatten(obj: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Flatten nested dicts into one level, joining keys with '.': {"a": {"b": 1}} -> {"a.b": 1}."""
    flat: dict[str, Any] = {}
    for key, value in obj.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            # An empty dict has no columns to give; record it as missing rather than an unwritable empty struct.
            flat.update(flatten(value, prefix=f"{name}.") if value else {name: None})
        else:
            flat[name] = value
    return flat


def gather_results(out_dir: Path) -> pd.DataFrame:
    """One row per complete run folder under `out_dir/runs/`: its result.json flattened, plus `run_id` (the folder
    name); rows sorted by run_id. The table is also written to `out_dir/results.parquet` for reports to read."""
    out_dir = Path(out_dir)
    runs_dir = out_dir / RUNS_DIR
    rows = []
    folders = sorted(p for p in runs_dir.iterdir() if p.is_dir()) if runs_dir.is_dir() else []
    for run_dir in folders:
        if not is_complete(run_dir):
            continue
        row = flatten(read_json(run_dir / RESULT_FILE))
        row["run_id"] = run_dir.name
        rows.append(row)
    df = pd.DataFrame(rows)
    if df.empty:
        df = pd.DataFrame({"run_id": pd.Series([], dtype=str)})
    df = df[["run_id", *[c for c in df.columns if c != "run_id"]]]
    df = df.sort_values("run_id", kind="stable").reset_index(drop=True)
    write_parquet(out_dir / RESULTS_TABLE, df)
    return df
