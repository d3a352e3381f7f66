"""Broker URLs: `mqtt://[USER:PASSWORD@]HOST[:PORT]` and `mqtts://...` (TLS).

One parser for every command that takes a broker: `run`, `simulate`, `device provision`,
`broker-config`'s listeners. The password never reaches a log: `redact_url` and `BrokerUrl.shown`
replace it by `***`.
"""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import unquote, urlsplit

from gateway.errors import ConfigError

PLAIN_PORT = 1883
TLS_PORT = 8883
_FORM = "mqtt://[USER:PASSWORD@]HOST[:PORT] or mqtts://..."


@dataclass(frozen=True)
class BrokerUrl:
    host: str
    port: int
    tls: bool
    username: str | None = None
    password: str | None = None
    text: str = ""  # as given

    @property
    def shown(self) -> str:
        """The URL for logs and messages: the password replaced by ***."""
        return redact_url(self.text) if self.text else self.url

    @property
    def url(self) -> str:
        """The URL without credentials."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{'mqtts' if self.tls else 'mqtt'}://{host}:{self.port}"


def parse_broker_url(text: str, *, tls_ok: bool = True, bare_ok: bool = False,
                     what: str = "broker URL", example: str = "mqtt://127.0.0.1:1883"
                     ) -> BrokerUrl:
    """Parse `text`. `bare_ok` also takes `HOST[:PORT]` (as mqtt://); `tls_ok=False` refuses
    mqtts:// (the load engine speaks plain TCP). Raises ConfigError saying what is wrong."""
    raw = text if "://" in text or not bare_ok else f"mqtt://{text}"
    try:
        parts = urlsplit(raw)
        port = parts.port
        host = parts.hostname
    except ValueError as e:
        raise ConfigError(f"{what} {redact_url(text)!r} has a bad port or host ({e})",
                          f"use a port 1-65535, e.g. {example}") from None
    schemes = ("mqtt", "mqtts") if tls_ok else ("mqtt",)
    if parts.scheme not in schemes or not host or parts.path not in ("", "/") \
            or parts.query or parts.fragment:
        form = _FORM if tls_ok else "mqtt://[USER:PASSWORD@]HOST[:PORT]"
        raise ConfigError(f"{what} {redact_url(text)!r} is not of the form {form}",
                          f"give e.g. {example}")
    tls = parts.scheme == "mqtts"
    user = unquote(parts.username) if parts.username is not None else None
    password = unquote(parts.password) if parts.password is not None else None
    return BrokerUrl(host, port or (TLS_PORT if tls else PLAIN_PORT), tls, user, password, text)


def redact_url(url: str) -> str:
    """`url` with its password replaced by ***."""
    try:
        parts = urlsplit(url)
        password, port = parts.password, parts.port
    except ValueError:
        return url.split("@", 1)[-1] if "@" in url else url
    if password is None:
        return url
    netloc = f"{parts.username}:***@{parts.hostname}" + (f":{port}" if port else "")
    return parts._replace(netloc=netloc).geturl()
