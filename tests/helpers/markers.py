"""Which real parts a test uses, read from its code: the `x11`, `tf` and `slow` markers.

The markers are derived, not written on each test, so they cannot drift from what the tests
do: `conftest.py` asks `markers_for(item)` for each collected test. It follows what the test
reaches without running it: the test function, the fixtures it requests (its whole fixture
closure) and, through the names their code uses, every helper function and class defined under
tests/ they call, down to the strings they pass (the `charles` command words, a model line's
name). What those reach decides:

- `x11`: an X server, Xvfb (the `x_display` fixture, `xvfb()`), or a `charles drive`/`game`
  process, which opens the bundled game's window and starts its own Xvfb when there is no
  screen (see X11_PARTS, X11_COMMANDS).
- `tf`: TensorFlow or Keras in the test's own process (anything from a module that imports
  them: TF_MODULES) or in a `charles` process it starts (TF_COMMANDS).
- `slow`: more than about 2 s on an idle machine, because of what it uses: a `charles` process
  that imports TensorFlow or opens the game, the game itself, the flagship model line (56 M
  weights to build), a trainer, a live stream to an RTMP ingest; and the few tests that are
  slow for a reason no rule sees (SLOW_BY_MEASUREMENT).

The rules see what a test uses, not how far it gets: a test that starts `charles drive` only to
see it refuse an argument is `slow` too, though it ends within a second. That only leaves it
out of the fast part.

Checking the rules after a change to them or to the tests:
- `pytest --durations=0`: every test over 2 s must be `slow`, by a rule or listed in
  SLOW_BY_MEASUREMENT with why;
- `pytest -m "not x11"` with DISPLAY unset and an `Xvfb` on PATH that only fails must pass
  (nothing unmarked needs an X server);
- `pytest -m "not tf" --continue-on-collection-errors` with `tensorflow`, `keras` and `tf2onnx`
  packages first on PYTHONPATH that raise ImportError (the `charles` processes inherit it) must
  pass, apart from the modules that import Keras at their top, which cannot be collected then.
"""

from __future__ import annotations

import dis
import functools
import inspect
import re
import sys
import types
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest

X11_FIXTURES = frozenset({"x_display"})
"""Fixtures that start an X server for the test."""

X11_PARTS = ("agent.runtime.display.xvfb", "agent.runtime.display.display_for_this_process",
             "tests.helpers.drives.without_display")  # fmt: skip
"""Code that starts Xvfb (`without_display`: a `charles` that must start its own), by
qualified name; a module's name stands for everything in it."""

GAME_PARTS = ("agent.game.launcher.launch_game", "agent.game.launcher.connect_or_launch",
              "agent.bench.pairing.measure_pairing")  # fmt: skip
"""Code that starts the bundled game in its window (under its own Xvfb when there is no
screen). Not the rest of its launcher: a `BundledGame` that runs some other command (the
supervisor's tests) opens no window."""

TF_MODULES = ("keras", "tensorflow", "tf2onnx", "agent.nets", "agent.inference.predictor",
              "agent.inference.onnx_backend", "agent.learn.trainer", "agent.learn.schedule",
              "tests.helpers.models", "tests.helpers.checkpoints")  # fmt: skip
"""Modules (and their submodules) whose functions and classes run TensorFlow or Keras."""

TF_PARTS = ("agent.checkpoints.publish.publish",)
"""Single functions that need TensorFlow although their module does not (a Keras model in)."""

CHARLES_PROCESSES = (
    "tests.helpers.charles.run_charles_process",
    "tests.helpers.drives.drive_command",
)
"""Helpers that start `python -m agent`. A test may also start it by hand: sys.executable with
"agent", "agent.game" or an installed "charles" among its strings."""

CHARLES_NAMES = frozenset({"agent", "agent.game", "charles"})

X11_COMMANDS = frozenset({"drive", "game", "agent.game", "window"})
"""Words in a `charles` command line that open the bundled game's window: `charles drive`,
`charles game`, `python -m agent.game`, `charles collect --render window`."""

GAME_COMMANDS = X11_COMMANDS | {"collect", "pairing"}
"""Words in a `charles` command line that run the bundled game (offscreen too)."""

TF_COMMANDS = frozenset({"drive", "train", "convcam", "bench", "summary", "dagger"})
"""Words in a `charles` command line that load TensorFlow: those commands, `model summary`,
`collect --source dagger`."""

_SCRIPT_IMPORT = re.compile(r"^\s*(?:from\s+([\w.]+)\s+import|import\s+([\w.]+))", re.MULTILINE)

