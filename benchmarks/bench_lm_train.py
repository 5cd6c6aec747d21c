"""Training throughput (tokens/s) of SAE encoders (relu, topk) on an activation store, through `training.fit`.

    python benchmarks/bench_lm_train.py STORE --encoders relu,topk --steps 50 --batch-size 1024 --expansion 8

STORE comes from `sparseinfer harvest`. The first steps (warm-up) are excluded by timing two runs of different
length and dividing the extra tokens by the extra time. Prints one JSON line per encoder.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time

import torch

from sparseinfer.training.activations import LMTrainConfig, train_from_store


def timed(config: LMTrainConfig, store: str, device: str) -> float:
    """Seconds for one full training run of `config` (store opening and sampling included)."""
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        train_from_store(config, store, tmp, device=device, progress=False, resume=False)
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("store")
    parser.add_argument("--encoders", default="relu,topk")
    parser.add_argument("--k", type=int, default=32)
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--batch-size", type=int, default=1024)
    parser.add_argument("--expansion", type=int, default=8)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    for name in args.encoders.split(","):
        hparams = {"k": args.k} if name in ("topk", "batch_topk") else {}
        seconds = []
        for steps in (max(1, args.steps // 5), args.steps):
            config = LMTrainConfig(encoder=name, hparams=hparams, expansion=args.expansion, steps=steps,
                                   batch_size=args.batch_size, checkpoint_every=10**9, eval_every=10**9)  # fmt: skip
            seconds.append(timed(config, args.store, args.device))
        extra_steps = args.steps - max(1, args.steps // 5)
        rate = extra_steps * args.batch_size / max(seconds[1] - seconds[0], 1e-9)
        line = {"encoder": name, "hparams": hparams, "expansion": args.expansion, "batch_size": args.batch_size,
                "steps": args.steps, "device": args.device, "train_tokens_per_s": rate,
                "threads": torch.get_num_threads()}  # fmt: skip
        print(json.dumps(line))


if __name__ == "__main__":
    main()
