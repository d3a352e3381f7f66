"""Who may talk to the HTTP server: the listen address, the bearer token, the methods.

Rules: the default address is 127.0.0.1; listening on any address that is not loopback
requires a token (`--http-token TOKEN` or `--http-token-file FILE`). With a token, every
request needs ``Authorization: Bearer TOKEN``, or the cookie ``iot_anchor_token=TOKEN`` (a
browser's pages: the console's sign-in page sets it), else 401. The server is read-only: a
method other than GET or HEAD gets 405.
"""

from __future__ import annotations

import ipaddress
from pathlib import Path

from aiohttp import web

from gateway.errors import ConfigError

DEFAULT_HOST = "127.0.0.1"
READ_METHODS = frozenset({"GET", "HEAD"})
# A browser cannot add an Authorization header to a page it opens: the token may come in this
# cookie instead (the console's sign-in page sets it, SameSite=Strict).
TOKEN_COOKIE = "iot_anchor_token"
# Pages whose 401 answer carries a body (the console's sign-in page): path prefix -> HTML.
SIGN_IN_PAGES = web.AppKey("sign_in_pages", dict[str, str])
_MAX_TOKEN = 4096


def parse_http_address(text: str, what: str = "--http") -> tuple[str, int]:
    """HOST:PORT, [IPv6]:PORT or :PORT / PORT (host 127.0.0.1) -> (host, port)."""
    t = text.strip()
    host, sep, port_s = t.rpartition(":")
    if not sep:
        host, port_s = "", t
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    elif ":" in host:
        raise ConfigError(f"{what} {text!r}: an IPv6 address goes in brackets",
                          "write e.g. [::1]:8080")
    if not port_s.isdigit() or not 0 <= int(port_s) <= 65535:
        raise ConfigError(f"{what} {text!r} has no valid port",
                          "give HOST:PORT, e.g. 127.0.0.1:8080 (port 0 picks a free one)")
    return host or DEFAULT_HOST, int(port_s)


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def load_token(token: str | None, token_file: str | None) -> str | None:
    """The token from --http-token or --http-token-file (its first line), or None."""
    if token and token_file:
        raise ConfigError("both --http-token and --http-token-file are given",
                          "give one of them")
    if token_file:
        try:
            text = Path(token_file).read_text()
        except (OSError, UnicodeDecodeError) as e:
            raise ConfigError(f"cannot read --http-token-file {token_file}: {e}",
                              "give a readable file holding the token on its first line") from e
        token = text.splitlines()[0].strip() if text.strip() else ""
    if token is None:
        return None
    token = token.strip()
    if len(token) < 16 or len(token) > _MAX_TOKEN or not token.isascii() or \
            not token.isprintable() or " " in token:
        raise ConfigError("the HTTP token must be 16 to 4096 printable ASCII characters "
                          "without spaces", "make one with: openssl rand -hex 32")
    return token


def check_bind(host: str, token: str | None) -> None:
    """Refuse a non-loopback listen address without a token."""
    if token is None and not is_loopback(host):
        raise ConfigError(
            f"--http {host} is not a loopback address and no token is set",
            "add --http-token-file FILE (or --http-token TOKEN), or listen on 127.0.0.1")
