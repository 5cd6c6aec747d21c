"""The `sparseinfer` command: parses arguments, validates them and calls the library; nothing else lives here."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from sparseinfer.errors import SparseInferError

app = typer.Typer(
    help="Sparse inference and dictionary learning: any encoder with any dictionary, compared against compute.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
console = Console() if sys.stdout.isatty() else Console(width=160)  # files and pipes get whole tables


@app.command()
def encoders() -> None:
    """List the registered encoders with a one-line description and their hyperparameters."""
    from sparseinfer.inference import encoder_table

    console.print(encoder_table())


@app.command()
def infer(
    encoder: Annotated[str, typer.Option(help="registered encoder name (see `sparseinfer encoders`)")] = "fista",
    n_latents: Annotated[int, typer.Option(help="N, latents of the synthetic problem")] = 16,
    dim: Annotated[int, typer.Option(help="M, signal dimension of the synthetic problem")] = 8,
    k: Annotated[int, typer.Option(help="K, active latents per sample")] = 3,
    n_samples: Annotated[int, typer.Option(help="synthetic signals to infer")] = 1024,
    seed: Annotated[int, typer.Option(help="seed of the synthetic problem")] = 0,
    param: Annotated[list[str] | None, typer.Option(help="encoder hyperparameter KEY=VALUE (repeatable)")] = None,
    signals: Annotated[Path | None, typer.Option(help=".npy or .safetensors file of signals (batch, dim)")] = None,
    dictionary: Annotated[Path | None, typer.Option(help="dictionary folder/.safetensors/.npy (atoms as rows)")] = None,
    out: Annotated[Path | None, typer.Option(help="write the codes to this .safetensors file")] = None,
    dtype: Annotated[str, typer.Option(help="float32 or float64")] = "float32",
    signed: Annotated[bool, typer.Option(help="synthetic codes with random signs (default: non-negative)")] = False,
) -> None:
    """Infer codes with one encoder on a synthetic problem (or your signals + dictionary) and print a table."""
    from sparseinfer.inference import infer_table, parse_params, run_inference

    report = run_inference(
        encoder,
        parse_params(param or []),
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
    console.print(infer_table(report))


@app.command()
def run(
    config: Annotated[Path, typer.Argument(help="YAML run or sweep config")],
    out: Annotated[Path, typer.Option(help="results folder")] = Path("results/run"),
    workers: Annotated[int, typer.Option(min=1, help="parallel worker processes")] = 1,
    resume: Annotated[bool, typer.Option(help="skip finished runs of an interrupted sweep")] = False,
) -> None:
    """Run one config or a sweep (a config with `methods:`) into OUT, then write the report."""
    from sparseinfer.experiments.config import load_runs
    from sparseinfer.experiments.execute import execute
    from sparseinfer.experiments.report import write_report
    from sparseinfer.experiments.runner import RunSpec, run_sweep

    runs = load_runs(config)
    specs = [RunSpec(r.run_id(), r.model_dump(mode="json")) for r in runs]
    run_sweep(specs, out, execute, workers=workers, resume=resume)
    write_report(out, console=console)


@app.command()
def reproduce(
    target: Annotated[str, typer.Argument(help="known-codes|known-dictionary|learn-both|all|ablation-*")] = "all",
    preset: Annotated[str, typer.Option(help="quick (minutes) or paper (the protocol exactly)")] = "quick",
    out: Annotated[Path, typer.Option(help="results folder")] = Path("results/study"),
    workers: Annotated[int, typer.Option(min=1, help="parallel worker processes")] = 2,
    resume: Annotated[bool, typer.Option(help="skip finished runs of an interrupted study")] = False,
    encoders: Annotated[str, typer.Option(help="extra registered encoders to compare, comma-separated")] = "",
    seeds: Annotated[str, typer.Option(help="override the preset's seeds, comma-separated")] = "",
) -> None:
    """Rerun the reference study (../shared/paper-protocol.md) and write results.parquet, report.md and figures."""
    from sparseinfer.experiments.reproduce import run_study

    extra = [e.strip() for e in encoders.split(",") if e.strip()]
    seed_list = [int(s) for s in seeds.split(",") if s.strip()] or None
    run_study(target, preset, out, workers=workers, resume=resume, encoders=extra, seeds=seed_list)
    console.print(f"[green]report written to {out / 'report.md'}[/green]")


@app.command()
def report(results_dir: Annotated[Path, typer.Argument(help="folder holding results.parquet")]) -> None:
    """Print the tables and write report.md plus figures (PNG and PDF) from a results folder."""
    from sparseinfer.experiments.report import write_report

    path = write_report(results_dir, console=console)
    console.print(f"[green]report written to {path}[/green]")


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
        if hasattr(exc, "show") and hasattr(exc, "exit_code"):  # click/typer usage errors (typer vendors click)
            exc.show()
            sys.exit(2)
        raise
    if isinstance(code, int) and code != 0:
        if code == 130:
            print("interrupted; rerun with --resume to continue where it stopped", file=sys.stderr)
        sys.exit(code)


if __name__ == "__main__":
    main()
