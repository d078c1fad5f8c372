"""File-system helpers over Beam's FileSystems, so `gs://` and `s3://` paths work unchanged."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import BinaryIO

from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems


def join(base: str, *parts: str) -> str:
    return FileSystems.join(base, *parts)


def match_files(pattern: str) -> list[str]:
    """Sorted paths matching `pattern` (a path, glob or comma-separated list of them).

    Raises FileNotFoundError with the pattern named, so a typo fails before any work starts.
    """
    paths: list[str] = []
    for part in (p.strip() for p in pattern.split(",")):
        if not part:
            continue
        found = [m.path for r in FileSystems.match([part]) for m in r.metadata_list]
        if not found:
            raise FileNotFoundError(f"no input file matches {part!r}")
        paths.extend(found)
    if not paths:
        raise FileNotFoundError(f"no input file matches {pattern!r}")
    return sorted(set(paths))


def file_versions(paths: list[str]) -> list[list]:
    """[path, size, modification time] of each path: what tells an edited input from the one a
    previous run read (an object store's update time changes with each new generation)."""
    versions = []
    for result in FileSystems.match(paths):
        for meta in result.metadata_list:
            versions.append([meta.path, meta.size_in_bytes, meta.last_updated_in_seconds])
    return sorted(versions)


def read_bytes(path: str) -> bytes:
    """The whole file, gunzipped when its name ends in .gz."""
    with FileSystems.open(path, compression_type=CompressionTypes.AUTO) as f:
        return f.read()


@contextmanager
def atomic_file(path: str) -> Iterator[BinaryIO]:
    """A file to stream into under a unique temporary name, renamed to `path` when the block
    completes and deleted when it raises: readers never see a partial file, and a retried
    bundle writing the same path concurrently cannot interleave with another."""
    tmp = f"{path}.tmp-{uuid.uuid4().hex}"
    try:
        with FileSystems.create(tmp, compression_type=CompressionTypes.UNCOMPRESSED) as f:
            yield f
    except BaseException:
        if FileSystems.exists(tmp):
            FileSystems.delete([tmp])
        raise
    if FileSystems.exists(path):
        FileSystems.delete([path])
    FileSystems.rename([tmp], [path])


def write_atomic(path: str, data: bytes) -> None:
    """Write `data` to `path` through `atomic_file`."""
    with atomic_file(path) as f:
        f.write(data)


def ensure_writable_dir(path: str) -> None:
    """Create `path` if needed and prove it writable, failing fast with a clear message."""
    try:
        if not FileSystems.exists(path):
            FileSystems.mkdirs(path)
        probe = join(path, f".write-probe-{uuid.uuid4().hex}")
        with FileSystems.create(probe) as f:
            f.write(b"ok")
        FileSystems.delete([probe])
    except Exception as exc:  # any backend error means the same to the user
        raise PermissionError(f"output folder {path!r} is not writable: {exc}") from exc
