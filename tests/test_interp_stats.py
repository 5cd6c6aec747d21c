"""Bootstrap intervals on known cases, per-encoder summaries, and paired vs unpaired comparisons by hand."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from sparseinfer.interp.stats import bootstrap_mean, compare, summarise


def test_bootstrap_mean_known_cases():
    assert bootstrap_mean([0.7] * 12) == (pytest.approx(0.7), pytest.approx(0.7), pytest.approx(0.7))
    assert all(np.isnan(bootstrap_mean([float("nan")])))
    rng = np.random.default_rng(1)
    x = rng.normal(0.6, 0.2, 400)
    mean, low, high = bootstrap_mean(x, n_boot=4000, seed=3)
    half = 1.96 * x.std(ddof=1) / np.sqrt(x.size)  # the normal-theory 95% half-width
    assert mean == pytest.approx(x.mean()) and low < mean < high
    assert (high - low) / 2 == pytest.approx(half, rel=0.1) and (mean - low) == pytest.approx(high - mean, rel=0.25)
    # coverage: the interval holds the true mean in about 95% of repeated samples
    hits = [lo <= 0.6 <= hi for lo, hi in (bootstrap_mean(rng.normal(0.6, 0.2, 30), 500, seed=s)[1:] for s in
                                            range(200))]  # fmt: skip
    assert 0.88 <= np.mean(hits) <= 0.99


def test_summarise_groups_and_skips_nan():
    df = pd.DataFrame({"encoder": ["a"] * 3 + ["b"] * 2, "m": [0.5, 0.7, float("nan"), 1.0, 0.0]})
    out = summarise(df, ["m"]).set_index("encoder")
    assert out.loc["a", "n"] == 2 and out.loc["a", "mean"] == pytest.approx(0.6)
    assert out.loc["b", "std"] == pytest.approx(np.std([1.0, 0.0], ddof=1))
    assert out.loc["a", "ci_low"] <= 0.6 <= out.loc["a", "ci_high"]


def test_paired_comparison_on_shared_latents():
    rng = np.random.default_rng(0)
    base = rng.uniform(0.4, 0.9, 25)
    better = base + rng.normal(0.03, 0.02, 25)  # small but consistent per-latent gain
    df = pd.DataFrame({"encoder": ["enc"] * 25 + ["ito"] * 25 + ["other"] * 20, "latent": list(range(25)) * 2 +
                       list(range(20)), "dictionary": ["d1"] * 50 + ["d2"] * 20,
                       "m": np.r_[base, better, rng.uniform(0.4, 0.9, 20)]})  # fmt: skip
    out = compare(df, "m").set_index("encoder")
    assert out.loc["ito", "test"] == "paired" and out.loc["ito", "n_pairs"] == 25
    assert out.loc["ito", "t_p"] == pytest.approx(stats.ttest_rel(better, base).pvalue)
    assert out.loc["ito", "rank_p"] == pytest.approx(stats.wilcoxon(better, base).pvalue)
    assert out.loc["ito", "diff"] == pytest.approx((better - base).mean()) and out.loc["ito", "diff_low"] > 0
    # unpaired the same gain is invisible against the spread between latents
    assert stats.ttest_ind(better, base, equal_var=False).pvalue > 0.05 and out.loc["ito", "t_p"] < 1e-4
    assert out.loc["other", "test"] == "unpaired" and out.loc["other", "n_pairs"] == 0


def test_refined_codes_are_compared_with_their_own_dictionarys_encoder():
    """Families on different dictionaries are tested against the first family (unpaired); a second encoder of a
    dictionary (its ITO codes) against that dictionary's own encoder, paired on the latents they share."""
    rng = np.random.default_rng(1)
    relu, topk, topk_ito = rng.uniform(0.4, 0.6, 10), rng.uniform(0.5, 0.9, 10), rng.uniform(0.5, 0.9, 10)
    df = pd.DataFrame({"encoder": ["relu"] * 10 + ["topk"] * 10 + ["topk__ito"] * 10,
                       "latent": list(range(10)) + list(range(100, 110)) * 2,
                       "dictionary": ["a"] * 10 + ["b"] * 20, "m": np.r_[relu, topk, topk_ito]})  # fmt: skip
    out = compare(df, "m").set_index("encoder")
    assert out.loc["topk", "reference"] == "relu" and out.loc["topk", "test"] == "unpaired"
    assert out.loc["topk__ito", "reference"] == "topk" and out.loc["topk__ito", "test"] == "paired"
    assert out.loc["topk__ito", "diff"] == pytest.approx((topk_ito - topk).mean())
    assert isinstance(out.loc["relu", "reference"], float)  # NaN: the reference itself is not tested
    fixed = compare(df, "m", reference="topk").set_index("encoder")  # an explicit reference for every encoder
    assert fixed.loc["relu", "reference"] == "topk" and fixed.loc["topk__ito", "reference"] == "topk"
    assert isinstance(fixed.loc["topk", "reference"], float)
