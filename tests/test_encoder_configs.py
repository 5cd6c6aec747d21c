"""Typed encoder configs: every registered encoder declares its hyperparameters once (`Config`), its constructor
takes exactly those fields, and `encoder_config` + `create` rebuild the same encoder."""

from __future__ import annotations

import inspect
import json
import pickle

import pytest
import torch
from rich.console import Console

import sparseinfer as si
from sparseinfer.cli.tables import encoder_table
from sparseinfer.codes import as_dense
from sparseinfer.encoders.base import (
    Encoder,
    describe,
    encoder_config,
    hyperparameters,
    needs_k,
    validate_hyperparameters,
)
from sparseinfer.encoders.ito import ITOEncoder, refiner_names
from sparseinfer.encoders.relu import ReLUEncoder
from sparseinfer.encoders.topk import TopKEncoder
from sparseinfer.errors import SparseInferError
from sparseinfer.experiments.sweep_config import parse_run

M, N = 8, 16
NAMES = si.available()

# Non-default values for every registered encoder (each is fast to run on a tiny problem).
NON_DEFAULT = {
    "batch_topk": {"k": 2, "bias": False, "momentum": 0.5},
    "fista": {"penalty": 0.05, "max_iter": 50, "nonneg": True, "step_size": 0.1, "restart": False, "working_set": 4},
    "gradient": {"optimiser": "sgd", "lr": 0.01, "max_iter": 20, "parameterisation": "relu", "debias": True},
    "ista": {"penalty": 0.02, "max_iter": 30, "tol": 0.0, "check_every": 5, "debias": True},
    "ito": {"init": "topk", "init_kwargs": {"k": 2}, "refiner": "omp", "refiner_kwargs": {"k": 2}},
    "jumprelu": {"threshold_init": 0.01, "bandwidth": 0.05, "l0_coefficient": 0.0, "subtract_bias": False},
    "lasso": {"penalty": 0.05, "nonneg": True, "working_set": 3, "debias": True},
    "lca": {"penalty": 0.02, "max_iter": 40, "tau": 2.0, "dt": 0.1},
    "lista": {"n_layers": 2, "nonneg": True, "tied": False, "threshold": 0.1},
    "matching_pursuit": {"max_iter": 7, "k": 3, "tol": 1e-3, "nonneg": True},
    "mlp": {"hidden": [12, 6], "activation": "topk", "k": 4, "sparse_output": True, "bias": False},
    "omp": {"k": 4, "tol": 1e-4, "nonneg": True},
    "relu": {"bias": False, "sparse_output": True},
    "topk": {"k": 5, "fused_backward": False, "subtract_bias": False},
}
FAST = {"gradient": {"max_iter": 30}, "ito": {"refiner_kwargs": {"max_iter": 30}}}


def _problem() -> tuple[si.Dictionary, torch.Tensor]:
    dictionary = si.Dictionary.random(N, M, seed=3, bias=True)
    x = torch.randn(6, M, generator=torch.Generator().manual_seed(4))
    return dictionary, x


def _codes(encoder: Encoder, x: torch.Tensor, dictionary: si.Dictionary) -> torch.Tensor:
    with torch.no_grad():
        return as_dense(encoder.eval()(x, dictionary))


def test_every_registered_encoder_has_its_non_default_case() -> None:
    assert set(NON_DEFAULT) == set(NAMES)


@pytest.mark.parametrize("name", NAMES)
def test_config_fields_are_the_constructor_parameters(name: str) -> None:
    """Names and defaults agree, so the class constructor and the declared config cannot drift apart."""
    cls = si.get(name)
    params = inspect.signature(cls.__init__).parameters
    own = {k: p.default for k, p in params.items() if k not in ("self", "dim", "n_latents")}
    assert set(own) == set(cls.Config.model_fields)
    assert cls.Config(**own) == cls.Config()
    assert all(p.default is not inspect.Parameter.empty for p in params.values() if p.name in own)
    takes_shape = "dim" in params and "n_latents" in params
    assert takes_shape == (cls.shape != "none")
    assert all(f.description for f in cls.Config.model_fields.values())


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("case", ["default", "non_default"])
def test_round_trip_through_encoder_config(name: str, case: str) -> None:
    """create -> encoder_config (JSON) -> create gives an equal config and, with the same weights, equal codes."""
    dictionary, x = _problem()
    given = NON_DEFAULT[name] if case == "non_default" else FAST.get(name, {})
    torch.manual_seed(0)
    first = si.create(name, dim=M, n_latents=N, **given)
    config = json.loads(json.dumps(encoder_config(first)))
    for key, value in given.items():
        if not key.endswith("_kwargs"):
            assert config[key] == value, key
        else:  # an inner encoder's full config: what was given, plus its defaults
            assert config[key].items() >= value.items()
    torch.manual_seed(1)  # different initial weights
    second = si.create(name, dim=M, n_latents=N, **config)
    assert encoder_config(second) == config
    assert type(second.config) is type(first.config) and second.config == first.config
    second.load_state_dict(first.state_dict(), strict=True)
    torch.testing.assert_close(_codes(second, x, dictionary), _codes(first, x, dictionary), rtol=0, atol=0)


