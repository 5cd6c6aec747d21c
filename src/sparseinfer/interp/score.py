"""Scoring explanations as the study does: detection (does the explanation pick held-out activating windows out of
a mix with other latents' windows?) and fuzzing (does it tell the truly activating token from a randomly marked
one?), each summarised by balanced accuracy and macro-F1; plus the comparison across encoders (Welch's t-test and
the Mann-Whitney U test on per-latent scores)."""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy import stats
from sklearn.metrics import balanced_accuracy_score, f1_score

from sparseinfer.errors import SparseInferError
from sparseinfer.interp.client import ChatClient, Message
from sparseinfer.interp.examples import Example, LatentExamples

DETECT = (
    "A feature of a language model is described as: {explanation}\n\nText: {text}\n\n"
    "Does this text contain the feature? Answer Yes or No."
)
FUZZ = (
    "A feature of a language model is described as: {explanation}\n\nText: {text}\n\n"
    "One token is marked like <<this>>. Is the marked token an example of the feature? Answer Yes or No."
)


@dataclass(frozen=True)
class Score:
    """Binary-classification quality of one scorer on one latent."""

    balanced_accuracy: float
    f1: float
    n: int
    unparsed: int


def parse_yes_no(reply: str) -> bool | None:
    """True for a yes, False for a no, None when the reply says neither (first such word wins)."""
    match = re.search(r"\b(yes|no)\b", reply, flags=re.I)
    return None if match is None else match.group(1).lower() == "yes"


def binary_scores(truth: list[bool], predicted: list[bool]) -> tuple[float, float]:
    """(balanced accuracy, macro-F1) of `predicted` against `truth` (both classes must be present in truth)."""
    if len(truth) != len(predicted) or len(set(truth)) < 2:
        raise SparseInferError("scoring needs equally many predictions as labels and both classes among the labels")
    return float(balanced_accuracy_score(truth, predicted)), float(f1_score(truth, predicted, average="macro"))


def _ask(client: ChatClient, template: str, explanation: str, texts: list[str], truth: list[bool]) -> Score:
    convs: list[list[Message]] = [
        [{"role": "user", "content": template.format(explanation=explanation, text=t.strip())}] for t in texts
    ]
    answers = [parse_yes_no(r) for r in client.chat_many(convs, max_tokens=3)]
    predicted = [bool(a) for a in answers]  # an unparseable reply counts as "no"
    bacc, f1 = binary_scores(truth, predicted)
    return Score(bacc, f1, len(truth), sum(a is None for a in answers))


def held_out(record: LatentExamples, n_explain: int, n_positives: int) -> list[Example]:
    """Activating windows not shown to the explainer: quantile samples first, then the remaining top windows."""
    return (record.samples + record.top[n_explain:])[:n_positives]


def detection(client: ChatClient, explanation: str, record: LatentExamples, n_explain: int = 10,
              n_positives: int = 10) -> Score:  # fmt: skip
    """Detection score: held-out positives vs `record.negatives`, texts unmarked."""
    pos, neg = held_out(record, n_explain, n_positives), record.negatives
    if not pos or not neg:
        raise SparseInferError(f"latent {record.latent} has no held-out positives or no negatives to score")
    texts = [ex.text(None) for ex in pos + neg]
    return _ask(client, DETECT, explanation, texts, [True] * len(pos) + [False] * len(neg))


def fuzzing(client: ChatClient, explanation: str, record: LatentExamples, n_explain: int = 10,
            n_positives: int = 10, seed: int = 0) -> Score:  # fmt: skip
    """Fuzzing score: each held-out window shown with its peak marked (true) and a silent token marked (false)."""
    rng = np.random.default_rng(seed + record.latent)
    texts, truth = [], []
    for ex in held_out(record, n_explain, n_positives):
        silent = [i for i, a in enumerate(ex.acts) if a == 0]
        if not silent:
            continue
        wrong = Example(ex.tokens, ex.acts, int(rng.choice(silent)), ex.context, ex.position)
        texts += [ex.text(("<<", ">>")), wrong.text(("<<", ">>"))]
        truth += [True, False]
    if not texts:
        raise SparseInferError(f"latent {record.latent} has no held-out window with a silent token to fuzz")
    return _ask(client, FUZZ, explanation, texts, truth)


def compare(scores: pd.DataFrame, metric: str, reference: str | None = None) -> pd.DataFrame:
    """Per-encoder mean/std/n of `metric`, and Welch's t-test and Mann-Whitney U of each encoder against
    `reference` (default: the first encoder), two-sided. "Similar interpretability" = large p-values."""
    if metric not in scores or "encoder" not in scores:
        raise SparseInferError(f"scores need columns 'encoder' and {metric!r}")
    groups = {name: g[metric].dropna().to_numpy(float) for name, g in scores.groupby("encoder", sort=False)}
    reference = reference or next(iter(groups))
    if reference not in groups:
        raise SparseInferError(f"no encoder {reference!r} among {sorted(groups)}")
    ref = groups[reference]
    rows = []
    for name, values in groups.items():
        row = {"encoder": name, "metric": metric, "n": values.size, "mean": values.mean(), "std": values.std(ddof=1)}
        if name != reference and values.size > 1 and ref.size > 1:
            row["welch_t"], row["welch_p"] = stats.ttest_ind(values, ref, equal_var=False)
            row["mannwhitney_u"], row["mannwhitney_p"] = stats.mannwhitneyu(values, ref, alternative="two-sided")
        rows.append(row)
    return pd.DataFrame(rows)
