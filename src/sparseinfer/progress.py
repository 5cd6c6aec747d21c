"""Progress for long work (training, harvesting, evaluation) that also reaches batch-job logs.

`progress_bar(...)` is a tqdm bar when stderr is a terminal. When it is not (a batch job's log, a pipe), tqdm would
stay silent (`disable=None`) or fill the log with carriage-return redraws, so it returns a `LineProgress` instead:
the same calls (`update`, `set_postfix_str`, `close`, iteration, `with`), printing one plain line, in tqdm's own
format, every `interval` seconds or every `percent` per cent of the total, whichever comes first, and a last one at
`close`. `enabled=False` gives a silent tqdm.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterable, Iterator
from typing import IO, Any

from tqdm.auto import tqdm

INTERVAL_S = 30.0
PERCENT = 10.0


class LineProgress:
    """A tqdm-like counter for a non-terminal stream: one line per `interval` seconds or `percent` % of `total`."""

    def __init__(
        self,
        iterable: Iterable[Any] | None = None,
        total: int | None = None,
        desc: str = "",
        initial: int = 0,
        file: IO[str] | None = None,
        interval: float = INTERVAL_S,
        percent: float = PERCENT,
    ) -> None:
        if total is None and iterable is not None and hasattr(iterable, "__len__"):
            total = len(iterable)  # type: ignore[arg-type]
        self.iterable, self.total, self.desc, self.n = iterable, total, desc, initial
        self.file = file if file is not None else sys.stderr
        self.interval, self.percent = interval, percent
        self.postfix = ""
        self._start = self._last_time = time.monotonic()
        self._last_n = initial
        self._closed = False

    def _due(self) -> bool:
        if time.monotonic() - self._last_time >= self.interval:
            return True
        return bool(self.total) and (self.n - self._last_n) * 100.0 >= self.percent * self.total  # type: ignore[operator]

    def _print(self) -> None:
        elapsed = time.monotonic() - self._start
        line = tqdm.format_meter(self.n, self.total, elapsed, prefix=self.desc, postfix=self.postfix or None)
        print(line, file=self.file, flush=True)
        self._last_time, self._last_n = time.monotonic(), self.n

    def update(self, n: int = 1) -> None:
        """Count `n` more units of work; print a line when one is due."""
        self.n += n
        if self._due():
            self._print()

    def set_postfix_str(self, text: str = "", refresh: bool = True) -> None:
        """Text shown after the counter (e.g. the current loss) on the next line printed."""
        self.postfix = text

    def set_description(self, desc: str | None = None, refresh: bool = True) -> None:
        """Replace the label in front of the counter."""
        self.desc = desc or ""

    def close(self) -> None:
        """Print the final count (once)."""
        if not self._closed:
            self._closed = True
            if self.n != self._last_n or self.n == 0:
                self._print()

    def __iter__(self) -> Iterator[Any]:
        if self.iterable is None:
            raise TypeError("this progress counter was not given an iterable")
        try:
            for item in self.iterable:
                yield item
                self.update(1)
        finally:
            self.close()

    def __enter__(self) -> LineProgress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def progress_bar(
    iterable: Iterable[Any] | None = None,
    *,
    total: int | None = None,
    desc: str = "",
    enabled: bool = True,
    initial: int = 0,
    leave: bool = False,
    file: IO[str] | None = None,
    interval: float = INTERVAL_S,
    percent: float = PERCENT,
) -> Any:
    """A progress counter for long work: a tqdm bar on a terminal, else a `LineProgress` writing plain lines to the
    log every `interval` s or `percent` % (see the module docstring); silent when not `enabled`."""
    stream = file if file is not None else sys.stderr
    if not enabled:
        return tqdm(iterable, total=total, desc=desc, initial=initial, disable=True)
    if getattr(stream, "isatty", lambda: False)():
        return tqdm(iterable, total=total, desc=desc, initial=initial, leave=leave, file=stream)
    return LineProgress(iterable, total, desc, initial, stream, interval, percent)