@pytest.mark.parametrize("name", NAMES)
def test_unknown_keys_and_wrong_types_are_refused(name: str) -> None:
    with pytest.raises(SparseInferError, match=rf"encoder '{name}' has no hyperparameter\(s\) \['nope'\]"):
        si.create(name, dim=M, n_latents=N, nope=1)
    for key in si.get(name).Config.model_fields:
        with pytest.raises(SparseInferError, match=rf"^encoder '{name}' hyperparameter '{key}': .*; got <object"):
            si.create(name, dim=M, n_latents=N, **{key: object()})


@pytest.mark.parametrize(
    ("name", "hparams", "match"),
    [
        ("topk", {"k": 2.5}, "'k': input should be a valid integer"),
        ("topk", {"k": "3"}, "'k': input should be a valid integer"),
        ("omp", {"k": True}, "'k': input should be a valid integer"),
        ("relu", {"bias": 1}, "'bias': input should be a valid boolean"),
        ("fista", {"penalty": "a lot"}, "'penalty': input should be a valid number"),
        ("mlp", {"hidden": [32, "x"]}, "'hidden.1': input should be a valid integer"),
        ("gradient", {"parameterisation": "softplus"}, "'parameterisation': input should be 'exp', 'relu' or 'none'"),
        ("ito", {"init_kwargs": [1]}, "'init_kwargs': input should be a valid dictionary"),
    ],
)
def test_wrong_types_name_the_key_and_what_was_expected(name: str, hparams: dict, match: str) -> None:
    with pytest.raises(SparseInferError, match=match):
        si.create(name, dim=M, n_latents=N, **hparams)


def test_floats_accept_integers_and_numeric_strings() -> None:
    """YAML reads 1e-3 as a string and CLI users write penalty=1: both are floats."""
    config = encoder_config(si.create("fista", penalty=1, tol="1e-3"))
    assert config["penalty"] == 1.0 and isinstance(config["penalty"], float) and config["tol"] == 1e-3


def test_directly_constructed_encoders_carry_their_config() -> None:
    encoder = ReLUEncoder(M, N, bias=False)
    assert encoder_config(encoder) == {"bias": False, "subtract_bias": True, "sparse_output": False}
    assert encoder.linear.bias is None
    topk = TopKEncoder(M, N, k=2)
    assert type(topk.config) is TopKEncoder.Config and topk.config.k == 2 and topk.k == 2
    with pytest.raises(SparseInferError, match="encoder 'topk' hyperparameter 'k'"):
        TopKEncoder(M, N, k=2.0)


def test_setting_a_hyperparameter_attribute_updates_the_config() -> None:
    """Training switches a TopK encoder to sparse output and the plain backward: the file must say so."""
    encoder = si.create("topk", dim=M, n_latents=N)
    encoder.sparse_output = True
    encoder.fused_backward = False
    expected = {"bias": True, "subtract_bias": True, "sparse_output": True, "k": 3, "fused_backward": False}
    assert encoder_config(encoder) == expected
    assert encoder.config.sparse_output is True and encoder.config.fused_backward is False
    with pytest.raises(SparseInferError, match="'sparse_output': input should be a valid boolean"):
        encoder.sparse_output = "yes"


def test_hyperparameters_and_needs_k_answer_from_the_config() -> None:
    assert hyperparameters("topk") == {
        "bias": True,
        "subtract_bias": True,
        "sparse_output": False,
        "k": 3,
        "fused_backward": True,
    }
    assert "dim" not in hyperparameters("relu") and hyperparameters("omp") == {"k": 3, "tol": 0.0, "nonneg": False}
    assert needs_k("topk") and needs_k("omp") and needs_k("batch_topk")
    assert not needs_k("mlp") and not needs_k("matching_pursuit") and not needs_k("fista")
    types = {h.name: h.type for h in describe("fista")}
    assert types["penalty"] == "float" and types["max_iter"] == "int" and types["step_size"] == "float | None"
    assert {h.name: h.type for h in describe("mlp")}["activation"] == "'relu' | 'topk'"


