"""Yes/no answers from next-token log-probabilities: read the top candidates of the first answer token from the
response shapes OpenAI-compatible servers use, and turn them into P(yes) = P(Yes-like) / (P(Yes-like) + P(No-like)),
summing case and space variants (" Yes", "yes", "YES", ...). One forward pass per question, no free generation, and a
graded score (AUROC) besides the thresholded answer."""

from __future__ import annotations

import math
import re
from typing import Any

from sparseinfer.errors import SparseInferError

YES, NO = "yes", "no"


def _add(into: dict[str, float], token: Any, logprob: Any) -> None:
    if not isinstance(token, str) or not isinstance(logprob, int | float) or math.isnan(logprob):
        return
    old = into.get(token)
    into[token] = logprob if old is None else float(math.log(math.exp(old) + math.exp(logprob)))


def _from_entries(entries: Any, into: dict[str, float]) -> None:
    """[{token, logprob}] (OpenAI chat, llama.cpp) or [{tok_str, prob}] (older llama.cpp) entries."""
    for entry in entries or []:
        if not isinstance(entry, dict):
            continue
        if "logprob" in entry:
            _add(into, entry.get("token"), entry["logprob"])
        elif "prob" in entry and isinstance(entry["prob"], int | float) and entry["prob"] > 0:
            _add(into, entry.get("tok_str", entry.get("token")), math.log(entry["prob"]))


def parse_top_logprobs(body: dict[str, Any]) -> dict[str, float]:
    """{token string: log-probability} of the first generated token in a completion response body.

    Understood: chat completions (`choices[0].logprobs.content[0].top_logprobs` as [{token, logprob}], OpenAI,
    vLLM, llama.cpp), legacy completions (`choices[0].logprobs.top_logprobs[0]` as {token: logprob}), and
    llama.cpp's native `completion_probabilities`. An empty dict when the body has no log-probabilities."""
    if not isinstance(body, dict):
        raise SparseInferError("a completion response must be a JSON object")
    out: dict[str, float] = {}
    choices = body.get("choices")
    if isinstance(choices, list) and choices and isinstance(choices[0], dict):
        logprobs = choices[0].get("logprobs")
        if isinstance(logprobs, dict):
            content = logprobs.get("content")
            if isinstance(content, list) and content and isinstance(content[0], dict):
                first = content[0]
                _from_entries(first.get("top_logprobs"), out)
                if first.get("token") not in out:
                    _add(out, first.get("token"), first.get("logprob"))
            top = logprobs.get("top_logprobs")
            if isinstance(top, list) and top and isinstance(top[0], dict):
                for token, logprob in top[0].items():
                    _add(out, token, logprob)
            tokens, token_logprobs = logprobs.get("tokens"), logprobs.get("token_logprobs")
            if not out and isinstance(tokens, list) and isinstance(token_logprobs, list) and tokens and token_logprobs:
                _add(out, tokens[0], token_logprobs[0])
    native = body.get("completion_probabilities")
    if isinstance(native, list) and native and isinstance(native[0], dict):
        _from_entries(native[0].get("top_logprobs") or native[0].get("probs"), out)
    return out


def _word(token: str) -> str:
    return re.sub(r"[^a-z]", "", token.lower())


def parse_yes_no(reply: str) -> bool | None:
    """True for a yes, False for a no, None when the reply says neither (first such word wins)."""
    match = re.search(r"\b(yes|no)\b", reply, flags=re.I)
    return None if match is None else match.group(1).lower() == YES


def yes_probability(top: dict[str, float], reply: str = "") -> float | None:
    """P(yes | yes or no) from next-token log-probabilities (variants of "yes"/"no" summed); when no such token is
    among the candidates, 1.0 / 0.0 from the reply text's first yes/no word; None when neither says anything."""
    p_yes = sum(math.exp(lp) for tok, lp in top.items() if _word(tok) == YES)
    p_no = sum(math.exp(lp) for tok, lp in top.items() if _word(tok) == NO)
    if p_yes + p_no > 0:
        return p_yes / (p_yes + p_no)
    answer = parse_yes_no(reply)
    return None if answer is None else float(answer)
