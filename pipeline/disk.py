"""A full disk, said plainly: the run stops with one line naming the file and the free space,
and the same command run again resumes, since every output is written to a temporary name and
renamed when complete, and the crawl cache keeps each finished batch."""

from __future__ import annotations

import errno
import os
import shutil

_ENOSPC_TEXT = f"[Errno {errno.ENOSPC}]"  # what is left of the error once a runner relays it


def full_disk_error(exc: BaseException | None) -> BaseException | None:
    """The ENOSPC error behind `exc`, if any: raised here, wrapped by Beam (which re-raises a
    worker's error as its own, the original as context) or relayed as text by a remote worker."""
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, OSError) and exc.errno == errno.ENOSPC:
            return exc
        if _ENOSPC_TEXT in str(exc):
            return exc
        exc = exc.__cause__ or exc.__context__
    return None


def full_disk_message(exc: BaseException, output: str) -> str | None:
    """What to tell the user when `exc` comes from a full disk; None when it does not."""
    error = full_disk_error(exc)
    if error is None:
        return None
    path = getattr(error, "filename", None) or output
    where = f"writing {path}"
    free = _free_bytes(path)
    if free is not None:
        where += f", {free / 2**20:,.1f} MiB free there"
    return (
        f"no space left on the device ({where}). Free some space (or give the local "
        "runner's shuffle files another disk with --local_shuffle_dir) and run the same "
        "command again: the finished crawl batches are kept and reused, and no output was "
        "left half-written."
    )


def _free_bytes(path: str) -> int | None:
    """Free bytes on the local filesystem holding `path` (None for a remote or unknown path)."""
    folder = path
    while folder and not os.path.isdir(folder):
        parent = os.path.dirname(folder)
        if parent == folder:
            return None
        folder = parent
    return shutil.disk_usage(folder).free if folder else None
