"""The command line: the typer app (`app`), its entry point (`main`) and the tables it prints (`tables`)."""

from sparseinfer.cli.app import app, main

__all__ = ["app", "main"]
