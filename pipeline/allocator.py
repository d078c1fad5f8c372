"""Keep glibc's allocator from hoarding freed memory in a long multi-threaded crawl.

A crawl frees a body, a decoded image or an encoded bundle every few milliseconds on hundreds
of threads. glibc gives threads up to eight arenas per core and, after the first large free,
raises its mmap threshold up to 32 MiB, so those buffers land in arenas that grow and seldom
shrink: freed but resident memory that grows with the list. Two arenas and a fixed 64 KiB mmap
threshold (large buffers mapped and unmapped on their own) keep it down; `bench/memory.py`
measures the effect, and the README's memory section gives the figures. A variable the user
set (`MALLOC_ARENA_MAX`, `MALLOC_MMAP_THRESHOLD_`) wins; other C libraries are left alone.
"""

from __future__ import annotations

import ctypes
import functools
import os

_M_MMAP_THRESHOLD, _M_ARENA_MAX = -3, -8  # glibc's <malloc.h>
SETTINGS = {  # mallopt parameter -> (the environment variable that overrides it, value)
    _M_ARENA_MAX: ("MALLOC_ARENA_MAX", 2),
    _M_MMAP_THRESHOLD: ("MALLOC_MMAP_THRESHOLD_", 64 * 1024),
}


@functools.cache
def tune() -> bool:
    """Apply the settings to this process once; False where the C library is not glibc."""
    libc = ctypes.CDLL(None)
    if not hasattr(libc, "gnu_get_libc_version"):
        return False
    for parameter, (variable, value) in SETTINGS.items():
        if variable not in os.environ:
            libc.mallopt(parameter, value)
    return True
