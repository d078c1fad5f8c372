"""The runner policy: a pinned local default that never tries Prism, refusals for lossy runners."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import yaml
from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.runners.portability import prism_runner
from conftest import LOOPBACK, write_list

import beam_runner
import recipe
from pipeline import runners

DASK_SPELLINGS = ("DaskRunner", "dask", "apache_beam.runners.dask.dask_runner.DaskRunner")


def test_no_runner_runs_on_the_fn_api_runner_and_never_tries_prism(
    tmp_path, server, corpus, monkeypatch
):
    tried = []
    monkeypatch.setattr(prism_runner.PrismRunner, "run_pipeline", lambda *a: tried.append(a))
    rows = [{"url": server.url(f"img/{corpus[0].name}"), "caption": "a picture"},
            {"url": server.url("status/404"), "caption": "gone"}]  # fmt: skip
    path = write_list(tmp_path / "list.csv", rows, "csv")
    out = tmp_path / "out"
    result = beam_runner.run(["--input", str(path), "--output", str(out),
                              "--allowed-networks", LOOPBACK, "--image-size", "32"])  # fmt: skip
    assert not tried
    assert type(result).__module__.endswith("fn_runner")  # the FnApiRunner's own result
    stats = json.loads((out / "stats.json").read_text())
    assert stats["status_counts"] == {"error:http_404": 1, "ok": 1}


def test_the_default_keeps_the_options_for_worker_processes():
    options = PipelineOptions(["--direct_num_workers=2", "--s3_region_name=eu-west-1"])
    runner = runners.select(options)
    sent = runner._provision_info.provision_info.pipeline_options
    assert sent["beam:option:s3_region_name:v1"] == "eu-west-1"


@pytest.mark.parametrize("name", ["FnApiRunner", "DataflowRunner", "FlinkRunner", "PortableRunner"])
def test_other_runners_are_left_to_beam(name):
    runner = runners.select(PipelineOptions([f"--runner={name}"]))
    assert (runner is not None) == (name == "FnApiRunner")


@pytest.mark.parametrize("name", DASK_SPELLINGS)
def test_beam_runner_refuses_dask_and_says_why(name, tmp_path, capsys):
    out = tmp_path / "out"
    with pytest.raises(SystemExit) as exit_info:
        beam_runner.run(["--input", str(tmp_path / "x.csv"), "--output", str(out),
                         f"--runner={name}"])  # fmt: skip
    assert exit_info.value.code == 2
    message = capsys.readouterr().err
    assert f"--runner {name} is refused" in message and "loses data" in message
    assert "253 manifest rows" in message and "FnApiRunner" in message and "FlinkRunner" in message
    assert not out.exists()


def test_recipe_refuses_dask_before_any_step(tmp_path, capsys):
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump({
        "output": str(tmp_path / "run"),
        "crawl": {"input": str(tmp_path / "missing.parquet")},
        "runner": {"runner": "DaskRunner", "dask_client_address": "scheduler:8786"},
    }))  # fmt: skip
    with pytest.raises(SystemExit) as exit_info:
        recipe.main([str(path)])
    assert exit_info.value.code == 2
    message = capsys.readouterr().err
    assert "--runner DaskRunner is refused" in message and "loses data" in message
    assert not (tmp_path / "run").exists()


def test_recipe_refuses_an_option_no_stage_takes_before_any_step(tmp_path):
    path = tmp_path / "recipe.yaml"
    crawl = {"input": str(tmp_path / "x.csv"), "image-size": 64, "imag-size": 64}
    path.write_text(yaml.safe_dump({"output": str(tmp_path / "run"), "crawl": crawl}))
    with pytest.raises(ValueError, match="no stage takes --imag-size 64"):
        recipe.run(str(path))
    assert not (tmp_path / "run").exists()


def test_a_recipe_option_of_zero_is_passed_on_and_only_false_or_null_are_left_out():
    crawl = {"prebalance-headroom": 0, "min-side": 0.0, "keep-unmatched": False, "queries": None,
             "no-resume": True}  # fmt: skip
    assert recipe.as_flags(crawl) == ["--prebalance-headroom", "0", "--min-side", "0.0",
                                      "--no-resume"]  # fmt: skip


def test_help_names_the_default_runner_and_the_refused_one(capsys):
    with pytest.raises(SystemExit):
        beam_runner.make_parser().parse_args(["--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "with no --runner, Beam's FnApiRunner in this process" in text
    assert "DaskRunner is refused" in text


def test_documented_runner_blocks_are_beam_options():
    """Every `runner:` block of the README and docs/scaling.md parses, as recipe.py passes it,
    into known options of the installed Beam (a stale --flink_version would fail here)."""
    root = Path(__file__).resolve().parent.parent
    text = (root / "README.md").read_text() + (root / "docs" / "scaling.md").read_text()
    blocks = [yaml.safe_load(b) for b in re.findall(r"```yaml\n(.*?)```", text, re.S)]
    runner_blocks = [b["runner"] for b in blocks if isinstance(b, dict) and "runner" in b]
    assert {b.get("runner") for b in runner_blocks} >= {"DataflowRunner", "FlinkRunner",
                                                         "SparkRunner", None}  # fmt: skip
    for block in runner_blocks:
        known = PipelineOptions([f"--{k}={v}" for k, v in block.items()]).get_all_options()
        assert set(block) <= set(known), set(block) - set(known)
        for key, value in block.items():
            assert str(value) in str(known[key]), key
        runners.check(block.get("runner"))
