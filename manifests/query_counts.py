"""Per-query counts of the balancing passes: a parquet table and MetaCLIP's log-log plot.

The table has one row per query with a match anywhere: how many pairs matched it in the pool,
after the pass before download, entering the final pass and after it. The plot shows the
counts sorted in decreasing order, before and after balancing, on log-log axes: the flattened
head at t is what balancing does.
"""

from __future__ import annotations

import io

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from manifests.io import join, write_atomic

TABLE = "query_counts.parquet"
PLOT = "query_counts.png"
COLUMNS = ("pool", "after_prebalance", "final_in", "final_kept")


def counts_table(queries: list[str], counts: dict[str, np.ndarray]) -> pa.Table:
    """Rows for the queries that matched at least one pair, by decreasing pool count."""
    pool = counts["pool"]
    ids = np.flatnonzero(pool)
    ids = ids[np.argsort(-pool[ids], kind="stable")]
    columns = {
        "query_id": pa.array(ids, pa.int32()),
        "query": pa.array([queries[i] for i in ids.tolist()], pa.string()),
    }
    for name in COLUMNS:
        columns[name] = pa.array(counts[name][ids], pa.int64())
    return pa.table(columns)


def plot_png(counts: dict[str, np.ndarray], limit: int) -> bytes:
    """The sorted count distribution before and after balancing, log-log."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(6.4, 4.4), dpi=110)
    for name, label in (("pool", "matched (pool)"), ("final_kept", "after balancing")):
        values = np.sort(counts[name][counts[name] > 0])[::-1]
        if len(values):
            axes.loglog(np.arange(1, len(values) + 1), values, label=f"{label}: {len(values):,}")
    axes.axhline(limit, color="grey", linestyle=":", label=f"t = {limit:,}")
    axes.set_xlabel("query rank (by count)")
    axes.set_ylabel("pairs matching the query")
    axes.set_title("Pairs per query before and after balancing")
    axes.legend()
    figure.tight_layout()
    out = io.BytesIO()
    figure.savefig(out, format="png")
    plt.close(figure)
    return out.getvalue()


def write(folder: str, queries: list[str], counts: dict[str, np.ndarray], limit: int) -> None:
    """Write the table and the plot into `folder` (any Beam filesystem)."""
    sink = io.BytesIO()
    pq.write_table(counts_table(queries, counts), sink)
    write_atomic(join(folder, TABLE), sink.getvalue())
    write_atomic(join(folder, PLOT), plot_png(counts, limit))
