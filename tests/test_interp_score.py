"""Scorer arithmetic against hand computations (balanced accuracy, macro-F1, Welch's t), answer parsing, the
explainer prompt and reply cleaning, and fuzzing's marked tokens."""

from __future__ import annotations

import math
import re

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from sparseinfer.errors import SparseInferError
from sparseinfer.interp.client import ChatClient, LLMConfig
from sparseinfer.interp.examples import Example, LatentExamples
from sparseinfer.interp.explain import clean_explanation, explain, explainer_messages
from sparseinfer.interp.fake import FakeLLMServer
from sparseinfer.interp.score import JUDGE_SYSTEM, binary_scores, detection, fuzzing, parse_yes_no
from sparseinfer.interp.stats import compare


def test_binary_scores_by_hand():
    truth = [True, True, True, False, False]
    pred = [True, False, True, True, False]
    # positives: TP=2 FN=1 -> recall 2/3; negatives: TN=1 FP=1 -> recall 1/2
    f1_pos = 2 * (2 / 3) * (2 / 3) / (2 / 3 + 2 / 3)  # precision 2/3, recall 2/3
    f1_neg = 2 * 0.5 * 0.5 / (0.5 + 0.5)  # precision 1/2, recall 1/2
    assert binary_scores(truth, pred) == pytest.approx(((2 / 3 + 1 / 2) / 2, (f1_pos + f1_neg) / 2))
    with pytest.raises(SparseInferError, match="both classes"):
        binary_scores([True, True], [True, False])


def test_parse_yes_no():
    assert parse_yes_no("Yes.") is True and parse_yes_no(" no, it does not") is False
    assert parse_yes_no("Answer: YES") is True and parse_yes_no("maybe") is None and parse_yes_no("Nobody") is None


def test_compare_matches_welch_by_hand():
    rng = np.random.default_rng(0)
    a, b = rng.normal(0.6, 0.1, 20), rng.normal(0.5, 0.2, 25)
    df = pd.DataFrame({"encoder": ["relu"] * 20 + ["topk"] * 25, "f1": np.r_[a, b]})
    out = compare(df, "f1").set_index("encoder")  # no `dictionary` column: unpaired
    va, vb = a.var(ddof=1) / 20, b.var(ddof=1) / 25
    t = (b.mean() - a.mean()) / math.sqrt(va + vb)
    dof = (va + vb) ** 2 / (va**2 / 19 + vb**2 / 24)
    assert out.loc["topk", "test"] == "unpaired" and out.loc["topk", "t_stat"] == pytest.approx(t)
    assert out.loc["topk", "t_p"] == pytest.approx(2 * stats.t.sf(abs(t), dof))
    u = sum((x > y) + 0.5 * (x == y) for x in b for y in a)
    assert out.loc["topk", "rank_stat"] == pytest.approx(u)
    assert out.loc["topk", "diff"] == pytest.approx(b.mean() - a.mean())
    assert out.loc["topk", "diff_low"] < b.mean() - a.mean() < out.loc["topk", "diff_high"]
    assert out.loc["relu", "mean"] == pytest.approx(a.mean()) and math.isnan(out.loc["relu", "t_p"])
    with pytest.raises(SparseInferError, match="columns"):
        compare(df, "missing")


def _record() -> LatentExamples:
    pos = [Example(["a", " fox", " ran"], [0.0, 1.5, 0.0], 1, i, 2) for i in range(4)]
    neg = [Example(["the", " cat", " sat"], [0.0, 0.0, 0.0], 1, 10 + i, 2) for i in range(3)]
    return LatentExamples(7, 20, 0.1, 1.5, pos[:2], pos[2:], neg, ([1], [0.0, 1.5]))


def test_explainer_prompt_and_cleaning():
    messages = explainer_messages(_record().top)
    assert "Excerpt 1: a<< fox>> ran\n  marked token: ' fox'\n" in messages[1]["content"]
    assert clean_explanation('\n  Explanation: "the word fox"\nmore') == "the word fox"
    assert clean_explanation("   ") == ""
    # boilerplate that would turn the detection question into nonsense is stripped
    assert clean_explanation('the presence of the word "that" in the text excerpts.') == 'the word "that"'
    assert clean_explanation('the token "you" in each excerpt.') == 'the token "you"'
    assert clean_explanation("The feature detects numbers written as digits.") == "numbers written as digits"
    assert clean_explanation('"commas"') == "commas"


