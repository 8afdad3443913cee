"""Recording files: every video is created new (never through a link, never over a file), the
folder is checked before driving, and a full disk leaves a file that plays up to its last
complete fragment. Real files, real links, a real full tmpfs (tests/helpers/disks.py), real PyAV."""

from __future__ import annotations

import json
import logging
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta
from pathlib import Path

import av
import numpy as np
import pytest

from agent.config import Config, DataConfig, ModelConfig, RecordConfig
from agent.errors import CharlesError
from agent.game.channel import free_udp_port
from agent.learn.makemovie import make_movie
from agent.learn.shard_writer import ShardWriter
from agent.record.budget import RecordingBudget
from agent.record.hud import Status
from agent.record.recorder import Recorder, check_before_driving
from agent.record.writer import RecordingError, VideoOutput, VideoWriter, create_free
from agent.runtime.slot import Slot
from agent.types import Frame, Region, Tick
from tests.helpers.charles import REPO, assert_one_line_error
from tests.helpers.clock import FakeClock
from tests.helpers.disks import fill, free_bytes, small_filesystem
from tests.helpers.drives import Drive, drive_command, publish_constant_driver
from tests.helpers.drives import without_display as no_display

FPS = 30
SIZE = (320, 240)
"""Width, height of the pictures recorded in process: small, so encoding is quick."""


def decode(path: Path) -> list[np.ndarray]:
    """Every picture of a video file, BGR (raises when a decoder meets broken data)."""
    with av.open(str(path)) as container:
        return [frame.to_ndarray(format="bgr24") for frame in container.decode(video=0)]


def top_level_boxes(data: bytes) -> list[tuple[bytes, int]]:
    """(type, end offset) of each complete top-level box of an MP4, in order."""
    found, at = [], 0
    while at + 8 <= len(data):
        size, kind = int.from_bytes(data[at : at + 4], "big"), data[at + 4 : at + 8]
        if size == 1:
            size = int.from_bytes(data[at + 8 : at + 16], "big")
        if size < 8 or at + size > len(data):
            break
        at += size
        found.append((kind, at))
    return found


