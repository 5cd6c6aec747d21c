"""Sparse probing on planted cases with known answers (an exact label indicator probes at 100%, uninformative
latents near chance), the part-of-speech alignment rule, and the corpus tasks on the tiny model."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from sparseinfer import SparseInferError
from sparseinfer.evaluation.probing import (
    Passage,
    ProbeTask,
    coarse_tag,
    document_task,
    evaluate_probes,
    select_latents,
    split_documents,
    token_tags,
    token_task,
)


def _task(n_docs: int = 60, tokens: int = 5, seed: int = 0) -> ProbeTask:
    rng = np.random.default_rng(seed)
    labels = np.array(["a", "b", "c"] * (n_docs // 3))
    example = np.repeat(np.arange(n_docs), tokens)
    x = torch.tensor(rng.standard_normal((n_docs * tokens, 6)), dtype=torch.float32)
    return ProbeTask("planted", x, example, labels, split_documents(labels, seed=seed))


def _planted_codes(task: ProbeTask, informative: bool, seed: int = 1) -> np.ndarray:
    """Latent 3 is exactly 'the token's document is labelled a' (when informative); the rest uniform noise."""
    rng = np.random.default_rng(seed)
    codes = rng.uniform(0, 1, (task.x.shape[0], 10))
    if informative:
        codes[:, 3] = (task.labels[task.example] == "a").astype(float)
    return codes


def test_indicator_latent_probes_at_100_percent() -> None:
    task = _task()
    rows = evaluate_probes([task], lambda x: _planted_codes(task, True))
    a = rows[(rows["class"] == "a")]
    assert (a["accuracy"] == 1.0).all() and list(a["k"]) == [1, 2, 5, 20]
    pooled = task.features(_planted_codes(task, True))
    assert select_latents(pooled, task.labels == "a", 1).tolist() == [3]
    assert {"ci_low", "ci_high"} <= set(rows.columns)


def test_uninformative_latents_probe_near_chance() -> None:
    task = _task(n_docs=300, tokens=2)
    rows = evaluate_probes([task], lambda x: _planted_codes(task, False))
    pooled = rows[rows["class"] == "all"]
    assert (pooled["accuracy"] < 0.65).all() and (pooled["accuracy"] > 0.35).all()
    assert (pooled["ci_low"] <= pooled["accuracy"]).all() and (pooled["accuracy"] <= pooled["ci_high"]).all()


def test_dense_probe_is_the_ceiling_rows() -> None:
    task = _task()
    task.x[:, 0] = torch.tensor((task.labels[task.example] == "b").astype(np.float32))
    rows = evaluate_probes([task], None)
    b = rows[(rows["class"] == "b")]
    assert sorted(b["k"]) == [1, 2, 5, 6, 20] and (b["accuracy"] == 1.0).all()


def test_split_is_by_document_and_stratified() -> None:
    labels = ["x"] * 10 + ["y"] * 4 + ["z"]
    train = split_documents(labels, seed=0)
    assert (~train[:10]).sum() == 3 and (~train[10:14]).sum() == 1 and train[14]


def test_pos_alignment_rule() -> None:
    tagged = [("The", "at"), ("dog's", "nn$"), ("``", "``"), ("ran", "vbd"), ("''", "''"), (".", ".")]
    text = 'The dog\'s "ran".'
    offsets = [(0, 3), (3, 7), (7, 9), (9, 11), (11, 15), (15, 16)]  # "The", " dog", "'s", ' "', "ran", '".'
    tags = token_tags(text, tagged, [(0, 3), (3, 7), (7, 9), (9, 11), (11, 14), (14, 16)])
    assert tags == ["determiner", "noun", "noun", None, "verb", None]
    assert coarse_tag("np-tl") == "proper_noun" and coarse_tag(",") is None and offsets


