"""Declarative configs, sweep expansion, one run end to end, and the study's presets."""

from __future__ import annotations

import dataclasses
import json
import math

import pandas as pd
import pytest
import yaml

from sparseinfer.errors import SparseInferError
from sparseinfer.experiments import reproduce
from sparseinfer.experiments.execute import execute
from sparseinfer.experiments.sweep_config import load_runs, parse_run, parse_sweep

TINY = {"n_train": 128, "n_test": 128}


def test_unknown_key_is_named():
    with pytest.raises(SparseInferError, match=r"train\.stepz: unknown key"):
        parse_run({"setting": "learn_both", "method": "sae", "encoder": {"name": "relu"}, "train": {"stepz": 3}})


def test_wrong_type_and_impossible_values():
    with pytest.raises(SparseInferError, match=r"train\.lr"):
        parse_run({"setting": "learn_both", "method": "sae", "encoder": {"name": "relu"}, "train": {"lr": -1}})
    with pytest.raises(SparseInferError, match=r"data"):
        parse_run({"setting": "learn_both", "method": "x", "encoder": {"name": "relu"}, "data": {"k": 20}})
    with pytest.raises(SparseInferError, match="setting"):
        parse_run({"setting": "learn_everything", "method": "sae", "encoder": {"name": "relu"}})


def test_inconsistent_runs_are_rejected():
    with pytest.raises(SparseInferError, match="needs an `encoder"):
        parse_run({"setting": "learn_both", "method": "sae"})
    with pytest.raises(SparseInferError, match="ito"):
        parse_run({"setting": "learn_both", "method": "sc", "kind": "sparse_coding"})
    with pytest.raises(SparseInferError, match="known_codes"):
        parse_run({"setting": "known_codes", "method": "s", "encoder": {"name": "relu"}, "ito": {"steps": 3}})


def test_sweep_expands_grid_times_methods_times_seeds():
    sweep = parse_sweep(
        {
            "base": {"setting": "learn_both", "train": {"steps": 5}},
            "methods": [{"method": "sae", "encoder": {"name": "relu"}}, {"method": "m", "encoder": {"name": "mlp"}}],
            "grid": {"data.n_latents": [16, 32], "train.l1": [0.01, 0.1]},
            "seeds": [0, 1, 2],
        }
    )
    runs = sweep.expand()
    assert len(runs) == 2 * 2 * 2 * 3
    assert len({r.run_id() for r in runs}) == len(runs)
    assert {r.data.n_latents for r in runs} == {16, 32}
    assert all(r.train.steps == 5 for r in runs)


