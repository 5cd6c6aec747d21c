"""The explainer: show an LLM a latent's top-activating windows, peak token marked, and ask for a short phrase."""

from __future__ import annotations

import re

from sparseinfer.interp.client import ChatClient, Message
from sparseinfer.interp.examples import Example, LatentExamples

MARK = ("<<", ">>")
SYSTEM = (
    "You are a meticulous interpretability researcher. You are shown text excerpts where one feature of a "
    "language model is active. In each excerpt the token where the feature is most active is marked like "
    "<<this>>. Say in a short noun phrase (under 12 words) what the marked tokens have in common, for example: "
    'the word "of"; commas; names of people; numbers written as digits; verbs in the past tense. '
    "Reply with the phrase only; do not mention the feature, the model or the markers."
)


def explainer_messages(examples: list[Example], logit_tokens: list[str] | None = None) -> list[Message]:
    """The chat messages asking for an explanation of `examples` (optionally hinting at promoted tokens)."""
    lines = []
    for i, ex in enumerate(examples, 1):
        lines.append(f"Excerpt {i}: {ex.text(MARK).strip()}")
        lines.append(f"  marked token: {ex.tokens[ex.peak]!r}")
    if logit_tokens:
        lines.append("Tokens the feature promotes as next token: " + ", ".join(repr(t) for t in logit_tokens))
    lines.append("What does the feature detect?")
    return [{"role": "system", "content": SYSTEM}, {"role": "user", "content": "\n".join(lines)}]


BOILERPLATE = (  # phrases small explainers wrap around the feature; they turn the scorer's question into nonsense
    r"^\s*(explanation|answer|feature|the feature detects)\s*[:\-]\s*",
    r"^\s*(the|this) feature (detects|is|fires on|identifies)\s+",
    r"^\s*(the )?(presence|occurrence|use|appearance) of\s+",
    r"\s+(in|within|across) (the |each |all )?(text |given )?(excerpts?|texts?|examples?|marked tokens?)\s*$",
    r"\s+(is|are) marked\s*$",
)


def clean_explanation(reply: str) -> str:
    """The first non-empty line of `reply`, without a leading label ("Explanation:"), boilerplate ("the presence
    of ... in the text excerpts"), quotes around the whole or a final full stop."""
    for line in reply.strip().splitlines():
        line = line.strip().rstrip(".").strip()
        for pattern in BOILERPLATE:
            line = re.sub(pattern, "", line, flags=re.I)
        line = line.strip().strip("*`").strip().rstrip(".").strip()
        if len(line) > 1 and line[0] == line[-1] and line[0] in "\"'":
            line = line[1:-1].strip()
        if line:
            return line[:300]
    return ""


def explain(client: ChatClient, record: LatentExamples, n_examples: int = 10, max_tokens: int = 40,
            logit_tokens: list[str] | None = None) -> str:  # fmt: skip
    """An explanation of `record` from its first `n_examples` top windows (empty string if the LLM gave none)."""
    reply = client.chat(explainer_messages(record.top[:n_examples], logit_tokens), max_tokens=max_tokens)
    return clean_explanation(reply)
