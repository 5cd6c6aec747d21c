"""TopK SAE training throughput (tokens/s of one step: forward, loss, backward, optimiser step) against peers.

    python benchmarks/bench_sae_train.py --device cuda --latents 32768,131072 --batch 4096      # GPU, bf16 autocast
    python benchmarks/bench_sae_train.py --device cpu --latents 32768 --batch 4096 --steps 2    # CPU, float32

Methods, same shapes, same dtype (float32 parameters; on CUDA every method runs under bf16 autocast, the usual
mixed precision of all three libraries), same data (one fixed batch of Gaussian activations):
- `ours`: sparseinfer's `topk` encoder (sparse codes, `fused_backward=True`) + `Dictionary`, stepped by the library's
  own loop `sparseinfer.training.fit` (learn_both: MSE loss, Adam, atoms renormalised after each step);
  `ours_default` is the same with the encoder's defaults (dense codes, so a dense decode; fused backward);
- `plain`: a plain PyTorch TopK SAE written here (dense codes, dense decode, Adam, renormalised decoder);
- `sparsify`: EleutherAI sparsify's `SparseCoder` with its trainer's step (decoder renormalised, forward -> FVU,
  backward, radial gradient removed, `torch.optim.Adam`, which is its trainer's "adam" without bitsandbytes);
- `saelens`: SAELens' `TopKTrainingSAE.training_forward_pass` with its trainer's step (backward, gradient norm
  clipped to 1, `torch.optim.Adam`).
Methods are interleaved: `--warmup` untimed steps each, then `--repeats` rounds of `--steps` timed steps each; the
median and best step time per method are kept, and the ratio to the fastest peer comes from the same run. FLOP/s use
one count for every method, the least work of a TopK SAE step: 2 B D N (the dense encoder forward, unavoidable) +
10 B k D (sparse decoder forward, its two gradients, the encoder's sparse weight and input gradients), against a
dense `--peak-size`^3 matmul of the same dtype timed in the same run (bf16 on CUDA); 1.0 would mean the step runs
as fast as its encoder matmul alone at peak. `--profile` prints torch.profiler's top operators of `ours`. Appends
one JSON line to benchmarks/results.jsonl.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import itertools
import statistics
import time
from collections.abc import Callable

import torch
from _common import emit, environment, matmul_peak, sync
from torch import Tensor

import sparseinfer
from sparseinfer.dictionary import Dictionary
from sparseinfer.training.config import TrainConfig
from sparseinfer.training.fit import FitHooks, FitState, fit
from sparseinfer.training.regimes import get_regime

METHODS = ("ours", "ours_default", "plain", "sparsify", "saelens")
PEERS = ("plain", "sparsify", "saelens")
LR = 1e-4
Step = Callable[[int], list[float]]  # run n steps, return each step's seconds


def autocast(device: str) -> contextlib.AbstractContextManager:
    """bf16 autocast on CUDA (mixed precision, parameters stay float32); nothing on CPU."""
    if device.startswith("cuda"):
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def timed_steps(step: Callable[[], object], device: str) -> Step:
    """Wrap one training step into `run(n) -> per-step seconds`."""

    def run(n: int) -> list[float]:
        times = []
        for _ in range(n):
            start = time.perf_counter()
            step()
            sync(device)
            times.append(time.perf_counter() - start)
        return times

    return run


def ours(x: Tensor, n_latents: int, k: int, device: str, fused: bool) -> Step:
    """sparseinfer's TopK encoder and dictionary through `fit` (resumed every round with the same optimiser)."""
    dim = x.shape[1]
    torch.manual_seed(0)
    dictionary = Dictionary.random(n_latents, dim, seed=0, bias=True, device=device)
    hparams = {"sparse_output": True, "fused_backward": True} if fused else {}
    encoder = sparseinfer.create("topk", dim=dim, n_latents=n_latents, k=k, **hparams).to(device)
    opt = torch.optim.Adam([*encoder.parameters(), *dictionary.parameters()], lr=LR)
    state = FitState()
    stamps: list[float] = []

    def stamp(*_: object) -> None:
        sync(device)
        stamps.append(time.perf_counter())

    def run(n: int) -> list[float]:
        config = TrainConfig(steps=state.step + n, lr=LR, l1=0.0, eval_every=10**9)
        stamps.clear()
        stamp()
        fit(
            encoder,
            dictionary,
            itertools.repeat(x),
            get_regime("learn_both"),
            config,
            state=state,
            optimiser=opt,
            hooks=FitHooks(after_step=stamp),
            autocast=True,
        )
        return [b - a for a, b in itertools.pairwise(stamps)]

    return run


