"""Per-host crawl outcomes for stats.json and the report: the first question a user asks when a
crawl's success rate is low is which hosts failed, and how.

Counts are combined per host (a shuffle keyed by host, so no worker holds every host), then the
`top` hosts by rows are kept with their success rate and error kinds.
"""

from __future__ import annotations

from urllib.parse import urlsplit

import apache_beam as beam

from manifests.schema import OK
from pipeline.stats import CountFn

TOP_HOSTS = 50


def host_of(url: str) -> str:
    """The URL's host name (lower case), or '(none)' when it has none."""
    try:
        return urlsplit(url.strip()).hostname or "(none)"
    except ValueError:
        return "(none)"


def host_row(host: str, statuses: dict[str, int]) -> dict:
    """One host's line: rows, ok, success rate and its error kinds, most frequent first."""
    rows = sum(statuses.values())
    ok = statuses.get(OK, 0)
    errors = sorted(((s, n) for s, n in statuses.items() if s != OK), key=lambda e: (-e[1], e[0]))
    return {"host": host, "rows": rows, "ok": ok, "success_rate": round(ok / max(rows, 1), 4),
            "errors": dict(errors)}  # fmt: skip


def summarise(status_counts: dict, top: list, hosts: int) -> dict:
    rows = [host_row(host, statuses) for host, statuses in top]
    rows.sort(key=lambda r: (-r["rows"], r["host"]))
    return {"rows": sum(status_counts.values()), "status_counts": status_counts, "hosts": hosts,
            "top_hosts": rows}  # fmt: skip


class HostStats(beam.PTransform):
    """Crawled pairs in; a singleton out: their status counts and the top hosts by rows."""

    def __init__(self, top: int = TOP_HOSTS):
        super().__init__()
        self._top = top

    def expand(self, pairs):
        per_host = (
            pairs
            | "HostStatus" >> beam.Map(lambda p: (host_of(p.url), p.status))
            | "CountPerHost" >> beam.CombinePerKey(CountFn())
        )
        top = per_host | "TopHosts" >> beam.combiners.Top.Of(
            self._top, key=lambda kv: (sum(kv[1].values()), kv[0])
        )
        hosts = per_host | "CountHosts" >> beam.combiners.Count.Globally()
        return (
            pairs
            | "Statuses" >> beam.Map(lambda p: p.status)
            | "CountStatuses" >> beam.CombineGlobally(CountFn())
            | "Summarise"
            >> beam.Map(
                summarise, top=beam.pvalue.AsSingleton(top), hosts=beam.pvalue.AsSingleton(hosts)
            )
        )