SLOW_LINES = frozenset({"model_0005_inceptionresnetv2"})
"""Model lines whose build alone takes seconds (InceptionResNetV2: 56 M weights)."""

TRAINING = ("agent.learn.trainer.run_train", "agent.learn.trainer.Trainer")
"""Training a network for real, in the test's own process."""

STREAMING = ("tests.helpers.rtmp.RtmpListener",)
"""A real RTMP ingest: the test streams to it for seconds of real time."""

SLOW_BY_MEASUREMENT: dict[str, str] = {
    "tests/test_collect.py::test_key_labels_go_quiet_when_the_x_server_goes_away":
        "waits for the key listener to notice that its X server is gone",
    "tests/test_hotswap.py::test_a_checkpoint_written_while_polled_is_never_loaded_half_written":
        "the checkpoint is written over 2 s on purpose",
    "tests/test_onnx.py::test_onnx_agrees_with_tensorflow_on_pilotnet_and_is_cached_privately":
        "ONNX exports",
    "tests/test_onnx.py::test_a_signed_cache_file_that_disagrees_is_exported_again":
        "ONNX exports",
    "tests/test_onnx.py::test_the_hot_swap_exports_each_new_checkpoint_in_the_loader":
        "ONNX exports",
    "tests/test_onnx_cache.py::test_the_cache_keeps_the_most_recently_used_exports":
        "ONNX exports",
    "tests/test_record.py::test_layout_shows_the_driving_predictions_convcam_with_one_pass_per_frame":
        "renders and encodes many layout pictures",
    "tests/test_stream.py::test_an_ingest_that_hangs_is_let_go_and_stop_returns_at_once":
        "waits out a 1 s connection time limit, in two stream processes",
    "tests/test_store.py::test_one_unreadable_manifest_does_not_hide_the_others":
        "`charles model list` checks every version's weights with TensorFlow",
    "tests/test_store_damage.py::test_model_list_shows_the_newest_good_version":
        "`charles model list` checks every version's weights with TensorFlow",
}  # fmt: skip
"""Tests without parameters in their id, that take over 2 s for a reason no rule above sees
(measured with `pytest --durations=0`: over 3 s on a 2-core machine busy with other work),
with why. Update it from such a run: a test over 2 s that is not `slow` goes here (better: into
a rule), and one listed that now takes well under 1 s comes out."""


@dataclass
class Reach:
    """What one test reaches: qualified names of functions, classes and modules, and strings."""

    names: set[str] = field(default_factory=set)
    """Functions, classes and modules used in the test's own process."""
    strings: set[str] = field(default_factory=set)
    fixtures: set[str] = field(default_factory=set)
    starts_python: bool = False
    """Whether it starts another Python (sys.executable)."""

    def uses(self, parts: Iterable[str]) -> bool:
        return any(_within(name, part) for name in self.names for part in parts)

    def script_imports(self) -> set[str]:
        """Modules imported by the scripts it hands to another Python (`-c`)."""
        if not self.starts_python:
            return set()
        return {
            module
            for text in self.strings
            if "import" in text
            for match in _SCRIPT_IMPORT.finditer(text)
            for module in match.groups()
            if module
        }


def markers_for(item: pytest.Item) -> set[str]:
    """The subset of {"x11", "tf", "slow"} that `item` earns by what it uses."""
    reach = reach_of(item)
    starts_charles = reach.uses(CHARLES_PROCESSES) or (
        reach.starts_python and bool(reach.strings & CHARLES_NAMES)
    )
    command_words = reach.strings if starts_charles else set()
    tf_in_a_child = bool(command_words & TF_COMMANDS) or any(
        _within(module, part) for module in reach.script_imports() for part in TF_MODULES
    )
    game = reach.uses(GAME_PARTS) or bool(command_words & GAME_COMMANDS)
    marks = set()
    if (
        reach.fixtures & X11_FIXTURES
        or reach.uses(X11_PARTS)
        or reach.uses(GAME_PARTS)
        or command_words & X11_COMMANDS
    ):
        marks.add("x11")
    if tf_in_a_child or reach.uses(TF_MODULES) or reach.uses(TF_PARTS):
        marks.add("tf")
    if (
        tf_in_a_child  # seconds just to import TensorFlow there
        or game
        or reach.strings & SLOW_LINES
        or reach.uses(TRAINING)
        or reach.uses(STREAMING)
        or _base_id(item) in SLOW_BY_MEASUREMENT
    ):
        marks.add("slow")
    return marks