def test_token_and_document_tasks_and_bad_input() -> None:
    acts = [torch.randn(3, 4), torch.randn(2, 4)]
    passages = [Passage([0, 1, 2, 3], "news", ["noun", None, "verb"]), Passage([0, 1, 2], "fiction", ["noun", "verb"])]
    doc = document_task("genre", passages, acts)
    assert doc.x.shape == (5, 4) and doc.example.tolist() == [0, 0, 0, 1, 1]
    tok = token_task("pos", passages, acts, np.array([True, False]))
    assert tok.labels.tolist() == ["noun", "verb", "noun", "verb"] and tok.train.tolist() == [True, True, False, False]
    with pytest.raises(SparseInferError, match="one example index"):
        ProbeTask("bad", torch.zeros(3, 2), np.zeros(2, dtype=int), np.array(["a"]), np.array([True]))
    with pytest.raises(SparseInferError, match="no class"):
        evaluate_probes([doc], None)


def _long_rows() -> pd.DataFrame:
    rows = []
    for dictionary, method, target in (("dense", "dense", float("nan")), ("topk", "own", 16.0), ("topk", "omp", 16.0)):
        for k in [1, 20, 576] if method == "dense" else [1, 20]:
            rows.append({"dictionary": dictionary, "run": "" if method == "dense" else "topk-l0_16", "method": method,
                         "encoder": method, "target_l0": target, "task": "brown_genre", "k": k, "metric": "accuracy",
                         "value": 0.75, "ci_low": 0.5, "ci_high": 0.9, "n": 40, "error": ""})  # fmt: skip
        if method != "dense":
            rows.append({"dictionary": dictionary, "run": "topk-l0_16", "method": method, "encoder": method,
                         "target_l0": target, "task": "first_letter", "k": 0, "metric": "absorption_rate",
                         "value": 0.125, "ci_low": 0.0, "ci_high": 0.25, "n": 8, "error": ""})  # fmt: skip
    return pd.DataFrame(rows)


def test_report_lines_and_cli_table(tmp_path) -> None:
    from rich.console import Console

    from sparseinfer.cli.tables import probe_table
    from sparseinfer.experiments.llm_probe import PROBE, probe_report_lines

    frame = _long_rows()
    frame.to_parquet(tmp_path / PROBE)
    lines = probe_report_lines(tmp_path)
    table = [line for line in lines if line.startswith("|")]
    header = "| dictionary | method | target L0 | brown_genre k=1 | brown_genre k=20 | brown_genre all dims | "
    assert table[0] == header + "absorption_rate |"
    assert table[2].startswith("| dense | dense | - | 0.750 [0.500, 0.900] |") and table[2].endswith("| - |")
    assert table[-1] == "| topk | omp | 16 | 0.750 [0.500, 0.900] | 0.750 [0.500, 0.900] | - | 0.125 [0.000, 0.250] |"
    assert probe_report_lines(tmp_path / "none") == []
    console = Console(width=200, record=True)
    console.print(probe_table(frame.assign(run=frame["run"])))
    text = console.export_text()
    assert "brown_genre k=1" in text and "0.125 [0.000, 0.250]" in text and "brown_genre k=576" in text


# ------------------------------------------------------------------------------ end to end on a tiny model
WORDS = "the quick brown fox , jumps over a lazy dog . to be or not to be , that is the question of gold".split()


@pytest.fixture(scope="module")
def micro_study(tmp_path_factory):
    """The micro study (tiny random model, 20 small documents) run through its evaluate stage."""
    from sparseinfer.experiments.llm_presets import get_preset
    from sparseinfer.experiments.llm_study import run_llm_study
    from sparseinfer.lm.tiny import build_tiny_model

    root = tmp_path_factory.mktemp("probe")
    docs = root / "docs"
    docs.mkdir()
    for i in range(20):
        (docs / f"doc{i:02d}.txt").write_text(" ".join(WORDS[(i * 7 + j * (i % 5 + 1)) % len(WORDS)]
                                                       for j in range(160)) + ".")  # fmt: skip
    preset = get_preset("micro", model=str(build_tiny_model(root / "model")), text=str(docs), hook="resid_pre.2")
    run_llm_study(preset, root / "study", stop_after="evaluate")
    return preset, root / "study"


