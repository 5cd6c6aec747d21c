"""Yes/no scoring from next-token log-probabilities: the payload shapes servers return, P(yes) from case/space
variants, the 1-token request our client sends (against the scripted server), and graded detection scores."""

from __future__ import annotations

import math

import pytest

from sparseinfer.errors import SparseInferError
from sparseinfer.interp.client import ChatClient, LLMConfig
from sparseinfer.interp.examples import Example, LatentExamples
from sparseinfer.interp.fake import FakeLLMServer
from sparseinfer.interp.logprobs import parse_top_logprobs, yes_probability
from sparseinfer.interp.score import detection
from sparseinfer.interp.stats import auroc

LN = math.log


def test_chat_shape_openai_vllm_llamacpp():
    body = {"choices": [{"message": {"content": "No"}, "logprobs": {"content": [{"token": "No", "logprob": LN(0.6),
            "top_logprobs": [{"token": "No", "logprob": LN(0.6)}, {"token": " Yes", "logprob": LN(0.3)},
                             {"token": "I", "logprob": LN(0.1)}]}]}}]}  # fmt: skip
    assert parse_top_logprobs(body) == pytest.approx({"No": LN(0.6), " Yes": LN(0.3), "I": LN(0.1)})


def test_legacy_completion_and_native_shapes():
    legacy = {"choices": [{"text": " Yes", "logprobs": {"tokens": [" Yes"], "token_logprobs": [LN(0.7)],
              "top_logprobs": [{" Yes": LN(0.7), " no": LN(0.2)}]}}]}  # fmt: skip
    assert parse_top_logprobs(legacy) == pytest.approx({" Yes": LN(0.7), " no": LN(0.2)})
    only_chosen = {"choices": [{"logprobs": {"tokens": ["Yes"], "token_logprobs": [LN(0.9)]}}]}
    assert parse_top_logprobs(only_chosen) == pytest.approx({"Yes": LN(0.9)})
    native = {"completion_probabilities": [{"content": "No", "probs": [{"tok_str": "No", "prob": 0.8},
              {"tok_str": "Yes", "prob": 0.2}]}]}  # fmt: skip
    assert parse_top_logprobs(native) == pytest.approx({"No": LN(0.8), "Yes": LN(0.2)})
    assert parse_top_logprobs({"choices": [{"message": {"content": "Yes"}, "logprobs": None}]}) == {}
    with pytest.raises(SparseInferError):
        parse_top_logprobs([])  # type: ignore[arg-type]


def test_yes_probability_sums_variants_and_falls_back_to_text():
    top = {"Yes": LN(0.3), " yes": LN(0.1), "YES.": LN(0.05), "No": LN(0.2), " no": LN(0.05), "Not": LN(0.3)}
    assert yes_probability(top) == pytest.approx(0.45 / 0.70)  # "Not" is neither
    assert yes_probability({"Maybe": 0.0}, "Yes, it does") == 1.0
    assert yes_probability({}, "no") == 0.0 and yes_probability({}, "unclear") is None


def test_client_sends_one_token_logprob_request_and_caches(tmp_path):
    with FakeLLMServer(lambda p: {"Yes": 0.7, "No": 0.2, "Maybe": 0.1}) as srv:
        with ChatClient(LLMConfig(base_url=srv.base_url, cache_dir=tmp_path, backoff=0)) as client:
            reply, top = client.next_token([{"role": "user", "content": "?"}], top_logprobs=5)
            again = client.next_token([{"role": "user", "content": "?"}], top_logprobs=5)
            assert client.requests == 1 and again == (reply, top)
    (payload,) = srv.payloads
    assert (payload["max_tokens"], payload["logprobs"], payload["top_logprobs"]) == (1, True, 5)
    assert reply == "Yes" and yes_probability(top) == pytest.approx(0.7 / 0.9)


def _record() -> LatentExamples:
    pos = [Example(["a", f" fox{i}"], [0.0, 1.0], 1, i, 1) for i in range(6)]
    neg = [Example(["the", f" cat{i}"], [0.0, 0.0], 1, 10 + i, 1) for i in range(4)]
    return LatentExamples(3, 10, 0.1, 1.0, pos[:2], pos[2:], neg, ([1], [0.0, 1.0]))


def test_detection_from_logprobs_is_graded():
    """P(yes) ranks for AUROC and the prevalence-matched threshold: one positive below 0.5 costs accuracy at 0.5
    (`balanced_accuracy_at_half`) but neither the ranking nor the matched threshold."""
    p_yes = {"fox2": 0.9, "fox3": 0.8, "fox4": 0.7, "fox5": 0.45, "cat0": 0.3, "cat1": 0.2, "cat2": 0.1, "cat3": 0.4}

    def respond(payload):
        body = payload["messages"][-1]["content"].split("Text: ", 1)[1]
        p = next(v for k, v in p_yes.items() if k in body)
        return {"Yes": p * 0.9, " yes": p * 0.1, "No": 1 - p}

    with FakeLLMServer(respond) as srv, ChatClient(LLMConfig(base_url=srv.base_url)) as client:
        score = detection(client, "foxes", _record(), n_explain=2, n_positives=4)
    assert len(srv.payloads) == 8 and all(p["max_tokens"] == 1 for p in srv.payloads)
    assert score.balanced_accuracy_at_half == pytest.approx((3 / 4 + 1) / 2) and score.unparsed == 0
    assert score.balanced_accuracy == 1.0
    assert score.auroc == pytest.approx(auroc(list(p_yes.values()), [True] * 4 + [False] * 4)) == 1.0
