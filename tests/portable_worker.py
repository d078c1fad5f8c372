"""An SDK worker that, like Beam's container boot, runs only what the job staged.

Beam's worker pool (`worker_pool_main --container_executable THIS`) starts it once per worker
with the container contract's flags. It asks the provision service for the job's options and
dependencies, downloads the staged artifacts, pip-installs the `--setup_file` sdist
(`workflow.tar.gz`) and any `--extra_package` into a folder of its own, and runs the SDK
harness with only that folder added to the path. It refuses to start when the project is
importable before the install (the checkout would hide a module missing from the package).
Every failure ends with a `WORKER FAILED` line on stderr (the pool's log), which the test
polls for instead of waiting out the runner's gRPC deadline. Imports only Beam and grpc.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

FAILED = "WORKER FAILED"

try:
    import grpc
    from apache_beam.portability import common_urns
    from apache_beam.portability.api import (
        beam_artifact_api_pb2,
        beam_artifact_api_pb2_grpc,
        beam_provision_api_pb2,
        beam_provision_api_pb2_grpc,
        beam_runner_api_pb2,
        endpoints_pb2,
    )
    from google.protobuf import json_format, text_format
except ImportError:  # the pool's python lacks Beam: say so where the test looks, then exit
    traceback.print_exc()
    print(f"{FAILED}: {sys.executable} cannot import Beam", file=sys.stderr, flush=True)
    sys.exit(1)

PROJECT_MODULES = ("pipeline", "filters", "manifests", "trainer", "demo", "beam_runner", "recipe")
INSTALLABLE = (".tar.gz", ".whl", ".zip")


def provision(endpoint: str, worker_id: str) -> beam_provision_api_pb2.ProvisionInfo:
    with grpc.insecure_channel(endpoint) as channel:
        stub = beam_provision_api_pb2_grpc.ProvisionServiceStub(channel)
        request = beam_provision_api_pb2.GetProvisionInfoRequest()
        return stub.GetProvisionInfo(request, metadata=[("worker_id", worker_id)]).info


def retrieve(endpoint: str, dependencies, folder: Path) -> list[Path]:
    """Download every artifact under its staged name; returns the paths."""
    paths = []
    with grpc.insecure_channel(endpoint) as channel:
        stub = beam_artifact_api_pb2_grpc.ArtifactRetrievalServiceStub(channel)
        request = beam_artifact_api_pb2.ResolveArtifactsRequest(artifacts=dependencies)
        for artifact in stub.ResolveArtifacts(request).replacements:
            if artifact.role_urn != common_urns.artifact_roles.STAGING_TO.urn:
                continue
            role = beam_runner_api_pb2.ArtifactStagingToRolePayload.FromString(
                artifact.role_payload
            )
            path = folder / Path(role.staged_name).name
            with path.open("wb") as out:
                get = beam_artifact_api_pb2.GetArtifactRequest(artifact=artifact)
                for chunk in stub.GetArtifact(get):
                    out.write(chunk.data)
            paths.append(path)
    return paths


def install(packages: list[Path], target: Path) -> None:
    """pip-install the staged packages, offline, with the build tools already present."""
    if not packages:
        raise RuntimeError("the job staged no package: submit with --setup_file ./setup.py")
    command = [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-index",
               "--no-build-isolation", "--no-compile", "--disable-pip-version-check",
               "--target", str(target), *map(str, packages)]  # fmt: skip
    subprocess.run(command, check=True, stdout=sys.stderr, cwd=target.parent)


def check_hidden() -> None:
    """Refuse to start when the project is importable already (the checkout on the path, or an
    editable install): the staged package would then not be what the worker runs."""
    visible = {m: importlib.util.find_spec(m) for m in PROJECT_MODULES}
    visible = {m: spec.origin for m, spec in visible.items() if spec is not None}
    if visible:
        raise RuntimeError(f"the project is importable without the staged package: {visible}")


def harness_env(args: argparse.Namespace, info, site: Path, work: Path) -> dict[str, str]:
    """The environment `sdk_worker_main` reads its endpoints and the job's options from."""

    def descriptor(url: str) -> str:
        return text_format.MessageToString(endpoints_pb2.ApiServiceDescriptor(url=url))

    return {
        **os.environ,
        "PYTHONPATH": str(site),
        "WORKER_ID": args.id,
        "PIPELINE_OPTIONS": json.dumps(json_format.MessageToDict(info.pipeline_options)),
        "CONTROL_API_SERVICE_DESCRIPTOR": descriptor(args.control_endpoint),
        "LOGGING_API_SERVICE_DESCRIPTOR": descriptor(args.logging_endpoint),
        "SEMI_PERSISTENT_DIRECTORY": str(work),
        "RUNNER_CAPABILITIES": " ".join(info.runner_capabilities),
    }


def origin(env: dict[str, str], work: Path) -> str:
    """Where the harness will import the project from (the test checks it is the staged copy)."""
    command = [sys.executable, "-c", "import pipeline; print(pipeline.__file__)"]
    return subprocess.run(command, env=env, cwd=work, check=True, capture_output=True,
                          text=True).stdout.strip()  # fmt: skip


def run_harness(env: dict[str, str], work: Path) -> int:
    """The SDK harness in a child process; a SIGTERM from the pool is passed on to it."""
    command = [sys.executable, "-m", "apache_beam.runners.worker.sdk_worker_main"]
    child = subprocess.Popen(command, env=env, cwd=work, stdout=sys.stderr)
    stopped = []

    def stop(*_):
        stopped.append(True)
        child.terminate()

    signal.signal(signal.SIGTERM, stop)
    code = child.wait()
    return 0 if stopped else code


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    for flag in ("id", "logging_endpoint", "artifact_endpoint", "provision_endpoint",
                 "control_endpoint"):  # fmt: skip
        parser.add_argument(f"--{flag}", required=True)
    args = parser.parse_args(argv)
    try:
        check_hidden()
        start = time.monotonic()
        work = Path(tempfile.mkdtemp(prefix=f"worker-{args.id}-", dir=os.getcwd()))
        info = provision(args.provision_endpoint, args.id)
        staged = retrieve(args.artifact_endpoint, info.dependencies, work)
        install([p for p in staged if p.name.endswith(INSTALLABLE)], work / "site")
        env = harness_env(args, info, work / "site", work)
        print(f"worker {args.id}: installed {sorted(p.name for p in staged)} in "
              f"{time.monotonic() - start:.1f} s; the project imports from {origin(env, work)}",
              file=sys.stderr, flush=True)  # fmt: skip
        code = run_harness(env, work)
    except Exception:
        traceback.print_exc()
        code = 1
    if code:
        print(f"{FAILED}: worker {args.id} exited with status {code}", file=sys.stderr, flush=True)
    return code


if __name__ == "__main__":
    sys.exit(main())
