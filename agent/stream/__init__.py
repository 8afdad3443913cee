"""Streaming the drive live to a streaming service (RTMP / RTMPS ingest).

- `target`: the ingest URL and its stream key, shown only with the key hidden; the settings
  check a drive runs before it starts.
- `sender`: `StreamSender`, on the drive's side: takes the newest picture, counts, reconnects.
- `worker`: the stream process, where the network writes happen (a stuck one can be killed).
- `publisher`: one connection inside it: H.264 + silent AAC in FLV, through PyAV.
- `backoff`: the waits between reconnection attempts.

Nothing is imported here, so the stream process loads only what it uses.
"""
