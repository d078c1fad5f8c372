"""Live crawl progress for a local run: rows seen and done, reported from inside the stages.

The crawl calls `seen` for every row that reaches it and `done` with each row's crawl status.
Nothing listens unless the entry point `install`s a sink (the local console's progress bar);
on a remote runner the same numbers are the crawl's Beam counters, so this costs nothing there.
"""

from __future__ import annotations

from typing import Protocol


class ProgressSink(Protocol):
    def seen(self, rows: int) -> None: ...

    def done(self, status: str) -> None: ...


_sink: ProgressSink | None = None


def install(sink: ProgressSink | None) -> None:
    """Send this process's crawl progress to `sink` (None: to nowhere)."""
    global _sink
    _sink = sink


def seen(rows: int = 1) -> None:
    if _sink is not None:
        _sink.seen(rows)


def done(status: str) -> None:
    if _sink is not None:
        _sink.done(status)
