"""One list of stages: a stage added from outside the package runs through `beam_runner.run`
with its flags, stats, statuses and fingerprint, and the report's funnel is stats.json's, each
status counted under the stage that gave it."""

from __future__ import annotations

import dataclasses
import json
from collections import Counter
from pathlib import Path

import apache_beam as beam
import pyarrow.parquet as pq
import pytest
from conftest import LOOPBACK, write_list

import beam_runner
from manifests.report import build_report, funnel
from pipeline import graph
from pipeline.stage import StageError, funnel_rows
from pipeline.stages import stages

PLUGIN = ["--stage-plugins", "stage_plugin"]
QUERIES = "circle\nsquare\ntriangle\nstar\n"


def _rows(server, corpus) -> list[dict]:
    """Good images (each twice: URL duplicates), dead links, blocked and junk captions."""
    rows = [{"url": server.url(f"img/{i.name}"), "caption": i.caption} for i in corpus]
    rows += rows[:4]
    rows += [{"url": server.url("status/404"), "caption": "a red circle lost"}]
    rows += [{"url": server.url(f"img/{corpus[5].name}?b"), "caption": "a forbidden circle"}]
    rows += [{"url": server.url(f"img/{corpus[6].name}?c"), "caption": "x"}]
    rows += [{"url": "", "caption": "no url"}]
    return rows


def _argv(input_path: Path, output: Path, queries: Path, *extra: str) -> list[str]:
    return ["--input", str(input_path), "--output", str(output), "--allowed-networks", LOOPBACK,
            "--image-size", "64", "--timeout", "2", "--retries", "0", "--threads", "8",
            "--filters", "caption,image", "--min-words", "2", "--queries", str(queries),
            "--max-per-query", "6", *PLUGIN, "--blocked-words", "forbidden", *extra]  # fmt: skip


@pytest.fixture(scope="module")
def run_all(tmp_path_factory, server, corpus):
    tmp = tmp_path_factory.mktemp("stages")
    path = write_list(tmp / "list.csv", _rows(server, corpus), "csv")
    (tmp / "queries.txt").write_text(QUERIES)
    assert beam_runner.run(_argv(path, tmp / "out", tmp / "queries.txt")) is not None
    stats = json.loads((tmp / "out" / "stats.json").read_text())
    return tmp, path, stats


def _manifest(output: Path) -> list[dict]:
    return [r for f in sorted((output / "manifest").glob("*.parquet"))
            for r in pq.read_table(f).to_pylist()]  # fmt: skip


def test_a_plugin_stage_has_its_flags_in_help(capsys):
    with pytest.raises(SystemExit):
        beam_runner.run([*PLUGIN, "--help"])
    text = capsys.readouterr().out
    assert "--blocked-words" in text and "captions holding one of these words" in text
    assert "block_words" in text.split("stages, in order")[1]  # in the list --help prints
    assert "--blocked-words" not in beam_runner.make_parser([]).format_help()


def test_a_plugin_stage_runs_with_its_stats_statuses_and_funnel_row(run_all):
    tmp, _, stats = run_all
    assert stats["block_words"] == {"blocked": 1}
    order = [row["stage"] for row in stats["funnel"]]
    assert order[order.index("dedup_url") + 1] == "block_words"
    (row,) = [r for r in stats["funnel"] if r["stage"] == "block_words"]
    assert row["dropped"] == {"blocked:word": 1}
    blocked = [r for r in _manifest(tmp / "out") if r["status"] == "blocked:word"]
    assert [r["caption"] for r in blocked] == ["a forbidden circle"]
    assert stats["config"]["stages"]["block_words"] == {"blocked_words": ["forbidden"]}


def test_a_plugin_stage_config_enters_both_fingerprints(run_all):
    tmp, path, _ = run_all
    queries = tmp / "queries.txt"
    configs = [
        beam_runner.config_from_args(beam_runner.make_parser(argv).parse_known_args(argv)[0])
        for argv in (_argv(path, tmp / "out", queries), _argv(path, tmp / "out", queries, "--blocked-words", "lost"))
    ]  # fmt: skip
    assert configs[0].stages["block_words"].blocked_words == ("forbidden",)
    paths = [str(path)]
    for fingerprint in (graph.run_fingerprint, graph.crawl_fingerprint):
        assert fingerprint(configs[0], paths) != fingerprint(configs[1], paths)
    speed = dataclasses.replace(configs[0].stages["crawl"], threads=3)
    faster = dataclasses.replace(configs[0], stages={**configs[0].stages, "crawl": speed})
    assert graph.run_fingerprint(faster, paths) == graph.run_fingerprint(configs[0], paths)


