"""Execute one run of the synthetic study into its folder: config.yaml, history.parquet, weights; return the result.

The runner calls `execute(config_dict, run_dir)`; it writes result.json (the completion marker) from the return value.
"""

from __future__ import annotations

import math
import platform
import time
from pathlib import Path
from typing import Any

import pandas as pd
import torch

import sparseinfer
from sparseinfer.codes import as_dense
from sparseinfer.data.synthetic import SyntheticData, make_synthetic
from sparseinfer.dictionary import Dictionary
from sparseinfer.encoders import create
from sparseinfer.encoders.base import Encoder
from sparseinfer.experiments.files import write_parquet, write_yaml
from sparseinfer.experiments.sweep_config import ITOConfig, RunConfig, parse_run
from sparseinfer.flops import optimisation
from sparseinfer.io import save_sae
from sparseinfer.metrics import dictionary_mcc, latent_mcc
from sparseinfer.training import Regime, TrainConfig, code_table_for, evaluate_synthetic, fit, get_regime, score_codes

Rows = list[dict[str, Any]]


def resolved_config(config: RunConfig) -> dict[str, Any]:
    """The full config with every default filled in, plus the versions and the torch thread count that produced the
    run (the count changes the order of floating-point reductions, so it is part of what makes a result)."""
    out = config.model_dump(mode="json")
    out["versions"] = {
        "sparseinfer": sparseinfer.__version__,
        "torch": str(torch.__version__),
        "python": platform.python_version(),
    }
    out["torch_threads"] = torch.get_num_threads()
    return out


def _initial_dictionary(config: RunConfig, data: SyntheticData, regime: Regime) -> Dictionary:
    """The truth in the known settings; standard Gaussian atoms (unit norm) when the dictionary is learned."""
    if regime.learn_dictionary:
        d = config.data
        dtype = data.train_x.dtype
        return Dictionary.random(d.n_latents, d.dim, seed=10_007 * config.seed + 1, dtype=dtype)
    return Dictionary.from_tensor(data.dictionary.atoms.detach().clone(), normalise=False)


def _code_table_scores(table: Encoder, dictionary: Dictionary, data: SyntheticData) -> dict[str, float]:
    """Sparse coding has no test codes before ITO: track the dictionary and the training codes' MCC."""
    with torch.no_grad():
        codes = table(data.train_x, dictionary)
    return {
        "latent_mcc": math.nan,
        "train_latent_mcc": latent_mcc(data.train_codes, codes),
        "dict_mcc": dictionary_mcc(data.dictionary.atoms.detach(), dictionary.atoms.detach()),
        "fvu": math.nan,
        "l0": math.nan,
        "inference_flops": 0,
    }


def _train_phase(
    encoder: Encoder, dictionary: Dictionary, data: SyntheticData, regime: Regime, train: TrainConfig, config: RunConfig
) -> Rows:
    if config.kind == "sparse_coding":
        evaluate = lambda: _code_table_scores(encoder, dictionary, data)  # noqa: E731
    else:
        evaluate = lambda: evaluate_synthetic(encoder, dictionary, data, regime)  # noqa: E731
    rows = fit(
        encoder,
        dictionary,
        data.train_x,
        regime,
        train,
        train_codes=data.train_codes,
        evaluate=evaluate,
        seed=config.seed,
    )
    return [{"phase": "train", **row} for row in rows]


def _ito_phase(
    encoder: Encoder | None,
    dictionary: Dictionary,
    data: SyntheticData,
    regime: Regime,
    ito: ITOConfig,
    l1: float,
    after: dict[str, Any],
) -> Rows:
    """Refine the test codes against the frozen dictionary by Adam on exp-parameterised codes, logging the curve.

    A warm start puts the encoder's inactive latents at u = `init_log`, where the cold start puts every latent, so
    the two differ only in what the encoder found (eps = exp(init_log) floors the warm-start codes).
    """
    refiner = create(
        "gradient",
        penalty=l1,
        lr=ito.lr,
        max_iter=ito.steps,
        tol=0.0,
        parameterisation="exp",
        init_log=ito.init_log,
        eps=math.exp(ito.init_log),
        optimiser="adam",
        log_every=ito.log_every,
    )
    n_test, dim, n_latents = data.test_x.shape[0], dictionary.dim, dictionary.n_latents
    warm = ito.start == "encoder" and encoder is not None
    init_codes = as_dense(encoder(data.test_x, dictionary)).detach() if warm else None
    init_flops = encoder.inference_flops(n_test, dim, n_latents) if warm else 0
    rows: Rows = []

    def on_step(step: int, codes: torch.Tensor) -> None:
        flops = init_flops + optimisation.gradient(n_test, dim, n_latents, step, "adam", "exp", warm).total
        scores = score_codes(codes, dictionary, data, regime)
        rows.append({**after, "phase": "ito", "step": after["step"] + step, "inference_flops": flops, **scores})

    refiner.on_step = on_step
    with torch.no_grad():
        refiner(data.test_x, dictionary, init=init_codes)
    return rows


