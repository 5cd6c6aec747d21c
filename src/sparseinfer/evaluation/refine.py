"""Better codes for a pretrained SAE: its own encoder's codes against codes refined against its own decoder, at
matched L0, with the FVU gained and the inference FLOPs paid.

Refiners (all non-negative, since SAE codes are):
- `support-refit`: keep the SAE's support, refit the values by non-negative least squares (L0 <= the SAE's);
- `ito`: the registered `ito` encoder: the SAE's codes refined by Adam on reconstruction + L1 (`gradient` refiner,
  ReLU-parameterised so codes can reach exactly zero), then debiased on the support it keeps;
- `omp`: orthogonal matching pursuit with a budget of k = the SAE's mean L0, rounded;
- `fista`, `lca`: the Lasso warm-started from the SAE's codes and debiased.
`ito`, `fista` and `lca` have their penalty set by bisection on a calibration slice so that the mean L0 matches the
SAE's. That bisection is a one-off per SAE, not part of inference; its FLOPs are reported separately
(`calibration_flops`, on `calibration_samples` signals) rather than added to the per-batch inference cost.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from sparseinfer.codes import as_dense
from sparseinfer.dictionary import Dictionary
from sparseinfer.encoders._support import refit_with_sizes
from sparseinfer.encoders.base import Encoder, IterativeEncoder, create
from sparseinfer.encoders.gradient import study_penalty
from sparseinfer.errors import SparseInferError
from sparseinfer.evaluation.calibrate import bisect_penalty
from sparseinfer.flops import proximal
from sparseinfer.io import LoadedSAE, load_sae
from sparseinfer.metrics import fvu, l0
from sparseinfer.validation import check_count, check_signals

REFINERS = ("support-refit", "ito", "fista", "omp", "lca")
CALIBRATED = ("ito", "fista", "lca")
BISECTION_STEPS = 16
DEFAULT_HOOK = "resid_pre.9"  # `infer --sae --model` when neither --hook nor the SAE's files name one
ITO_DEFAULTS: dict[str, Any] = {"parameterisation": "relu", "lr": 0.05, "max_iter": 100, "debias": True}


@dataclass
class RefineResult:
    """One row of the comparison: codes from `method` on the signals (FLOPs for the whole batch)."""

    method: str
    fvu: float
    l0: float
    flops: int
    extra_flops: int
    detail: str = ""
    calibration_flops: int = 0
    calibration_samples: int = 0


@dataclass
class DownstreamResult(RefineResult):
    """A comparison row plus the spliced model's losses (clean and zero-ablated CE are the same for every row)."""

    ce: float = 0.0
    ce_clean: float = 0.0
    ce_zero: float = 0.0
    loss_recovered: float = 0.0
    kl: float = 0.0
    kl_zero: float = 0.0  # KL(clean || zero-ablated)
    kl_score: float = 0.0  # SAEBench's normalised KL, (kl_zero - kl) / kl_zero


class RefinedEncoder(Encoder):
    """The SAE's encoder (`method='sae'`) or the SAE's codes refined by one calibrated refiner, as an `Encoder`, so
    it can be spliced into a language model like any other. FLOPs are those of the last call (encoder included)."""

    name = "refined"
    summary = "a pretrained SAE's codes, optionally refined against its own decoder"

    def __init__(self, sae: LoadedSAE, method: str, solver: Encoder | None = None, detail: str = "") -> None:
        super().__init__()
        if method != "sae" and method not in REFINERS:
            raise SparseInferError(f"unknown refiner {method!r}; choose one of {', '.join(REFINERS)}")
        self.sae, self.method, self.solver, self.detail = sae, method, solver, detail
        self.calibration_flops = 0
        self.calibration_samples = 0
        self._sizes: list[int] = []

    def forward(self, x: Tensor, dictionary: Dictionary) -> Tensor:
        if self.method == "omp":  # a cold solver with a K budget: the SAE's codes are not used
            assert self.solver is not None
            return as_dense(self.solver(x, dictionary))
        if self.method == "ito":  # the ito encoder runs the SAE's encoder itself
            assert self.solver is not None
            return as_dense(self.solver(x, dictionary))
        own = self.sae.codes(x)  # x is on the pair's scale, as for any encoder of this dictionary
        if self.method == "sae":
            return own
        if self.method == "support-refit":
            codes, self._sizes = refit_with_sizes(dictionary.centre(x), dictionary.atoms.detach(), own, nonneg=True)
            return codes
        assert self.solver is not None
        return as_dense(self.solver(x, dictionary, init=own))

    def own_flops(self, batch: int, dim: int, n_latents: int) -> int:
        """The SAE encoder's FLOPs: the baseline every refiner is compared with."""
        return self.sae.encoder.inference_flops(batch, dim, n_latents)

    def inference_flops(self, batch: int, dim: int, n_latents: int) -> int:
        if self.method in ("omp", "ito"):
            assert self.solver is not None
            return self.solver.inference_flops(batch, dim, n_latents)
        base = self.own_flops(batch, dim, n_latents)
        if self.method == "sae":
            return base
        if self.method == "support-refit":
            return base + proximal.refit(batch, dim, self._sizes, n_latents).total
        assert self.solver is not None
        return base + self.solver.inference_flops(batch, dim, n_latents)


