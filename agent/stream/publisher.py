"""One connection to a streaming service's ingest: H.264 and silent AAC in FLV over RTMP(S).

This runs in the stream process (`agent.stream.worker`), never in the drive: PyAV's network
writes block for as long as the network does, with nothing that can interrupt them, so only a
process can be stopped when the ingest hangs.

What ingests and players expect, and why each setting is there:
- H.264 (libx264, "veryfast" with "zerolatency": no lookahead and no B-frames, so a picture
  leaves as soon as it is encoded), yuv420p, at `bitrate_kbps` with a VBV buffer of one second
  so the rate stays near what the ingest was promised.
- A keyframe every `keyframe_seconds` on the video clock, and no others (x264's scene-cut
  keyframes are off): ingests ask for a steady spacing, usually 2 s, and a viewer who joins
  waits at most that long. The spacing is kept in video time, not in pictures sent, so dropped
  pictures do not stretch it.
- A silent stereo AAC track: many ingests and players stall or refuse a stream without audio.
- Timestamps from each picture's slot on the video clock (`Picture.index`), counted from the
  connection's first picture: the stream plays at true speed when pictures were dropped (the
  previous picture stays on screen longer). Audio runs continuously up to the video's time.
"""

from __future__ import annotations

import contextlib
import fractions
from typing import Any

import numpy as np

from agent.record.writer import even_size, require_av

ENCODER = "libx264"
ENCODER_OPTIONS = {"preset": "veryfast", "tune": "zerolatency", "forced-idr": "1"}
"""forced-idr: a keyframe this module asks for is an IDR frame, where a decoder may start."""
AUDIO_RATE = 48_000
"""Samples per second of the silent audio track (the rate ingests recommend)."""
AUDIO_BITRATE = 128_000
FLV_OPTIONS = {"flvflags": "no_duration_filesize"}
"""An RTMP connection cannot seek back to write the length into the header at the end."""


class Publisher:
    """A live connection to `url`, opened by the constructor (connect, handshake, header).

    `send` takes pictures as I420 (yuv420p, planes stacked: (height * 3 / 2, width) uint8) of
    the size given here. The constructor and `send` raise what PyAV raises for the network (an
    av.FFmpegError, most of them OSErrors with errno and strerror); the caller closes then.
    """

    def __init__(
        self,
        url: str,
        muxer: str,
        width: int,
        height: int,
        fps: int,
        bitrate_kbps: int,
        keyframe_seconds: float,
    ) -> None:
        if (width, height) != even_size(width, height) or width < 2 or height < 2:
            raise ValueError(f"a stream needs even sides of at least 2, not {width}x{height}")
        self._av = av = require_av()
        self.width, self.height, self.fps = width, height, fps
        self.keyframe_every = max(1, round(fps * keyframe_seconds))
        """Slots of the video clock from one keyframe to the next."""
        self._container = av.open(url, "w", format=muxer, container_options=FLV_OPTIONS)
        try:
            self._video = self._add_video(bitrate_kbps)
            self._audio = self._container.add_stream("aac", rate=AUDIO_RATE, layout="stereo")
            self._audio.codec_context.bit_rate = AUDIO_BITRATE
            self._container.start_encoding()  # connects, publishes and writes the FLV header
        except BaseException:
            with contextlib.suppress(Exception):
                self._container.close()
            raise
        self._first_index: int | None = None
        self._keyframe_at: int | None = None
        self._samples = 0  # audio samples encoded so far
        self.pictures = 0

    def _add_video(self, bitrate_kbps: int) -> Any:
        keyint = self.keyframe_every
        options = {
            **ENCODER_OPTIONS,
            # x264's own keyframes only as a backstop at the same spacing; no scene-cut ones.
            "x264-params": f"keyint={keyint}:min-keyint={keyint}:scenecut=0",
            "maxrate": f"{bitrate_kbps}k",
            "bufsize": f"{bitrate_kbps}k",
        }
        video = self._container.add_stream(ENCODER, rate=self.fps, options=options)
        video.width, video.height, video.pix_fmt = self.width, self.height, "yuv420p"
        video.time_base = fractions.Fraction(1, self.fps)
        video.codec_context.bit_rate = bitrate_kbps * 1000
        # One core (1280x720 at veryfast: about 10 ms a picture here): the model needs the rest.
        video.codec_context.thread_count = 1
        return video

    def send(self, i420: np.ndarray, index: int) -> None:
        """Encode and send one picture drawn for slot `index` of the video clock (slots only
        grow; gaps are pictures not sent), with the silent audio up to its time."""
        if self._first_index is None:
            self._first_index = index
        slot = index - self._first_index
        frame = self._av.VideoFrame.from_ndarray(i420, format="yuv420p")
        frame.pts = slot
        if self._keyframe_at is None or slot - self._keyframe_at >= self.keyframe_every:
            frame.pict_type = self._av.video.frame.PictureType.I
            self._keyframe_at = slot
        for packet in self._video.encode(frame):
            self._container.mux(packet)
        self._send_silence_until((slot + 1) / self.fps)
        self.pictures += 1

    def _send_silence_until(self, seconds: float) -> None:
        """Silent audio frames until the audio reaches `seconds` of stream time."""
        frame_size = self._audio.codec_context.frame_size or 1024
        while self._samples < seconds * AUDIO_RATE:
            silence = np.zeros((2, frame_size), np.float32)
            frame = self._av.AudioFrame.from_ndarray(silence, format="fltp", layout="stereo")
            frame.sample_rate = AUDIO_RATE
            frame.pts = self._samples
            self._samples += frame_size
            for packet in self._audio.encode(frame):
                self._container.mux(packet)

    def close(self) -> None:
        """End the stream (the ingest hears the end of the broadcast) and the connection. A
        connection that already broke is closed quietly: there is nobody left to tell."""
        with contextlib.suppress(OSError, self._av.FFmpegError):
            self._container.close()