def _sklearn_dictionary_learning(config: RunConfig, data: SyntheticData, regime: Regime) -> Rows:
    """The study's scikit-learn baseline: DictionaryLearning with lasso_lars, alpha 0.05 (signed codes, as the study ran
    it); its FLOPs are not counted (NaN)."""
    from sklearn.decomposition import DictionaryLearning

    model = DictionaryLearning(
        n_components=config.data.n_latents,
        alpha=config.sklearn_alpha,
        fit_algorithm="lars",
        transform_algorithm="lasso_lars",
        transform_alpha=config.sklearn_alpha,
        random_state=config.seed,
        max_iter=1000,
    )
    model.fit(data.train_x.double().numpy())
    dictionary = Dictionary.from_tensor(torch.from_numpy(model.components_).to(data.train_x.dtype))
    codes = torch.from_numpy(model.transform(data.test_x.double().numpy())).to(data.train_x.dtype)
    scores = score_codes(codes, dictionary, data, regime)
    return [
        {
            "phase": "train",
            "step": model.n_iter_,
            "train_flops": math.nan,
            "loss": math.nan,
            "inference_flops": math.nan,
            **scores,
        }
    ]


def _save_weights(run_dir: Path, encoder: Encoder | None, dictionary: Dictionary, config: RunConfig) -> None:
    """The run's pair in the one SAE format (`io.save_sae`); the provenance names the synthetic problem."""
    provenance = {"dataset_path": "synthetic", "synthetic": config.data.model_dump(mode="json")}
    provenance |= {"setting": config.setting, "method": config.method, "seed": config.seed}
    save_sae(encoder, dictionary, run_dir, provenance=provenance)


def execute(raw: dict[str, Any], run_dir: Path) -> dict[str, Any]:
    """Run one config into `run_dir` and return its final metrics (the runner writes them to result.json)."""
    start = time.perf_counter()
    config = parse_run(raw)
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    write_yaml(run_dir / "config.yaml", resolved_config(config))
    data = make_synthetic(config.data)
    regime = get_regime(config.setting)
    torch.manual_seed(config.seed)
    d = config.data
    encoder: Encoder | None = None
    dictionary = _initial_dictionary(config, data, regime)
    if config.kind == "sklearn_dictionary_learning":
        rows = _sklearn_dictionary_learning(config, data, regime)
    else:
        if config.kind == "sparse_coding":
            encoder = code_table_for(data.train_x, dictionary, init_log=config.ito.init_log)
        else:
            spec = config.encoder
            encoder = create(spec.name, dim=d.dim, n_latents=d.n_latents, **spec.params).to(data.train_x.dtype)
        rows = _train_phase(encoder, dictionary, data, regime, config.train, config)
        if config.ito is not None:
            amortised = None if config.kind == "sparse_coding" else encoder
            rows += _ito_phase(amortised, dictionary, data, regime, config.ito, config.train.l1, rows[-1])
    history = pd.DataFrame(rows)
    history["total_flops"] = history["train_flops"] + history["inference_flops"]
    write_parquet(run_dir / "history.parquet", history)
    if config.save_weights:
        _save_weights(run_dir, encoder if config.kind == "encoder" else None, dictionary, config)
    final = history.iloc[-1]
    best = history["latent_mcc"].max()
    return {
        "setting": config.setting,
        "method": config.method,
        "seed": config.seed,
        "n_latents": d.n_latents,
        "dim": d.dim,
        "k": d.k,
        "latent_mcc": float(final["latent_mcc"]),
        "best_latent_mcc": float(best),
        "dict_mcc": float(final["dict_mcc"]),
        "fvu": float(final["fvu"]),
        "l0": float(final["l0"]),
        "train_flops": float(final["train_flops"]),
        "inference_flops": float(final["inference_flops"]),
        "total_flops": float(final["total_flops"]),
        "steps": int(final["step"]),
        "execute_time_s": time.perf_counter() - start,
        "config": config.model_dump(mode="json", exclude={"setting", "method", "seed"}),
    }
