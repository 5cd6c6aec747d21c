"""`sparseinfer reproduce llm` as stages (experiments.llm_study) on the micro preset with a tiny random model: the
pipeline end to end, stage resume (markers skip, a killed stage is redone), the interp stage against the fake LLM
server, and `evaluate`'s up-front checks (hook mismatch refused before any compute; calibrated --target-l0 rows)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import yaml

from sparseinfer.errors import SparseInferError
from sparseinfer.experiments.llm_files import STAGES, finished, marker
from sparseinfer.experiments.llm_presets import get_preset
from sparseinfer.experiments.llm_study import run_llm_study, write_llm_report
from sparseinfer.interp.fake import FakeLLMServer
from sparseinfer.lm.tiny import build_tiny_model

WORDS = (
    "the quick brown fox , jumps over a lazy dog . while to be or not to be , that is the question of gold and time"
).split()


@pytest.fixture(scope="module")
def assets(tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("llm")
    model = build_tiny_model(root / "model")
    docs = root / "docs"
    docs.mkdir()
    for i in range(20):  # 20 documents: every 10th is held out
        words = [WORDS[(i * 7 + j * (i % 5 + 1)) % len(WORDS)] for j in range(160)]
        (docs / f"doc{i:02d}.txt").write_text(" ".join(words) + ".")
    return model, docs


def micro(assets, **more):
    model, docs = assets
    return get_preset("micro", model=str(model), text=str(docs), hook="resid_pre.2", **more)


def _fox(payload) -> str:
    text = payload["messages"][-1]["content"]
    return "Explanation: the word fox" if "detect" in text else "Yes"


def test_pipeline_end_to_end_and_resume(assets, tmp_path) -> None:
    out = tmp_path / "study"
    lines: list[str] = []
    with FakeLLMServer(_fox) as srv:
        done = run_llm_study(micro(assets), out, base_url=srv.base_url, progress=lines.append)
    assert list(done) == list(STAGES) and finished(out) == list(STAGES)
    results = pd.read_parquet(out / "results.parquet")
    preset = micro(assets)
    expected = sum(len(preset.targets) * (3 if f == "sparse_coding" else 4) for f in preset.families)
    assert len(results) == expected  # one row per dictionary x method x target
    calibrated = results[(results.method.isin(["fista", "ito"])) & (results.error == "")]
    assert (
        len(calibrated) and (abs(calibrated.calibrated_l0 - calibrated.target_l0) <= 0.05 * calibrated.target_l0).all()
    )
    omp = results[results.method == "omp"]
    assert (omp.k == omp.target_l0).all() and (omp.l0 <= omp.target_l0 + 1e-9).all()
    for col in ("fvu", "loss_recovered", "kl", "dead_fraction", "dense_fraction", "inference_flops_per_token",
                "train_flops"):  # fmt: skip
        assert col in results
    for name in ("report.md", "config.yaml", "frontier_l0.png", "frontier_flops.png"):
        assert (out / name).exists(), name
    assert "matched L0" in (out / "report.md").read_text()
    assert len(pd.read_parquet(out / "interp" / "scores.parquet")) >= 3  # interp ran against the fake server
    assert any("finished in" in line for line in lines)
    stamps = {s: marker(out, s).stat().st_mtime_ns for s in STAGES}
    # a rerun without --resume is refused; with it every finished stage is skipped
    with pytest.raises(SparseInferError, match="--resume"):
        run_llm_study(micro(assets), out)
    again: list[str] = []
    run_llm_study(micro(assets), out, resume=True, progress=again.append)
    assert sum("skipped" in line for line in again) == len(STAGES)
    assert {s: marker(out, s).stat().st_mtime_ns for s in STAGES} == stamps
    # a stage whose marker is gone (killed before it finished) is redone, its finished pieces reused
    marker(out, "evaluate").unlink()
    marker(out, "report").unlink()
    redo: list[str] = []
    run_llm_study(micro(assets), out, resume=True, progress=redo.append)
    assert not any(line.startswith("evaluate [") for line in redo)  # every row was saved before
    assert marker(out, "evaluate").exists()
    # the report reads only the files
    assert write_llm_report(out).read_text() == (out / "report.md").read_text()


def test_refined_inference_is_explained_on_its_dictionarys_latents(assets, tmp_path) -> None:
    """`interp_methods`: the evaluate stage's calibrated ITO of the TopK dictionary and sparse coding's own inference
    are saved as encoder folders and explained; ITO on the latents of TopK's own encoder, compared paired with it."""
    out = tmp_path / "study"
    preset = micro(assets, interp_methods=("topk:ito", "sparse_coding:own"), interp_latents=4)
    with FakeLLMServer(_fox) as srv:
        run_llm_study(preset, out, base_url=srv.base_url, stop_after="interp")
    scores = pd.read_parquet(out / "interp" / "scores.parquet")
    own, ito = (set(scores[scores.encoder == name].latent) for name in ("topk-l0_4", "topk-l0_4__ito"))
    assert ito and ito <= own and "sparse_coding-l0_4__own" in set(scores.encoder)
    row = json.loads((out / "evaluate" / "rows" / "topk-l0_4__ito.json").read_text())
    saved = json.loads((out / "interp" / "encoders" / "topk-l0_4__ito" / "cfg.json").read_text())
    assert saved["encoder"] == "ito" and saved["hparams"]["init"] == "topk"
    assert saved["hparams"]["refiner_kwargs"]["penalty"] > 0 and row["penalty"] > 0
    comparison = pd.read_parquet(out / "interp" / "comparison.parquet")
    paired = comparison[(comparison.encoder == "topk-l0_4__ito") & (comparison.metric == "detection_bacc")]
    assert paired.reference.tolist() == ["topk-l0_4"]
    assert paired.test.tolist() == ["paired" if len(ito) >= 2 else "unpaired"]
    for bad in ("relu:own", "sparse_coding:ito", "topk:lars", "nope:ito", "topk"):
        with pytest.raises(SparseInferError, match="interp_methods"):
            micro(assets, interp_methods=(bad,))


