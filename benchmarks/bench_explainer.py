"""Explainer-server speed: one llama.cpp server with T threads against S single-threaded servers, per scoring question.

    python benchmarks/bench_explainer.py --model qwen2.5-coder-1.5b --threads 2 --questions 12
    python benchmarks/bench_explainer.py --model qwen2.5-coder-1.5b --threads 1 --servers 2 --questions 12

Measures, on the real server (`interp.server.LocalLLMServer`): the time of a 200-word prompt with one generated
token, of 40 generated tokens, and of scoring questions that share a cached prefix (a feature description) and differ
in a short text, as the scorers send them; with several servers the questions are spread as the pipeline spreads
latents (`interp.client.map_latents`), so `questions_per_second` is the throughput the interp stage gets. Run it on
a quiet machine and beside a busy process (e.g. `python -c "while 1: pass" &`) to see how each layout degrades under
load. Prints one JSON line and appends it to benchmarks/results.jsonl.
"""

from __future__ import annotations

import argparse
import contextlib
import time
from typing import Any

from _common import emit, environment

from sparseinfer.interp.client import ChatClient, LLMConfig, map_latents
from sparseinfer.interp.server import LocalLLMServer

WORDS = ("the cat sat on the mat and then it went to see the king of the land who was very old and wise " * 12).split()


def measure(model: str, threads: int, servers: int, questions: int) -> dict[str, Any]:
    """Seconds per long prompt, per 40 generated tokens and per cached-prefix question, and questions per second."""
    with contextlib.ExitStack() as stack:
        urls = [stack.enter_context(LocalLLMServer(model, threads=threads)).base_url for _ in range(servers)]
        clients = [stack.enter_context(ChatClient(LLMConfig(base_url=url))) for url in urls]
        first = clients[0]
        first.chat([{"role": "user", "content": "hi"}], max_tokens=1)  # warm-up
        start = time.perf_counter()
        first.chat([{"role": "user", "content": "Summarise: " + " ".join(WORDS[:200])}], max_tokens=1)
        prompt = time.perf_counter() - start
        start = time.perf_counter()
        first.chat([{"role": "user", "content": "Write a long story about a dragon."}], max_tokens=40)
        generate = time.perf_counter() - start

        def latent(client: ChatClient, i: int) -> float:  # one latent's questions: a shared prefix, short texts
            prefix = f"Feature: the word {WORDS[i]!r}\n\n"
            begin = time.perf_counter()
            for q in range(questions):
                text = " ".join(WORDS[q : q + 16])
                client.next_token([{"role": "user", "content": f"{prefix}Text: {text}\n\nDoes the text contain "
                                    f"the word {WORDS[i]!r}? Answer Yes or No."}], 20)  # fmt: skip
            return time.perf_counter() - begin

        latents = 2 * servers
        start = time.perf_counter()
        per_latent = list(map_latents(clients, latent, list(range(latents))))
        wall = time.perf_counter() - start
    return {"prompt_200_words_s": prompt, "generate_40_tokens_s": generate,
            "seconds_per_question": sum(per_latent) / (latents * questions),
            "questions_per_second": latents * questions / wall}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="qwen2.5-coder-1.5b")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--servers", type=int, default=1)
    parser.add_argument("--questions", type=int, default=12)
    parser.add_argument("--no-save", action="store_true")
    args = parser.parse_args()
    record = {"benchmark": "explainer", **vars(args), **environment()}
    record |= measure(args.model, args.threads, args.servers, args.questions)
    emit(record, save=not args.no_save)


if __name__ == "__main__":
    main()
