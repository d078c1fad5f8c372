"""The whole graph on Beam's portable path, from the package the job stages.

This is how Flink's and Spark's job servers and Dataflow's Runner v2 run the graph: the job goes
to a job service as a Runner API proto, and every step is unpickled and run in a separate SDK
worker over the Fn API. Here the job service is Beam's Python one and the workers come from an
EXTERNAL worker pool whose interpreter sees the venv's libraries but neither this checkout nor
the train extra (torch), as on a Dataflow worker: each
worker pip-installs the sdist that `--setup_file ./setup.py` staged (tests/portable_worker.py),
so a module missing from the package fails here, not on Dataflow. The outputs must be those of
the local runner, byte for byte.
"""

from __future__ import annotations

import json
import os
import re
import site
import subprocess
import sys
import tarfile
import time
from collections.abc import Iterator
from importlib import metadata
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import LOOPBACK, write_list
from portable_worker import FAILED  # its last line when a worker cannot start or dies

import beam_runner
import recipe
from demo.__main__ import RECIPE, write_heldout, write_queries
from demo.server import CorpusServer
from demo.webcorpus import build

ROOT = Path(__file__).resolve().parent.parent
WORKER = Path(__file__).with_name("portable_worker.py")
STARTUP_S = 60.0  # job service and worker pool listening
JOB_S = 180.0  # the whole portable job; a stuck one fails with the logs, not a 300 s gRPC hang


def train_extra_modules() -> list[str]:
    """The modules of the `train` extra (torch, tokenizers): a Dataflow worker installs only
    the runtime dependencies, so the graph must run without them."""
    train = [r for r in metadata.requires("openwit") if 'extra == "train"' in r]
    return [re.split(r"[<>=!~;\[ ]", r)[0] for r in train]


