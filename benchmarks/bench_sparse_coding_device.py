"""Sparse coding throughput on any device: signals/s of FISTA, OMP and ITO at (dim 768, 16,896 latents), as a
fraction of a dense matmul peak measured in the same run.

    python benchmarks/bench_sparse_coding_device.py --device cuda --signals 4096
    python benchmarks/bench_sparse_coding_device.py --device cpu --signals 256

Signals: non-negative k-sparse codes (k = `--k`, values |N(0, 1)|) times a random unit-norm dictionary, float32.
Methods (the library's encoders, called as `encoder(x, dictionary)`): `fista` with a fixed number of iterations
(tol=0, so every one of `--iterations` runs; step 1/L, L computed per call as the encoders do), `omp` to k atoms,
and `ito` (the default: an untrained ReLU encoder's codes refined by Adam on exp-parameterised codes, tol=0) with the
same iteration counts. Achieved FLOP/s = the encoder's own `inference_flops` (checked against FlopCounterMode in the
tests) / median time; the peak is a float32 `--peak-size`^3 matmul timed in the same run (TF32 is left off).
Methods interleaved, `--repeats` rounds after one warm-up call each. Appends one JSON line to
benchmarks/results.jsonl.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from _common import emit, environment, matmul_peak, sync

import sparseinfer
from sparseinfer.dictionary import Dictionary
from sparseinfer.encoders.base import Encoder


def problem(signals: int, dim: int, n_latents: int, k: int, device: str) -> tuple[torch.Tensor, Dictionary]:
    """k-sparse non-negative codes times random unit atoms (float32)."""
    g = torch.Generator().manual_seed(0)
    dictionary = Dictionary.random(n_latents, dim, seed=0, device=device)
    support = torch.rand(signals, n_latents, generator=g).argsort(1)[:, :k]
    codes = torch.zeros(signals, n_latents).scatter_(1, support, torch.randn(signals, k, generator=g).abs())
    with torch.no_grad():
        return codes.to(device) @ dictionary.atoms, dictionary


def encoders(dim: int, n_latents: int, k: int, iterations: list[int]) -> dict[str, Encoder]:
    """The methods by label."""
    out: dict[str, Encoder] = {}
    for it in iterations:
        out[f"fista_{it}"] = sparseinfer.create("fista", dim=dim, n_latents=n_latents, max_iter=it, tol=0.0)
    out[f"omp_k{k}"] = sparseinfer.create("omp", dim=dim, n_latents=n_latents, k=k)
    for it in iterations:
        refiner = {"max_iter": it, "tol": 0.0}
        out[f"ito_{it}"] = sparseinfer.create("ito", dim=dim, n_latents=n_latents, refiner_kwargs=refiner)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dim", type=int, default=768)
    parser.add_argument("--latents", type=int, default=16_896)
    parser.add_argument("--k", type=int, default=32)
    parser.add_argument("--signals", type=int, default=4096 if torch.cuda.is_available() else 256)
    parser.add_argument("--iterations", default="50,200")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--peak-size", type=int, default=4096)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--no-record", action="store_true", help="do not append to benchmarks/results.jsonl")
    args = parser.parse_args()
    if args.device.startswith("cuda"):
        torch.backends.cuda.matmul.allow_tf32 = False
    if args.threads:
        torch.set_num_threads(args.threads)
    x, dictionary = problem(args.signals, args.dim, args.latents, args.k, args.device)
    methods = {
        m: e.to(args.device).eval()
        for m, e in encoders(args.dim, args.latents, args.k, [int(i) for i in args.iterations.split(",")]).items()
    }
    times: dict[str, list[float]] = {m: [] for m in methods}
    with torch.no_grad():
        for enc in methods.values():  # warm-up
            enc(x, dictionary)
        for _ in range(args.repeats):
            for m, enc in methods.items():
                sync(args.device)
                start = time.perf_counter()
                enc(x, dictionary)
                sync(args.device)
                times[m].append(time.perf_counter() - start)
    peak = matmul_peak(args.peak_size, args.device)
    rows = {}
    for m, enc in methods.items():
        seconds = statistics.median(times[m])
        flops = enc.inference_flops(args.signals, args.dim, args.latents)
        rows[m] = {
            "median_s": seconds,
            "best_s": min(times[m]),
            "signals_per_s": args.signals / seconds,
            "flops": flops,
            "flops_per_s": flops / seconds,
            "fraction_of_peak": flops / seconds / peak,
        }
    print(
        f"(dim {args.dim}, N {args.latents}, k {args.k}, {args.signals} signals, {args.device}); "
        f"float32 matmul peak {peak / 1e12:.3f} TFLOP/s"
    )
    print("| method | median (s) | signals/s | GFLOP per call | achieved TFLOP/s | fraction of matmul peak |")
    print("|---|---|---|---|---|---|")
    for m, r in rows.items():
        print(
            f"| {m} | {r['median_s']:.3f} | {r['signals_per_s']:,.0f} | {r['flops'] / 1e9:.1f} "
            f"| {r['flops_per_s'] / 1e12:.3f} | {r['fraction_of_peak']:.3f} |"
        )
    record = {
        "benchmark": "sparse_coding_device",
        **environment(args.device),
        "settings": {k: v for k, v in vars(args).items() if k != "no_record"},
        "matmul_peak_flops": peak,
        "results": rows,
    }
    emit(record, save=not args.no_record)


if __name__ == "__main__":
    main()
