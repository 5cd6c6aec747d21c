"""The reference study as presets: `sparseinfer reproduce` expands them into sweeps, runs them and writes the report.

`paper` follows ../shared/paper-protocol.md exactly; `quick` is the same study (same methods, ITO included) with fewer
steps and seeds so that it finishes in minutes on 2 CPU cores. Ablations are presets too.

Encoders are built as the study's code builds them (variant "study"): the SAE, TopK SAE and MLP encoders have biases
in the known-codes setting only. Variant "mlp-bias" is this project's earlier preset, whose MLP encoders (study
MLPs and the TopK ablation's) kept biases in every setting; its MLP methods are labelled `+bias`. The data come from
this project's generator (`data_source="sparseinfer"`, data seed 0) or the study's (`"study"`, seeds
`STUDY_SEEDS`); `data_seeds=n` repeats every method on n data sets (seeds base, base + 1, ...).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from sparseinfer.data.synthetic import STUDY_SEEDS
from sparseinfer.encoders import get
from sparseinfer.encoders.base import needs_k
from sparseinfer.errors import SparseInferError
from sparseinfer.experiments.execute import execute
from sparseinfer.experiments.report import write_report
from sparseinfer.experiments.runner import run_sweep
from sparseinfer.experiments.sweep_config import SweepConfig


@dataclass(frozen=True)
class Preset:
    """Steps, seeds and widths of one scale of the study."""

    steps: dict[str, int]  # per setting
    ito_steps: dict[str, int]
    ito_lr: dict[str, float]
    seeds: tuple[int, ...]
    lr: float
    widths: dict[str, tuple[int, ...]]
    eval_every: int
    ito_log_every: int


PRESETS: dict[str, Preset] = {
    "paper": Preset(
        steps={"known_codes": 20_000, "known_dictionary": 20_000, "learn_both": 40_000},
        ito_steps={"known_dictionary": 20_000, "learn_both": 10_000},
        ito_lr={"known_dictionary": 1e-3, "learn_both": 3e-3},
        seeds=(0, 1, 2, 3, 4),
        lr=1e-3,
        widths={"known_codes": (32, 256, 1024), "known_dictionary": (32, 256), "learn_both": (32, 256)},
        eval_every=200,
        ito_log_every=200,
    ),
    "quick": Preset(
        steps={"known_codes": 5_000, "known_dictionary": 5_000, "learn_both": 10_000},
        ito_steps={"known_dictionary": 3_000, "learn_both": 2_000},
        ito_lr={"known_dictionary": 1e-2, "learn_both": 1e-2},
        seeds=(0, 1, 2),
        lr=5e-3,  # 5x the protocol's rate so that 4x fewer steps reach a comparable point
        widths={"known_codes": (32, 256), "known_dictionary": (32, 256), "learn_both": (32, 256)},
        eval_every=100,
        ito_log_every=100,
    ),
}

SETTINGS = ("known_codes", "known_dictionary", "learn_both")
VARIANTS = ("study", "mlp-bias")
DATA_SOURCES = ("sparseinfer", "study")
NOTES = """\
## How this run follows the protocol (and where it fixes it)
- Encoders: {variant}
- Data: {data}
- Dictionary MCC uses the optimal (Hungarian) matching; the original study matched greedily.
- `sae+ito` starts the inference-time optimisation from the SAE's codes (the intended method); `sae+ito(cold)`
  starts every code at u = -10 as the original study's code actually did. Both are shown, labelled.
- FLOPs are counted from the operations actually performed (multiply-add = 2), per sample, times samples and
  steps, with formulas checked against torch's FLOP counter; the original's hand formulae counted the batch twice.
- Total FLOPs = training FLOPs + FLOPs of inferring the 1024 test codes (for ITO: encoder + optimisation).
"""


_VARIANT_NOTES = {
    "study": "bias-free SAE, TopK and MLP encoders in the known-dictionary and learn-both settings, biases in the "
    "known-codes setting, as the study's code builds them (`use_bias=False`).",
    "mlp-bias": "variant `mlp-bias` (this project's earlier preset): MLP encoders, labelled `+bias`, keep their "
    "biases in every setting; the SAE is bias-free outside the known-codes setting as in the study.",
}


def notes(data_source: str = "sparseinfer", variant: str = "study", data_seeds: int = 1) -> str:
    """The report's notes on the protocol for one configuration of the preset."""
    if data_source == "study":
        data = "the study's generator (numpy legacy `RandomState`), seed 20240625 (known codes, known dictionary) "
        data += "and 20240926 (learn both)"
    else:
        data = "this project's generator (torch), data seed 0"
    if data_seeds > 1:
        data += f", and the {data_seeds - 1} following seed(s): {data_seeds} data sets per method"
    return NOTES.format(variant=_VARIANT_NOTES[variant], data=data + ".")


