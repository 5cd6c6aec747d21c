"""Where tables go: the terminal at its width, or wide enough for whole tables when output goes to a file or pipe."""

from __future__ import annotations

import sys

from rich.console import Console


def terminal() -> Console:
    """A rich console sized for the output: the terminal's width, or 160 columns for files and pipes."""
    return Console() if sys.stdout.isatty() else Console(width=160)