def test_a_changed_preset_is_refused_on_resume(assets, tmp_path) -> None:
    out = tmp_path / "study"
    run_llm_study(micro(assets), out, stop_after="data")
    with pytest.raises(SparseInferError, match="another preset"):
        run_llm_study(micro(assets, steps=7), out, resume=True, stop_after="data")
    # a reworded time estimate changes no result: the study resumes
    assert run_llm_study(micro(assets, expected="minutes"), out, resume=True, stop_after="data")["data"]
    # a study folder from before a setting existed resumes as that setting's default, and only as that
    config = yaml.safe_load((out / "config.yaml").read_text())
    del config["preset"]["interp_methods"]
    (out / "config.yaml").write_text(yaml.safe_dump(config))
    assert run_llm_study(micro(assets), out, resume=True, stop_after="data")["data"]
    with pytest.raises(SparseInferError, match="another preset"):
        run_llm_study(micro(assets, interp_methods=("topk:ito",)), out, resume=True, stop_after="data")


def test_training_and_evaluation_on_worker_processes_equal_the_serial_stages(assets, tmp_path) -> None:
    """`workers=2` (two spawned single-threaded processes; a resumed study may change it) trains the runs and
    writes the rows the serial stages do, and says so in its progress and stage markers."""
    import shutil

    serial = tmp_path / "serial"
    run_llm_study(micro(assets, families=("relu", "topk")), serial, stop_after="evaluate")
    parallel = tmp_path / "parallel"
    shutil.copytree(serial, parallel)
    for stage in ("train", "evaluate"):
        shutil.rmtree(parallel / stage)
        marker(parallel, stage).unlink()
    lines: list[str] = []
    done = run_llm_study(micro(assets, families=("relu", "topk"), workers=2), parallel, resume=True,
                         stop_after="evaluate", progress=lines.append)  # fmt: skip
    assert done["evaluate"]["outputs"]["workers"] == 2
    assert sum("on 2 worker processes" in line for line in lines) == 2
    assert sum(line.startswith("train [") for line in lines) == 4
    assert sum(line.startswith("evaluate [") for line in lines) == 16
    trained = json.loads(marker(parallel, "train").read_text())["outputs"]
    assert sorted(trained) == ["relu-l0_2", "relu-l0_4", "topk-l0_2", "topk-l0_4"]
    assert all(record["seconds"] > 0 and record["train_flops"] > 0 for record in trained.values())
    ours, theirs = (pd.read_parquet(p / "results.parquet").drop(columns="eval_seconds") for p in (parallel, serial))
    assert (ours["error"] == "").sum() >= 12  # the micro dictionaries leave a few targets out of reach
    pd.testing.assert_frame_equal(ours, theirs, rtol=1e-4)


def test_sigkill_loses_at_most_the_stage_in_progress(assets, tmp_path) -> None:
    out = tmp_path / "study"
    run_llm_study(micro(assets, steps=4000), out, stop_after="data")
    model, docs = assets
    code = (
        "from sparseinfer.experiments.llm_presets import get_preset\n"
        "from sparseinfer.experiments.llm_study import run_llm_study\n"
        f"p = get_preset('micro', model={str(model)!r}, text={str(docs)!r}, hook='resid_pre.2', steps=4000)\n"
        f"run_llm_study(p, {str(out)!r}, resume=True, stop_after='train')\n"
    )
    first = out / "train" / "relu-l0_2"
    proc = subprocess.Popen([sys.executable, "-c", code])
    deadline = time.monotonic() + 120
    while not (first / "checkpoint.safetensors").exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.1)
    assert proc.poll() is None, "the training stage ended before it could be killed"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert marker(out, "data").exists() and not marker(out, "train").exists()
    assert json.loads(marker(out, "data").read_text())["stage"] == "data"