def test_load_runs_errors(tmp_path):
    with pytest.raises(SparseInferError, match="not found"):
        load_runs(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("setting: [unclosed")
    with pytest.raises(SparseInferError, match="not valid YAML"):
        load_runs(bad)


@pytest.mark.parametrize(
    "raw",
    [
        {"setting": "known_codes", "method": "sae", "encoder": {"name": "relu"}},
        {
            "setting": "known_dictionary",
            "method": "sae+ito",
            "encoder": {"name": "relu", "params": {"bias": False}},
            "ito": {"steps": 40, "lr": 0.01, "log_every": 20},
        },
        {
            "setting": "learn_both",
            "method": "sparse_coding",
            "kind": "sparse_coding",
            "ito": {"steps": 40, "lr": 0.01, "start": "cold", "log_every": 20},
        },
        {"setting": "learn_both", "method": "fista", "encoder": {"name": "fista", "params": {"nonneg": True}}},
    ],
)
def test_execute_writes_a_complete_run_folder(tmp_path, raw):
    raw = {**raw, "data": TINY, "train": {"steps": 30, "eval_every": 10, "lr": 0.01}, "seed": 3}
    result = execute(raw, tmp_path)
    config = yaml.safe_load((tmp_path / "config.yaml").read_text())
    assert config["seed"] == 3 and config["train"]["l1"] == 0.01 and "versions" in config
    history = pd.read_parquet(tmp_path / "history.parquet")
    assert {"step", "phase", "train_flops", "inference_flops", "total_flops", "latent_mcc", "dict_mcc"} <= set(
        history.columns
    )
    assert (history["total_flops"] == history["train_flops"] + history["inference_flops"]).all()
    assert history["train_flops"].is_monotonic_increasing
    assert (tmp_path / "dictionary.safetensors").exists()
    assert 0 <= result["latent_mcc"] <= 1 and result["best_latent_mcc"] >= result["latent_mcc"] - 1e-12
    assert result["total_flops"] == result["train_flops"] + result["inference_flops"]
    json.dumps(result)  # plain data for result.json
    if raw.get("ito"):
        ito = history[history.phase == "ito"]
        assert len(ito) == 2 and ito["inference_flops"].is_monotonic_increasing
        assert ito["step"].min() > history[history.phase == "train"]["step"].max()


def test_execute_is_reproducible(tmp_path):
    raw = {
        "setting": "learn_both",
        "method": "sae",
        "encoder": {"name": "relu"},
        "data": TINY,
        "train": {"steps": 20, "eval_every": 10},
    }
    a = execute(raw, tmp_path / "a")
    b = execute(raw, tmp_path / "b")
    assert a["latent_mcc"] == b["latent_mcc"] and a["dict_mcc"] == b["dict_mcc"]


def test_paper_preset_follows_the_protocol():
    runs = reproduce.study_sweep("all", "paper").expand()
    by = {(r.setting, r.method): r for r in runs if r.seed == 0}
    assert {r.seed for r in runs} == {0, 1, 2, 3, 4}
    assert by["known_codes", "sae"].train.steps == 20_000
    assert by["learn_both", "sae"].train.steps == 40_000
    assert by["known_dictionary", "sae+ito"].ito.steps == 20_000 and by["known_dictionary", "sae+ito"].ito.lr == 1e-3
    assert by["learn_both", "sae+ito"].ito.steps == 10_000 and by["learn_both", "sae+ito"].ito.lr == 3e-3
    assert by["learn_both", "sae+ito(cold)"].ito.start == "cold"
    assert ("known_codes", "mlp-1024") in by and ("known_dictionary", "mlp-1024") not in by
    assert by["known_dictionary", "sae"].encoder.params == {"bias": False}
    assert all(r.train.lr == 1e-3 and r.train.l1 == 0.01 and r.train.batch_size is None for r in runs)
    assert all((r.data.n_latents, r.data.dim, r.data.k, r.data.n_train) == (16, 8, 3, 1024) for r in runs)


def test_paper_preset_encoders_are_bias_free_as_the_studys():
    runs = reproduce.study_sweep("all", "paper", seeds=[0]).expand()
    for run in runs:
        if run.encoder is not None and run.encoder.name in ("relu", "mlp"):
            assert run.encoder.params["bias"] is (run.setting == "known_codes"), (run.setting, run.method)
    mlps = {(r.setting, r.method) for r in runs if r.encoder is not None and r.encoder.name == "mlp"}
    assert ("known_dictionary", "mlp-256") in mlps and ("learn_both", "mlp-32") in mlps
    topk = reproduce.study_sweep("ablation-topk", "paper", seeds=[0]).expand()
    assert topk and all(r.encoder.params["bias"] is False for r in topk)
    assert {r.method for r in topk} >= {"sae-topk3", "mlp-256-topk3"}


def test_mlp_bias_variant_keeps_the_old_preset_and_labels_it():
    runs = reproduce.study_sweep("all", "paper", seeds=[0], variant="mlp-bias").expand()
    by = {(r.setting, r.method): r for r in runs}
    assert by["known_dictionary", "mlp-256+bias"].encoder.params["bias"] is True
    assert by["learn_both", "mlp-32+bias"].encoder.params["bias"] is True
    assert by["known_codes", "mlp-256"].encoder.params["bias"] is True  # the same as the study's: no label
    assert by["known_dictionary", "sae"].encoder.params["bias"] is False
    topk = reproduce.study_sweep("ablation-topk", "quick", seeds=[0], variant="mlp-bias").expand()
    assert {r.encoder.params["bias"] for r in topk if r.method.startswith("mlp-256+bias-topk")} == {True}
    with pytest.raises(SparseInferError, match="known variants"):
        reproduce.study_sweep("all", "paper", variant="biased")


def test_study_data_seeds_and_data_seed_axis():
    runs = reproduce.study_sweep("all", "paper", seeds=[0], data_source="study").expand()
    assert {(r.setting, r.data.seed) for r in runs} == {
        ("known_codes", 20240625),
        ("known_dictionary", 20240625),
        ("learn_both", 20240926),
    }
    assert {r.data.source for r in runs} == {"study"}
    ours = reproduce.study_sweep("known-dictionary", "paper", seeds=[0, 1]).expand()
    assert {r.data.seed for r in ours} == {0} and {r.data.source for r in ours} == {"sparseinfer"}
    several = reproduce.study_sweep("known-dictionary", "quick", seeds=[0, 1], data_source="study", data_seeds=3)
    runs = several.expand()
    assert len(runs) == 3 * len(ours)
    assert {r.data.seed for r in runs} == {20240625, 20240626, 20240627}
    assert len({r.run_id() for r in runs}) == len(runs)
    with pytest.raises(SparseInferError, match="known sources"):
        reproduce.study_sweep("all", "paper", data_source="numpy")
    with pytest.raises(SparseInferError, match="data_seeds"):
        reproduce.study_sweep("all", "paper", data_seeds=0)
    assert "20240926" in reproduce.notes("study", "study", 3) and "3 data sets" in reproduce.notes("study", "study", 3)


def test_extra_encoders_and_unknown_targets():
    runs = reproduce.study_sweep("learn-both", "quick", encoders=["fista", "topk"], seeds=[0]).expand()
    methods = {r.method for r in runs}
    assert {"fista", "topk", "sae", "sparse_coding", "sae+ito"} <= methods
    assert next(r for r in runs if r.method == "topk").encoder.params == {"k": 3}
    with pytest.raises(SparseInferError, match="known targets"):
        reproduce.study_sweep("everything", "quick")
    with pytest.raises(SparseInferError, match="known encoders"):
        reproduce.study_sweep("all", "quick", encoders=["nope"])
    with pytest.raises(SparseInferError, match="known presets"):
        reproduce.study_sweep("all", "huge")


@pytest.mark.parametrize("ablation", ["ablation-topk", "ablation-l1", "ablation-bias", "ablation-sklearn"])
def test_ablations_expand(ablation):
    assert len(reproduce.study_sweep(ablation, "quick", seeds=[0]).expand()) >= 2


def test_run_study_end_to_end(tmp_path, monkeypatch):
    quick = reproduce.PRESETS["quick"]
    tiny = dataclasses.replace(
        quick,
        steps={"known_codes": 30, "known_dictionary": 30, "learn_both": 30},
        ito_steps={"known_dictionary": 20, "learn_both": 20},
        eval_every=10,
        ito_log_every=10,
        seeds=(0, 1),
        widths={"known_codes": (8,), "known_dictionary": (8,), "learn_both": (8,)},
    )
    monkeypatch.setitem(reproduce.PRESETS, "tiny", tiny)
    results = reproduce.run_study("all", "tiny", tmp_path, workers=1, progress=False)
    assert {
        "setting",
        "method",
        "seed",
        "n_latents",
        "dim",
        "k",
        "latent_mcc",
        "dict_mcc",
        "train_flops",
        "inference_flops",
    } <= set(results.columns)
    assert len(results) == 2 * (2 + 4 + 5)
    assert set(results.method) == {"sae", "mlp-8", "sae+ito", "sae+ito(cold)", "sparse_coding"}
    assert results[results.setting == "known_codes"].dict_mcc.isna().all()
    assert (tmp_path / "report.md").exists() and any((tmp_path / "figures").glob("*.png"))
    again = reproduce.run_study("all", "tiny", tmp_path, workers=1, resume=True, progress=False)
    assert len(again) == len(results)


def test_example_sweep_is_valid():
    from pathlib import Path

    runs = load_runs(Path(__file__).parents[1] / "examples" / "sweep.yaml")
    assert len(runs) == 5 * 2 * 2
    assert {r.method for r in runs} == {"sae", "topk", "lista-5", "fista", "sae+ito"}


@pytest.mark.parametrize("target", ["known-codes", "scaling", "theory"])
def test_run_study_hands_the_backend_to_the_runner(tmp_path, monkeypatch, target):
    import sparseinfer.experiments.runner as runner

    seen = {}

    def fake_run_sweep(specs, out, execute, **kwargs):
        seen.update(kwargs)
        raise SparseInferError("stop after the call")

    monkeypatch.setattr(runner, "run_sweep", fake_run_sweep)
    for module in ("reproduce", "scaling", "theory_study"):
        monkeypatch.setattr(f"sparseinfer.experiments.{module}.run_sweep", fake_run_sweep)
    with pytest.raises(SparseInferError, match="stop after the call"):
        reproduce.run_study(target, "quick", tmp_path, seeds=[0], backend="ray", ray_address="127.0.0.1:6379")
    assert seen["backend"] == "ray" and seen["ray_address"] == "127.0.0.1:6379"


def test_a_run_config_takes_the_study_data_source(tmp_path):
    raw = {
        "setting": "known_dictionary",
        "method": "mlp-8",
        "encoder": {"name": "mlp", "params": {"hidden": [8], "bias": False}},
        "data": {**TINY, "source": "study", "seed": 20240625},
        "train": {"steps": 10, "eval_every": 10},
    }
    result = execute(raw, tmp_path / "run")
    assert result["config"]["data"]["source"] == "study" and math.isfinite(result["latent_mcc"])
    with pytest.raises(SparseInferError, match=r"data\.source"):
        parse_run({**raw, "data": {**TINY, "source": "numpy"}})
    with pytest.raises(SparseInferError, match="cannot be set"):
        parse_run({**raw, "data": {**TINY, "source": "study", "signed": True}})
