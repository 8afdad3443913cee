"""`charles bench intake [--shards N]`: what a trainer's poll for new shards costs with a big
backlog in the data folder.

Fills a fresh folder with N shards of one sample each, named as collectors on two hosts name
them (the same bytes under every name: the benchmark times listing and ordering, not reading),
then times the trainer's watcher (agent/learn/shard_watcher.py), median of `--rounds`:
- first poll: the folder listed, N names ordered, one shard read;
- poll of a backlog: the next shard, nothing listed (the trainer polls one at a time);
- idle poll: nothing waiting, the folder unchanged: one stat;
- poll after a new shard: the folder listed again;
and, for comparison, one full listing sorted by name: what every poll cost before.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from agent.arguments import positive_int
from agent.config import Config
from agent.learn.shard_format import is_shard_name
from agent.learn.shard_watcher import ShardWatcher
from agent.learn.shard_writer import ShardWriter
from agent.nets.registry import get_line

HOSTS = ("collector-a", "collector-b")


def fill(folder: Path, count: int, input_shape: tuple[int, int, int]) -> None:
    """`count` shards from two hosts, interleaved in time, all with the same one sample."""
    source = folder / "source"
    source.mkdir()
    with ShardWriter(source, "autopilot", input_shape, samples_per_shard=1) as writer:
        frame = np.zeros(input_shape, np.uint8)
        writer.add(frame, 0.0, 0.0, 0.0, 1.7e9, (True, True))
    data = next(source.iterdir()).read_bytes()
    for index in range(count):
        host = HOSTS[index % len(HOSTS)]
        name = f"shard-{host}-{100 + index % 2}-{1_700_000_000_000 + 1000 * index}-{index:06d}.npz"
        (folder / name).write_bytes(data)
    shutil.rmtree(source)


def timed(action: Callable[[], Any]) -> float:
    started = time.perf_counter()
    action()
    return 1000 * (time.perf_counter() - started)


def name_order_listing(folder: Path) -> list[str]:
    with os.scandir(folder) as entries:
        return sorted(entry.name for entry in entries if is_shard_name(entry.name))


def one_round(folder: Path, input_shape: tuple[int, int, int], count: int) -> dict[str, float]:
    watcher = ShardWatcher(folder, input_shape)
    first = timed(lambda: watcher.poll(limit=1))
    backlog = timed(lambda: watcher.poll(limit=1))
    everything = watcher.poll()  # the rest, so the next polls find nothing waiting
    assert len(everything) == count - 2, len(everything)
    old = time.time() - 60  # as if the last shard was written a minute ago
    os.utime(folder, (old, old))
    watcher.poll()  # listed once more: the folder's time moved
    idle = timed(lambda: watcher.poll(limit=1))
    new = folder / f"shard-{HOSTS[0]}-100-{1_800_000_000_000}-999999.npz"
    new.write_bytes(next(folder.glob("shard-*.npz")).read_bytes())
    after_new = timed(lambda: watcher.poll(limit=1))
    new.unlink()
    return {
        "first_poll_ms": first,
        "backlog_poll_ms": backlog,
        "idle_poll_ms": idle,
        "poll_after_new_shard_ms": after_new,
        "name_order_listing_ms": timed(lambda: name_order_listing(folder)),
    }


def bench(args: argparse.Namespace, config: Config) -> dict[str, Any]:
    input_shape = get_line(config.model.line).input_shape
    with tempfile.TemporaryDirectory(prefix="charles-bench-intake-") as folder:
        work = Path(folder)
        fill(work, args.shards, input_shape)
        rounds = [one_round(work, input_shape, args.shards) for _ in range(args.rounds)]
    return {
        "shards": args.shards,
        "rounds": args.rounds,
        **{key: round(statistics.median(r[key] for r in rounds), 3) for key in rounds[0]},
    }


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--shards", type=positive_int, default=10_000)
    parser.add_argument("--rounds", type=positive_int, default=5)


def run(args: argparse.Namespace, config: Config) -> int:
    """The `charles bench intake` handler."""
    result = bench(args, config)
    if args.json:
        print(json.dumps(result))
        return 0
    print(f"{result['shards']} shards from {len(HOSTS)} hosts; medians of {result['rounds']} "
          "rounds, ms:")  # fmt: skip
    for key, value in result.items():
        if key.endswith("_ms"):
            print(f"  {key[:-3].replace('_', ' '):24} {value:9.3f}")
    return 0