def _method(label: str, setting: str, preset: Preset, **fields: Any) -> dict[str, Any]:
    return {"method": label, "setting": setting, **fields}


def encoder_bias(setting: str, variant: str = "study", mlp: bool = False) -> bool:
    """Whether an amortised encoder of the preset has biases: the study's only in setting 1 (known codes); variant
    "mlp-bias" keeps the MLPs' biases everywhere."""
    if variant not in VARIANTS:
        raise SparseInferError(f"unknown encoder variant {variant!r}; known variants: {', '.join(VARIANTS)}")
    return setting == "known_codes" or (mlp and variant == "mlp-bias")


def _mlp_label(width: int, setting: str, variant: str) -> str:
    """`mlp-256`, or `mlp-256+bias` where the variant's MLP differs from the study's."""
    differs = encoder_bias(setting, variant, mlp=True) != encoder_bias(setting, mlp=True)
    return f"mlp-{width}" + ("+bias" if differs else "")


def _ito(setting: str, preset: Preset, start: str) -> dict[str, Any]:
    return {
        "steps": preset.ito_steps[setting],
        "lr": preset.ito_lr[setting],
        "start": start,
        "log_every": preset.ito_log_every,
    }


def study_methods(setting: str, preset: Preset, variant: str = "study") -> list[dict[str, Any]]:
    """The study's methods in one setting: SAE, MLPs, SAE+ITO (warm and cold), sparse coding."""
    sae = {"name": "relu", "params": {"bias": encoder_bias(setting, variant)}}
    methods = [_method("sae", setting, preset, encoder=sae)]
    for width in preset.widths[setting]:
        mlp = {"name": "mlp", "params": {"hidden": [width], "bias": encoder_bias(setting, variant, mlp=True)}}
        methods.append(_method(_mlp_label(width, setting, variant), setting, preset, encoder=mlp))
    if setting != "known_codes":
        methods.append(_method("sae+ito", setting, preset, encoder=sae, ito=_ito(setting, preset, "encoder")))
        methods.append(_method("sae+ito(cold)", setting, preset, encoder=sae, ito=_ito(setting, preset, "cold")))
    if setting == "learn_both":
        methods.append(
            _method("sparse_coding", setting, preset, kind="sparse_coding", ito=_ito(setting, preset, "cold"))
        )
    return methods


def extra_methods(names: list[str], setting: str, k: int) -> list[dict[str, Any]]:
    """Any registered encoders added to the comparison with default hyperparameters (k filled from the data)."""
    out = []
    for name in names:
        cls = get(name)
        if setting == "known_codes" and cls.kind == "iterative":
            continue  # nothing to train against true codes
        params = {"k": k} if needs_k(name) else {}
        out.append({"method": name, "setting": setting, "encoder": {"name": name, "params": params}})
    return out


def study_sweep(
    target: str,
    preset_name: str,
    encoders: list[str] | None = None,
    seeds: list[int] | None = None,
    data: dict[str, Any] | None = None,
    data_source: str = "sparseinfer",
    variant: str = "study",
    data_seeds: int = 1,
) -> SweepConfig:
    """The sweep for `target` (a setting, 'all', or an ablation) at scale `preset_name`, on `data_source`'s data
    ("sparseinfer" from data seed 0, "study" from the study's seeds), over `data_seeds` consecutive data seeds."""
    if preset_name not in PRESETS:
        raise SparseInferError(f"unknown preset {preset_name!r}; known presets: {', '.join(PRESETS)}")
    if data_source not in DATA_SOURCES:
        raise SparseInferError(f"unknown data source {data_source!r}; known sources: {', '.join(DATA_SOURCES)}")
    if isinstance(data_seeds, bool) or not isinstance(data_seeds, int) or data_seeds < 1:
        raise SparseInferError(f"data_seeds must be a positive integer, got {data_seeds!r}")
    encoder_bias("known_codes", variant)  # checks the variant's name
    preset = PRESETS[preset_name]
    data = {"n_latents": 16, "dim": 8, "k": 3, "source": data_source, **(data or {})}
    key = target.replace("-", "_")
    if key in ABLATIONS:
        methods = ABLATIONS[key](preset, data["k"], variant)
    elif key == "all" or key in SETTINGS:
        settings = SETTINGS if key == "all" else (key,)
        methods = []
        for setting in settings:
            methods += study_methods(setting, preset, variant) + extra_methods(encoders or [], setting, data["k"])
    else:
        known = ["all", *(s.replace("_", "-") for s in SETTINGS), *(a.replace("_", "-") for a in ABLATIONS)]
        raise SparseInferError(f"unknown study target {target!r}; known targets: {', '.join(known)}")
    for method in methods:
        setting = method["setting"]
        method["train"] = {
            "steps": preset.steps[setting],
            "lr": preset.lr,
            "eval_every": preset.eval_every,
            **method.get("train", {}),
        }
    first = {s: data.get("seed", STUDY_SEEDS[s] if data_source == "study" else 0) for s in SETTINGS}
    methods = [
        {**method, "data": {"seed": first[method["setting"]] + i}} for i in range(data_seeds) for method in methods
    ]
    return SweepConfig(base={"data": data}, methods=methods, seeds=list(seeds or preset.seeds))


