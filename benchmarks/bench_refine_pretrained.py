"""How much better than its own encoder can a pretrained SAE's codes be, at matched L0 and at what FLOPs?

    python benchmarks/bench_refine_pretrained.py            # N=128, M=32, K=4; about 40 s on 2 cores

Trains two SAEs with our library on synthetic data (`learn_both`, `sparseinfer.training.fit`): a ReLU SAE with an
L1 penalty strong enough that its L0 is about K..2K, and a TopK SAE (k=K). Each is saved in the SAELens layout (and
the TopK one also in the sparsify layout; sparsify has no ReLU SAE), reloaded through `sparseinfer.io.load_sae`, and
its codes on held-out signals are compared with every refiner of `sparseinfer.evaluation.refine`. FLOPs are per signal.
The penalty bisection that matches L0 (ito, fista, lca) runs once per SAE on `--calibration` signals; its FLOPs
are printed in their own column, as a total and per held-out signal if it were amortised over this test set.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch
from rich.console import Console
from rich.table import Table

from sparseinfer import Dictionary, create
from sparseinfer.data.synthetic import make_synthetic
from sparseinfer.evaluation.refine import REFINERS, build_method, score
from sparseinfer.io import load_sae, save_saelens, save_sparsify
from sparseinfer.training.config import TrainConfig
from sparseinfer.training.fit import fit
from sparseinfer.training.regimes import get_regime


def train(name: str, args: argparse.Namespace, train_x: torch.Tensor) -> tuple[object, Dictionary]:
    """An SAE (`relu` with `--l1`, or `topk` with k=K) and its dictionary, learned jointly from `train_x`."""
    dictionary = Dictionary.random(args.n_latents, args.dim, seed=args.seed, bias=True)
    params = {"k": args.k} if name == "topk" else {}
    encoder = create(name, dim=args.dim, n_latents=args.n_latents, **params)
    config = TrainConfig(steps=args.steps, lr=args.lr, l1=args.l1 if name == "relu" else 0.0, eval_every=args.steps)
    fit(encoder, dictionary, train_x, get_regime("learn_both"), config, seed=args.seed)
    return encoder.eval(), dictionary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n-latents", type=int, default=128)
    parser.add_argument("--dim", type=int, default=32)
    parser.add_argument("--k", type=int, default=4)
    parser.add_argument("--n-train", type=int, default=2048)
    parser.add_argument("--n-test", type=int, default=1024)
    parser.add_argument("--steps", type=int, default=3000)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--l1", type=float, default=2.0, help="the ReLU SAE's study-scale L1 weight")
    parser.add_argument("--calibration", type=int, default=256, help="signals the L0-matching bisection uses")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.set_num_threads(1)  # tiny matrices: threads only add overhead on a shared machine
    data = make_synthetic(
        n_latents=args.n_latents, dim=args.dim, k=args.k, n_train=args.n_train, n_test=args.n_test, seed=args.seed
    )
    x = data.test_x
    table = Table(
        title=f"refining pretrained SAEs: N={args.n_latents}, M={args.dim}, K={args.k}, {len(x)} test signals"
    )
    for col in ("SAE", "format", "method", "FVU", "L0", "FLOPs/signal", "extra FLOPs/signal", "calibration FLOPs"):
        table.add_column(col, justify="left" if col in ("SAE", "format", "method") else "right")
    console = Console(width=170)
    with tempfile.TemporaryDirectory() as tmp:
        for name in ("relu", "topk"):
            start = time.perf_counter()
            encoder, dictionary = train(name, args, data.train_x)
            console.print(f"trained {name} SAE in {time.perf_counter() - start:.1f} s")
            formats = {"saelens": save_saelens}
            if name == "topk":
                formats["sparsify"] = save_sparsify
            for fmt, save in formats.items():
                folder = Path(tmp) / f"{name}-{fmt}"
                save(encoder, dictionary, folder)
                sae = load_sae(folder)
                for method in ("sae", *REFINERS):
                    start = time.perf_counter()
                    refined = build_method(sae, x, method, calibration=args.calibration)
                    _, row = score(refined, x)
                    cal = refined.calibration_flops
                    cal_text = f"{cal:.2e} ({cal / len(x):.2e}/sig.)" if cal else "-"
                    table.add_row(
                        name, fmt, method, f"{row.fvu:.4f}", f"{row.l0:.2f}", f"{row.flops / len(x):.3g}",
                        f"{row.extra_flops / len(x):.3g}", cal_text,
                    )  # fmt: skip
                    console.print(f"  {name}/{fmt}/{method}: {time.perf_counter() - start:.1f} s", style="dim")
    console.print(table)


if __name__ == "__main__":
    main()