def test_ito_around_an_instance_stores_its_name_and_config() -> None:
    """An instance `init` is described by its registered name and config; its weights are in the ITO's state."""
    dictionary, x = _problem()
    torch.manual_seed(0)
    trained = si.create("topk", dim=M, n_latents=N, k=2, bias=False)
    refiner = si.create("fista", penalty=0.05, max_iter=40)
    ito = ITOEncoder.wrap(trained, refiner)
    config = encoder_config(ito)
    assert config["init"] == "topk" and config["init_kwargs"] == encoder_config(trained)
    assert config["refiner"] == "fista" and config["refiner_kwargs"] == encoder_config(refiner)
    rebuilt = si.create("ito", dim=M, n_latents=N, **json.loads(json.dumps(config)))
    rebuilt.load_state_dict(ito.state_dict(), strict=True)
    torch.testing.assert_close(_codes(rebuilt, x, dictionary), _codes(ito, x, dictionary), rtol=0, atol=0)
    with pytest.raises(SparseInferError, match="init_kwargs apply only"):
        si.create("ito", dim=M, n_latents=N, init=trained, init_kwargs={"k": 2})


def test_an_encoder_without_a_config_is_refused_when_saving() -> None:
    class Custom(Encoder):
        name = "custom"

        def forward(self, x: torch.Tensor, dictionary: si.Dictionary) -> torch.Tensor:
            return x @ dictionary.atoms.T

    with pytest.raises(SparseInferError, match="'custom' carries no config"):
        encoder_config(Custom())
    with pytest.raises(SparseInferError, match="'ito' carries no config: its inner encoder 'custom' carries no config"):
        encoder_config(ITOEncoder.wrap(Custom(), "fista"))


@pytest.mark.parametrize("nonneg", [False, True])
def test_lasso_equals_fista_active_set(nonneg: bool) -> None:
    """The registered exact Lasso and the legacy `fista(active_set=True)` run one solver: the same codes and FLOPs."""
    dictionary = si.Dictionary.random(40, 12, seed=5, dtype=torch.float64)
    x = torch.randn(20, 12, generator=torch.Generator().manual_seed(6), dtype=torch.float64)
    params = {"penalty": 0.1, "nonneg": nonneg, "tol": 1e-10, "working_set": 4}
    lasso, fista = si.create("lasso", **params), si.create("fista", active_set=True, **params)
    codes = lasso(x, dictionary)
    torch.testing.assert_close(codes, fista(x, dictionary), rtol=0, atol=0)
    assert lasso.inference_flops(20, 12, 40) == fista.inference_flops(20, 12, 40)
    assert lasso.diagnostics is not None and lasso.diagnostics.converged
    # It is the Lasso's optimum: plain FISTA run to a tight tolerance lands on the same codes.
    iterative = si.create("fista", penalty=0.1, nonneg=nonneg, tol=1e-13, max_iter=100_000)(x, dictionary)
    torch.testing.assert_close(codes, iterative, rtol=0, atol=1e-6)
    # and a warm start from its own codes agrees too
    torch.testing.assert_close(lasso(x, dictionary, init=codes), codes, rtol=0, atol=1e-10)
    assert "lasso" in refiner_names()


@pytest.mark.parametrize("name", NAMES)
def test_configs_survive_pickling(name: str) -> None:
    """Process pools and Ray pickle encoders: the config (a nested pydantic class) travels with them."""
    encoder = si.create(name, dim=M, n_latents=N)
    copy = pickle.loads(pickle.dumps(encoder))
    assert type(copy.config) is type(encoder.config) and encoder_config(copy) == encoder_config(encoder)


def test_experiment_configs_are_checked_against_the_encoder_config() -> None:
    base = {"setting": "known_dictionary", "method": "m"}
    with pytest.raises(SparseInferError, match="encoder 'topk' hyperparameter 'k': input should be a valid integer"):
        parse_run({**base, "encoder": {"name": "topk", "params": {"k": 2.5}}})
    with pytest.raises(SparseInferError, match=r"encoder 'relu' has no hyperparameter\(s\) \['x'\]"):
        parse_run({**base, "encoder": {"name": "relu", "params": {"x": 1}}})
    assert validate_hyperparameters("omp", {"k": 2}) == {"k": 2, "tol": 0.0, "nonneg": False}


def test_encoder_table_shows_types_defaults_and_descriptions() -> None:
    console = Console(record=True, width=200)
    console.print(encoder_table())
    text = console.export_text()
    assert "lasso" in text and "working_set=8 (int) atoms screened per sample" in text
    assert "step_size=None (float | None)" in text and "activation='relu' ('relu' | 'topk')" in text