def _ablation_topk(preset: Preset, k: int, variant: str = "study") -> list[dict[str, Any]]:
    out = []
    for setting in ("known_dictionary", "learn_both"):
        sae_bias, mlp_bias = encoder_bias(setting, variant), encoder_bias(setting, variant, mlp=True)
        label = _mlp_label(256, setting, variant)
        for kk in (1, 2, 3, 4, 5, 8, 10, 15):
            sae = {"name": "topk", "params": {"k": kk, "bias": sae_bias}}
            out.append(_method(f"sae-topk{kk}", setting, preset, encoder=sae))
            mlp = {"name": "mlp", "params": {"hidden": [256], "activation": "topk", "k": kk, "bias": mlp_bias}}
            out.append(_method(f"{label}-topk{kk}", setting, preset, encoder=mlp))
    return out


def _ablation_l1(preset: Preset, k: int, variant: str = "study") -> list[dict[str, Any]]:
    out = []
    for setting in ("known_dictionary", "learn_both"):
        for lam in (0.001, 0.003, 0.01, 0.03, 0.1, 0.3, 1.0, 5.0):
            out.append(
                _method(
                    f"sae-l1={lam:g}",
                    setting,
                    preset,
                    encoder={"name": "relu", "params": {"bias": False}},
                    train={"l1": lam},
                )
            )
    return out


def _ablation_bias(preset: Preset, k: int, variant: str = "study") -> list[dict[str, Any]]:
    return [
        _method(
            f"sae-{'bias' if bias else 'nobias'}", setting, preset, encoder={"name": "relu", "params": {"bias": bias}}
        )
        for setting in ("known_dictionary", "learn_both")
        for bias in (True, False)
    ]


def _ablation_sklearn(preset: Preset, k: int, variant: str = "study") -> list[dict[str, Any]]:
    return [
        _method("sklearn-dl", "learn_both", preset, kind="sklearn_dictionary_learning"),
        _method("sae", "learn_both", preset, encoder={"name": "relu", "params": {"bias": False}}),
    ]


ABLATIONS = {
    "ablation_topk": _ablation_topk,
    "ablation_l1": _ablation_l1,
    "ablation_bias": _ablation_bias,
    "ablation_sklearn": _ablation_sklearn,
}


def run_study(
    target: str,
    preset: str,
    out: Path,
    workers: int = 1,
    resume: bool = False,
    encoders: list[str] | None = None,
    seeds: list[int] | None = None,
    progress: bool = True,
    backend: str = "process",
    ray_address: str | None = None,
    data_source: str = "sparseinfer",
    variant: str = "study",
    data_seeds: int = 1,
) -> pd.DataFrame:
    """Expand, run (resumably) and report the study: `out/results.parquet`, `out/report.md`, `out/figures/`.

    Targets "scaling" and "theory" are the sweep over (N, M, K) and the theory checks (see `scaling.py` and
    `theory_study.py`); `data_source`, `variant` and `data_seeds` apply to the settings and ablations only."""
    if target == "scaling":
        from sparseinfer.experiments.scaling import run_scaling

        return run_scaling(preset, Path(out), workers, resume, seeds, progress, backend, ray_address)
    if target == "theory":
        from sparseinfer.experiments.theory_study import run_theory

        return run_theory(preset, Path(out), workers, resume, seeds, progress, backend, ray_address)
    sweep = study_sweep(
        target, preset, encoders, seeds, data_source=data_source, variant=variant, data_seeds=data_seeds
    )
    specs = [run.spec() for run in sweep.expand()]
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "notes.md").write_text(notes(data_source, variant, data_seeds))
    results = run_sweep(
        specs, out, execute, workers=workers, resume=resume, progress=progress, backend=backend, ray_address=ray_address
    )
    write_report(out)
    return results