def isolated_python(folder: Path) -> Path:
    """A venv that imports this venv's libraries but not the project, nor the train extra: its
    .pth names our site-packages as a plain path, so their .pth files (the editable install's
    finder among them) are never run, the checkout is on no path, and importing torch fails as
    where it is not installed."""
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(folder)], check=True)
    python = folder / "bin" / "python"
    purelib = subprocess.run(
        [python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        check=True, capture_output=True, text=True,
    ).stdout.strip()  # fmt: skip
    Path(purelib, "openwit-libraries.pth").write_text("\n".join(site.getsitepackages()) + "\n")
    hidden = dict.fromkeys(train_extra_modules())  # None in sys.modules: ModuleNotFoundError
    Path(purelib, "openwit-no-train-extra.pth").write_text(
        f"import sys; sys.modules.update({hidden})\n"
    )
    return python


def _tail(path: Path, lines: int = 60) -> str:
    text = path.read_text(errors="replace") if path.exists() else ""
    return f"--- {path.name} ---\n" + "\n".join(text.splitlines()[-lines:])


class PortableServices:
    """Beam's local job service and an EXTERNAL worker pool, on loopback, logging to files."""

    def __init__(self, folder: Path, python: Path, worker_python: Path | None = None) -> None:
        self.folder, self.python, self.worker_python = folder, python, worker_python or python
        self.job_log, self.pool_log = folder / "job_service.log", folder / "worker_pool.log"
        self.processes: list[subprocess.Popen] = []

    def _env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("PYTHON")}
        env["PATH"] = f"{self.worker_python.parent}{os.pathsep}{env.get('PATH', '')}"
        return env

    def _start(self, module: str, log: Path, *args: str) -> None:
        with log.open("wb") as out:
            command = [str(self.python), "-m", module, *args]
            self.processes.append(subprocess.Popen(
                command, cwd=self.folder, env=self._env(), stdout=out, stderr=subprocess.STDOUT,
            ))  # fmt: skip

    def __enter__(self) -> PortableServices:
        boot = self.folder / "boot"  # the container executable the pool starts each worker with
        boot.write_text(f'#!/bin/sh\nexec "{self.worker_python}" "{WORKER}" "$@"\n')
        boot.chmod(0o755)
        port_file = self.folder / "job.port"
        self._start("apache_beam.runners.portability.local_job_service_main", self.job_log,
                    "--port", "0", "--port_file", str(port_file))  # fmt: skip
        self._start("apache_beam.runners.worker.worker_pool_main", self.pool_log,
                    "--service_port", "0", "--container_executable", str(boot))  # fmt: skip
        deadline = time.monotonic() + STARTUP_S
        pool = None
        while not (port_file.exists() and pool):
            self._check_alive("starting")
            if time.monotonic() > deadline:
                self._fail(f"the services did not start in {STARTUP_S:.0f} s")
            pool = re.search(r"servicer at port: \S+:(\d+)", self.pool_log.read_text())
            time.sleep(0.1)
        self.job_endpoint = f"127.0.0.1:{port_file.read_text().strip()}"
        self.pool_endpoint = f"127.0.0.1:{pool.group(1)}"
        return self

    def __exit__(self, *exc) -> None:
        for process in self.processes:
            process.terminate()
        for process in self.processes:
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()

    def _check_alive(self, doing: str) -> None:
        for process in self.processes:
            if process.poll() is not None:
                self._fail(f"{process.args[2]} exited with {process.returncode} while {doing}")

    def _fail(self, message: str, *logs: Path) -> None:
        pytest.fail("\n".join([message, *map(_tail, (*logs, self.pool_log, self.job_log))]))

    def submit(self, argv: list[str], log: Path) -> subprocess.Popen:
        """Start `python beam_runner.py ARGV` on the portable runner, staging ./setup.py."""
        command = [sys.executable, "beam_runner.py", *argv, "--runner=PortableRunner",
                   f"--job_endpoint={self.job_endpoint}", "--environment_type=EXTERNAL",
                   f"--environment_config={self.pool_endpoint}", "--setup_file=./setup.py"]  # fmt: skip
        with log.open("wb") as out:
            return subprocess.Popen(command, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT)

    def wait(self, job: subprocess.Popen, log: Path) -> None:
        """Wait for the submitted job; fail at once, with the logs, when a worker exits or a
        service dies, and after JOB_S at most."""
        start = time.monotonic()
        try:
            while job.poll() is None:
                if FAILED in self.pool_log.read_text(errors="replace"):
                    self._fail("a worker failed", log)
                self._check_alive("the job ran")
                if time.monotonic() - start > JOB_S:
                    self._fail(f"the job did not finish in {JOB_S:.0f} s", log)
                time.sleep(0.2)
        finally:
            if job.poll() is None:
                job.kill()
                job.wait()
        if job.returncode:
            self._fail(f"the portable job failed ({job.returncode})", log)


@pytest.fixture(scope="module")
def web_flags(tmp_path_factory) -> Iterator[list[str]]:
    """The demo's web-like corpus (faults, duplicates, four languages) served on loopback, and
    the demo recipe's crawl flags with every stage on; smaller shards and t so that sharding
    and balancing both have work to do, and a few served pictures in the eval set."""
    folder = tmp_path_factory.mktemp("web")
    corpus = build(160, seed=11, max_side=240)
    write_heldout(corpus.heldout[::12], folder / "heldout")
    leaked = folder / "heldout" / "leaked"  # served pictures that are also in the eval set
    leaked.mkdir()
    for row in [r for r in corpus.rows if r["kind"] == "clean"][::20]:
        name = row["path"].removeprefix("img/")
        (leaked / name).write_bytes(corpus.images[name])
    write_queries(corpus.queries, folder / "queries.txt")
    with CorpusServer(corpus.images) as server:
        rows = [{"url": server.url(r["path"]), "caption": r["caption"]} for r in corpus.rows]
        pq.write_table(pa.Table.from_pylist(rows), folder / "urls.parquet")
        crawl = recipe.load_recipe(str(RECIPE), [f"output={folder}"])["crawl"]
        crawl.update({"samples-per-shard": 16, "max-per-query": 6, "image-size": 64})
        yield recipe.as_flags(crawl)


