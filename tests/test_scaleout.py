"""What a distributed runner needs: a shippable package, options and config that survive the trip."""

from __future__ import annotations

import json
import tarfile
from pathlib import Path

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
    assert config.crawl.image.image_size == 224 and config.crawl.fetch.allowed_networks == (
        "10.0.0.0/8",
    )
