"""The language-model study's probing stage: sparse probing and first-letter absorption of every learned
dictionary under every method, each calibrated to the dictionary's target L0 (as in `evaluate`).

- Probing (`evaluation.probing`): Brown genre and SOTU period (document labels, codes mean-pooled over a passage's
  tokens) and Brown part of speech (per token), on passages of randomly drawn documents run through the preset's
  model at its hook; k in {1, 2, 5, 20}; the dense-activation probe (method `dense`, also at k = d_model) is the
  ceiling. Probe train and test passages are different documents.
- Absorption (`evaluation.absorption`): single-word tokens of the held-out store `out/data/test`, the letter probes
  trained and tested on disjoint words.
- Each method is the evaluate stage's: its calibrated penalty (or k) is read from `out/evaluate/rows/` and the
  encoder rebuilt (`calibrated_method`), so the stage adds no bisection; a row the evaluate stage could not
  calibrate is an error row here too. Without an evaluate row the method is calibrated as `build_method` does.
- Cost: every row encodes the same probe tokens (`PROBE_SIZES`; the summary says how many): the passages, the
  letter-probe train tokens and only the test tokens absorption scores. So the iterative methods dominate; the
  dense probe and the letter probes are fitted once, the small probes with one BLAS thread.

`out/probe.parquet`: one row per dictionary x method x target x task x k (absorption rows have k = 0), `value` the
pooled held-out accuracy (or absorption rate / fraction over the probe-positive test tokens), `ci_low`/`ci_high`
its bootstrap 95% interval over test examples. Rows are saved one (dictionary, method, target) at a time under
`out/probe/rows/`, so a rerun resumes. Sizes per preset are in `PROBE_SIZES`.
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from functools import partial
from pathlib import Path
from typing import Any

import pandas as pd

from sparseinfer.errors import SparseInferError
from sparseinfer.experiments.llm_files import write_atomic
from sparseinfer.experiments.llm_presets import LLMPreset

PROBE = "probe.parquet"
Progress = Callable[[str], None]
REPORT_KS = (1, 20)


@dataclass(frozen=True)
class ProbeSizes:
    """How much data the stage uses: documents per corpus, tokens per passage, single-word tokens for absorption.
    Every row encodes all of them (Brown part of speech shares the Brown genre passages' tokens)."""

    brown_docs: int
    sotu_docs: int
    passage_tokens: int
    letter_tokens: int


PROBE_SIZES = {
    "micro": ProbeSizes(brown_docs=150, sotu_docs=0, passage_tokens=8, letter_tokens=64),
    # quick: 6-token passages (was 8) keep every document, so the genre and period intervals keep their widths;
    # docs/evaluation.md has the measured cost
    "quick": ProbeSizes(brown_docs=120, sotu_docs=90, passage_tokens=6, letter_tokens=1000),
    "study": ProbeSizes(brown_docs=500, sotu_docs=233, passage_tokens=128, letter_tokens=20_000),
}


def calibrated_method(method: str, family: str, encoder: Any, dictionary: Any, row: dict[str, Any],
                      preset: LLMPreset) -> Any:  # fmt: skip
    """The encoder `llm_study.build_method` calibrated for this row in the evaluate stage, rebuilt from the penalty
    or k its row saved (no second bisection; the same settings, `llm_study.method_settings`)."""
    from sparseinfer.evaluation.calibrate import BUDGETED, matched_encoder
    from sparseinfer.experiments.llm_study import method_settings

    name, params, warm = method_settings(method, family, encoder, preset)
    if not name:
        return encoder
    if name in BUDGETED:
        return matched_encoder(name, dictionary, k=int(row["k"]), params=params, warm=warm)
    return matched_encoder(name, dictionary, float(row["penalty"]), params=params, warm=warm)


def _encoder_for(method: str, family: str, target: int, encoder: Any, dictionary: Any, evaluated: Path, x: Any,
                 preset: LLMPreset) -> tuple[Any, bool]:  # fmt: skip
    """The row's encoder and whether the evaluate stage's calibration was reused (its row file `evaluated`);
    without that row, calibrated here as `build_method` does. An evaluate row with an error raises it again."""
    from sparseinfer.experiments.llm_study import build_method

    if evaluated.exists():
        row = json.loads(evaluated.read_text())
        if row.get("error"):
            raise SparseInferError(f"evaluate stage: {row['error']}")
        return calibrated_method(method, family, encoder, dictionary, row, preset), True
    return build_method(method, family, encoder, dictionary, x().to(preset.device), target, preset)[0], False


def stage_probe(preset: LLMPreset, out: Path, progress: Progress, sizes: ProbeSizes | None = None) -> dict[str, Any]:
    """Probing and absorption rows for every dictionary x method x target (resumable per row), then
    `probe.parquet`; `sizes` overrides the preset's `PROBE_SIZES`. Each method reuses the evaluate stage's
    calibration when that row exists. A task without a class in both splits is left out (said). Returns the
    summary: rows, tasks, letter probes, tokens encoded per row (per task), calibrations reused, seconds."""
    from sparseinfer.data.store import ActivationStore
    from sparseinfer.evaluation.absorption import (
        encode,
        evaluate_absorption,
        fit_letter_probes,
        letter_data_from_store,
        scored_test_tokens,
    )
    from sparseinfer.evaluation.downstream import hook_point
    from sparseinfer.evaluation.probing import binary_classes, corpus_tasks, evaluate_probes, long_rows
    from sparseinfer.evaluation.runs import calibration_signals
    from sparseinfer.experiments.llm_study import row_jobs, run_name
    from sparseinfer.lm.model import load_model
    from sparseinfer.training.activations.train import load_run

    out = Path(out)
    start = time.perf_counter()
    sizes = sizes or PROBE_SIZES.get(preset.name, PROBE_SIZES["quick"])
    rows_dir = out / "probe" / "rows"
    dense_path = rows_dir / "dense.json"
    jobs = row_jobs(preset, rows_dir)
    summary: dict[str, Any] = {"sizes": asdict(sizes), "reused_calibrations": 0}
    if not (dense_path.exists() and all(path.exists() for *_, path in jobs)):
        held_out = ActivationStore.open(out / "data" / "test")
        model, tokenizer = load_model(held_out.manifest.model, preset.device)
        tasks = corpus_tasks(model, tokenizer, hook_point(held_out.manifest.hook), sizes.brown_docs, sizes.sotu_docs,
                             sizes.passage_tokens, preset.seed)  # fmt: skip
        for task in [t for t in tasks if not binary_classes(t)]:
            progress(f"probe: task {task.name} left out: no class has enough examples in both splits")
        tasks = [t for t in tasks if binary_classes(t)]
        letters = letter_data_from_store(held_out, tokenizer, sizes.letter_tokens, preset.seed)
        probes = fit_letter_probes(letters, seed=preset.seed)
        scored = int(scored_test_tokens(letters, probes).sum())  # the only test tokens evaluate_absorption encodes
        summary["tokens"] = {t.name: int(t.x.shape[0]) for t in tasks} | {
            "first_letter": int(letters.x_train.shape[0] + letters.x_test.shape[0]),
            "first_letter_scored": scored,
        }
        shared = {id(t.x): int(t.x.shape[0]) for t in tasks}  # tasks on the same tokens are encoded once
        summary["tokens_per_row"] = sum(shared.values()) + int(letters.x_train.shape[0]) + scored
        progress(f"probe: {len(tasks)} probing tasks, {len(probes)} letter probes, {summary['tokens_per_row']} "
                 f"tokens per row ({time.perf_counter() - start:.0f} s)")  # fmt: skip
        if not dense_path.exists():
            base = {"dictionary": "dense", "run": "", "method": "dense", "target_l0": math.nan, "error": ""}
            dense = long_rows(evaluate_probes(tasks, None, seed=preset.seed), base) if tasks else []
            write_atomic(dense_path, json.dumps(dense, default=float))
        for i, (family, target, method, path) in enumerate(jobs, 1):
            if path.exists():
                continue
            progress(f"probe [{i}/{len(jobs)}]: {run_name(family, target)} with {method}")
            began = time.perf_counter()
            encoder, dictionary, info = load_run(out / "train" / run_name(family, target), preset.device)
            base = {"dictionary": family, "run": run_name(family, target), "method": method,
                    "target_l0": float(target), "error": ""}  # fmt: skip
            scale = info["scale"]
            signals = partial(calibration_signals, held_out, scale, preset.calibration_tokens)
            try:
                chosen, reused = _encoder_for(method, family, target, encoder, dictionary,
                                              out / "evaluate" / "rows" / path.name, signals, preset)  # fmt: skip
                summary["reused_calibrations"] += int(reused)
                codes = partial(encode, chosen, dictionary, scale=scale)
                rows = long_rows(evaluate_probes(tasks, codes, seed=preset.seed), base) if tasks else []
                rows += evaluate_absorption(chosen, dictionary, letters, probes, scale).long_rows(base)
            except SparseInferError as err:
                rows = [base | {"task": "", "k": 0, "metric": "", "value": math.nan, "error": str(err)}]
            for row in rows:
                row["seconds"] = time.perf_counter() - began
            write_atomic(path, json.dumps(rows, default=float))
            progress(f"  {len(rows)} rows ({time.perf_counter() - began:.0f} s)")
    paths = [dense_path, *(path for *_, path in jobs)]
    table = pd.DataFrame([row for p in paths for row in json.loads(p.read_text())])
    tmp = out / f".{PROBE}.tmp"
    table.to_parquet(tmp)
    os.replace(tmp, out / PROBE)
    done = table[table["error"] == ""] if "error" in table else table
    summary |= {"rows": len(table), "errors": int((table.get("error", pd.Series([], dtype=str)) != "").sum()),
                "tasks": sorted(set(done["task"]) - {"", "first_letter"}) if len(done) else [],
                "letters": int(done["letters"].max()) if "letters" in done and len(done) else 0,
                "seconds": time.perf_counter() - start}  # fmt: skip
    return summary


def _cell(row: pd.Series) -> str:
    if row["value"] != row["value"]:
        return "-"
    return f"{row['value']:.3f} [{row['ci_low']:.3f}, {row['ci_high']:.3f}]"


def probe_report_lines(out: Path) -> list[str]:
    """One Markdown table from `probe.parquet`: a row per dictionary / method / target L0 (the dense ceiling
    first), a column per task at k in `REPORT_KS` and per absorption metric; cells are value [95% interval]."""
    path = Path(out) / PROBE
    if not path.exists():
        return []
    table = pd.read_parquet(path)
    table = table[table["error"] == ""] if "error" in table else table
    dense_k = table.loc[table["method"] == "dense", "k"].max() if (table["method"] == "dense").any() else None
    keep = table["k"].isin([*REPORT_KS, 0]) | ((table["method"] == "dense") & (table["k"] == dense_k))
    table = table[keep].copy()
    table["column"] = [
        (f"{t} k={k}" if m == "accuracy" else m) if not (d == "dense" and k == dense_k) else f"{t} all dims"
        for t, k, m, d in zip(table["task"], table["k"], table["metric"], table["dictionary"], strict=True)
    ]
    table["cell"] = table.apply(_cell, axis=1)
    table["target_l0"] = table["target_l0"].map(lambda v: "-" if v != v else f"{v:g}")
    wide = table.pivot_table(index=["dictionary", "method", "target_l0"], columns="column", values="cell",
                             aggfunc="first", sort=False).fillna("-")  # fmt: skip
    keys = {
        c: (m != "accuracy", t, 10**9 if c.endswith("all dims") else k)
        for c, t, k, m in zip(table["column"], table["task"], table["k"], table["metric"], strict=True)
    }
    columns = sorted(wide.columns, key=keys.__getitem__)
    lines = [
        "| dictionary | method | target L0 | " + " | ".join(columns) + " |",
        "|---|---|---:|" + "---:|" * len(columns),
    ]
    for (dictionary, method, target), cells in wide.iterrows():
        lines.append(f"| {dictionary} | {method} | {target} | " + " | ".join(cells[c] for c in columns) + " |")
    return [
        "## Sparse probing and feature absorption at matched L0",
        "",
        "Held-out accuracy of k-sparse probes (binary one-vs-rest tasks, pooled over classes) and first-letter "
        "absorption (rate of full absorption and mean absorption fraction over probe-positive test tokens); "
        "[bootstrap 95% intervals over test examples]. The dense-activation probe is the ceiling.",
        "",
        *lines,
    ]
