"""A one-page HTML report of a pipeline output (and, if given, of the training run on it).

    python -m manifests.report OUTPUT [--train TRAIN_DIR] [--html OUTPUT/report.html]

Sections: the funnel (rows left after each stage and why the others went), status counts,
the crawl per host (success rate and error kinds of the top hosts by rows), caption length and language histograms, the per-query counts before and after balancing, a
grid of kept samples, near-duplicate groups side by side, the training curves and the final
metrics. Plots are PNGs next to the page (matplotlib); images are embedded, so the page opens
from disk with no server. Every number comes from `stats.json`, the manifest and the shards.
"""

from __future__ import annotations

import argparse
import base64
import html
import io
import json
import logging
import tarfile
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

from manifests.query_counts import PLOT as QUERY_PLOT

log = logging.getLogger(__name__)
MAX_MEMBER_BYTES = 64 << 20  # the sample grid's cap on a tar member (images are far smaller)


def funnel(stats: dict) -> list[dict]:
    """Per stage, in the pipeline's order: rows in, rows out and the drops by status, as the
    graph counted them on each stage's output (stats.json's `funnel`; none in older outputs)."""
    return stats.get("funnel", [])


def _funnel_table(rows: list[dict]) -> list[dict]:
    return [{"stage": r["stage"], "in": r["rows_in"], "out": r["rows_out"],
             "dropped": ", ".join(f"{s} {n:,}" for s, n in r["dropped"].items()) or "-"}
            for r in rows]  # fmt: skip


def host_rows(stats: dict) -> list[dict]:
    """The crawl's top hosts by rows: rows, ok, success rate and their three commonest errors."""
    crawl = stats.get("crawl") or {}
    rows = []
    for host in crawl.get("top_hosts", []):
        errors = ", ".join(f"{kind} {count:,}" for kind, count in list(host["errors"].items())[:3])
        rows.append({"host": host["host"], "rows": host["rows"], "ok": host["ok"],
                     "success": f"{host['success_rate']:.1%}", "errors": errors or "-"})  # fmt: skip
    return rows


def _hosts_section(stats: dict) -> str:
    crawl = stats.get("crawl")
    if not crawl:
        return "<p>No per-host crawl stats in this output.</p>"
    shown = len(crawl["top_hosts"])
    intro = (f"<p>{crawl['rows']:,} rows downloaded from {crawl['hosts']:,} hosts; "
             f"the top {shown} by rows:</p>")  # fmt: skip
    return intro + _table(host_rows(stats))


def _manifest(output: Path) -> list[dict]:
    columns = ["key", "caption", "status", "language", "dup_of"]
    rows = []
    for path in sorted((output / "manifest").glob("*.parquet")):
        names = pq.read_schema(path).names
        rows += pq.read_table(path, columns=[c for c in columns if c in names]).to_pylist()
    return rows


def figure_png(figure) -> bytes:
    out = io.BytesIO()
    figure.tight_layout()
    figure.savefig(out, format="png", dpi=100)
    return out.getvalue()


