"""Scoring explanations as the study does: detection (does the explanation pick held-out activating windows out of
a mix with other latents' windows?) and fuzzing (does it tell the truly activating token from a randomly marked
one?). Each question is answered by ONE forward pass: the probability of "Yes" against "No" as the next token
(`logprobs.py`), so a score is both thresholded and graded (AUROC). The threshold is the one that calls as many
questions "yes" as there are true ones (each latent's questions are balanced by construction), i.e. balanced
accuracy and macro-F1 of the top half by P(yes), ties shared out evenly: a judge's constant bias towards "yes"
(Qwen2.5-Coder-1.5B answers yes to almost everything with P(yes) > 0.5) then costs nothing, while a judge that
cannot rank scores 0.5. The plain P(yes) > 0.5 balanced accuracy is kept as `balanced_accuracy_at_half`.

Detection follows the study's protocol: every window is shown with its peak marked (a held-out window at this
latent's peak, or a negative at another latent's peak where this latent is silent) and the question names the marked
token. Asking instead whether a whole unmarked window "contains" the explanation scored planted token features at
only 0.63 balanced accuracy (docs/llm-study.md): a 1.5B judge does not search a window for a word reliably.
The explanation comes first so that a server's prompt cache reuses it across a latent's questions; the question
comes last, naming the marked token again (small explainers judge a named token far better than a marker inside
the text: measured in docs/interp.md). Detection and fuzzing ask the same question, so a fuzzed window's
true-peak question is a detection question already answered (from the client's cache), and the system message
says "Answer Yes or No" once instead of every question: 10 instead of 12 evaluated questions per latent with fewer
tokens each, and the controls pass as before (docs/llm-study.md)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from sklearn.metrics import balanced_accuracy_score, f1_score

from sparseinfer.errors import SparseInferError
from sparseinfer.interp.client import ChatClient, Message
from sparseinfer.interp.examples import Example, LatentExamples
from sparseinfer.interp.logprobs import parse_yes_no, yes_probability
from sparseinfer.interp.stats import auroc, compare

__all__ = ["Score", "ask", "binary_scores", "compare", "detection", "fuzzing", "held_out", "parse_yes_no"]

JUDGE_SYSTEM = (  # the same for every question, so a server's prompt cache holds it once; worked examples
    "You check whether the marked token of a short text (written <<like this>>) is what a feature description "
    "names, in its context. Answer Yes or No only.\n"
    'Example: Feature: the word "cat". Text: then a <<cat>> sat on the mat. Marked: <<cat>>. Answer: Yes\n'
    'Example: Feature: the word "cat". Text: the dog <<ran>> home and slept. Marked: <<ran>>. Answer: No\n'
    "Example: Feature: numbers written as digits. Text: in <<1984>> they moved. Marked: <<1984>>. Answer: Yes\n"
    "Example: Feature: numbers written as digits. Text: they moved in the <<spring>>. Marked: <<spring>>. Answer: No"
)
QUESTION = "Feature: {explanation}\n\nText: {text}\n\nThe marked token is <<{token}>>. Is it {explanation}?"
TOP_LOGPROBS = 20


@dataclass(frozen=True)
class Score:
    """Binary-classification quality of one scorer on one latent (`unparsed`: answers with neither yes nor no
    among the candidate tokens, scored P(yes) = 0.5)."""

    balanced_accuracy: float
    f1: float
    auroc: float
    n: int
    unparsed: int
    balanced_accuracy_at_half: float = float("nan")


def binary_scores(truth: list[bool], predicted: list[bool]) -> tuple[float, float]:
    """(balanced accuracy, macro-F1) of `predicted` against `truth` (both classes must be present in truth)."""
    if len(truth) != len(predicted) or len(set(truth)) < 2:
        raise SparseInferError("scoring needs equally many predictions as labels and both classes among the labels")
    return float(balanced_accuracy_score(truth, predicted)), float(f1_score(truth, predicted, average="macro"))


def ask(client: ChatClient, explanation: str, texts: list[str], tokens: list[str]) -> list[float | None]:
    """P(yes) that the marked token of each text (named in `tokens`) is what `explanation` describes: one 1-token
    log-probability request each, all under the same system message and explanation so that a server's prompt
    cache reuses that prefix and evaluates only the window and the named token."""
    explanation = explanation.strip().rstrip(".") or "(no explanation)"
    convs: list[list[Message]] = [
        [{"role": "system", "content": JUDGE_SYSTEM},
         {"role": "user", "content": QUESTION.format(explanation=explanation, text=t.strip(), token=k.strip())}]
        for t, k in zip(texts, tokens, strict=True)
    ]  # fmt: skip
    if client.config.concurrency > 1 and len(convs) > 1:
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(client.config.concurrency) as pool:
            answers = list(pool.map(lambda c: client.next_token(c, TOP_LOGPROBS), convs))
    else:
        answers = [client.next_token(c, TOP_LOGPROBS) for c in convs]
    return [yes_probability(top, reply) for reply, top in answers]


def prevalence_matched(truth: list[bool], probabilities: list[float]) -> tuple[float, float]:
    """(balanced accuracy, macro-F1) when the questions with the n_true highest P(yes) are called "yes"; a tie at
    the cut is shared out in proportion (the expected value over random tie-breaking), so a constant P(yes) gives
    exactly 0.5."""
    t = np.asarray(truth, dtype=bool)
    p = np.asarray(probabilities, dtype=float)
    n_pos, n = int(t.sum()), len(t)
    if n_pos in (0, n) or len(p) != n:
        raise SparseInferError("scoring needs equally many predictions as labels and both classes among the labels")
    cut = np.sort(p)[::-1][n_pos - 1]
    above, tied = p > cut, p == cut
    share = (n_pos - above.sum()) / tied.sum()  # the fraction of the tied group called "yes"
    tp = (above & t).sum() + share * (tied & t).sum()
    fp = n_pos - tp
    fn, tn = n_pos - tp, (n - n_pos) - fp
    bacc = 0.5 * (tp / n_pos + tn / (n - n_pos))
    f1_pos = 2 * tp / (2 * tp + fp + fn) if tp > 0 else 0.0
    f1_neg = 2 * tn / (2 * tn + fn + fp) if tn > 0 else 0.0
    return float(bacc), float((f1_pos + f1_neg) / 2)


def score_probabilities(truth: list[bool], probabilities: list[float | None]) -> Score:
    """A `Score` from P(yes) per question (None: unparsed, taken as 0.5)."""
    p = [0.5 if q is None else q for q in probabilities]
    bacc, f1 = prevalence_matched(truth, p)
    half, _ = binary_scores(truth, [q > 0.5 for q in p])
    return Score(bacc, f1, auroc(p, truth), len(truth), sum(q is None for q in probabilities), half)


def _ask(client: ChatClient, explanation: str, texts: list[str], truth: list[bool], tokens: list[str]) -> Score:
    return score_probabilities(truth, ask(client, explanation, texts, tokens))


def held_out(record: LatentExamples, n_explain: int, n_positives: int) -> list[Example]:
    """Activating windows not shown to the explainer: quantile samples first, then the remaining top windows."""
    return (record.samples + record.top[n_explain:])[:n_positives]


def detection(client: ChatClient, explanation: str, record: LatentExamples, n_explain: int = 10,
              n_positives: int = 10) -> Score:  # fmt: skip
    """Detection score: held-out positives vs `record.negatives` (other latents' peaks), each peak marked and named."""
    pos, neg = held_out(record, n_explain, n_positives), record.negatives
    if not pos or not neg:
        raise SparseInferError(f"latent {record.latent} has no held-out positives or no negatives to score")
    windows = pos + neg
    texts, tokens = [ex.text(("<<", ">>")) for ex in windows], [ex.tokens[ex.peak] for ex in windows]
    return _ask(client, explanation, texts, [True] * len(pos) + [False] * len(neg), tokens)


def fuzzing(client: ChatClient, explanation: str, record: LatentExamples, n_explain: int = 10,
            n_positives: int = 10, seed: int = 0) -> Score:  # fmt: skip
    """Fuzzing score: each held-out window shown with its peak marked (true) and a silent token marked (false)."""
    rng = np.random.default_rng(seed + record.latent)
    texts, truth, tokens = [], [], []
    for ex in held_out(record, n_explain, n_positives):
        silent = [i for i, a in enumerate(ex.acts) if a == 0]
        if not silent:
            continue
        wrong = Example(ex.tokens, ex.acts, int(rng.choice(silent)), ex.context, ex.position)
        texts += [ex.text(("<<", ">>")), wrong.text(("<<", ">>"))]
        truth += [True, False]
        tokens += [ex.tokens[ex.peak], wrong.tokens[wrong.peak]]
    if not texts:
        raise SparseInferError(f"latent {record.latent} has no held-out window with a silent token to fuzz")
    return _ask(client, explanation, texts, truth, tokens)
