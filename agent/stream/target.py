"""Where the stream goes: the ingest URL with its stream key, and how it is shown without the key.

A stream key is a password: whoever has it can broadcast on the owner's channel. So the URL
with the key (`StreamTarget.url`) is handed to FFmpeg and to nothing else; everything a person
can see (log lines, error messages, the drive summary, reprs) shows `StreamTarget.shown`, where
the key and anything else that may hide one (a user:password, a query) is "****", and any text
from FFmpeg or the OS goes through `StreamTarget.scrub` first (PyAV puts the URL into its error
messages).

The key is either part of `stream.url` as the service gives it (rtmp://host/app/KEY), or kept
out of config files and shell history in the environment variable CHARLES_STREAM_KEY, which is
then appended to the URL as its last path segment.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from agent.config.schema import StreamConfig
from agent.errors import ConfigError, verbatim

KEY_VARIABLE = "CHARLES_STREAM_KEY"
"""The environment variable that may hold the stream key."""
HIDDEN = "****"
"""What a secret part of a URL is shown as."""
MUXERS = {"rtmp": "flv", "rtmps": "flv"}
"""Schemes a stream may use, with the container format each carries."""
_PROBES = {"rtmps": "tls"}
"""FFmpeg protocols a scheme is built on that some FFmpeg builds leave out (rtmps needs TLS)."""


@dataclass(frozen=True)
class StreamTarget:
    """An ingest URL with its key; shows and prints only the redacted form."""

    url: str = field(repr=False)
    """The URL with the key: for FFmpeg only, never for a person."""
    shown: str
    """The URL as people may see it: rtmp://host/app/****."""
    secrets: tuple[str, ...] = field(repr=False)
    """The parts of `url` that `shown` hides (the key, a password, a query), longest first."""

    @property
    def muxer(self) -> str:
        """The container format the scheme carries ("flv")."""
        return MUXERS[urlsplit(self.url).scheme.lower()]

    def scrub(self, text: str) -> str:
        """`text` (an error from FFmpeg, PyAV or the OS) with every secret part hidden: the
        URL shown as `shown`, the key and other secret parts anywhere else as "****"."""
        text = text.replace(self.url, self.shown)
        for secret in self.secrets:
            text = text.replace(secret, HIDDEN)
        return text

    def __str__(self) -> str:
        return self.shown


def stream_target(config: StreamConfig, environ: Mapping[str, str] | None = None) -> StreamTarget:
    """`config.url` with the key from CHARLES_STREAM_KEY appended when that is set (`environ`:
    os.environ). Checks nothing; `check_stream_settings` does."""
    environ = os.environ if environ is None else environ
    key = environ.get(KEY_VARIABLE, "").strip()
    url = config.url.strip()
    scheme, separator, rest = url.partition("://")
    if separator:  # FFmpeg finds protocols by their lower-case names only
        url = f"{scheme.lower()}://{rest}"
    if key:
        url = f"{url.rstrip('/')}/{key}"
    secrets = {key, *_secret_parts(url)} - {""}
    return StreamTarget(url, redact_url(url), tuple(sorted(secrets, key=len, reverse=True)))


def redact_url(url: str) -> str:
    """`url` as people may see it: scheme, host, port and the first path segment (the RTMP
    application) stay; a user:password, later path segments (the key), a query and a fragment
    become "****". A URL that does not parse shows as scheme://****."""
    try:
        parts = urlsplit(url)
        host = parts.hostname or ""
        port = parts.port
    except ValueError:  # a port that is not a number, a bad IPv6 literal
        return f"{url.partition('://')[0]}://{HIDDEN}" if "://" in url else HIDDEN
    if ":" in host:  # IPv6, written back in brackets
        host = f"[{host}]"
    shown = f"{parts.scheme}://"
    if parts.username is not None or parts.password is not None:
        shown += f"{HIDDEN}@"
    shown += host + (f":{port}" if port is not None else "")
    segments = parts.path.strip("/").split("/") if parts.path.strip("/") else []
    if len(segments) > 1:
        shown += f"/{segments[0]}"
    if segments or parts.query or parts.fragment:
        shown += f"/{HIDDEN}"
    return shown


