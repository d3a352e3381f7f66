"""Bounded HTTP GETs of a tlog-tiles log (the mirror's client side)."""

from __future__ import annotations

import aiohttp

from gateway.errors import AnchorError

TIMEOUT_S = 30.0


class FetchError(AnchorError):
    """The log's server cannot be reached or answered with an error (worth retrying)."""


class TooLarge(AnchorError):
    """The server sent more than the resource can hold (refused, not retried as such)."""


class LogClient:
    """GETs under a log's URL prefix, each read at most up to a bound."""

    def __init__(self, session: aiohttp.ClientSession, base: str, token: str | None = None
                 ) -> None:
        self.session = session
        self.base = base.rstrip("/")
        self.headers = {"Authorization": f"Bearer {token}"} if token else {}

    async def get(self, path: str, max_bytes: int, *, missing_ok: bool = False) -> bytes | None:
        url = f"{self.base}/{path}"
        try:
            async with self.session.get(url, headers=self.headers) as r:
                if r.status == 404 and missing_ok:
                    return None
                if r.status != 200:
                    text = (await r.content.read(300)).decode("utf-8", "replace").strip()
                    raise FetchError(f"GET {url}: HTTP {r.status} {text[:200]}",
                                     "check the URL (and the token); retrying may help")
                out = bytearray()
                while True:
                    chunk = await r.content.read(65536)
                    if not chunk:
                        break
                    out += chunk
                    if len(out) > max_bytes:
                        raise TooLarge(f"GET {url}: the server sent more than {max_bytes} "
                                       "bytes, more than this resource can hold",
                                       "the server is broken or hostile; nothing was stored")
                return bytes(out)
        except (aiohttp.ClientError, TimeoutError, OSError) as e:
            raise FetchError(f"GET {url}: {e or type(e).__name__}",
                             "the server is down or unreachable; retry later") from None
