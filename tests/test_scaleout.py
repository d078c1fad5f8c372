"""What a distributed runner needs: a shippable package, options and config that survive the trip."""

from __future__ import annotations

import json
import tarfile
from pathlib import Path

import pyarrow.parquet as pq
from apache_beam.internal import pickler
from apache_beam.options.pipeline_options import (
    DebugOptions,
    GoogleCloudOptions,
    PipelineOptions,
    SetupOptions,
    StandardOptions,
    WorkerOptions,
)
from apache_beam.runners.portability.stager import Stager
from conftest import LOOPBACK, write_list

import beam_runner

ROOT = Path(__file__).resolve().parent.parent
DATAFLOW_ARGS = [
    "--runner=DataflowRunner",
    "--project=my-project",
    "--region=europe-west4",
    "--temp_location=gs://bucket/tmp",
    "--staging_location=gs://bucket/staging",
    "--num_workers=8",
    "--max_num_workers=64",
    "--machine_type=n2-standard-8",
    "--experiments=use_runner_v2",
    f"--setup_file={ROOT / 'setup.py'}",
]
OUR_ARGS = [
    "--input",
    "gs://bucket/lists/*.parquet",
    "--output",
    "gs://bucket/out",
    "--image-size",
    "224",
    "--resize-mode",
    "keep_ratio",
    "--threads",
    "64",
    "--allowed-networks",
    "10.0.0.0/8",
    "--queries",
    "gs://bucket/metadata.json",
    "--max-per-query",
    "20000",
    "--near-dup-threshold",
    "6",
    "--near-dup-bands",
    "7",
    "--decontaminate",
    "gs://bucket/eval/*.tar",
]


def test_setup_file_ships_every_package(tmp_path):
    built = Stager._build_setup_package(str(ROOT / "setup.py"), str(tmp_path))
    archive = built[0] if isinstance(built, list) else built
    names = tarfile.open(archive).getnames()
    for module in (
        "beam_runner.py",
        "pipeline/graph.py",
        "pipeline/crawl.py",
        "manifests/schema.py",
        "filters/image_size.py",
    ):
        assert any(name.endswith(module) for name in names), module


def test_options_round_trip_as_dataflow_serialises_them():
    args, beam_args = beam_runner.make_parser().parse_known_args(OUR_ARGS + DATAFLOW_ARGS)
    assert sorted(beam_args) == sorted(
        DATAFLOW_ARGS
    )  # ours are not leaked to Beam, nor Beam's eaten
    options = PipelineOptions(beam_args)
    # The Dataflow client sends the non-null options as JSON; workers rebuild them from it.
    sent = json.dumps({k: v for k, v in options.get_all_options().items() if v is not None})
    rebuilt = PipelineOptions.from_dictionary(json.loads(sent))
    user_set = options.get_all_options(drop_default=True)
    assert len(user_set) >= len(DATAFLOW_ARGS) - 1  # staging/temp may share a view
    survived = rebuilt.get_all_options()
    assert {name: survived[name] for name in user_set} == user_set
    assert rebuilt.view_as(StandardOptions).runner == "DataflowRunner"
    assert rebuilt.view_as(GoogleCloudOptions).region == "europe-west4"
    assert rebuilt.view_as(WorkerOptions).machine_type == "n2-standard-8"
    assert rebuilt.view_as(SetupOptions).setup_file.endswith("setup.py")
    assert "use_runner_v2" in rebuilt.view_as(DebugOptions).experiments


def test_pipeline_config_survives_beams_pickler():
    args, _ = beam_runner.make_parser().parse_known_args(OUR_ARGS)
    config = beam_runner.config_from_args(args)
    assert pickler.loads(pickler.dumps(config)) == config
    crawl, balance = config.stages["crawl"], config.stages["balance"]
    assert crawl.image.image_size == 224 and crawl.fetch.allowed_networks == ("10.0.0.0/8",)
    assert balance.queries == "gs://bucket/metadata.json" and config.stages["dedup"].bands == 7


def test_whole_graph_gives_the_same_outputs_with_two_worker_processes(tmp_path, server, corpus):
    """Every stage on (filters, dedup, balancing): FnApiRunner with 2 processes writes the same
    shards, manifests and per-query counts as the default runner."""
    rows = [{"url": server.url(f"img/{image.name}?v={i}"), "caption": image.caption}
            for i in range(3) for image in corpus]  # fmt: skip
    path = write_list(tmp_path / "list.csv", rows, "csv")
    queries = tmp_path / "queries.txt"
    queries.write_text("red\nblue\ngreen\ncircle\nsquare\nbackground\n")
    common = ["--input", str(path), "--allowed-networks", LOOPBACK, "--image-size", "64",
              "--filters", "caption,image", "--min-side", "32", "--queries", str(queries),
              "--max-per-query", "6", "--samples-per-shard", "8"]  # fmt: skip
    beam_runner.run([*common, "--output", str(tmp_path / "one")])
    beam_runner.run([*common, "--output", str(tmp_path / "two"), "--runner=FnApiRunner",
                     "--direct_num_workers=2", "--direct_running_mode=multi_processing"])  # fmt: skip
    one, two = (json.loads((tmp_path / d / "stats.json").read_text()) for d in ("one", "two"))
    assert one["status_counts"] == two["status_counts"] and one["shards"] == two["shards"]
    assert {"balanced_out", "dup:near", "ok"} <= set(one["status_counts"])
    for name in [f"shards/{s}" for s in one["shards"]] + ["balance/query_counts.parquet"]:
        assert (tmp_path / "one" / name).read_bytes() == (tmp_path / "two" / name).read_bytes()
    manifests = [sorted(r for f in sorted((tmp_path / d / "manifest").glob("*.parquet"))
                        for r in map(str, pq.read_table(f).to_pylist())) for d in ("one", "two")]  # fmt: skip
    assert manifests[0] == manifests[1]
