"""Carrying out the actions that the ledger recorded (after their batch committed).

    ex = Executor(alerts=publisher, commands=sender_or_None)
    status, reason = await ex.perform(action_entry)   # ("sent", None) | ("failed", why)
                                                      # | None: not possible now, retry later

* alert: the JSON of `action_json` on anchor/alerts/<rule> (QoS 1; sent = the broker's
  PUBACK), and a log line.
* webhook: HTTP POST of the same JSON (Content-Type application/json) to the action's url,
  with its timeout per try and up to `retries` more tries after the first (backoff 0.5 s,
  1 s, 2 s, ...); sent = a 2xx answer, failed = the last try's error.
* command: through the authenticated downlink (`CommandSender`, the service's
  send_command of docs/notes' downlink contract): the command's id is the action entry's index,
  so a device refuses it when it comes twice; sent = the broker's PUBACK; done is recorded
  when the device's signed confirmation arrives.

Delivery is at least once: a gateway killed after sending and before recording the outcome
sends again after its restart (the payload's "entry", the command id, tells a repeat).
"""

from __future__ import annotations

import asyncio
import json
import logging
import urllib.error
import urllib.request
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from gateway.errors import AnchorError
from gateway.ledger.entry import RecordEntry
from gateway.wire.topics import alert_topic

log = logging.getLogger("iot_anchor.rules")


class AlertPublisher(Protocol):
    async def publish_confirmed(self, topic: str, payload: bytes) -> None:
        """Publish at QoS 1 and return once the broker PUBACKed it; raise AnchorError (e.g.
        BrokerError) when it could not."""


@dataclass(frozen=True)
class CommandOrder:
    """A command as the downlink's `gateway.wire.downlink.Command` holds it (the same
    fields): `id` is the index of the action entry that ordered it."""

    device: str
    id: int
    op: str
    args: dict[str, Any] = field(default_factory=dict)


class CommandSender(Protocol):
    """The authenticated downlink (its GatewayService.send_command has this shape)."""

    async def send_command(self, cmd: Any) -> None:
        """Seal `cmd` (a CommandOrder's fields) and publish it on anchor/<device>/cmd (QoS 1);
        return once the broker PUBACKs it; raise AnchorError when it could not be sent."""


def action_json(e: RecordEntry) -> dict[str, Any]:
    """What an alert and a webhook carry: the firing as the ledger records it."""
    f = e.fields
    out: dict[str, Any] = {
        "entry": e.i, "rule": f["rule"], "version": f["version"], "trigger": f["trigger"],
        "now": f["now"], "batch": f["batch"],
        "readings": [{"dev": d, "seq": s, "leaf": h.hex()} for d, s, h in f["readings"]],
    }
    for k in ("device", "since", "reason", "times"):
        if k in f:
            out[k] = f[k]
    if "message" in f["action"]:
        out["message"] = f["action"]["message"]
    return out


def _post(url: str, body: bytes, timeout: float) -> int:
    req = urllib.request.Request(url, data=body, method="POST",
                                 headers={"Content-Type": "application/json",
                                          "User-Agent": "iot-anchor-rules"})
    with urllib.request.urlopen(req, timeout=timeout) as resp:  # noqa: S310 (http/https only)
        return int(resp.status)


async def post_json(url: str, body: bytes, timeout: float) -> int:
    """One HTTP POST (in a thread: urllib blocks); the status, or raises OSError/HTTPError."""
    return await asyncio.to_thread(_post, url, body, timeout)


class Executor:
    def __init__(self, alerts: AlertPublisher | None, commands: CommandSender | None = None, *,
                 post: Callable[[str, bytes, float], Awaitable[int]] = post_json,
                 backoff: float = 0.5,
                 make_command: Callable[[str, int, str, dict[str, Any]], Any] = CommandOrder
                 ) -> None:
        """`make_command(device, id, op, args)` builds what `commands` takes (the downlink's
        Command class; CommandOrder has its fields)."""
        self.alerts = alerts
        self.commands = commands
        self.make_command = make_command
        self.said_no_downlink = False
        self.post = post
        self.backoff = backoff

    async def perform(self, e: RecordEntry) -> tuple[str, str | None] | None:
        a = e.fields["action"]
        kind = a["type"]
        if kind == "alert":
            return await self._alert(e)
        if kind == "webhook":
            return await self._webhook(e, a)
        return await self._command(e, a)

    async def _alert(self, e: RecordEntry) -> tuple[str, str | None] | None:
        body = action_json(e)
        log.warning("rule %s fired (entry %d): %s", e.fields["rule"], e.i,
                    json.dumps(body, separators=(",", ":")))
        if self.alerts is None:
            return None
        try:
            await self.alerts.publish_confirmed(alert_topic(e.fields["rule"]),
                                                json.dumps(body).encode())
        except AnchorError as err:
            log.info("alert of entry %d not sent yet: %s", e.i, err.explain())
            return None  # the broker is away: it stays pending and goes later
        return "sent", None

    async def _webhook(self, e: RecordEntry, a: dict[str, Any]) -> tuple[str, str | None]:
        body = json.dumps(action_json(e)).encode()
        tries = 1 + int(a["retries"])
        why = ""
        for k in range(tries):
            try:
                status = await self.post(a["url"], body, a["timeout"] / 1000)
                if 200 <= status < 300:
                    return "sent", None
                why = f"HTTP {status}"
            except urllib.error.HTTPError as err:
                why = f"HTTP {err.code}"
            except (OSError, ValueError) as err:
                why = f"{type(err).__name__}: {err}"
            log.info("webhook of entry %d, try %d of %d: %s", e.i, k + 1, tries, why)
            if k + 1 < tries:
                await asyncio.sleep(self.backoff * 2 ** k)
        return "failed", f"{tries} tries, the last: {why}"[:1024]

    async def _command(self, e: RecordEntry, a: dict[str, Any]) -> tuple[str, str | None] | None:
        if self.commands is None:  # no authenticated downlink in this gateway: it waits
            if not self.said_no_downlink:
                self.said_no_downlink = True
                log.warning("command actions wait (entry %d first): this gateway has no "
                            "authenticated downlink to send them", e.i)
            return None
        try:
            await self.commands.send_command(self.make_command(a["device"], e.i, a["op"],
                                                               dict(a["args"])))
        except AnchorError as err:
            log.info("command of entry %d not sent yet: %s", e.i, err.explain())
            return None
        log.info("rule %s: command %s to %s sent (id %d)", e.fields["rule"], a["op"],
                 a["device"], e.i)
        return "sent", None
