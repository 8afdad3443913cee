"""Keeping a process that runs for days from growing: large blocks go back to the system.

glibc's malloc serves a block of at least M_MMAP_THRESHOLD bytes (128 KiB to start with) with a
mapping of its own, returned to the system when freed. But it raises that threshold to the size
of each such block freed (up to 32 MiB), so after the first frames and pictures are freed, the
next ones (1-4 MB each: a 1280x720 capture, a layout picture) come from the heaps the threads
share, and the gaps they leave there are seldom returned. Measured in a drive recording the
layout and starting a new file every 6 s: resident memory grew 29 MB in 100 s; with the
threshold fixed at 1 MiB, it stayed flat (tests/test_memory.py checks the setting works). The
60-minute soak before this change grew 69 MB an hour.

Setting M_MMAP_THRESHOLD also turns the raising off. Elsewhere (macOS, Windows, musl) nothing
is done.

The price: each such block is mapped, faulted in page by page and unmapped again. A paced
drive pays little for that; an unpaced loop that frees and allocates the same few large blocks
every frame pays a lot (the offscreen collector ran at 77 instead of 140 frames/s), and its
memory stays flat without the setting, since the same sizes come back to the same gaps. So
`charles collect` does not set it (agent/cli/parser.py says where).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import sys

log = logging.getLogger(__name__)

M_MMAP_THRESHOLD = -3
"""mallopt's parameter number (glibc's malloc.h)."""
LARGE_BLOCK_BYTES = 1 << 20
"""Blocks at least this large get a mapping of their own, unmapped when freed."""


def return_large_blocks_to_the_system() -> bool:
    """Fix glibc's mmap threshold at LARGE_BLOCK_BYTES; True when it was set."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # not glibc
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    done = bool(mallopt(M_MMAP_THRESHOLD, LARGE_BLOCK_BYTES))
    if not done:
        log.debug("mallopt(M_MMAP_THRESHOLD) refused")
    return done
