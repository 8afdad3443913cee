"""Charles installed from a wheel works in an empty folder (issue 18): no repository, no
config.toml, nothing but the installed package and its dependencies.

The wheel is built as `pip wheel` builds it for a user, from a copy of what setuptools packages
(pyproject.toml, README.md, agent/), so the build leaves no build/ or *.egg-info in the working
tree; --no-index and --no-build-isolation keep it offline (this environment's setuptools builds
it). It is installed with `pip install --target` into a folder of its own and run through the
`charles` script pip wrote there, from an empty folder. This environment holds the repository
as an editable install (a .pth file that puts an import hook in place), so the runs start with
-S: no site, no .pth, only the installed copy and the dependencies' folders on the path. A file
the wheel fails to ship is then an error here, never quietly taken from the repository.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

from agent.config import BUILT_IN_SOURCE
from tests.helpers.charles import REPO, assert_one_line_error

REFERENCE = REPO / "agent" / "checkpoints" / "reference_checkpoints" / "pilotnet_small"
# What the dependencies (numpy, rich, h5py, ...) are imported from: this environment's own.
DEPENDENCIES = tuple(dict.fromkeys(sysconfig.get_paths()[key] for key in ("purelib", "platlib")))


def pip(*args: str) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "pip", *args, "--no-index", "--disable-pip-version-check", "-q"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The folder `pip install --target` put the wheel of this working tree in."""
    work = tmp_path_factory.mktemp("wheel")
    source = work / "source"
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(REPO / name, source / name)
    shutil.copytree(REPO / "agent", source / "agent", ignore=shutil.ignore_patterns("__pycache__"))
    pip("wheel", "--no-deps", "--no-build-isolation", "-w", str(work / "dist"), str(source))
    (wheel,) = (work / "dist").glob("charles-*.whl")
    pip("install", "--no-deps", "--target", str(work / "installed"), str(wheel))
    return work / "installed"


def python_path(*folders: Path | str) -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": os.pathsep.join(str(folder) for folder in folders)}


def charles(installed: Path, folder: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """The installed `charles` script, run in `folder` with only the wheel and the
    dependencies to import from."""
    return subprocess.run(
        [sys.executable, "-S", str(installed / "bin" / "charles"), *args],
        capture_output=True,
        text=True,
        cwd=folder,
        env=python_path(installed, *DEPENDENCIES),
        timeout=120,
    )


def test_what_runs_is_the_installed_copy_never_the_repository(
    installed: Path, tmp_path: Path
) -> None:
    def where_agent_is(*path: Path | str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-S", "-P", "-c", "import agent; print(agent.__file__)"],
            capture_output=True,
            text=True,
            cwd=tmp_path,
            env=python_path(*path),
            timeout=60,
        )

    found = where_agent_is(installed, *DEPENDENCIES)
    assert found.returncode == 0, found.stderr
    assert Path(found.stdout.strip()).is_relative_to(installed)
    # Without the wheel's folder there is no `agent` at all: the repository is out of reach.
    missing = where_agent_is(*DEPENDENCIES)
    assert "No module named 'agent'" in missing.stderr, missing.stderr


def test_config_check_in_an_empty_folder_runs_on_the_built_in_defaults(
    installed: Path, tmp_path: Path
) -> None:
    result = charles(installed, tmp_path, "config", "check")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(f"{BUILT_IN_SOURCE}: OK\n")
    assert "  model.store = 'models'" in result.stdout.splitlines()
    info = [line for line in result.stderr.splitlines() if line.startswith("INFO")]
    assert len(info) == 1, result.stderr
    assert str(tmp_path / "config.toml") in info[0] and "charles config init" in info[0]
    assert list(tmp_path.iterdir()) == []  # checking writes nothing


def test_model_list_in_an_empty_folder_names_the_shipped_reference(
    installed: Path, tmp_path: Path
) -> None:
    result = charles(installed, tmp_path, "model", "list")
    assert result.returncode == 0, result.stderr
    manifest = json.loads((REFERENCE / "manifest.json").read_text(encoding="utf-8"))
    shipped = f"pilotnet_small/{manifest['version']} ({manifest['batches']} batches)"
    listed = f"pilotnet_small  input 160x90  [no checkpoints yet; shipped reference {shipped}]"
    assert listed in result.stdout.splitlines(), result.stdout


def test_config_init_in_an_empty_folder_writes_the_defaults_it_runs_on(
    installed: Path, tmp_path: Path
) -> None:
    defaults = charles(installed, tmp_path, "config", "check")
    result = charles(installed, tmp_path, "config", "init")
    assert result.returncode == 0, result.stderr
    written = tmp_path / "config.toml"
    assert written.read_text(encoding="utf-8") == (REPO / "config.toml").read_text(encoding="utf-8")
    for check in (("config", "check"), ("config", "check", "--config", str(written))):
        result = charles(installed, tmp_path, *check)
        assert result.returncode == 0, result.stderr
        assert "INFO" not in result.stderr  # the file is read, not the built-in defaults
        # Every value exactly as without the file.
        assert result.stdout.splitlines()[1:] == defaults.stdout.splitlines()[1:]
    result = charles(installed, tmp_path, "config", "init")
    assert_one_line_error(result, "config.toml already exists")


def test_bench_model_in_an_empty_folder_measures_the_shipped_reference(
    installed: Path, tmp_path: Path
) -> None:
    # TensorFlow comes from this environment's site-packages, named on the path (-S reads no
    # .pth file, so the editable repository stays out of reach): agent is the installed copy.
    found = subprocess.run(
        [sys.executable, "-S", "-P", "-c",
         "import agent, tensorflow; print(agent.__file__)"],
        capture_output=True, text=True, cwd=tmp_path,
        env=python_path(installed, *DEPENDENCIES), timeout=120,
    )  # fmt: skip
    assert found.returncode == 0, found.stderr
    assert Path(found.stdout.strip()).is_relative_to(installed)
    result = charles(installed, tmp_path, "bench", "model", "--seconds", "2", "--json")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    manifest = json.loads((REFERENCE / "manifest.json").read_text(encoding="utf-8"))
    assert (
        report["model"] == f"pilotnet_small/{manifest['version']} ({manifest['batches']} batches)"
    )
    assert report["predictions"] >= 1 and report["predictions_per_second"] > 0
    assert list(tmp_path.iterdir()) == []  # a benchmark of the model alone writes nothing


def test_the_installed_copy_has_the_live_overlay_page(installed: Path, tmp_path: Path) -> None:
    """`charles drive --live` serves the page from the package (importlib.resources)."""
    found = subprocess.run(
        [sys.executable, "-S", "-P", "-c",
         "from importlib.resources import files; "
         "print(files('agent.live').joinpath('overlay.html').read_text()[:200])"],
        capture_output=True, text=True, cwd=tmp_path, env=python_path(installed, *DEPENDENCIES),
        timeout=60,
    )  # fmt: skip
    assert found.returncode == 0, found.stderr
    assert "<!doctype html>" in found.stdout.lower() or "<html" in found.stdout.lower()
