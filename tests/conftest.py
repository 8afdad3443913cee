"""Shared test helpers: running the real `charles` CLI in a subprocess."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from agent.runtime.display import xvfb
from tests.markers import markers_for

REPO = Path(__file__).resolve().parent.parent

# Keep TensorFlow quiet and Keras on its TensorFlow backend whatever the caller's shell says.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ["KERAS_BACKEND"] = "tensorflow"


@pytest.hookimpl(tryfirst=True)  # before -m deselects by these markers
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark each test x11, tf and slow by what it really uses (tests/markers.py), so that
    `-m "not slow"` runs the fast part alone."""
    for item in items:
        for name in sorted(markers_for(item)):
            item.add_marker(name)


@pytest.fixture(autouse=True, scope="session")
def _private_cache(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """ONNX exports (and any other XDG cache) go to a temporary folder, never the real home;
    `charles` processes the tests start inherit it."""
    previous = os.environ.get("XDG_CACHE_HOME")
    os.environ["XDG_CACHE_HOME"] = str(tmp_path_factory.mktemp("xdg-cache"))
    yield
    if previous is None:
        os.environ.pop("XDG_CACHE_HOME", None)
    else:
        os.environ["XDG_CACHE_HOME"] = previous


def run_charles_process(
    *args: str, env: dict[str, str] | None = None, cwd: Path = REPO, timeout: float = 300
) -> subprocess.CompletedProcess[str]:
    """Run `python -m agent ARGS` as a user would, capturing its output."""
    return subprocess.run(
        [sys.executable, "-m", "agent", *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        env={**os.environ, **(env or {})},
        timeout=timeout,
    )


@pytest.fixture
def run_charles() -> Callable[..., subprocess.CompletedProcess[str]]:
    return run_charles_process


def assert_one_line_error(result: subprocess.CompletedProcess[str], *fragments: str) -> str:
    """The user-error contract: non-zero exit, one `charles: error:` line, no traceback."""
    assert result.returncode != 0, result.stdout
    assert "Traceback" not in result.stderr, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.startswith("charles: error:")]
    assert len(lines) == 1, result.stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    return lines[0]


@pytest.fixture(scope="module")
def x_display() -> Iterator[str]:
    """A private Xvfb (1920x1080) for one test module; DISPLAY points at it meanwhile.

    There is no window manager on it: nothing decorates, moves or focuses windows but the tests.
    """
    if not sys.platform.startswith("linux"):
        pytest.skip("X11 tests run on Linux")
    with xvfb() as name:
        previous = os.environ.get("DISPLAY")
        os.environ["DISPLAY"] = name
        try:
            yield name
        finally:
            if previous is None:
                os.environ.pop("DISPLAY", None)
            else:
                os.environ["DISPLAY"] = previous