def _solver(sae: LoadedSAE, name: str, params: dict[str, Any], penalty: float | None = None) -> Encoder:
    """A refiner with fixed settings; `penalty` is on the Lasso scale (1/2 ||x - sD||^2 + penalty ||s||_1)."""
    dico = sae.dictionary
    if name == "ito":
        refiner = {**ITO_DEFAULTS, **params}
        if penalty is not None:
            refiner["penalty"] = study_penalty(penalty, dico.dim, dico.n_latents)
        return create(
            "ito", dim=dico.dim, n_latents=dico.n_latents, init=sae.encoder, refiner="gradient", refiner_kwargs=refiner
        )
    hp = {"nonneg": True, **params}
    if name in ("fista", "lca"):
        hp = {"debias": True, "max_iter": 500, **hp}
        if penalty is not None:
            hp["penalty"] = penalty
    solver = create(name, **hp)
    assert isinstance(solver, IterativeEncoder)
    return solver


def _calibrate(
    sae: LoadedSAE, name: str, params: dict[str, Any], x: Tensor, target: float, steps: int
) -> tuple[float, int]:
    """`calibrate.bisect_penalty` for a refiner, all `steps` (no tolerance: as close as it gets): the penalty whose
    mean L0 on `x` comes closest to `target` and the FLOPs every trial run cost (the SAE's encoder counted once for
    fista/lca, whose warm start is shared)."""
    dico = sae.dictionary
    start = sae.codes(x) if name != "ito" else None
    spent = 0 if start is None else sae.encoder.inference_flops(x.shape[0], dico.dim, dico.n_latents)
    build = lambda p: _solver(sae, name, params, p)  # noqa: E731
    found = bisect_penalty(build, x, dico, target, init=start, tolerance=0.0, max_steps=steps)
    return found.penalty, spent + found.flops


@torch.no_grad()
def build_method(
    sae: LoadedSAE,
    x: Tensor,
    method: str,
    params: dict[str, Any] | None = None,
    calibration: int = 256,
    bisection_steps: int = BISECTION_STEPS,
) -> RefinedEncoder:
    """`method` ('sae' or one of REFINERS) set up for `sae`, its L0 budget matched on the first `calibration`
    signals of `x` (the SAE's mean L0 there); a `penalty` in `params` skips the bisection."""
    params = dict(params or {})
    dico = sae.dictionary
    if method == "sae" or method == "support-refit":
        return RefinedEncoder(sae, method, detail="NNLS on the SAE's support" if method != "sae" else "")
    if method not in REFINERS:
        raise SparseInferError(f"unknown refiner {method!r}; choose one of {', '.join(REFINERS)}")
    check_count(bisection_steps, "bisection_steps")
    cal = sae.scale(check_signals(x.to(dico.atoms.dtype), dico.dim)[: check_count(calibration, "calibration")])
    target = l0(sae.codes(cal))
    if method == "omp":
        k = min(dico.n_latents, max(1, round(target)))
        return RefinedEncoder(sae, "omp", _solver(sae, "omp", {"k": k, **params}), f"k={k}")
    penalty, spent = params.pop("penalty", None), 0
    if penalty is None:
        penalty, spent = _calibrate(sae, method, params, cal, target, bisection_steps)
    refined = RefinedEncoder(sae, method, _solver(sae, method, params, penalty), f"lasso penalty={penalty:.3g}")
    refined.calibration_flops, refined.calibration_samples = spent, cal.shape[0] if spent else 0
    return refined


