"""The game's telemetry file: one JSON object per line, for tests and end-of-run metrics.

The agent never drives from telemetry; it only reads the last line to summarise a run. Each line
is written whole with one system call, so a reader sees complete lines except, at worst, the
last one, and a file that cannot take it (a full disk, /dev/full) ends the game with one line.

Ten lines a second are ~2.4 KB/s, ~200 MB a day: a game `charles drive` starts for a drive
that runs for days caps its file (`max_bytes`). Past the cap the file becomes FILE.1 (replacing
the one before) and FILE starts again with the record that did not fit, so at most twice the
cap is kept and the newest record is always in FILE or, for a moment, in FILE.1.
"""

from __future__ import annotations

import contextlib
import json
import os
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import IO, Any

from agent.game.options import GameError


@dataclass(frozen=True)
class TelemetryRecord:
    """One telemetry sample.

    t: seconds since the game started (monotonic clock); episode: 1 for the first track;
    speed: m/s of the car's hull; on_track: any wheel on a road tile; score: the episode's
    cumulative reward; distance: metres driven since the game started; tiles: fraction of this
    track's tiles visited, [0, 1]; heading: the hull's angle in radians (counter-clockwise, not
    wrapped); steering [-1, 1], accelerate [0, 1], brake [0, 1]: the input applied;
    source: "keyboard", "gamepad", "autopilot" or "none"; paused: the game is paused (P), so
    nothing moves and the input is neutral with source "none"; resets: times the car was put
    back on the track since the game started; x, y: the hull's centre in world units (metres).
    """

    t: float
    episode: int
    speed: float
    on_track: bool
    score: float
    distance: float
    tiles: float
    heading: float
    steering: float
    accelerate: float
    brake: float
    source: str
    paused: bool
    resets: int
    x: float
    y: float


_FIELDS = tuple(field.name for field in fields(TelemetryRecord))


class TelemetryWriter:
    """Appends records to `path`, one unbuffered line each.

    Nothing is buffered, so a line that cannot be written fails at once, in `write`, as a
    one-line GameError, and closing never fails on data left over from it. OSError when the
    file cannot be opened.
    """

    def __init__(self, path: Path, max_bytes: int | None = None) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self.max_bytes = max_bytes
        """None: the file grows for as long as the game runs; else see the module's doc."""
        self._fd: int | None = self._open()
        self._size = os.fstat(self._fd).st_size

    def _open(self) -> int:
        # Appends (a harness may read the same file across runs), but never through a link.
        flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | getattr(os, "O_CLOEXEC", 0)
        flags |= getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_BINARY", 0)
        return os.open(self.path, flags, 0o666)

    def write(self, record: TelemetryRecord) -> None:
        values = {
            key: round(value, 4) if isinstance(value, float) else value
            for key, value in asdict(record).items()
        }
        line = (json.dumps(values, separators=(",", ":")) + "\n").encode("utf-8")
        if self._fd is None:
            raise ValueError("telemetry file is closed")
        try:
            if (
                self.max_bytes is not None
                and self._size > 0
                and self._size + len(line) > self.max_bytes
            ):
                self._start_again()
            self._size += len(line)
            while line:
                line = line[os.write(self._fd, line) :]
        except OSError as error:
            raise GameError(
                f"cannot write telemetry to {self.path} ({error.strerror or error}); give "
                "--telemetry a file on a disk with free space, or leave it out"
            ) from None

    def _start_again(self) -> None:
        """The full file becomes FILE.1; FILE starts empty (the caller writes into it next)."""
        fd, self._fd = self._fd, None
        if fd is not None:
            os.close(fd)
        # Replaces a link at FILE.1, never follows it.
        os.replace(self.path, previous_telemetry(self.path))
        self._fd = self._open()
        self._size = 0

    def close(self) -> None:
        fd, self._fd = self._fd, None
        if fd is not None:
            with contextlib.suppress(OSError):  # nothing is buffered: nothing can be lost
                os.close(fd)


def record_from(values: dict[str, Any] | None) -> TelemetryRecord | None:
    """`values` (a line of the telemetry file) as a record; None when it is not a whole one
    (another version of the game, a damaged line)."""
    if values is None:
        return None
    try:
        return TelemetryRecord(**{name: values[name] for name in _FIELDS})
    except (KeyError, TypeError):
        return None


def previous_telemetry(path: Path) -> Path:
    """FILE.1: where a capped telemetry file goes when it is full."""
    return path.with_name(path.name + ".1")


def read_last_telemetry(path: Path | str, chunk: int = 4096) -> dict[str, Any] | None:
    """The last complete record in `path` (else in its FILE.1), or None when there is none.

    Reads backwards from the end in chunks, so the cost does not grow with the file. A last line
    without its newline is a write in progress and is skipped. FILE.1 answers in the moment a
    capped file has just been started again (agent.game.telemetry's doc).
    """
    for candidate in (Path(path), previous_telemetry(Path(path))):
        try:
            with candidate.open("rb") as file:
                record = _last_record(file, chunk)
        except FileNotFoundError:
            continue
        if record is not None:
            return record
    return None


def _last_record(file: IO[bytes], chunk: int) -> dict[str, Any] | None:
    end = file.seek(0, os.SEEK_END)
    start = end
    while start > 0:
        start = max(0, start - chunk)
        file.seek(start)
        lines = file.read(end - start).split(b"\n")
        # lines[-1] is the unfinished line (b"" when the file ends with a newline); lines[0] may
        # be cut by the chunk boundary unless the chunk reached the file's start.
        complete = lines[:-1] if start == 0 else lines[1:-1]
        for line in reversed(complete):
            record = _parse(line)
            if record is not None:
                return record
        chunk *= 2
    return None


def _parse(line: bytes) -> dict[str, Any] | None:
    try:
        record = json.loads(line)
    except ValueError:
        return None
    return record if isinstance(record, dict) else None
