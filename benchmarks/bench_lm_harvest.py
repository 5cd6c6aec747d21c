"""Harvest throughput (tokens/s) against the model's plain forward pass over the same contexts, and their ratio.

    python benchmarks/bench_lm_harvest.py --model smollm2-135m --hook resid_pre.9 --contexts 32 --context-length 128

Two references over the same contexts, in the same run: the plain pass runs the whole model (logits included) with no
hooks; the truncated pass runs the model only up to the hook point (`lm.hooks.capture`, the least forward work that
yields the activations). Harvesting stops after the hooked layer and writes checksummed shards, so harvest / full
forward shows the saving of the early stop and harvest / truncated forward the cost of everything else (tokenising,
batching, copying, hashing, writing).
Prints one JSON line and appends it to benchmarks/results.jsonl.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import tempfile
import time
from itertools import islice
from pathlib import Path

import torch

from sparseinfer.data.harvest import HarvestConfig, contexts_for, harvest
from sparseinfer.lm.hooks import capture, resolve_hook_points
from sparseinfer.lm.model import load_model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--hook", default="resid_pre.9")
    parser.add_argument("--text", default="english")
    parser.add_argument("--contexts", type=int, default=32)
    parser.add_argument("--context-length", type=int, default=128)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--compute-dtype", default="float32", help="the model's dtype in the forward pass")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    cfg = HarvestConfig(args.model, (args.hook,), args.text, context_length=args.context_length,
                        n_contexts=args.contexts, contexts_per_shard=args.contexts, batch_size=args.batch_size,
                        device=args.device, compute_dtype=args.compute_dtype)  # fmt: skip
    lm = load_model(args.model, args.device, dtype=getattr(torch, args.compute_dtype))
    model, tokenizer = lm
    rows = list(islice(contexts_for(cfg, tokenizer), args.contexts))
    tokens = len(rows) * args.context_length
    sync = torch.cuda.synchronize if args.device.startswith("cuda") else (lambda: None)
    with torch.no_grad():
        model(input_ids=torch.stack(rows[: args.batch_size]).to(args.device), use_cache=False)  # warm-up
        sync()
        start = time.perf_counter()
        for i in range(0, len(rows), args.batch_size):
            model(input_ids=torch.stack(rows[i : i + args.batch_size]).to(args.device), use_cache=False)
        sync()
        forward_s = time.perf_counter() - start
        points = resolve_hook_points(model, args.hook)
        start = time.perf_counter()
        for i in range(0, len(rows), args.batch_size):
            capture(model, torch.stack(rows[i : i + args.batch_size]).to(args.device), points)
        sync()
        truncated_s = time.perf_counter() - start
    with tempfile.TemporaryDirectory() as tmp:
        result = harvest(cfg, tmp, progress=False, model=lm)
    line = {
        "model": args.model,
        "hook": args.hook,
        "device": args.device,
        "compute_dtype": args.compute_dtype,
        "tokens": tokens,
        "forward_tokens_per_s": tokens / forward_s,
        "harvest_tokens_per_s": result.tokens_per_second,
        "harvest_over_forward": result.tokens_per_second / (tokens / forward_s),
        "truncated_forward_tokens_per_s": tokens / truncated_s,
        "harvest_over_truncated_forward": result.tokens_per_second / (tokens / truncated_s),
        "threads": torch.get_num_threads(),
    }
    record = {
        "benchmark": "lm_harvest",
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "load_average": os.getloadavg()},
        "text": args.text,
        "versions": {"torch": torch.__version__, "python": platform.python_version()},
        **line,
    }
    print(json.dumps(record))
    with open(Path(__file__).with_name("results.jsonl"), "a") as handle:
        handle.write(json.dumps(record) + "\n")


if __name__ == "__main__":
    main()
