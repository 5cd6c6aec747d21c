"""`save_saelens` folders loaded by SAEBench's own loader (`load_and_format_sae` on `SAE.load_from_disk`).

sae-bench 0.6.0 pins numpy<2 and datasets<4, which the project's environment does not meet, so it lives in a
separate virtual environment whose Python is given by `SPARSEINFER_SAEBENCH_PYTHON` (docs/evaluation.md says how
to make one); the loader runs there in a subprocess on folders written here. Without that environment the SAEBench
case is skipped and only SAELens's loader (in the project's environment) is checked.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from sparseinfer import Dictionary
from sparseinfer.encoders.base import create
from sparseinfer.io import save_saelens

D_IN, D_SAE = 8, 32
META = {"model_name": "smollm2-135m", "hook_name": "resid_pre.9", "context_size": 128, "dataset_path": "store"}
LOADER = """
import json, sys, warnings
from sae_lens import SAE
from sae_bench.sae_bench_utils.general_utils import load_and_format_sae
out = {}
for folder in sys.argv[1:]:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        sae_id, sae, _ = load_and_format_sae("custom", SAE.load_from_disk(folder), "cpu")
    m = sae.cfg.metadata
    out[folder] = {"sae_id": sae_id, "model_name": m.model_name, "hook_name": m.hook_name,
                   "hook_layer": m.hook_layer, "context_size": m.context_size, "d_in": sae.cfg.d_in,
                   "d_sae": sae.cfg.d_sae, "architecture": sae.cfg.architecture(),
                   "warnings": [str(w.message) for w in caught if "not normalized" in str(w.message)]}
print(json.dumps(out))
"""


def _exports(root: Path) -> dict[str, Path]:
    """A ReLU and a TopK export with the study's metadata, and a ReLU one with an input scale of 2."""
    dictionary = Dictionary.random(D_SAE, D_IN, seed=1, bias=True)
    folders = {"relu": root / "relu", "topk": root / "topk", "scaled": root / "scaled"}
    save_saelens(create("relu", dim=D_IN, n_latents=D_SAE).eval(), dictionary, folders["relu"], metadata=META)
    save_saelens(create("topk", dim=D_IN, n_latents=D_SAE, k=4).eval(), dictionary, folders["topk"], metadata=META)
    save_saelens(create("relu", dim=D_IN, n_latents=D_SAE).eval(), dictionary, folders["scaled"], metadata=META,
                 input_scale=2.0)  # fmt: skip
    return folders


def _saebench_python() -> str | None:
    path = os.environ.get("SPARSEINFER_SAEBENCH_PYTHON", "/tmp/saebench-venv/bin/python")
    return path if Path(path).is_file() else None


def test_exports_load_in_saelens(tmp_path) -> None:
    from sae_lens import SAE

    for name, folder in _exports(tmp_path).items():
        m = SAE.load_from_disk(folder).cfg.metadata
        assert m.model_name == "HuggingFaceTB/SmolLM2-135M-Instruct" and m.hook_name == "blocks.9.hook_resid_pre", name
        assert m.hook_layer == 9 and m.context_size == 128, name


def test_exports_load_with_saebench_loader(tmp_path) -> None:
    python = _saebench_python()
    if python is None:
        pytest.skip("no SAEBench environment (SPARSEINFER_SAEBENCH_PYTHON): see docs/evaluation.md")
    folders = _exports(tmp_path)
    done = subprocess.run([python, "-c", LOADER, *map(str, folders.values())], capture_output=True, text=True,
                          timeout=300, cwd=tmp_path)  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    loaded = json.loads(done.stdout.strip().splitlines()[-1])
    for name, folder in folders.items():
        row = loaded[str(folder)]
        assert row["sae_id"] == "custom_sae" and row["hook_layer"] == 9 and row["context_size"] == 128, name
        assert row["model_name"] == "HuggingFaceTB/SmolLM2-135M-Instruct", name
        assert row["hook_name"] == "blocks.9.hook_resid_pre" and (row["d_in"], row["d_sae"]) == (D_IN, D_SAE), name
    assert loaded[str(folders["topk"])]["architecture"] == "topk"
    assert loaded[str(folders["relu"])]["warnings"] == []  # unit-norm decoder rows, as SAEBench expects
    assert loaded[str(folders["scaled"])]["warnings"]  # an input scale != 1 divides them: SAEBench only warns