def test_evaluate_refuses_a_run_at_another_hook(assets, tmp_path) -> None:
    from sparseinfer.evaluation.runs import evaluate_runs

    out = tmp_path / "study"
    run_llm_study(micro(assets), out, stop_after="train")
    run = out / "train" / "topk-l0_2"
    info = json.loads((run / "run.json").read_text())
    info["source"]["hook"] = "model.layers.0:input"
    (run / "run.json").write_text(json.dumps(info))
    ok = out / "train" / "relu-l0_2"
    with pytest.raises(SparseInferError, match=r"trained at hook 'model\.layers\.0:input'"):
        evaluate_runs([ok, run], out / "data" / "test", n_tokens=64, downstream_contexts=0)
    with pytest.raises(SparseInferError, match="not a finished training run"):
        evaluate_runs([ok, tmp_path / "nothing"], out / "data" / "test", n_tokens=64, downstream_contexts=0)
    lines: list[str] = []
    rows = evaluate_runs([ok], out / "data" / "test", n_tokens=64, downstream_contexts=0, infer_with="fista",
                         infer_params={"max_iter": 50}, target_l0=[2.0, 4.0], progress=lines.append)  # fmt: skip
    assert [r.get("target_l0") for r in rows] == [None, 2.0, 4.0]
    assert all(abs(r["calibrated_l0"] - r["target_l0"]) <= 0.05 * r["target_l0"] for r in rows[1:])
    assert len(lines) == 6 and lines[0].startswith("evaluate [1/3]")


def test_cli_evaluate_with_target_l0_and_progress(assets, tmp_path) -> None:
    out = tmp_path / "study"
    run_llm_study(micro(assets), out, stop_after="train")
    run, store = out / "train" / "relu-l0_4", out / "data" / "test"
    args = [sys.executable, "-m", "sparseinfer", "evaluate", str(run), "--store", str(store), "--tokens", "64",
            "--contexts", "0", "--infer-with", "omp", "--target-l0", "2,3"]  # fmt: skip
    done = subprocess.run(args, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "evaluate [3/3]" in done.stderr and "omp on relu's dictionary" in done.stdout
    bad = subprocess.run([*args[:-1], "two"], capture_output=True, text=True, timeout=300)
    assert bad.returncode == 2 and "--target-l0 must be numbers" in bad.stderr


def test_sparse_coding_starts_at_its_target_penalty_with_a_short_warm_up() -> None:
    """The controller has most of sparse coding's few steps (warm-up 10%) and starts from the preset's penalty."""
    from sparseinfer.experiments.llm_study import train_config

    preset = get_preset("quick")
    for target in preset.targets:
        cfg = train_config(preset, "sparse_coding", target, 576)
        assert cfg.encoder == "gradient" and cfg.target_l0 == target and cfg.steps == preset.sparse_coding_steps
        assert cfg.hparams["penalty"] == preset.sparse_coding_penalty[target]
        assert cfg.l1_warmup_steps == preset.sparse_coding_steps // 10


def test_local_explainer_servers_are_fetched_and_logged_in_the_study(tmp_path, monkeypatch) -> None:
    """Without --llm-url the interp stage assembles the named explainer, starts `llm_servers` servers of
    `llm_threads` each with their logs under interp/, and hands back one client per server."""
    import contextlib

    import sparseinfer.interp.models as models
    import sparseinfer.interp.server as server
    from sparseinfer.experiments.llm_study import _llm_clients

    fetched, started = [], []

    class Server:
        def __init__(self, gguf, threads, log):
            assert log.parent.is_dir()  # the log's folder exists before the server opens it
            started.append((gguf, threads, log.name))
            self.base_url = f"http://127.0.0.1:{9000 + len(started)}/v1"

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return None

    monkeypatch.delenv("SPARSEINFER_LLM_BASE_URL", raising=False)
    monkeypatch.setattr(models, "fetch_model", lambda name, progress=None: fetched.append(name))
    monkeypatch.setattr(server, "LocalLLMServer", Server)
    preset = get_preset("quick")
    with contextlib.ExitStack() as stack:
        clients = _llm_clients(preset, tmp_path, None, stack)
        assert [c.config.base_url for c in clients] == ["http://127.0.0.1:9001/v1", "http://127.0.0.1:9002/v1"]
    assert fetched == [preset.explainer] and preset.explainer in models.MODELS
    assert started == [(preset.explainer, 1, "llm-server-0.log"), (preset.explainer, 1, "llm-server-1.log")]