def plots(stats: dict, manifest: list[dict]) -> dict[str, bytes]:
    """The report's PNGs: funnel, caption lengths, languages."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = {}
    rows = funnel(stats)
    figure, axes = plt.subplots(figsize=(7, 3.6))
    labels = ["input", *(r["stage"] for r in rows)]
    left = [stats["input_rows"], *(r["rows_out"] for r in rows)]
    axes.barh(labels[::-1], left[::-1], color="#4a7")
    axes.set_xlabel("rows left after the stage")
    axes.set_title("Funnel")
    out["funnel.png"] = figure_png(figure)
    plt.close(figure)

    words_all = [len((r["caption"] or "").split()) for r in manifest]
    words_ok = [len((r["caption"] or "").split()) for r in manifest if r["status"] == "ok"]
    figure, axes = plt.subplots(figsize=(6, 3.2))
    bins = np.arange(0, max([*words_all, 1]) + 2) - 0.5
    axes.hist(words_all, bins=bins, alpha=0.5, label=f"all rows ({len(words_all):,})")
    axes.hist(words_ok, bins=bins, alpha=0.7, label=f"kept ({len(words_ok):,})")
    axes.set_xlabel("caption length (words)")
    axes.set_ylabel("pairs")
    axes.legend()
    out["caption_lengths.png"] = figure_png(figure)
    plt.close(figure)

    languages = Counter(r.get("language") or "not detected" for r in manifest)
    top = languages.most_common(12)
    figure, axes = plt.subplots(figsize=(6, 3.2))
    axes.bar([name for name, _ in top], [count for _, count in top], color="#47a")
    axes.set_ylabel("pairs")
    axes.set_title("Caption language (lang filter)")
    out["languages.png"] = figure_png(figure)
    plt.close(figure)
    return out


def samples(output: Path, limit: int = 24) -> list[tuple[str, bytes]]:
    """(caption, JPEG) of the first `limit` samples of the first shards; a sample with a member
    over MAX_MEMBER_BYTES (a sparse one expands to its full size) is skipped unread, logged."""
    found: list[tuple[str, bytes]] = []
    for path in sorted((output / "shards").glob("*.tar")):
        with tarfile.open(path) as tar:
            members = {m.name: m for m in tar.getmembers()}
            for name in sorted(members):
                if name.endswith(".jpg") and len(found) < limit:
                    pair = (members[name[:-4] + ".txt"], members[name])
                    if max(m.size for m in pair) > MAX_MEMBER_BYTES:
                        log.warning("report: skipped %s in %s: over %d bytes", name, path,
                                    MAX_MEMBER_BYTES)  # fmt: skip
                        continue
                    caption, image = (tar.extractfile(m).read() for m in pair)
                    found.append((caption.decode(), image))
        if len(found) >= limit:
            break
    return found


def _img(data: bytes, title: str = "", width: int = 128) -> str:
    encoded = base64.b64encode(data).decode()
    return (f'<figure><img src="data:image/jpeg;base64,{encoded}" width="{width}">'
            f"<figcaption>{html.escape(title)}</figcaption></figure>")  # fmt: skip


def _table(rows: list[dict]) -> str:
    if not rows:
        return "<p>none</p>"
    head = "".join(f"<th>{html.escape(str(k))}</th>" for k in rows[0])
    body = "".join(
        "<tr>" + "".join(f"<td>{html.escape(str(v))}</td>" for v in row.values()) + "</tr>"
        for row in rows
    )
    return f"<table><tr>{head}</tr>{body}</table>"


def _dedup_groups(output: Path) -> str:
    path = output / "dedup_examples.parquet"
    if not path.exists() or pq.read_metadata(path).num_rows == 0:
        return "<p>No near-duplicate groups in this run.</p>"
    groups: dict[str, list[dict]] = {}
    for row in pq.read_table(path).to_pylist():
        groups.setdefault(row["group"], []).append(row)
    parts = []
    for group, members in groups.items():
        members.sort(key=lambda r: (r["key"] != group, r["key"]))
        figures = "".join(_img(m["jpeg"], f"{m['key']} ({m['status']})", 110) for m in members)
        copies, shown = members[0]["group_copies"], len(members) - 1
        parts.append(f"<p>{html.escape(group)} and {copies:,} near copies ({shown} shown)</p>")
        parts.append(f'<div class="grid">{figures}</div>')
    return "".join(parts)


def _training(train: Path | None) -> str:
    if train is None or not (train / "final_metrics.json").exists():
        return "<p>No training run given (<code>--train</code>).</p>"
    metrics = json.loads((train / "final_metrics.json").read_text())
    curves = (train / "curves.png").read_bytes() if (train / "curves.png").exists() else None
    rows = [{"metric": k, "value": round(v, 4) if isinstance(v, float) else v}
            for k, v in metrics.items() if not isinstance(v, dict | list)]  # fmt: skip
    image = (
        f'<img src="data:image/png;base64,{base64.b64encode(curves).decode()}">' if curves else ""
    )
    return image + _table(rows)


STYLE = """body{font-family:sans-serif;max-width:1100px;margin:auto;padding:1em}
table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:2px 8px;text-align:right}
.grid{display:flex;flex-wrap:wrap;gap:6px;margin-bottom:12px}figure{margin:0;width:130px}
figcaption{font-size:11px;overflow-wrap:anywhere}"""


def build_report(output: Path, train: Path | None = None, html_path: Path | None = None,
                 extra: Sequence[str] = ()) -> Path:  # fmt: skip
    """Write `report.html` and its PNGs (and `extra` HTML sections last, such as a bench's
    table); returns the page's path."""
    stats = json.loads((output / "stats.json").read_text())
    manifest = _manifest(output)
    html_path = html_path or output / "report.html"
    folder = html_path.parent / "report_files"
    folder.mkdir(parents=True, exist_ok=True)
    pngs = plots(stats, manifest)
    for name, data in pngs.items():
        (folder / name).write_bytes(data)
    query_plot = output / "balance" / QUERY_PLOT
    kept = stats["status_counts"].get("ok", 0)
    status_rows = [{"status": s, "rows": c} for s, c in sorted(stats["status_counts"].items())]
    grid = "".join(_img(jpeg, caption) for caption, jpeg in samples(output))
    sections = [
        f"<h1>openwit report</h1><p>{stats['input_rows']:,} input rows, {kept:,} kept "
        f"({kept / max(stats['input_rows'], 1):.1%}) in {len(stats.get('shards', []))} shards.</p>",
        "<h2>Funnel</h2>" + '<img src="report_files/funnel.png">' + _table(_funnel_table(funnel(stats))),
        "<h2>Status counts</h2>" + _table(status_rows),
        "<h2>Crawl per host</h2>" + _hosts_section(stats),
        "<h2>Captions</h2>" + '<img src="report_files/caption_lengths.png">'
        + '<img src="report_files/languages.png">',
        "<h2>Query balancing</h2>"
        + (f'<img src="data:image/png;base64,{base64.b64encode(query_plot.read_bytes()).decode()}">'
           if query_plot.exists() else "<p>Balancing was off (no <code>--queries</code>).</p>"),
        "<h2>Samples</h2>" + f'<div class="grid">{grid}</div>',
        "<h2>Near-duplicate groups</h2><p>The survivor first, then its copies.</p>"
        + _dedup_groups(output),
        "<h2>Training</h2>" + _training(train),
        *extra,
    ]  # fmt: skip
    page = (
        f"<!doctype html><meta charset='utf-8'><title>openwit report</title><style>{STYLE}</style>"
    )
    html_path.write_text(page + "\n".join(sections))
    return html_path


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("output", type=Path, help="a beam_runner output folder")
    parser.add_argument("--train", type=Path, help="the trainer's output folder")
    parser.add_argument("--html", type=Path, help="where to write the page (OUTPUT/report.html)")
    args = parser.parse_args(argv)
    print(build_report(args.output, args.train, args.html))


if __name__ == "__main__":
    main()