def test_detection_and_fuzzing_with_a_scripted_llm():
    def respond(payload):
        text = payload["messages"][-1]["content"]
        if "What does the feature detect?" in text:
            return "the word fox"
        body = text.split("Text: ", 1)[1].split("\n\n")[0]
        if " cat" in body:  # detection's negatives (another latent's windows): an unparsable answer, P = 0.5
            return "I cannot tell"
        return "Yes" if "<< fox>>" in body else "No"  # right only when the marked token is fox

    with FakeLLMServer(respond) as srv, ChatClient(LLMConfig(base_url=srv.base_url)) as client:
        rec = _record()
        explanation = explain(client, rec, n_examples=2)
        det = detection(client, explanation, rec, n_explain=2, n_positives=2)
        fz = fuzzing(client, explanation, rec, n_explain=2, n_positives=2)
    assert explanation == "the word fox"
    # the server sends text without logprobs: the reply's yes/no decides; "I cannot tell" is unparsed (P = 0.5)
    assert (det.balanced_accuracy, det.f1, det.n, det.unparsed, det.auroc) == (1.0, 1.0, 5, 3, 1.0)
    assert (fz.balanced_accuracy, fz.n) == (1.0, 4)
    # every question carries the fixed worked examples as its system message and the explanation first (one
    # cached prefix for all of a latent's questions), then the window and its marked token named; the explanation
    # request does not
    questions = [p for p in srv.payloads if p["messages"][0]["content"] == JUDGE_SYSTEM]
    assert len(questions) == 5 + 4 and len(srv.payloads) == 1 + 5 + 4
    for p in questions:
        text = p["messages"][-1]["content"]
        assert text.startswith("Feature: the word fox\n\nText: ")
        assert re.search(r"\n\nThe marked token is <<(fox|a|ran|cat|the|sat)>>\. Is it the word fox\?$", text)


def test_prevalence_matched_threshold_ignores_a_constant_yes_bias() -> None:
    """A judge that ranks perfectly but says P(yes) > 0.5 to everything: 1.0 at the matched threshold, 0.5 at 0.5;
    a judge with one constant answer scores exactly 0.5; a half-right ranking by hand."""
    from sparseinfer.interp.score import prevalence_matched, score_probabilities

    truth = [True, True, False, False]
    biased = score_probabilities(truth, [0.99, 0.98, 0.7, 0.6])
    assert biased.balanced_accuracy == 1.0 and biased.balanced_accuracy_at_half == 0.5 and biased.auroc == 1.0
    assert prevalence_matched(truth, [0.9, 0.9, 0.9, 0.9]) == (0.5, 0.5)
    # ranking T F | T F: the top two are one true, one false -> tp 1, tn 1 of 2 each
    assert prevalence_matched(truth, [0.9, 0.2, 0.8, 0.1])[0] == 0.5
    # a tie at the cut between one true and one false: each half-called "yes"
    assert prevalence_matched([True, False, True, False], [0.9, 0.5, 0.5, 0.1])[0] == 0.75


def test_score_latent_fuzzes_n_fuzz_windows_and_detects_n_samples() -> None:
    """`n_fuzz` sets fuzzing's held-out windows (two questions each) apart from detection's positives."""
    from sparseinfer.interp.latent import InterpretConfig, score_latent

    def respond(payload):
        text = payload["messages"][-1]["content"]
        return "the word fox" if "What does the feature detect?" in text else "Yes"

    with FakeLLMServer(respond) as srv, ChatClient(LLMConfig(base_url=srv.base_url)) as client:
        config = InterpretConfig(n_explain=1, n_samples=2, n_fuzz=1, embedding=False)
        row = score_latent(client, _record(), config)
    asked = [p["messages"][-1]["content"] for p in srv.payloads]
    questions = [q for q in asked if q.startswith("Feature: ")]
    assert sum(" cat" in q for q in questions) == 3  # detection's 3 negatives
    assert sum("<< fox>>" in q for q in questions) == 2 + 1  # 2 held-out positives, 1 fuzzed window's true peak
    assert len(questions) == 2 + 3 + 2  # fuzzing: one window, its peak and one silent token
    assert row["explanation"] == "the word fox" and row["fuzzing_bacc"] == 0.5  # "Yes" to both: no information
