"""Fixtures every test module may use, and the markers each test gets (tests/helpers/)."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable, Iterator

import pytest

from agent.runtime.display import xvfb
from tests.helpers.charles import run_charles_process
from tests.helpers.markers import markers_for

# Keep TensorFlow quiet and Keras on its TensorFlow backend whatever the caller's shell says.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ["KERAS_BACKEND"] = "tensorflow"


@pytest.hookimpl(tryfirst=True)  # before -m deselects by these markers
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark each test x11, tf and slow by what it really uses (tests/helpers/markers.py), so that
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


@pytest.fixture
def run_charles() -> Callable[..., subprocess.CompletedProcess[str]]:
    return run_charles_process


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