class LogLines(logging.Handler):
    """The record package's log records, as they come; a test waits on them, never sleeps."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []
        self._changed = threading.Condition()

    def emit(self, record: logging.LogRecord) -> None:
        with self._changed:
            self.records.append(record)
            self._changed.notify_all()

    def with_text(self, fragment: str) -> list[str]:
        with self._changed:
            return [r.getMessage() for r in self.records if fragment in r.getMessage()]

    def wait_for(self, fragment: str, count: int = 1, timeout: float = 30.0) -> None:
        with self._changed:
            seen = self._changed.wait_for(
                lambda: sum(fragment in r.getMessage() for r in self.records) >= count, timeout
            )
        assert seen, f"no {count}x {fragment!r} in {[r.getMessage() for r in self.records]}"


@pytest.fixture
def lines() -> Iterator[LogLines]:
    logger = logging.getLogger("agent.record")
    handler, level = LogLines(), logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        yield handler
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)


def noise(seed: int, size: tuple[int, int] = SIZE) -> np.ndarray:
    """A BGRA picture of noise: it does not compress, so it fills a disk quickly."""
    width, height = size
    return np.random.default_rng(seed).integers(0, 256, (height, width, 4), dtype=np.uint8)


def recorder_of(folder: Path, path: Path | None = None) -> Recorder:
    """A Recorder as `charles drive` builds one, showing one captured frame (no HUD)."""
    frames: Slot[Frame] = Slot()
    frames.put(Frame(noise(0), time.monotonic(), 1, Region(0, 0, *SIZE)))
    config = RecordConfig(
        folder=str(folder), mode="hud", hud=False, convcam=False, encoder="libx264"
    )
    ticks: Slot[Tick] = Slot()
    return Recorder(config, frames, ticks, lambda: Status("test"), SIZE, "none", path=path)


def record_a_clip(recorder: Recorder, lines: LogLines, number: int) -> None:
    """Start recording `number` of the session and stop it once its file exists."""
    assert recorder.start()
    lines.wait_for("recording to", number)
    recorder.stop()


# --- never through a link, never over a file --------------------------------------------------


def test_the_hotkeys_next_recording_skips_a_link_instead_of_writing_through_it(
    tmp_path: Path, lines: LogLines
) -> None:
    precious = tmp_path / "precious.txt"
    precious.write_text("not a video")
    (tmp_path / "out-2.mp4").symlink_to(precious)  # where the second recording would go
    recorder = recorder_of(tmp_path / "unused", tmp_path / "out.mp4")
    record_a_clip(recorder, lines, 1)
    record_a_clip(recorder, lines, 2)
    first, second = recorder.close()
    assert precious.read_bytes() == b"not a video"
    assert (first.path, second.path) == (str(tmp_path / "out.mp4"), str(tmp_path / "out-3.mp4"))
    assert lines.with_text(f"{tmp_path / 'out-2.mp4'} exists; recording to {second.path}")
    for report in (first, second):
        assert report.error is None and not Path(report.path).is_symlink()
        assert len(decode(Path(report.path))) == report.written >= 1


def test_dangling_links_named_like_recordings_are_skipped_not_followed(
    tmp_path: Path, lines: LogLines
) -> None:
    """`--record` without a path names the file by the time: links waiting under the names of
    the next seconds, pointing out of the folder, must not lead the video out of it."""
    folder, outside = tmp_path / "recordings", tmp_path / "outside"
    folder.mkdir()
    outside.mkdir()
    now = datetime.now()
    for second in range(10):
        stamp = (now + timedelta(seconds=second)).strftime("%Y%m%d-%H%M%S")
        for name in (f"charles-{stamp}.mp4", f"charles-{stamp}-2.mp4"):
            (folder / name).symlink_to(outside / name)  # nothing there yet: dangling
    recorder = recorder_of(folder)
    record_a_clip(recorder, lines, 1)
    [report] = recorder.close()
    assert list(outside.iterdir()) == []
    video = Path(report.path)
    assert video.parent == folder and video.name.endswith("-3.mp4")
    assert video.is_file() and not video.is_symlink()
    assert report.error is None and len(decode(video)) == report.written >= 1


def test_an_existing_file_is_kept_and_the_recording_takes_the_next_free_name(
    tmp_path: Path, lines: LogLines
) -> None:
    previous = tmp_path / "out.mp4"
    previous.write_bytes(b"a previous recording")
    recorder = recorder_of(tmp_path / "unused", previous)
    record_a_clip(recorder, lines, 1)
    [report] = recorder.close()
    assert previous.read_bytes() == b"a previous recording"
    assert report.path == str(tmp_path / "out-2.mp4") and report.error is None
    assert lines.with_text(f"{previous} exists; recording to {report.path}")
    assert len(decode(Path(report.path))) == report.written >= 1


@pytest.fixture(scope="module")
def movie_world(tmp_path_factory: pytest.TempPathFactory) -> Config:
    """Four samples of one shard and a checkpoint, for `make_movie`."""
    root = tmp_path_factory.mktemp("movie-files")
    shape = (90, 160, 3)
    with ShardWriter(root / "data", "test", shape, samples_per_shard=4) as writer:
        for index in range(4):
            frame = np.full(shape, 40 * index, np.uint8)
            writer.add(frame, 0.5, 0.0, float("nan"), float(index), (True, True))
    publish_constant_driver(root / "models", 0.5, 0.0)
    return Config(
        model=ModelConfig(line="pilotnet_small", store=str(root / "models")),
        data=DataConfig(folder=str(root / "data")),
    )


def test_makemovie_never_writes_over_a_file_or_through_a_link(
    movie_world: Config, tmp_path: Path
) -> None:
    previous = tmp_path / "movie.mp4"
    previous.write_bytes(b"last week's movie")
    summary = make_movie(movie_world, previous, scale=1)
    assert previous.read_bytes() == b"last week's movie"
    assert summary.out == tmp_path / "movie-2.mp4" and len(decode(summary.out)) == 4
    precious = tmp_path / "precious.txt"
    precious.write_text("not a movie")
    link = tmp_path / "linked.mp4"
    link.symlink_to(precious)
    with pytest.raises(CharlesError, match=r"--out .*linked.mp4 is a symbolic link") as caught:
        make_movie(movie_world, link, scale=1)
    assert "\n" not in str(caught.value)
    assert precious.read_bytes() == b"not a movie"


# --- a full disk ------------------------------------------------------------------------------


def pictures_for_the_disk(count: int) -> list[np.ndarray]:
    """Flat grey with a square of noise: each picture costs about 14 kB encoded, so the 2 MB
    disk holds a few seconds of them, in fragments of about 200 kB."""
    rng = np.random.default_rng(8)
    pictures = []
    for _ in range(count):
        picture = np.full((SIZE[1], SIZE[0], 3), 96, np.uint8)
        picture[40:136, 40:136] = rng.integers(0, 256, (96, 96, 3), dtype=np.uint8)
        pictures.append(picture)
    return pictures


def write_all(path: Path, pictures: list[np.ndarray]) -> VideoWriter:
    """Every picture through a VideoWriter whose queue holds them all (none dropped)."""
    writer = VideoWriter(path, FPS, "libx264", queue_size=len(pictures) + 1)
    for index, picture in enumerate(pictures):
        assert writer.offer(picture, index)
    writer.close(timeout=60)
    return writer


def test_a_writer_still_busy_at_close_leaves_its_queue_out_and_finishes_the_file(
    tmp_path: Path, lines: LogLines
) -> None:
    """A drive that stops while its niced writer is starved (the game has the CPU) must not
    wait for the whole queue, nor end with the encoder still at work: seen on a loaded machine
    as 'did not finish within 10 s', a file that did not play and a drive killed by SIGABRT."""
    path = tmp_path / "starved.mp4"
    writers: list[VideoWriter] = []

    def starved_create() -> VideoOutput:
        # The writer's thread, with its first picture, gets the CPU back only after close()
        # gave up waiting for it.
        assert writers[0].hurried.wait(30)
        return create_free([path])

    writers.append(writer := VideoWriter(starved_create, FPS, "libx264", queue_size=20))
    for index in range(21):  # the first in the thread's hands, the queue full (or one dropped)
        writer.offer(noise(index), index)
    writer.close(timeout=2.0)
    assert writer.error is None
    assert len(decode(path)) == writer.counts.written == 1
    assert writer.counts.dropped == 20
    assert lines.with_text("still busy") == [
        "the video writer is still busy with a file not yet created after 2 s; the pictures "
        "still queued are left out"
    ]
    assert not lines.with_text("did not finish")


def test_a_full_disk_keeps_every_fragment_completed_before_it(
    tmp_path: Path, lines: LogLines
) -> None:
    pictures = pictures_for_the_disk(400)  # about 13 s: more than the disk holds
    reference = tmp_path / "reference.mp4"  # the same pictures, with room for all of them
    assert write_all(reference, pictures).error is None
    whole = reference.read_bytes()
    fragment_ends = [end for kind, end in top_level_boxes(whole) if kind == b"mdat"]
    with small_filesystem(2_000_000) as disk:
        room = free_bytes(disk)
        assert len(whole) > room
        # What the disk holds in whole fragments: exactly that must play afterwards.
        kept = max(end for end in fragment_ends if end <= room)
        writer = write_all(disk / "full.mp4", pictures)
        data = (disk / "full.mp4").read_bytes()
    prefix, full = tmp_path / "prefix.mp4", tmp_path / "full.mp4"
    prefix.write_bytes(whole[:kept])
    full.write_bytes(data)
    expected = len(decode(prefix))
    assert expected >= 2 * FPS, "the test should keep seconds of video"
    assert len(decode(full)) == expected  # before the fix: InvalidDataError, nothing plays
    assert data == whole[:kept]  # the file ends at its last complete fragment
    # One line says so, with what is kept; the writer stopped there.
    assert writer.error is not None
    [line] = [r for r in lines.records if r.levelno >= logging.ERROR]
    assert not line.exc_info  # no traceback: a user problem
    assert "No space left on device" in line.getMessage()
    assert f"keeps its first {expected / FPS:.1f} s" in line.getMessage()
    assert writer.counts.written < len(pictures)


def test_a_disk_that_fills_with_the_last_fragment_keeps_the_ones_before(
    tmp_path: Path, lines: LogLines
) -> None:
    """The last fragment goes out when the file is finished (FFmpeg's trailer): a disk that
    fills just then is handled as one that fills while recording."""
    pictures = pictures_for_the_disk(40)  # fragments of 15, 15 and 10 pictures
    reference = tmp_path / "reference.mp4"
    assert write_all(reference, pictures).error is None
    whole = reference.read_bytes()
    *_, second_end, last_end = [end for kind, end in top_level_boxes(whole) if kind == b"mdat"]
    with small_filesystem(1_000_000) as disk:
        fill(disk, leave_bytes=(second_end + last_end) // 2)
        assert second_end <= free_bytes(disk) < last_end
        writer = write_all(disk / "full.mp4", pictures)
        full = tmp_path / "full.mp4"
        full.write_bytes((disk / "full.mp4").read_bytes())
    assert writer.counts.written == len(pictures)  # all taken: the disk filled on closing
    assert full.read_bytes() == whole[:second_end]
    assert len(decode(full)) == 2 * 15
    [line] = [r for r in lines.records if r.levelno >= logging.ERROR]
    assert "No space left on device" in line.getMessage() and not line.exc_info
    assert "keeps its first 1.0 s" in line.getMessage()
    assert writer.error is not None


def test_a_recording_that_fills_the_disk_stops_and_the_next_one_can_start(
    tmp_path: Path, lines: LogLines
) -> None:
    with small_filesystem(4_000_000) as disk:
        filler = fill(disk, leave_bytes=400_000)
        recorder = recorder_of(disk, disk / "clip.mp4")
        assert recorder.start()
        lines.wait_for("stopped:")  # the disk is full
        assert not recorder.recording  # so the capture goes back to the model's pace
        filler.unlink()
        assert recorder.start()  # the hotkey starts a new recording
        lines.wait_for("recording to", 2)
        [first, second] = recorder.close()
        copies = []
        for report in (first, second):
            copy = tmp_path / Path(report.path).name
            copy.write_bytes(Path(report.path).read_bytes())
            copies.append(copy)
    assert first.error is not None and "No space left on device" in first.error
    assert second.error is None and second.path == str(disk / "clip-2.mp4")
    data = copies[0].read_bytes()
    assert top_level_boxes(data)[-1] == (b"mdat", len(data))  # ends at a complete fragment
    assert len(decode(copies[0])) >= FPS * 0.5  # at least one fragment plays
    assert len(decode(copies[1])) == second.written >= 1
    assert len([r for r in lines.records if r.levelno >= logging.ERROR]) == 1


def test_a_drive_that_fills_the_disk_keeps_driving_and_keeps_the_video(tmp_path: Path) -> None:
    """Through `charles drive`: --record onto a file that exists (a previous recording, kept)
    on a disk that fills while driving; the car drives on to the end."""
    store = tmp_path / "models"
    publish_constant_driver(store, throttle=0.5, steering=0.0)
    with small_filesystem(3_000_000) as disk:
        previous = disk / "out.mp4"
        previous.write_bytes(b"a previous recording")
        fill(disk, leave_bytes=300_000)  # a few fragments: full within seconds, even if slow
        drive = Drive(
            drive_command(
                store, free_udp_port(), "--seconds", "6", "--json", "--record", str(previous)
            ),
            tmp_path, no_display(),
        )  # fmt: skip
        status = drive.finish(180)
        assert previous.read_bytes() == b"a previous recording"
        video = tmp_path / "video.mp4"
        video.write_bytes((disk / "out-2.mp4").read_bytes())
    assert status == 0, drive.stderr[-3000:]
    summary = drive.summary()
    assert summary["seconds"] >= 5.5 and summary["predictions"] > 0
    [report] = summary["recordings"]
    assert report["path"] == str(disk / "out-2.mp4")
    assert "No space left on device" in report["error"]
    assert f"{previous} exists; recording to {disk / 'out-2.mp4'}" in drive.stderr
    stopped = [line for line in drive.stderr.splitlines() if "stopped: No space" in line]
    assert len(stopped) == 1 and "Traceback" not in drive.stderr
    data = video.read_bytes()
    assert top_level_boxes(data)[-1] == (b"mdat", len(data))
    assert len(decode(video)) >= FPS * 0.5


# --- checked before driving -------------------------------------------------------------------


def read_only_folder(disk: Path) -> Path:
    subprocess.run(["mount", "-o", "remount,ro", str(disk)], check=True, capture_output=True)
    return disk


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (lambda tmp, disk: ["--record", "--set", 'record.folder="/dev/null"'],
         "record.folder /dev/null is not a folder"),
        (lambda tmp, disk: ["--record", "--set", f"record.folder={json.dumps(str(tmp / 'f'))}"],
         "f is not a folder"),
        (lambda tmp, disk: ["--record", str(read_only_folder(disk) / "out.mp4")],
         "is on a read-only file system"),
    ],
    ids=["folder-dev-null", "folder-a-file", "read-only-target"],
)  # fmt: skip
def test_a_target_that_cannot_take_a_video_is_one_line_before_driving(
    tmp_path: Path,
    run_charles: Callable[..., subprocess.CompletedProcess[str]],
    arguments: Callable[[Path, Path], list[str]],
    message: str,
) -> None:
    (tmp_path / "f").write_text("a file")
    with small_filesystem(1_000_000) as disk:
        result = run_charles(
            "drive", "--seconds", "1", *arguments(tmp_path, disk),
            "--config", str(REPO / "config.toml"),
        )  # fmt: skip
    line = assert_one_line_error(result, message)
    assert "record" in line.split(";")[1]  # the fix names the setting
    assert "driving" not in result.stderr


def test_the_checks_before_driving_name_what_cannot_take_a_video(tmp_path: Path) -> None:
    """The same rules as above in this process (mutation testing sees only this process): each
    refusal names the setting and its fix; a folder that does not exist yet is fine when the
    nearest one that does can be written, since the first recording makes it."""
    folder = RecordConfig(folder=str(tmp_path / "new" / "deeper"))
    check_before_driving(folder, None, from_the_start=True)  # made when recording starts
    check_before_driving(folder, tmp_path / "new" / "out.mp4", from_the_start=True)
    (tmp_path / "f").write_text("a file")
    (tmp_path / "nowhere").symlink_to(tmp_path / "missing")
    (tmp_path / "out.mp4").symlink_to(tmp_path / "elsewhere.mp4")
    refused = {
        "record.folder /dev/null is not a folder; set record.folder": (
            RecordConfig(folder="/dev/null"), None),
        f"record.folder {tmp_path / 'f' / 'sub'}: {tmp_path / 'f'} is not a folder": (
            RecordConfig(folder=str(tmp_path / "f" / "sub")), None),
        f"{tmp_path / 'nowhere'} is a symbolic link to nothing": (
            RecordConfig(folder=str(tmp_path / "nowhere" / "sub")), None),
        f"--record {tmp_path / 'f' / 'out.mp4'}: {tmp_path / 'f'} is not a folder; give --record": (
            RecordConfig(), tmp_path / "f" / "out.mp4"),
        "--record /dev/null is not a regular file": (RecordConfig(), Path("/dev/null")),
        f"--record {tmp_path / 'out.mp4'} is a symbolic link": (
            RecordConfig(), tmp_path / "out.mp4"),
        "record.encoder is 'h264_nvenc' but it does not open on this machine": (
            RecordConfig(folder=str(tmp_path), encoder="h264_nvenc"), None),
    }  # fmt: skip
    for message, (config, path) in refused.items():
        with pytest.raises(RecordingError) as error:
            check_before_driving(config, path, from_the_start=True)
        assert message in str(error.value), (message, str(error.value))
    # A recording that starts later (the hotkey) checks only the path the user named.
    check_before_driving(RecordConfig(folder="/dev/null"), None, from_the_start=False)
    with pytest.raises(RecordingError, match="symbolic link"):
        check_before_driving(RecordConfig(), tmp_path / "out.mp4", from_the_start=False)


def test_the_checks_before_driving_see_a_read_only_file_system() -> None:
    with small_filesystem(1_000_000) as disk:
        read_only_folder(disk)
        for config, path in [(RecordConfig(folder=str(disk / "sub")), None),
                             (RecordConfig(), disk / "out.mp4")]:  # fmt: skip
            with pytest.raises(RecordingError, match="is on a read-only file system; "):
                check_before_driving(config, path, from_the_start=True)


def test_a_video_file_is_created_new_or_not_at_all(tmp_path: Path) -> None:
    (tmp_path / "taken.mp4").write_bytes(b"an earlier recording")
    (tmp_path / "dangling.mp4").symlink_to(tmp_path / "target.mp4")
    for name in ("taken.mp4", "dangling.mp4"):
        with pytest.raises(FileExistsError):
            VideoOutput.create(tmp_path / name)
    assert (tmp_path / "taken.mp4").read_bytes() == b"an earlier recording"
    assert not (tmp_path / "target.mp4").exists()
    output = VideoOutput.create(tmp_path / "new.mp4")
    assert output.write(b"\x00\x00\x00\x08free") == 8
    output.close()
    assert (tmp_path / "new.mp4").read_bytes() == b"\x00\x00\x00\x08free"


# --- days of recording: new files at keyframes, the oldest deleted to keep a budget ------------


def record_slots(folder: Path, slots: int, **settings: object) -> tuple[Recorder, list]:
    """Record `slots` video-clock slots of changing noise on a fake clock; the reports."""
    size = (160, 120)
    frames: Slot[Frame] = Slot()
    config = RecordConfig(
        folder=str(folder), mode="hud", hud=False, convcam=False, encoder="libx264", fps=FPS,
        **settings,  # type: ignore[arg-type]
    )  # fmt: skip
    clock = FakeClock()
    recorder = Recorder(config, frames, Slot(), lambda: Status("test"), size, "none", clock=clock)
    assert recorder.start()
    clock.settle(waiters=1)
    writer = recorder._current.writer  # type: ignore[union-attr]
    for seq in range(1, slots + 1):
        frames.put(Frame(noise(seq, size), clock.now(), seq, Region(0, 0, *size)))
        clock.advance(1 / FPS)
        # The encoder is on real time, the video clock on fake time: let it keep up, so no
        # picture is dropped for a queue that a real clock would never have filled.
        deadline = time.monotonic() + 30
        while writer.counts.written < writer.counts.offered:
            assert time.monotonic() < deadline, "the writer did not keep up"
            time.sleep(0.002)
    return recorder, recorder.close()


def test_a_long_recording_starts_a_new_file_at_each_segment_and_loses_no_picture(
    tmp_path: Path,
) -> None:
    # 10 slots per file (record.segment_minutes = 10 slots at 30 fps), 35 slots in all.
    _, [report] = record_slots(tmp_path, 35, segment_minutes=10 / (60 * FPS))
    assert report.frames == 35 and report.dropped == 0
    files = [Path(name) for name in report.files]
    assert report.path == str(files[0])
    assert {f.name for f in files} == {f.name for f in tmp_path.glob("charles-*.mp4")}
    pictures = [decode(f) for f in files]
    assert [len(p) for p in pictures] == [10, 10, 10, 5]  # every picture in exactly one file
    for file in files:  # each file starts with a keyframe at its own time 0
        with av.open(str(file)) as container:
            first = next(container.demux(video=0))
            assert first.is_keyframe and first.pts == 0
    ledger = json.loads((tmp_path / ".charles-recordings.json").read_text())
    assert [entry["name"] for entry in ledger["recordings"]] == [f.name for f in files]


def test_the_oldest_recordings_charles_wrote_go_to_keep_the_budget_and_nothing_else(
    tmp_path: Path,
) -> None:
    foreign = tmp_path / "charles-20200101-000000.mp4"  # named like Charles's, not written by it
    foreign.write_bytes(b"x" * 2_000_000)
    mine_then_changed = tmp_path / "charles-20200101-000001.mp4"
    budget = RecordingBudget(tmp_path, keep_bytes=0)
    mine_then_changed.write_bytes(b"y" * 1_000_000)
    budget.finished(mine_then_changed)  # a recording Charles finished, remembered...
    mine_then_changed.write_bytes(b"z" * 1_000_001)  # ...that somebody changed since
    user_file = tmp_path / "notes.txt"
    user_file.write_text("mine")
    # One file of noise is ~140 kB here: a 300 kB budget keeps the newest two.
    recorder, [report] = record_slots(tmp_path, 60, segment_minutes=10 / (60 * FPS), keep_gb=0.0003)
    files = [Path(name) for name in report.files]
    assert len(files) == 6
    deleted = recorder.deleted
    assert deleted and deleted == [f.name for f in files[: len(deleted)]]  # oldest first
    remaining = files[len(deleted) :]
    assert all(not f.exists() for f in files[: len(deleted)])
    assert len(remaining) == 2 and sum(f.stat().st_size for f in remaining) <= 300_000
    assert all(len(decode(f)) == 10 for f in remaining)  # every remaining file plays
    assert foreign.read_bytes() == b"x" * 2_000_000  # never Charles's to delete
    assert mine_then_changed.stat().st_size == 1_000_001
    assert user_file.read_text() == "mine"