def test_stage_probe_end_to_end_and_resume(micro_study) -> None:
    from sparseinfer.experiments.llm_probe import PROBE, probe_report_lines, stage_probe
    from sparseinfer.experiments.llm_study import row_jobs

    preset, out = micro_study
    lines: list[str] = []
    summary = stage_probe(preset, out, lines.append)
    table = pd.read_parquet(out / PROBE)
    jobs = row_jobs(preset, out / "probe" / "rows")
    assert summary["rows"] == len(table) and summary["tokens_per_row"] > 0 and "brown_pos" in summary["tasks"]
    evaluated = pd.read_parquet(out / "results.parquet")
    assert summary["reused_calibrations"] == len(jobs) - (evaluated["error"] != "").sum()  # no second bisection
    done = table[table["error"] == ""]
    assert set(done["method"]) >= {"dense", "own", "omp"}
    for method, rows in done.groupby("method"):  # every method: accuracy per task and k, absorption with intervals
        assert {"accuracy"} <= set(rows["metric"]), method
        acc = rows[rows["metric"] == "accuracy"]
        assert ((acc["value"] >= 0) & (acc["value"] <= 1)).all() and (acc["ci_low"] <= acc["ci_high"]).all()
        if method != "dense":
            assert {"absorption_rate", "absorption_fraction"} <= set(rows["metric"]), method
    assert probe_report_lines(out)[0].startswith("## Sparse probing")
    # resume: only the row whose file is gone is computed again
    jobs[1][3].unlink()
    again: list[str] = []
    stage_probe(preset, out, again.append)
    assert [line for line in again if line.startswith("probe [")] == [line for line in lines if
                                                                      line.startswith("probe [2/")]  # fmt: skip
    assert len(pd.read_parquet(out / PROBE)) == len(table)


def test_rebuilt_method_matches_the_evaluate_calibration(micro_study) -> None:
    """`calibrated_method` rebuilds the encoder the evaluate stage calibrated: its L0 on the calibration signals is
    the one the evaluate row recorded."""
    from sparseinfer.data.store import ActivationStore
    from sparseinfer.evaluation.runs import calibration_signals
    from sparseinfer.experiments.llm_probe import calibrated_method
    from sparseinfer.training.activations.train import load_run

    preset, out = micro_study
    rows = pd.read_parquet(out / "results.parquet")
    rows = rows[(rows["error"] == "") & (rows["method"] != "own") | (rows["dictionary"] == "sparse_coding")]
    rows = rows[rows["error"] == ""]
    assert len(rows)
    store = ActivationStore.open(out / "data" / "test")
    for row in rows.to_dict("records"):
        encoder, dictionary, info = load_run(out / "train" / row["run"], preset.device)
        x = calibration_signals(store, info["scale"], preset.calibration_tokens)
        chosen = calibrated_method(row["method"], row["dictionary"], encoder, dictionary, row, preset)
        with torch.no_grad():
            from sparseinfer.codes import as_dense

            l0 = float((as_dense(chosen(x, dictionary)) != 0).sum(dim=1).double().mean())
        assert l0 == pytest.approx(row["calibrated_l0"], rel=1e-6, abs=1e-6), (row["run"], row["method"])


def test_cli_evaluate_probe_absorption(micro_study, tmp_path) -> None:
    from typer.testing import CliRunner

    from sparseinfer.cli.app import app

    _, out = micro_study
    args = ["evaluate", str(out / "train" / "topk-l0_2"), "--store", str(out / "data" / "test"), "--tokens", "64",
            "--contexts", "0", "--out", str(tmp_path), "--probe", "--absorption", "--probe-docs", "150", "0",
            "--probe-tokens", "8", "--letter-tokens", "64"]  # fmt: skip
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    table = pd.read_parquet(tmp_path / "probe.parquet")
    assert {"dense", "topk"} <= set(table["encoder"]) and "absorption_rate" in set(table["metric"])
    assert "brown_pos" in set(table["task"]) and (table.loc[table["metric"] == "accuracy", "k"] == 1).any()
    bad = CliRunner().invoke(app, [*args[:8], "--out", str(tmp_path / "b"), "--probe", "--probe-docs", "2", "0"])
    assert isinstance(bad.exception, SparseInferError) and "enough documents" in str(bad.exception)  # CLI: exit 2
