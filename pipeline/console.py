"""The local console: a live crawl progress bar, and one summary table when the run ends.

`CrawlBar` is a `progress` sink: rows done of the rows that reached the crawl, rows/s, the ok
share and an ETA, drawn by tqdm (only on a terminal). Its counts are kept whether or not a bar
is drawn, so the summary and the tests read the same numbers the bar showed.
"""

from __future__ import annotations

import sys
import threading
import time
from collections import Counter

from tqdm import tqdm

from manifests.schema import OK


class CrawlBar:
    """Counts crawl progress and draws it; thread-safe (downloads report from many threads)."""

    def __init__(self, draw: bool | None = None, refresh: float = 0.5):
        self.total = 0
        self.statuses: Counter = Counter()
        self._lock = threading.Lock()
        self._refresh, self._last = refresh, 0.0
        disable = not sys.stderr.isatty() if draw is None else not draw
        self._bar = tqdm(total=0, unit="rows", desc="crawl", disable=disable, dynamic_ncols=True)

    @property
    def done_rows(self) -> int:
        return sum(self.statuses.values())

    def seen(self, rows: int) -> None:
        with self._lock:
            self.total += rows
            self._bar.total = self.total

    def done(self, status: str) -> None:
        with self._lock:
            self.statuses[status] += 1
            self._bar.update(1)
            now = time.monotonic()
            if now - self._last >= self._refresh:
                self._last = now
                self._bar.set_postfix_str(f"ok {self.statuses[OK] / self.done_rows:.0%}")

    def close(self) -> None:
        with self._lock:
            if self.done_rows:
                self._bar.set_postfix_str(f"ok {self.statuses[OK] / self.done_rows:.0%}")
            self._bar.close()


def summary_table(stats: dict, seconds: float) -> str:
    """The end-of-run table: status counts (with shares), samples, shards and time."""
    rows = max(stats.get("input_rows", 0), 1)
    lines = [(status, f"{count:,}", f"{count / rows:.1%}")
             for status, count in sorted(stats["status_counts"].items(), key=lambda s: -s[1])]  # fmt: skip
    lines += [("", "", ""), ("input rows", f"{stats.get('input_rows', 0):,}", ""),
              ("samples", f"{stats.get('samples', 0):,}", ""),
              ("shards", f"{len(stats.get('shards', [])):,}", ""),
              ("time", f"{seconds:,.1f} s", f"{stats.get('input_rows', 0) / max(seconds, 1e-9):,.1f} rows/s")]  # fmt: skip
    widths = [max(len(line[i]) for line in lines) for i in range(3)]
    return "\n".join(
        f"{a:<{widths[0]}}  {b:>{widths[1]}}  {c:>{widths[2]}}".rstrip() for a, b, c in lines
    )