def plain(x: Tensor, n_latents: int, k: int, device: str) -> Step:
    """A plain PyTorch TopK SAE: dense codes, dense decode, MSE, Adam, unit-norm decoder rows."""
    dim = x.shape[1]
    g = torch.Generator().manual_seed(0)
    w_dec = torch.randn(n_latents, dim, generator=g)
    w_dec /= w_dec.norm(dim=1, keepdim=True)
    params = {
        "w_enc": w_dec.clone().to(device).requires_grad_(),
        "b_enc": torch.zeros(n_latents, device=device, requires_grad=True),
        "w_dec": w_dec.to(device).requires_grad_(),
        "b_dec": torch.zeros(dim, device=device, requires_grad=True),
    }
    opt = torch.optim.Adam(params.values(), lr=LR)
    p = params

    def step() -> None:
        with autocast(device):
            pre = (x - p["b_dec"]) @ p["w_enc"].T + p["b_enc"]
            values, indices = pre.topk(k, dim=1)
            codes = torch.zeros_like(pre).scatter(1, indices, values.relu())
            loss = (codes @ p["w_dec"] + p["b_dec"] - x).pow(2).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        with torch.no_grad():
            p["w_dec"].div_(p["w_dec"].norm(dim=1, keepdim=True))

    return timed_steps(step, device)


def sparsify_step(x: Tensor, n_latents: int, k: int, device: str) -> Step:
    """EleutherAI sparsify's SparseCoder and the per-step work of its trainer (loss_fn="fvu", optimizer="adam")."""
    with contextlib.redirect_stdout(io.StringIO()):  # it prints which decoder kernel it uses
        from sparsify import SparseCoder, SparseCoderConfig
    torch.manual_seed(0)
    sae = SparseCoder(x.shape[1], SparseCoderConfig(num_latents=n_latents, k=k), device=device)
    opt = torch.optim.Adam(sae.parameters(), lr=LR)

    def step() -> None:
        sae.set_decoder_norm_to_unit_norm()
        out = sae(x)  # its forward carries its own bf16 autocast on CUDA
        out.fvu.backward()
        sae.remove_gradient_parallel_to_decoder_directions()
        opt.step()
        opt.zero_grad()

    return timed_steps(step, device)


def saelens_step(x: Tensor, n_latents: int, k: int, device: str) -> Step:
    """SAELens' TopKTrainingSAE and the per-step work of its SAETrainer._train_step (no dead latents yet)."""
    from sae_lens.saes.sae import TrainStepInput
    from sae_lens.saes.topk_sae import TopKTrainingSAE, TopKTrainingSAEConfig

    torch.manual_seed(0)
    sae = TopKTrainingSAE(TopKTrainingSAEConfig(d_in=x.shape[1], d_sae=n_latents, k=k, device=device))
    opt = torch.optim.Adam(sae.parameters(), lr=LR)
    dead = torch.zeros(n_latents, dtype=torch.bool, device=device)

    def step() -> None:
        sae.train()
        with autocast(device):
            out = sae.training_forward_pass(TrainStepInput(x, {}, dead, 0, False))
        out.loss.backward()
        torch.nn.utils.clip_grad_norm_(sae.parameters(), 1.0)
        opt.step()
        opt.zero_grad()

    return timed_steps(step, device)


def build(method: str, x: Tensor, n_latents: int, k: int, device: str) -> Step:
    """The timed step of `method`."""
    if method in ("ours", "ours_default"):
        return ours(x, n_latents, k, device, fused=method == "ours")
    return {"plain": plain, "sparsify": sparsify_step, "saelens": saelens_step}[method](x, n_latents, k, device)


def nominal_flops(batch: int, dim: int, n_latents: int, k: int) -> int:
    """The least matmul work of one TopK SAE step: dense encoder forward, everything else on the k kept entries."""
    return 2 * batch * dim * n_latents + 10 * batch * k * dim