def reach_of(item: pytest.Item) -> Reach:
    """What `item` reaches from its function, its fixtures' functions and its parameters."""
    reach = Reach(fixtures=set(getattr(item, "fixturenames", ())))
    roots: list[Any] = [getattr(item, "function", None)]
    # pytest's own record of which fixture function serves each name for this test (private,
    # but stable since pytest 3); without it only the fixtures' names would be known.
    fixture_info = getattr(item, "_fixtureinfo", None)
    for name in reach.fixtures:
        for definition in fixture_info.name2fixturedefs.get(name, ()) if fixture_info else ():
            roots.append(definition.func)
    callspec = getattr(item, "callspec", None)
    if callspec is not None:
        reach.strings.update(_strings_in(callspec.params.values()))
    seen: set[int] = set()
    for root in roots:
        if root is not None:
            _walk(inspect.unwrap(root), reach, seen)
    return reach


def _walk(thing: Any, reach: Reach, seen: set[int]) -> None:
    """Follow a function (or a class's methods) defined under tests/ through the global names
    its code uses; record everything it reaches."""
    if id(thing) in seen:
        return
    seen.add(id(thing))
    if inspect.isclass(thing):
        for member in vars(thing).values():
            member = getattr(member, "__func__", member)  # static and class methods
            if inspect.isfunction(member):
                _walk(member, reach, seen)
        return
    if not inspect.isfunction(thing):
        return
    uses = _uses_of(thing)
    reach.names |= uses.names
    reach.strings |= uses.strings
    reach.starts_python |= uses.starts_python
    for helper in uses.helpers:
        _walk(helper, reach, seen)


@dataclass(frozen=True)
class _Uses:
    """What one function's own code uses (not what the helpers it calls use)."""

    names: frozenset[str]
    strings: frozenset[str]
    starts_python: bool
    helpers: tuple[Any, ...]
    """Functions and classes defined under tests/ that it uses."""


@functools.cache
def _uses_of(function: types.FunctionType) -> _Uses:
    # Cached: a helper such as drive_command is reached from dozens of tests.
    names, strings, helpers = set(), set(), []
    starts_python = False
    namespace = function.__globals__
    for code in _code_objects(function.__code__):
        strings |= _strings_in(code.co_consts)
        names.update(_imported_inside(code))
        for name in code.co_names:
            if name == "executable" and namespace.get("sys") is sys:
                starts_python = True
            if name not in namespace:
                continue
            value = namespace[name]
            if isinstance(value, str):  # a module constant: a line name, a command word
                strings.add(value)
            elif isinstance(value, (tuple, list, frozenset, set)):
                strings |= _strings_in(value)
            qualified = _qualified_name(value)
            if qualified is None:
                continue
            names.add(qualified)
            if qualified.startswith("tests.") and (
                inspect.isfunction(value) or inspect.isclass(value)
            ):
                helpers.append(value)
    return _Uses(frozenset(names), frozenset(strings), starts_python, tuple(helpers))


def _code_objects(code: types.CodeType) -> Iterator[types.CodeType]:
    """`code` and every code object nested in it (inner functions, lambdas, comprehensions)."""
    yield code
    for constant in code.co_consts:
        if isinstance(constant, types.CodeType):
            yield from _code_objects(constant)


def _imported_inside(code: types.CodeType) -> Iterator[str]:
    """What a function imports in its body: `import keras` gives "keras", `from
    agent.runtime.display import xvfb` gives "agent.runtime.display.xvfb"."""
    module = None
    for instruction in dis.get_instructions(code):
        if instruction.opname == "IMPORT_NAME":
            module = instruction.argval
            yield module
        elif instruction.opname == "IMPORT_FROM" and module is not None:
            yield f"{module}.{instruction.argval}"


def _qualified_name(value: Any) -> str | None:
    if isinstance(value, types.ModuleType):
        return value.__name__
    module, name = getattr(value, "__module__", None), getattr(value, "__qualname__", None)
    if not isinstance(module, str) or not isinstance(name, str):
        return None
    return f"{module}.{name}"


def _strings_in(values: Iterable[Any]) -> set[str]:
    """The strings among `values` and in their tuples, lists and sets (a constant list such as
    ["drive", "--seconds", "1"] is one tuple constant in the code)."""
    found = set()
    for value in values:
        if isinstance(value, str):
            found.add(value)
        elif isinstance(value, (tuple, list, frozenset, set)):
            found |= _strings_in(value)
    return found


def _within(name: str, part: str) -> bool:
    """Whether `name` is `part` or something inside it (a module's function, a class's method)."""
    return name == part or name.startswith(part + ".")


def _base_id(item: pytest.Item) -> str:
    return item.nodeid.split("[", 1)[0]
