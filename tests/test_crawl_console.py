"""The crawl's console and per-host numbers: the progress bar, the summary, stats.json's hosts,
and a list whose hosts all stall, end to end through `beam_runner`."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import time
from pathlib import Path

from conftest import LOOPBACK, write_list

import beam_runner
from demo.server import CorpusServer, StalledServer
from manifests.report import build_report, host_rows
from pipeline import progress
from pipeline.console import CrawlBar, summary_table

ROOT = Path(__file__).resolve().parent.parent
ARGS = ["--dedup", "none", "--allowed-networks", LOOPBACK, "--image-size", "32",
        "--timeout", "1", "--deadline", "4", "--robots-timeout", "0.5", "--batch-rows", "10"]  # fmt: skip


def crawl(rows: list[dict], tmp_path, *extra: str) -> tuple[CrawlBar, dict]:
    path = write_list(tmp_path / "list.parquet", rows, "parquet")
    bar = CrawlBar(draw=False)
    progress.install(bar)
    try:
        beam_runner.run(["--input", str(path), "--output", str(tmp_path / "out"), *ARGS, *extra])
    finally:
        progress.install(None)
        bar.close()
    return bar, json.loads((tmp_path / "out" / "stats.json").read_text())


def test_progress_bar_counts_equal_stats_and_hosts_are_reported(tmp_path, corpus):
    images = {i.name: i.data for i in corpus}
    with (
        CorpusServer(images, host="127.0.0.41") as good,
        CorpusServer(images, host="127.0.0.42") as bad,
    ):
        rows = [{"url": good.url(f"img/{i.name}"), "caption": i.caption} for i in corpus]
        rows += [{"url": bad.url(f"status/404?{n}"), "caption": "gone"} for n in range(6)]
        rows += [{"url": bad.url(f"img/{corpus[0].name}"), "caption": "there"}]
        rows += [{"url": "ftp://example.com/x.jpg", "caption": "not http"}]
        bar, stats = crawl(rows, tmp_path)
    assert bar.total == bar.done_rows == stats["input_rows"] == len(rows)
    assert dict(bar.statuses) == stats["status_counts"]
    hosts = {h["host"]: h for h in stats["crawl"]["top_hosts"]}
    assert hosts["127.0.0.41"]["success_rate"] == 1.0 and hosts["127.0.0.41"]["rows"] == len(corpus)
    assert hosts["127.0.0.42"] == {"host": "127.0.0.42", "rows": 7, "ok": 1,
                                   "success_rate": round(1 / 7, 4), "errors": {"error:http_404": 6}}  # fmt: skip
    assert stats["crawl"]["hosts"] == 2 and stats["crawl"]["rows"] == len(rows) - 1
    assert host_rows(stats)[1]["errors"] == "error:http_404 6"
    page = build_report(tmp_path / "out").read_text()
    assert "Crawl per host" in page and "127.0.0.42" in page
    lines = {
        line.split()[0]: line.split()[1:]
        for line in summary_table(stats, 12.0).splitlines()
        if line
    }
    assert lines["ok"][0] == f"{len(corpus) + 1:,}" and lines["error:http_404"][0] == "6"
    assert lines["shards"] == ["1"] and lines["time"][:2] == ["12.0", "s"]


def test_a_list_whose_hosts_all_stall_ends_with_every_row_timed_out(tmp_path):
    servers = [StalledServer(f"127.0.0.{50 + i}").__enter__() for i in range(2)]
    try:
        rows = [
            {"url": s.url(f"img/{n}.jpg"), "caption": f"c {n}"} for n in range(40) for s in servers
        ]
        start = time.monotonic()
        bar, stats = crawl(rows, tmp_path, "--retries", "2")
        seconds = time.monotonic() - start
    finally:
        for server in servers:
            server.__exit__()
    assert stats["input_rows"] == 80 and stats["status_counts"] == {"error:timeout": 80}
    assert bar.statuses == {"error:timeout": 80}
    # 3 tries of 1 s per row, 2 connections per host: 60 s one row after another; each host is
    # given up after three unanswered rows, so the run takes about two timeouts plus Beam's startup.
    assert seconds < 30


def test_console_is_quiet_by_default_and_verbose_on_request(tmp_path, server, corpus):
    rows = [{"url": server.url(f"img/{i.name}"), "caption": i.caption} for i in corpus[:3]]
    path = write_list(tmp_path / "list.parquet", rows, "parquet")
    command = [sys.executable, str(ROOT / "beam_runner.py"), "--input", str(path), "--output",
               str(tmp_path / "out"), *ARGS]  # fmt: skip
    quiet = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, check=True)
    assert "INFO" not in quiet.stderr and "apache_beam" not in quiet.stderr, quiet.stderr[-2000:]
    summary = {line.split()[0]: line.split()[1] for line in quiet.stdout.splitlines() if line}
    assert summary["ok"] == "3" and summary["samples"] == "3" and summary["shards"] == "1"

    beam_info = logging.LogRecord("apache_beam.typehints", logging.INFO,
                                  f"{os.sep}apache_beam{os.sep}x.py", 1, "hint", None, None)  # fmt: skip
    root = logging.getLogger()
    saved = root.handlers[:], root.level
    try:
        beam_runner.configure_logging(verbose=True)
        assert all(h.filter(beam_info) for h in logging.getLogger().handlers)
        beam_runner.configure_logging(verbose=False)
        assert not any(h.filter(beam_info) for h in logging.getLogger().handlers)
    finally:
        root.handlers[:] = saved[0]
        root.setLevel(saved[1])
