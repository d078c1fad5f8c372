"""Reading the pipeline's WebDataset shards: shard specs, their streams, their samples.

A shard is opened from a local path, an fsspec URL (gs://, s3://, https://...) or a `pipe:`
command's stdout and read as a streamed tar (webdataset's sample grouping, tar members over a
size cap skipped unread); a shard that fails to open, read or close costs its handler one call.
"""

from __future__ import annotations

import glob
import re
import subprocess
import tarfile
from collections.abc import Callable, Iterator

import fsspec
import webdataset as wds
from braceexpand import braceexpand

IMAGE_KEYS = ("jpg", "jpeg", "png", "webp")  # the members a sample's image may be in
# A tar member claiming more is skipped unread: a 10 kB tar with a sparse member (or a header
# lying about its size) would otherwise become that many bytes in memory, once per worker.
MAX_MEMBER_BYTES = 64 << 20
SKIP_META = re.compile(r"__[^/]*__($|/)")  # webdataset's metadata members


def expand_shards(pattern: str) -> list[str]:
    """Shard specs from brace patterns (`{00000..00009}`), globs and comma-separated lists.

    A spec is a local path, an fsspec URL (`gs://`, `s3://`, `https://`, `file://`...; globs
    expand through its filesystem, except on http(s), where `?` starts a query) or a
    webdataset-style `pipe:COMMAND`, one pipe per shard after brace expansion. Commas inside
    braces stay in their pattern, and a pipe command runs to the next `,pipe:`, commas and all.
    """
    specs: list[str] = []
    for part in _split_list(pattern):
        for expanded in braceexpand(part):
            specs.extend(_matches(expanded))
    if not specs:
        raise FileNotFoundError(f"no shard matches {pattern!r}")
    return specs


def check_filesystems(specs: list[str]) -> None:
    """Fail now, not as read errors in every epoch, where a URL's fsspec filesystem is missing
    (ImportError: gs:// needs gcsfs, s3:// s3fs, https:// aiohttp) or unknown (ValueError)."""
    for protocol in sorted({_protocol(spec) for spec in specs} - {"", "pipe"}):
        fsspec.get_filesystem_class(protocol)


def _split_list(pattern: str) -> list[str]:
    parts, depth, current = [], 0, []
    for char in pattern:
        depth += {"{": 1, "}": -1}.get(char, 0)
        if char == "," and depth == 0:
            parts.append("".join(current))
            current = []
        else:
            current.append(char)
    parts.append("".join(current))
    specs: list[str] = []
    for part in parts:
        if specs and specs[-1].startswith("pipe:") and not part.strip().startswith("pipe:"):
            specs[-1] += "," + part  # a comma of the command
        elif part.strip():
            specs.append(part.strip())
    return specs


def _protocol(spec: str) -> str:
    if spec.startswith("pipe:"):
        return "pipe"
    return spec.split("://", 1)[0] if "://" in spec else ""


def _matches(spec: str) -> list[str]:
    protocol = _protocol(spec)
    if protocol in ("pipe", "http", "https") or not any(c in spec for c in "*?["):
        return [spec]
    if not protocol:
        return sorted(glob.glob(spec))
    filesystem, path = fsspec.core.url_to_fs(spec)
    return [f"{protocol}://{found}" for found in sorted(filesystem.glob(path))]


class PipeShard:
    """A shard read from a shell command's stdout (`pipe:gsutil cat gs://b/00000.tar`).

    `close` reads to the end and waits for the command: a non-zero exit status raises, so a
    command that failed, even after writing a whole tar, is a read error of its shard, found at
    the same point of the stream every time. `kill` abandons a shard read halfway.
    """

    def __init__(self, command: str):
        self.command = command
        self.process = subprocess.Popen(command, shell=True, stdout=subprocess.PIPE)

    def read(self, size: int = -1) -> bytes:
        return self.process.stdout.read(size)

    def close(self) -> None:
        while self.process.stdout.read(1 << 20):  # the rest (a tar's padding) before the status
            pass
        self.process.stdout.close()
        if status := self.process.wait():
            raise OSError(f"pipe:{self.command} exited with status {status}")

    def kill(self) -> None:
        self.process.stdout.close()  # the command's next write fails (SIGPIPE)
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait()

    def __repr__(self) -> str:
        return f"PipeShard({self.command!r})"


def open_shard(spec: str):
    """A binary stream of one shard: a `pipe:` command's stdout, an fsspec URL, or a path."""
    protocol = _protocol(spec)
    if protocol == "pipe":
        return PipeShard(spec.removeprefix("pipe:"))
    if protocol:
        return fsspec.open(spec, "rb").open()
    return open(spec, "rb")


class MemberTooLarge(ValueError):
    """A tar member over the size cap, skipped without reading it."""


def tar_members(fileobj, handler: Callable[[Exception], bool],
                max_bytes: int = MAX_MEMBER_BYTES) -> Iterator[dict]:  # fmt: skip
    """(fname, data) of a tar stream's regular files, as webdataset's `tar_file_iterator`, but a
    member over `max_bytes` (its expanded size: sparse members count their holes) costs one
    `handler` call and is skipped unread; the members after it are still read."""
    stream = tarfile.open(fileobj=fileobj, mode="r|*")
    for info in stream:
        if not info.isreg() or SKIP_META.match(info.name):
            continue
        if info.size > max_bytes:
            exc = MemberTooLarge(f"{info.name}: {info.size} bytes, over the cap of {max_bytes}")
            if handler(exc):
                continue
            raise exc
        yield {"fname": info.name, "data": stream.extractfile(info).read()}
        stream.members = []  # a streamed tar need not remember what it has read


def _shard_files(shards: list[str], handler: Callable[[Exception], bool],
                 max_bytes: int = MAX_MEMBER_BYTES) -> Iterator[dict]:  # fmt: skip
    """The files of each shard in turn, an empty dict after each shard read whole (as webdataset's
    `tar_file_expander`); a shard that fails to open, to read or to close costs one `handler`
    call and the rest of that shard, a member over `max_bytes` one call and itself."""
    for spec in shards:
        stream = None
        try:
            stream = open_shard(spec)
            for file in tar_members(stream, handler, max_bytes):
                yield {**file, "__url__": spec}
            done, stream = stream, None
            done.close()
            yield {}
        except Exception as exc:
            exc.args = (*exc.args, spec)
            if not handler(exc):
                raise
        finally:
            if isinstance(stream, PipeShard):  # failed or abandoned halfway
                stream.kill()
            elif stream is not None:
                stream.close()


def read_shards(shards: list[str], handler: Callable[[Exception], bool],
                max_bytes: int = MAX_MEMBER_BYTES) -> Iterator[dict]:  # fmt: skip
    """The samples (`__key__`, `jpg`, `txt`...) of `shards` in order, opened by `open_shard`."""
    files = _shard_files(shards, handler, max_bytes)
    return wds.tariterators.group_by_keys(files, handler=handler)