def _secret_parts(url: str) -> list[str]:
    """The pieces of `url` that `redact_url` hides, each to be scrubbed from text on its own."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return [url]
    netloc_user = parts.netloc.rpartition("@")[0]
    segments = parts.path.strip("/").split("/")
    hidden_path = "/".join(segments[1:] if len(segments) > 1 else segments)
    tail = hidden_path + (f"?{parts.query}" if parts.query else "")
    return [netloc_user, hidden_path, parts.query, parts.fragment, tail]


def check_stream_settings(config: StreamConfig, environ: Mapping[str, str] | None = None) -> None:
    """Before driving: ConfigError (one line, naming the fix) when the stream cannot work as
    configured: no URL, a scheme other than rtmp:// or rtmps://, no host, an rtmps:// this
    PyAV's FFmpeg cannot speak (no TLS), a stream key with spaces in it."""
    environ = os.environ if environ is None else environ
    key = environ.get(KEY_VARIABLE, "").strip()
    if not key.isprintable() or any(c.isspace() for c in key):
        raise ConfigError(
            f"{KEY_VARIABLE} has spaces, line breaks or control characters inside; set it to "
            "the stream key alone, as the streaming service shows it"
        )
    target = stream_target(config, environ)
    if not config.url.strip():
        raise ConfigError(
            "stream.url is empty; set it to the ingest URL the streaming service gives (such as "
            '"rtmp://a.rtmp.youtube.com/live2"), or pass --stream URL'
        )
    shown = verbatim(target.shown)
    scheme = config.url.strip().partition("://")[0].lower() if "://" in config.url else ""
    if scheme == "srt":
        has_srt = protocol_available("srt")
        why = "Charles streams FLV only" if has_srt else "PyAV's FFmpeg has no SRT"
        raise ConfigError(
            f"stream.url {shown}: srt:// is not supported ({why}); use the service's rtmp:// or "
            "rtmps:// ingest URL"
        )
    if scheme not in MUXERS:
        raise ConfigError(
            f"stream.url {shown} is not an rtmp:// or rtmps:// URL; use the ingest URL the "
            'streaming service gives, such as "rtmp://a.rtmp.youtube.com/live2"'
        )
    try:
        host, _ = urlsplit(target.url).hostname, urlsplit(target.url).port
    except ValueError:
        raise ConfigError(
            f"stream.url {shown} does not parse (a port that is not a number?); write it as "
            f"{scheme}://HOST[:PORT]/APP, as the streaming service gives it"
        ) from None
    if not host:
        raise ConfigError(
            f"stream.url {shown} names no host; write it as {scheme}://HOST/APP, as the "
            "streaming service gives it"
        )
    probe = _PROBES.get(scheme)
    if probe is not None and not protocol_available(probe):
        raise ConfigError(
            f"stream.url {shown}: this PyAV's FFmpeg has no TLS, so it cannot speak {scheme}://; "
            "use the service's rtmp:// URL, or install a PyAV built with TLS (pip install av)"
        )


_available: dict[str, bool] = {}


def protocol_available(name: str) -> bool:
    """Whether PyAV's FFmpeg has the protocol `name` ("tls", "srt"), asked without touching the
    network: a URL with no host fails on the spot, as "protocol not found" when it is missing."""
    if name not in _available:
        from agent.record.writer import require_av

        av = require_av()
        try:
            av.open(f"{name}://", "r", timeout=1.0).close()
        except av.error.ProtocolNotFoundError:
            _available[name] = False
        except Exception:  # any other refusal: the protocol is there and read the URL
            _available[name] = True
        else:
            _available[name] = True
    return _available[name]
