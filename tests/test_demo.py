"""`make demo` at a tiny size: crawled, curated, trained and evaluated; every row counted."""

from __future__ import annotations

import json
from collections import Counter

import pyarrow.parquet as pq

import recipe
from demo.__main__ import RECIPE, main
from manifests.report import funnel


def test_demo_runs_end_to_end(tmp_path, capsys):
    stats = main(["--output", str(tmp_path), "--pairs", "160", "--train-steps", "2",
                  "--batch-size", "16"])  # fmt: skip
    assert stats["input_rows"] == 160 == sum(stats["status_counts"].values())
    assert stats["status_counts"]["ok"] >= 80  # three quarters are clean pairs
    assert any(s.startswith("filtered:") for s in stats["status_counts"])  # noise was filtered
    assert any(s.startswith("error:") for s in stats["status_counts"])  # dead links were counted
    assert stats["status_counts"]["dup:exact"] > 0  # repeated URLs were caught before download
    exact_dups = stats["dedup_url"]["duplicates"] + stats["dedup_image"]["dup:exact"]
    assert exact_dups == stats["status_counts"]["dup:exact"]
    rows = sum(
        pq.read_metadata(p).num_rows for p in (tmp_path / "crawl/manifest").glob("*.parquet")
    )
    assert rows == 160
    assert stats["filters_text"]["rows_in"] == 160
    crawl_stats = {k: v for k, v in stats.items() if k != "training"}
    assert json.loads((tmp_path / "crawl/stats.json").read_text()) == crawl_stats
    assert (
        stats["training"]["zeroshot_classes"] == 48 and stats["training"]["zeroshot_images"] == 240
    )
    assert (tmp_path / "train/checkpoints/latest.pt").exists() and (
        tmp_path / "train/curves.png"
    ).exists()
    assert len(list((tmp_path / "heldout").iterdir())) == 48  # one folder per concept
    printed = capsys.readouterr().out
    assert "stats:" in printed and f"report:   {tmp_path / 'report.html'}" in printed
    page = (tmp_path / "report.html").read_text()
    assert f"{stats['input_rows']:,} input rows, {stats['status_counts']['ok']:,} kept" in page
    for status, count in stats["status_counts"].items():
        assert f"<td>{status}</td><td>{count}</td>" in page
    for name in ("funnel.png", "caption_lengths.png", "languages.png"):
        assert (tmp_path / "report_files" / name).stat().st_size > 5000
    assert (tmp_path / "crawl/balance/query_counts.png").exists()
    stages = funnel(stats)
    assert stages == stats["funnel"] and stages[0]["rows_in"] == stats["input_rows"]
    assert stages[-1]["rows_out"] == stats["status_counts"]["ok"]  # every drop is in one stage
    dropped = sum((Counter(stage["dropped"]) for stage in stages), Counter())
    assert dropped == {s: n for s, n in stats["status_counts"].items() if s != "ok"}
    assert "balance_final" in stats and stats["balance_match"]["rows_in"] > 0


def test_recipe_skips_complete_steps_and_prints_the_torchrun_command(tmp_path, capsys):
    main(["--output", str(tmp_path), "--pairs", "60", "--train-steps", "1", "--batch-size", "8"])
    stats_file, checkpoint = tmp_path / "crawl/stats.json", tmp_path / "train/checkpoints/latest.pt"
    before = (stats_file.stat().st_mtime_ns, checkpoint.stat().st_mtime_ns)
    overrides = [f"output={tmp_path}", "train.steps=1", "train.batch-size=8"]
    done = recipe.run(str(RECIPE), recipe.STEPS, overrides)  # everything is already complete
    assert (stats_file.stat().st_mtime_ns, checkpoint.stat().st_mtime_ns) == before
    assert done["eval"]["zeroshot_classes"] == 48
    launch = ["launch.mode=torchrun", "launch.nnodes=4", "launch.nproc_per_node=8",
              "launch.rdzv_endpoint=head:29500", "train.steps=500"]  # fmt: skip
    capsys.readouterr()
    done = recipe.run(str(RECIPE), ("train", "eval"), overrides + launch)
    printed = capsys.readouterr().out
    assert "train" not in done and "eval" not in done  # training is the cluster's job now
    assert ("torchrun --nnodes=4 --nproc_per_node=8 --rdzv_backend=c10d "
            "--rdzv_endpoint=head:29500 -m trainer train") in printed  # fmt: skip
    assert f"--shards '{tmp_path}/crawl/shards/*.tar'" in printed
    assert "--steps 500" in printed and "--resume latest" in printed
