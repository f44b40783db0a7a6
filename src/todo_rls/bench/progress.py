"""Progress of the bench's data generation on stderr: a bar on a terminal, plain lines elsewhere.

tqdm is optional (the ``bench`` extra): it is imported only when stderr is a terminal, so a
redirected or CI run never needs it and never gets carriage-return bars run together in a log.
"""

import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Protocol, TextIO


class Progress(Protocol):
    """What the data generator reports: which table it fills, and rows done."""

    def start(self, table: str, rows: int) -> None: ...

    def advance(self, rows: int) -> None: ...


class _Lines:
    """One line per table: readable in a log file or a CI console."""

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream

    def start(self, table: str, rows: int) -> None:
        print(f"generating {table}: {rows:,} rows ...", file=self.stream, flush=True)

    def advance(self, rows: int) -> None:
        pass  # a line per chunk would flood a log; the table's line is enough


class _Bar:
    """tqdm's bar over all tables, its description naming the current one."""

    def __init__(self, bar: "_TqdmLike") -> None:
        self.bar = bar

    def start(self, table: str, rows: int) -> None:
        self.bar.set_description(f"generating {table}")

    def advance(self, rows: int) -> None:
        self.bar.update(rows)


class _TqdmLike(Protocol):
    def set_description(self, desc: str) -> None: ...

    def update(self, n: float) -> bool | None: ...


@contextmanager
def progress(total: int, stream: TextIO | None = None) -> Iterator[Progress]:
    """A progress reporter for total rows: tqdm's bar if stream (default stderr) is a terminal
    and tqdm is installed, else one plain line per table."""
    stream = stream if stream is not None else sys.stderr
    if not stream.isatty():
        yield _Lines(stream)
        return
    try:
        from tqdm import tqdm
    except ImportError:
        print(
            "(no progress bar: tqdm is not installed; pip install 'todo-rls[bench]')",
            file=stream,
            flush=True,
        )
        yield _Lines(stream)
        return
    with tqdm(total=total, unit=" rows", unit_scale=True, file=stream) as bar:
        yield _Bar(bar)
