"""The CPU half of the crawl: decode, check and resize a downloaded body, in worker processes.

Workers come from a fork server: a fresh process (no download threads, no gRPC channels) that
is safe to fork inside any Beam worker, local or remote. Tasks carry only the pair, the body
and the two small configs they need.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
from concurrent.futures import Executor, ProcessPoolExecutor, ThreadPoolExecutor
from dataclasses import replace

from PIL import Image

from filters.image_size import NAME as SIZE_FILTER
from filters.image_size import ImageSizeConfig, check_image_size
from manifests.schema import Pair, error, filtered
from pipeline import allocator
from pipeline.hashing import HashSpec, ImageHashes
from pipeline.imaging import (
    ImageConfig,
    ImageError,
    ProcessedImage,
    finish_image,
    open_image,
    oriented_size,
)

log = logging.getLogger(__name__)
CORES = os.cpu_count() or 1


def decode_pool(processes: int) -> Executor:
    """`processes` decode processes (0: one per core), or threads in this process for -1."""
    methods = multiprocessing.get_all_start_methods()
    if processes < 0 or "forkserver" not in methods:
        return ThreadPoolExecutor(CORES, thread_name_prefix="decode")
    # The server imports the main module (as every worker must) and this one once; each worker
    # is then a cheap fork of it.
    multiprocessing.set_forkserver_preload(["__main__", __name__])
    context = multiprocessing.get_context("forkserver")
    return ProcessPoolExecutor(processes or CORES, mp_context=context, initializer=allocator.tune)


def finish_pair(
    pair: Pair,
    body: bytes,
    image_config: ImageConfig,
    sizes: ImageSizeConfig,
    hashing: HashSpec | None = None,
) -> Pair:
    """Decode, check and resize a downloaded body, and hash the result for the dedup stage
    when `hashing` says how (the CPU half of `crawl_pair`; never raises)."""
    try:
        image = open_image(body, image_config.max_pixels, image_config.formats)
        width, height = oriented_size(image)
        reason = check_image_size(width, height, sizes)
        if reason:
            return replace(pair, original_width=width, original_height=height).with_status(
                filtered(SIZE_FILTER, reason), f"{width}x{height}"
            )
        out = finish_image(image, image_config)
    except ImageError as exc:
        return pair.with_status(error(exc.kind), str(exc))
    except Exception as exc:  # a bug or an exotic failure must cost one row, not the run
        log.exception("unexpected failure decoding %s", pair.url)
        return pair.with_status(error("internal"), f"{type(exc).__name__}: {exc}")
    return replace(
        pair,
        image=out.jpeg,
        width=out.width,
        height=out.height,
        original_width=out.original_width,
        original_height=out.original_height,
        sha256=out.sha256,
        hashes=_hashes(out, hashing),
    )


def _hashes(out: ProcessedImage, hashing: HashSpec | None) -> ImageHashes | None:
    """The dedup hashes of the shard's image, from the pixels just encoded; None leaves them to
    the dedup stage, which then reports an image it cannot read."""
    if hashing is None:
        return None
    try:
        return hashing.of(out.jpeg, out.pixels)
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError):
        return None
