"""A local RTMP ingest for the soak benchmark: `python -m agent.bench.ingest PORT`.

FFmpeg's RTMP listen mode through PyAV takes one publisher at a time on
rtmp://127.0.0.1:PORT/live/KEY; it counts the video packets that arrive (without decoding:
this is a sink, not a check) and listens again when the publisher goes. It prints one JSON line
per connection when it ends: {"packets": n, "keyframes": k, "end": why}.
"""

from __future__ import annotations

import json
import sys


def serve(port: int) -> None:
    import av

    while True:
        packets = keyframes = 0
        why = "end of stream"
        try:
            with av.open(
                f"rtmp://127.0.0.1:{port}/live/soak", "r", format="flv",
                options={"listen": "1", "analyzeduration": "100000", "probesize": "4096"},
            ) as container:  # fmt: skip
                for packet in container.demux():
                    if packet.stream.type == "video" and packet.size:
                        packets += 1
                        keyframes += bool(packet.is_keyframe)
        except (OSError, av.FFmpegError) as error:
            why = getattr(error, "strerror", None) or str(error)
        print(json.dumps({"packets": packets, "keyframes": keyframes, "end": why}), flush=True)


if __name__ == "__main__":
    serve(int(sys.argv[1]))
