"""Large blocks go back to the system (agent/runtime/memory.py): after a large block is freed,
glibc would serve the next ones from its heaps; with the threshold fixed, each gets a mapping
of its own again. Seen through glibc's own count of mapped blocks (mallinfo2)."""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests.helpers.charles import REPO

_PROBE = """
import ctypes, sys
import numpy as np
from agent.runtime.memory import return_large_blocks_to_the_system

class MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in (
        "arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks",
        "fordblks", "keepcost")]

libc = ctypes.CDLL("libc.so.6")
libc.mallinfo2.restype = MallInfo2
if sys.argv[1] == "fixed":
    assert return_large_blocks_to_the_system()
big = np.ones(8 << 20, np.uint8)  # 8 MiB: mapped, and freeing it raises glibc's threshold
del big
mapped = libc.mallinfo2().hblks
picture = np.ones((720, 1280, 3), np.uint8)  # a layout picture: 2.7 MB
print(libc.mallinfo2().hblks - mapped)
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc")
@pytest.mark.parametrize(("setting", "mapped"), [("default", 0), ("fixed", 1)])
def test_a_picture_sized_block_gets_its_own_mapping_after_a_larger_one_was_freed(
    setting: str, mapped: int
) -> None:
    result = subprocess.run(
        [sys.executable, "-c", _PROBE, setting], cwd=REPO, capture_output=True, text=True,
        timeout=60,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    assert int(result.stdout.strip()) == mapped


@pytest.mark.parametrize(
    ("command", "in_heap"), [("drive", False), ("train", False), ("collect", True)]
)
def test_only_the_collector_keeps_glibcs_own_threshold(command: str, in_heap: bool) -> None:
    from agent.cli.parser import build_parser

    assert build_parser().parse_args([command]).large_blocks_in_heap is in_heap
