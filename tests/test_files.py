"""The file rules every part of Charles uses (agent/files.py), on real files, links and FIFOs."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest

from agent.files import (
    READ_FLAGS,
    FileIsLink,
    FileMissing,
    FileNotRegular,
    FileRefused,
    FileTooLarge,
    FileUnopenable,
    create_first_free,
    free_names,
    numbered,
    open_regular,
    read_regular_file,
    write_atomically,
    write_new_file,
)

MiB = 1 << 20


def test_a_regular_file_is_read_whole_up_to_its_limit(tmp_path: Path) -> None:
    path = tmp_path / "list.txt"
    data = bytes(range(256)) * (3 * MiB // 256 + 7)  # several read chunks, not a round size
    path.write_bytes(data)
    assert read_regular_file(path, len(data)) == data  # exactly at the limit
    with pytest.raises(FileTooLarge, match=f"it is {len(data)} bytes, more than the") as caught:
        read_regular_file(path, len(data) - 1)
    assert (caught.value.size, caught.value.limit) == (len(data), len(data) - 1)
    assert read_regular_file(tmp_path / "list.txt", 4 * MiB) == data


def test_links_fifos_folders_and_missing_files_are_refused_without_waiting(
    tmp_path: Path,
) -> None:
    target = tmp_path / "target.txt"
    target.write_bytes(b"secret")
    (tmp_path / "link").symlink_to(target)
    (tmp_path / "to-zero").symlink_to("/dev/zero")
    os.mkfifo(tmp_path / "fifo")  # nobody writes it: opening it to read would block
    (tmp_path / "folder").mkdir()
    cases: dict[str, tuple[type[FileRefused], str]] = {
        "link": (FileIsLink, "symbolic link"),
        "to-zero": (FileIsLink, "symbolic link"),
        "fifo": (FileNotRegular, "not a regular file"),
        "folder": (FileNotRegular, "not a regular file"),
        "missing": (FileMissing, "does not exist"),
    }
    for name, (refusal, reason) in cases.items():
        with pytest.raises(refusal, match=reason):
            read_regular_file(tmp_path / name, MiB)
    with pytest.raises(FileNotRegular, match="not a regular file"):
        read_regular_file(Path("/dev/zero"), MiB)
    with pytest.raises(FileUnopenable, match="cannot be opened") as caught:
        read_regular_file(Path("a\0b"), MiB)  # a NUL in the path: ValueError from the OS layer
    assert caught.value.reason == "embedded null byte"


def test_a_file_the_user_names_may_be_reached_through_a_link(tmp_path: Path) -> None:
    target = tmp_path / "config.toml"
    target.write_bytes(b"[capture]\n")
    (tmp_path / "link.toml").symlink_to(target)
    (tmp_path / "dangling.toml").symlink_to(tmp_path / "nowhere.toml")
    (tmp_path / "to-zero").symlink_to("/dev/zero")
    assert read_regular_file(tmp_path / "link.toml", MiB, follow_links=True) == b"[capture]\n"
    with pytest.raises(FileMissing):
        read_regular_file(tmp_path / "dangling.toml", MiB, follow_links=True)
    with pytest.raises(FileNotRegular):  # what the link leads to must still be a file
        read_regular_file(tmp_path / "to-zero", MiB, follow_links=True)


def test_a_file_opened_to_write_is_refused_like_one_to_read(tmp_path: Path) -> None:
    flags = READ_FLAGS | os.O_RDWR | os.O_CREAT
    fd, info = open_regular(tmp_path / "new.lock", flags, 0o600)  # created
    os.close(fd)
    assert info.st_size == 0 and (tmp_path / "new.lock").is_file()
    (tmp_path / "link.lock").symlink_to(tmp_path / "nowhere")
    with pytest.raises(FileIsLink):
        open_regular(tmp_path / "link.lock", flags)
    assert not (tmp_path / "nowhere").exists()  # never created through the link
    (tmp_path / "folder.lock").mkdir()
    with pytest.raises(FileNotRegular):  # the system's EISDIR, said as for reading
        open_regular(tmp_path / "folder.lock", flags)
    with pytest.raises(FileUnopenable, match="Not a directory") as caught:
        open_regular(tmp_path / "new.lock" / "inside.lock", flags)
    assert caught.value.error.errno == errno.ENOTDIR
    with pytest.raises(FileMissing):
        open_regular(tmp_path / "no-folder" / "new.lock", flags)


def test_writing_replaces_a_link_or_file_and_never_writes_through(tmp_path: Path) -> None:
    victim = tmp_path / "victim.txt"
    victim.write_bytes(b"precious")
    folder = tmp_path / "state" / "line"  # made with its parents
    path = folder / "loaded-shards.txt"
    folder.mkdir(parents=True)
    path.symlink_to(victim)
    write_atomically(path, lambda stream: stream.write(b"new\n"))
    assert not path.is_symlink() and path.read_bytes() == b"new\n"
    assert victim.read_bytes() == b"precious"
    write_atomically(path, lambda stream: stream.write(b"newer\n"))
    assert path.read_bytes() == b"newer\n"
    write_atomically(tmp_path / "fresh" / "a.bin", lambda stream: stream.write(b"x"))
    assert (tmp_path / "fresh" / "a.bin").read_bytes() == b"x"

    def fails(stream: object) -> None:
        raise OSError(28, "No space left on device")

    with pytest.raises(OSError, match="No space left"):
        write_atomically(path, fails)
    assert path.read_bytes() == b"newer\n"  # the old file stays whole
    assert sorted(p.name for p in folder.iterdir()) == ["loaded-shards.txt"]  # no temporary


def test_new_files_take_the_first_free_name_and_never_a_link(tmp_path: Path) -> None:
    out = tmp_path / "movies" / "out.mp4"
    assert numbered(out, 1) == out and numbered(out, 3) == out.with_name("out-3.mp4")
    assert [p.name for p in list(free_names(out, first=2))[:2]] == ["out-2.mp4", "out-3.mp4"]
    path, fd = create_first_free(free_names(out), 0o600)  # the folder is made
    os.close(fd)
    assert path == out and (out.stat().st_mode & 0o777) == 0o600 & ~_umask()
    (tmp_path / "movies" / "out-2.mp4").symlink_to(tmp_path / "nowhere")  # dangling
    path, fd = create_first_free(free_names(out))
    os.close(fd)
    assert path.name == "out-3.mp4" and not (tmp_path / "nowhere").exists()
    with pytest.raises(FileExistsError, match=r"every name up to .*out-3\.mp4 is taken"):
        create_first_free([out, out.with_name("out-2.mp4"), out.with_name("out-3.mp4")])


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def test_a_new_file_takes_the_first_free_name_and_a_full_disk_leaves_none(
    tmp_path: Path,
) -> None:
    from tests.helpers.disks import fill, small_filesystem

    (tmp_path / "out.png").write_bytes(b"an earlier picture")
    assert write_new_file(free_names(tmp_path / "out.png"), b"new") == tmp_path / "out-2.png"
    assert (tmp_path / "out-2.png").read_bytes() == b"new"
    assert (tmp_path / "out.png").read_bytes() == b"an earlier picture"
    with small_filesystem(1_000_000) as disk:
        fill(disk, leave_bytes=8192)
        with pytest.raises(OSError, match="No space left"):
            write_new_file(free_names(disk / "out.png"), b"x" * 200_000)
        assert not (disk / "out.png").exists()  # no half picture left behind
