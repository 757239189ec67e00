"""Progress that suits where the output goes.

On a terminal: tqdm bars, as before. When stdout or stderr is not a terminal (`mlflow run`, a
batch job, `> log.txt`), a bar would write a carriage-return line per update into the log; there
we print plain lines instead (to stderr, where tqdm draws, so stdout keeps only results): one per epoch (the caller's summary, :func:`progress_line`) or one
per chunk of work (:class:`LineProgress`, e.g. a generator shard).
"""

from __future__ import annotations

import sys
import time
from typing import Any, Iterable, Iterator, TextIO

from tqdm.auto import tqdm


def is_interactive() -> bool:
    """True when both stdout and stderr are terminals (a person watching a shell)."""
    return all(_isatty(stream) for stream in (sys.stdout, sys.stderr))


def _isatty(stream: TextIO | None) -> bool:
    try:
        return bool(stream is not None and stream.isatty())
    except (AttributeError, ValueError):  # closed or replaced streams
        return False


def progress_line(text: str, *, enabled: bool = True) -> None:
    """Print one plain progress line when not interactive (a bar shows the same on a terminal)."""
    if enabled and not is_interactive():
        print(text, file=sys.stderr, flush=True)


class LineProgress:
    """The part of tqdm's interface the project uses, writing one plain line per ``update``
    and one at the end of an iteration (``lines=True``), or nothing at all (the caller prints
    its own summary)."""

    def __init__(self, iterable: Iterable[Any] | None = None, *, total: int | None = None, desc: str = "",
                 unit: str = "it", lines: bool = True) -> None:
        self.iterable, self.total, self.desc, self.unit, self.lines = iterable, total, desc, unit, lines
        self.n = 0
        self.started = time.perf_counter()

    def __iter__(self) -> Iterator[Any]:
        for item in self.iterable or ():
            yield item
            self.n += 1
        if self.lines:  # one line for the whole pass
            print(f"{self.desc}: {self.n:,} {self.unit} in {time.perf_counter() - self.started:.1f} s",
                  file=sys.stderr, flush=True)

    def __len__(self) -> int:
        return self.total if self.total is not None else len(self.iterable)  # type: ignore[arg-type]

    def update(self, n: int = 1) -> None:
        self.n += n
        if self.lines:
            elapsed = time.perf_counter() - self.started
            of = f"/{self.total:,}" if self.total else ""
            print(f"{self.desc}: {self.n:,}{of} {self.unit} in {elapsed:.0f} s", file=sys.stderr, flush=True)

    def refresh(self) -> None:
        pass

    def set_postfix_str(self, s: str = "", refresh: bool = True) -> None:
        pass

    def close(self) -> None:
        pass

    def __enter__(self) -> "LineProgress":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def progress_bar(iterable: Iterable[Any] | None = None, *, desc: str = "", total: int | None = None,
                 unit: str = "it", enabled: bool = True, lines: bool = True, **tqdm_kwargs: Any) -> Any:
    """A tqdm bar on a terminal; elsewhere a :class:`LineProgress` (a line per update and per
    finished pass when ``lines``, silent otherwise); nothing shown when not ``enabled`` (or with
    tqdm's ``disable=True``). Other tqdm keywords apply to the bar only."""
    if not enabled or tqdm_kwargs.get("disable") is True:
        return tqdm(iterable, total=total, disable=True)
    if is_interactive():
        return tqdm(iterable, desc=desc, total=total, unit=unit, **tqdm_kwargs)
    return LineProgress(iterable, total=total, desc=desc, unit=unit, lines=lines)