def profile_ours(x: Tensor, n_latents: int, k: int, device: str, steps: int, method: str = "ours") -> str:
    """torch.profiler's top operators (by self time) over `steps` steps of `method`, after one warm-up step."""
    run = build(method, x, n_latents, k, device)
    run(1)
    activities = [torch.profiler.ProfilerActivity.CPU]
    if device.startswith("cuda"):
        activities.append(torch.profiler.ProfilerActivity.CUDA)
    with torch.profiler.profile(activities=activities) as prof:
        run(steps)
    key = "self_cuda_time_total" if device.startswith("cuda") else "self_cpu_time_total"
    return prof.key_averages().table(sort_by=key, row_limit=15)


def bench_shape(args: argparse.Namespace, n_latents: int, batch: int) -> dict:
    """All methods at one shape, interleaved; per-method median/best step time and ratios."""
    g = torch.Generator().manual_seed(1)
    x = torch.randn(batch, args.dim, generator=g).to(args.device)
    runs = {m: build(m, x, n_latents, args.k, args.device) for m in args.methods}
    times: dict[str, list[float]] = {m: [] for m in runs}
    for run in runs.values():
        run(args.warmup)
    for _ in range(args.repeats):
        for m, run in runs.items():
            times[m] += run(args.steps)
    flops = nominal_flops(batch, args.dim, n_latents, args.k)
    peak = matmul_peak(args.peak_size, args.device, torch.bfloat16 if args.device.startswith("cuda") else torch.float32)
    median = {m: statistics.median(t) for m, t in times.items()}
    tokens = {m: batch / s for m, s in median.items()}
    peers = [m for m in PEERS if m in tokens]
    fastest = max(peers, key=tokens.__getitem__) if peers else None
    row = {
        "shape": {"dim": args.dim, "n_latents": n_latents, "k": args.k, "batch": batch},
        "median_s": median,
        "best_s": {m: min(t) for m, t in times.items()},
        "tokens_per_s": tokens,
        "fastest_peer": fastest,
        "ratio_vs_fastest_peer": {m: tokens[m] / tokens[fastest] for m in tokens} if fastest else {},
        "nominal_flops": flops,
        "matmul_peak_flops": peak,
        "fraction_of_peak": {m: flops / s / peak for m, s in median.items()},
    }
    print(f"\n(dim {args.dim}, N {n_latents}, k {args.k}, batch {batch}); matmul peak {peak / 1e12:.3f} TFLOP/s")
    print("| method | median step (s) | best (s) | tokens/s | vs fastest peer | fraction of matmul peak |")
    print("|---|---|---|---|---|---|")
    for m in runs:
        ratio = row["ratio_vs_fastest_peer"].get(m, float("nan"))
        print(
            f"| {m} | {median[m]:.3f} | {row['best_s'][m]:.3f} | {tokens[m]:,.0f} | {ratio:.2f}x "
            f"| {row['fraction_of_peak'][m]:.3f} |"
        )
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dim", type=int, default=768)
    parser.add_argument("--latents", default="32768", help="comma-separated dictionary sizes")
    parser.add_argument("--batch", default="4096", help="comma-separated batch sizes, one per --latents or one")
    parser.add_argument("--k", type=int, default=32)
    parser.add_argument("--methods", default=",".join(METHODS))
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--steps", type=int, default=3, help="timed steps per method per round")
    parser.add_argument("--repeats", type=int, default=2, help="interleaved rounds")
    parser.add_argument("--peak-size", type=int, default=4096)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--profile", type=int, default=0, help="profile this many steps of `ours` (0: no profile)")
    parser.add_argument("--no-record", action="store_true", help="do not append to benchmarks/results.jsonl")
    args = parser.parse_args()
    args.methods = [m for m in args.methods.split(",") if m]
    if unknown := set(args.methods) - set(METHODS):
        parser.error(f"unknown methods {sorted(unknown)}; known: {', '.join(METHODS)}")
    if args.threads:
        torch.set_num_threads(args.threads)
    latents = [int(n) for n in args.latents.split(",")]
    batches = [int(b) for b in args.batch.split(",")]
    batches = batches * len(latents) if len(batches) == 1 else batches
    rows = [bench_shape(args, n, b) for n, b in zip(latents, batches, strict=True)]
    profile = (
        profile_ours(
            torch.randn(batches[0], args.dim, device=args.device), latents[0], args.k, args.device, args.profile
        )
        if args.profile
        else None
    )
    if profile:
        print(profile)
    record = {
        "benchmark": "sae_train_step",
        **environment(args.device),
        "settings": {k: v for k, v in vars(args).items() if k != "no_record"},
        "results": rows,
    }
    emit(record, save=not args.no_record)


if __name__ == "__main__":
    main()