def outputs(folder: Path) -> dict:
    """Everything a run writes that a user reads: stats, manifest rows, shard members."""
    members = {}
    for shard in sorted((folder / "shards").glob("*.tar")):
        with tarfile.open(shard) as tar:
            members[shard.name] = [(m.name, tar.extractfile(m).read()) for m in tar.getmembers()]
    manifest = [row for f in sorted((folder / "manifest").glob("*.parquet"))
                for row in pq.read_table(f).to_pylist()]  # fmt: skip
    counts = folder / "balance" / "query_counts.parquet"
    stats = json.loads((folder / "stats.json").read_text())
    del stats["config"]["output"], stats["fingerprint"]  # the two runs write to two folders
    return {
        "stats": stats,
        "manifest": sorted(manifest, key=lambda row: row["key"]),
        "shards": members,
        "query_counts": pq.read_table(counts).to_pylist(),
    }


def test_the_whole_graph_on_the_portable_runner_matches_the_local_runner(web_flags, tmp_path):
    flags = web_flags
    python = isolated_python(tmp_path / "worker-venv")
    log = tmp_path / "submit.log"
    with PortableServices(tmp_path, python) as services:
        start = time.monotonic()
        job = services.submit([*flags, "--output", str(tmp_path / "portable")], log)
        beam_runner.run([*flags, "--output", str(tmp_path / "local")])  # meanwhile, locally
        local_s = time.monotonic() - start
        services.wait(job, log)
        portable_s = time.monotonic() - start
        pool_log = services.pool_log.read_text()
    local, portable = outputs(tmp_path / "local"), outputs(tmp_path / "portable")
    counts = local["stats"]["status_counts"]
    print(f"local run {local_s:.1f} s, portable {portable_s:.1f} s, both from the submission; "
          f"{len(local['manifest'])} rows, {len(local['shards'])} shards, {counts}")  # fmt: skip
    for status in ("ok", "error:http_404", "error:not_image", "error:decode", "dup:exact",
                   "dup:near", "balanced_out", "contaminated"):  # fmt: skip
        assert counts.get(status, 0) > 0, status  # every stage had work to do
    assert any(status.startswith("filtered:lang") for status in counts)
    assert len(local["shards"]) >= 3
    for part in ("stats", "manifest", "shards", "query_counts"):
        assert portable[part] == local[part], part
    # The workers imported the project from the sdist they installed, not from this checkout.
    origins = re.findall(r"the project imports from (\S+)", pool_log)
    assert origins and all("/site/pipeline/" in o and str(ROOT) not in o for o in origins)
    assert "workflow.tar.gz" in pool_log


def test_a_worker_that_cannot_start_fails_the_run_at_once_with_its_error(tmp_path, server):
    """The trap of a pool whose workers' python lacks the environment: the job service would
    wait ~300 s for a worker that died; the run fails as soon as the pool's log says so."""
    bare = tmp_path / "bare-venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(bare)], check=True)
    path = write_list(tmp_path / "list.csv", [{"url": server.url("html"), "caption": "x"}], "csv")
    argv = ["--input", str(path), "--output", str(tmp_path / "out"), "--allowed-networks",
            LOOPBACK]  # fmt: skip
    python = isolated_python(tmp_path / "worker-venv")
    with PortableServices(tmp_path, python, worker_python=bare / "bin" / "python") as services:
        job = services.submit(argv, tmp_path / "submit.log")
        with pytest.raises(pytest.fail.Exception, match="a worker failed") as failure:
            services.wait(job, tmp_path / "submit.log")
    assert "ModuleNotFoundError: No module named 'grpc'" in str(failure.value)
    assert f"{FAILED}: {bare}" in str(failure.value) and job.returncode is not None