@torch.no_grad()
def score(refined: RefinedEncoder, x: Tensor) -> tuple[Tensor, RefineResult]:
    """Codes of `x` from a built method and their row: FVU, L0, FLOPs and extra FLOPs over the SAE's encoder."""
    dico = refined.sae.dictionary
    x = refined.sae.scale(check_signals(x.to(dico.atoms.dtype), dico.dim))
    codes = refined(x, dico)
    shape = (x.shape[0], dico.dim, dico.n_latents)
    flops, base = refined.inference_flops(*shape), refined.own_flops(*shape)
    detail = refined.detail
    solver = refined.solver.refiner if refined.method == "ito" else refined.solver  # type: ignore[union-attr]
    if isinstance(solver, IterativeEncoder) and solver.diagnostics is not None:
        detail = f"{detail}, {solver.diagnostics}"
    row = RefineResult(
        refined.method, fvu(x, dico.decode(codes)), l0(codes), flops, flops - base, detail,
        refined.calibration_flops, refined.calibration_samples,
    )  # fmt: skip
    return codes, row


def refine(
    sae: LoadedSAE,
    x: Tensor,
    method: str,
    params: dict[str, Any] | None = None,
    calibration: int = 256,
    bisection_steps: int = BISECTION_STEPS,
) -> tuple[Tensor, RefineResult]:
    """Codes of `x` from `method` ('sae' = the SAE's own encoder, or one of REFINERS) and their scores."""
    return score(build_method(sae, x, method, params, calibration, bisection_steps), x)


def compare(
    sae: LoadedSAE | str | Path,
    x: Tensor,
    methods: list[str],
    params: dict[str, Any] | None = None,
    bisection_steps: int = BISECTION_STEPS,
) -> list[RefineResult]:
    """The SAE's own codes, then each refiner in `methods`, on the same signals."""
    loaded = sae if isinstance(sae, LoadedSAE) else load_sae(sae)
    return [refine(loaded, x, m, params, bisection_steps=bisection_steps)[1] for m in ["sae", *methods]]


def run_refine(
    sae: Path,
    signals: Path | None,
    method: str,
    params: dict[str, Any] | None = None,
    out: Path | None = None,
    model: str | None = None,
    hook: str | None = None,
    text: str = "shakespeare",
    contexts: int = 16,
    context_length: int = 128,
    fold: bool = False,
) -> tuple[list[RefineResult], str]:
    """`sparseinfer infer --sae`: load the SAE and the signals, compare its codes with `method` ('all': every
    refiner), optionally save the refined codes (last method) to `out`; returns the rows and a title.

    With `model` (a local folder or the built-in default), each method's reconstruction is also spliced into the
    model at `hook` on `contexts` test contexts of `text`, adding CE, loss recovered and KL; the signals then default
    to the activations at `hook` on those contexts. `hook` defaults to the SAE's own (its files' hook_name, ours or
    SAELens', e.g. `blocks.3.hook_resid_pre`), else `resid_pre.9`. Signals are raw activations: the SAE's input
    scale is applied; codes are on the SAE's own scale (the source library's, or decoder-norm folded with `fold`)."""
    from safetensors.torch import save_file

    from sparseinfer.evaluation.downstream import LMContext
    from sparseinfer.evaluation.inference import load_signals

    methods = list(REFINERS) if method == "all" else [method]
    if any(m not in REFINERS for m in methods):
        raise SparseInferError(f"with --sae, --encoder must be one of {', '.join(REFINERS)} or all; got {method!r}")
    if signals is None and model is None:
        raise SparseInferError("--sae needs --signals (activations, batch x d_in) or --model to harvest them")
    loaded = load_sae(sae, fold=fold)
    lm = None
    if model is not None:
        hook = hook or loaded.hook_name or DEFAULT_HOOK
        lm = LMContext.load(model, hook, text, contexts, context_length, loaded.dictionary.dim)
    x = load_signals(signals) if signals is not None else lm.activations()  # type: ignore[union-attr]
    rows: list[RefineResult] = []
    codes = None
    for m in ["sae", *methods]:
        refined = build_method(loaded, x, m, params)
        codes, row = score(refined, x)
        if lm is not None:
            metrics = lm.downstream(refined, loaded.dictionary, loaded.input_scale)
            row = DownstreamResult(**asdict(row), **{k: float(v) for k, v in metrics.items()})
        rows.append(row)
    if out is not None and codes is not None:
        save_file({"codes": codes.contiguous()}, str(out))
    return rows, f"{loaded.source} SAE on {x.shape[0]} signals (N={loaded.dictionary.n_latents})"
