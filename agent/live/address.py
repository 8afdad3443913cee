"""Where the live view listens, and who may reach it.

The address is "HOST:PORT" (`[live] address` or `charles drive --live HOST:PORT`; an IPv6 host
in brackets, "[::1]:47900"). Loopback is the default and needs nothing more: only programs on
this machine reach it. Any other address reaches the network, so it is refused unless a token
is set, which every request must then carry; the check runs before driving starts, so a
mistake is one line, not a car that drives without the view the user asked for.
"""

from __future__ import annotations

import ipaddress

from agent.config.schema import LiveConfig
from agent.errors import ConfigError, quoted

EXAMPLE = "127.0.0.1:47900"
LOOPBACK_NAMES = frozenset({"localhost"})
"""Host names that always mean this machine (any other name could resolve anywhere)."""


def parse_address(text: str) -> tuple[str, int]:
    """("host", port) from "HOST:PORT" or "[IPV6]:PORT"; port 0 picks any free port.

    ConfigError, one line naming the text and the fix, for anything else."""
    where = f"live address {quoted(text)}"
    host, colon, port_text = text.strip().rpartition(":")
    if not colon:
        raise ConfigError(f"{where} has no port; write HOST:PORT, e.g. {EXAMPLE}")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
        if not _is_ipv6(host):
            raise ConfigError(f"{where}: only an IPv6 address goes in brackets, e.g. [::1]:47900")
    elif ":" in host:
        raise ConfigError(f"{where}: write an IPv6 host in brackets, e.g. [::1]:47900")
    if not host:
        raise ConfigError(
            f"{where} has no host; write HOST:PORT, e.g. {EXAMPLE} (0.0.0.0: every interface)"
        )
    if not (port_text.isascii() and port_text.isdigit()) or int(port_text) > 65535:
        raise ConfigError(f"{where}: the port must be a number from 0 to 65535, e.g. {EXAMPLE}")
    return host, int(port_text)


def is_loopback(host: str) -> bool:
    """True when `host` can only be reached from this machine (127.0.0.0/8, ::1, localhost)."""
    if host.lower() in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a host name: it may resolve to any interface


def check_live_settings(config: LiveConfig) -> tuple[str, int]:
    """The address to listen on, checked before driving: ConfigError (one line) for an address
    that is not HOST:PORT, or one other than loopback without a token."""
    host, port = parse_address(config.address)
    if not is_loopback(host) and not config.token:
        raise ConfigError(
            f"live address {quoted(config.address)} reaches beyond this machine; set [live] "
            f'token = "a long secret" (OBS then opens ...?token=SECRET), or listen on {EXAMPLE}'
        )
    return host, port


def url_host(host: str) -> str:
    """`host` as it goes into a URL (an IPv6 address in brackets)."""
    return f"[{host}]" if _is_ipv6(host) else host


def _is_ipv6(host: str) -> bool:
    try:
        return isinstance(ipaddress.ip_address(host), ipaddress.IPv6Address)
    except ValueError:
        return False