def test_the_report_funnel_is_the_stage_stats_row_for_row(run_all):
    tmp, _, stats = run_all
    build_report(tmp / "out")
    assert funnel(stats) == stats["funnel"]
    order = [s.name for s in stages(["stage_plugin"]) if s.name != "filters_batch"]  # no model
    assert [row["stage"] for row in stats["funnel"]] == order  # every other one ran, in order
    page = (tmp / "out" / "report.html").read_text()
    for row in stats["funnel"]:
        assert f"<td>{row['stage']}</td><td>{row['rows_in']}</td><td>{row['rows_out']}</td>" in page


def test_every_manifest_status_is_counted_under_the_stage_that_gave_it(run_all):
    tmp, _, stats = run_all
    by_name = {s.name: s for s in stages(["stage_plugin"])}
    counted = Counter()
    previous = stats["input_rows"]
    for row in stats["funnel"]:
        assert row["rows_in"] == previous
        assert row["rows_in"] - row["rows_out"] == sum(row["dropped"].values())
        for status, count in row["dropped"].items():
            assert by_name[row["stage"]].gives(status), (row["stage"], status)
            counted[status] += count
        previous = row["rows_out"]
    statuses = Counter(r["status"] for r in _manifest(tmp / "out"))
    assert previous == statuses.pop("ok") == stats["samples"]
    assert counted == statuses == {s: n for s, n in stats["status_counts"].items() if s != "ok"}
    assert {"error:http_404", "error:missing_url", "dup:exact", "blocked:word"} <= set(counted)
    assert any(s.startswith("filtered:caption") for s in counted)
    stage_of = {s: r["stage"] for r in stats["funnel"] for s in r["dropped"]}
    assert stage_of["error:missing_url"] == "read" and stage_of["error:http_404"] == "crawl"


def test_funnel_rows_refuse_a_stage_that_revives_dropped_pairs(caplog):
    counts = {"a": {"ok": 3, "error:x": 1}, "b": {"ok": 4}}
    with pytest.raises(StageError, match="stage b"):
        funnel_rows(["a", "b"], 4, counts)
    rows = funnel_rows(["a"], 4, counts, {"a": ("filtered:*",)})
    assert rows == [{"stage": "a", "rows_in": 4, "rows_out": 3, "dropped": {"error:x": 1}}]
    assert "stage a gave status error:x, which it does not declare" in caplog.text


def test_build_deletes_nothing_and_prepare_clears_a_killed_runs_staging(tmp_path, server, corpus):
    path = write_list(tmp_path / "list.csv", _rows(server, corpus)[:3], "csv")
    staging = tmp_path / "out" / graph.STAGING / "shards"
    staging.mkdir(parents=True)
    (staging / "00000.tar").write_bytes(b"half-written")
    argv = ["--input", str(path), "--output", str(tmp_path / "out"), "--no-resume"]
    config = beam_runner.config_from_args(beam_runner.make_parser(argv).parse_known_args(argv)[0])
    cache = Path(graph._cache_folder(config, [str(path)]))
    cache.mkdir(parents=True)
    assert graph.build(beam.Pipeline(), config) is not None
    assert (staging / "00000.tar").exists() and cache.exists()
    graph.prepare(config)
    assert not (tmp_path / "out" / graph.STAGING).exists() and not cache.exists()


def test_the_funnel_agrees_with_each_stages_own_counts(run_all):
    """Two counts made apart: the graph's, per status on each stage's output, and the stage's
    own stats; where statuses overlap (dup:exact from both dedups) they still split right."""
    _, _, stats = run_all
    dropped = {row["stage"]: row["dropped"] for row in stats["funnel"]}
    assert dropped["dedup_url"] == {"dup:exact": stats["dedup_url"]["duplicates"]} != {}
    assert dropped["dedup_image"].get("dup:exact", 0) == stats["dedup_image"]["dup:exact"]
    assert dropped["dedup_image"].get("dup:near", 0) == stats["dedup_image"]["dup:near"]
    text = stats["filters_text"]
    assert sum(dropped["filters_text"].values()) == text["ok_in"] - text["ok_out"] > 0
    assert dropped["balance_match"].get("unmatched", 0) == stats["balance_match"]["unmatched"]
    for name in ("balance_pre", "balance_final"):
        assert dropped[name].get("balanced_out", 0) == stats[name]["balanced_out"]
    crawl = stats["crawl"]["status_counts"]
    assert dropped["crawl"] == {s: n for s, n in crawl.items() if s != "ok"}
