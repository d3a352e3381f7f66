"""The end of provisioning: wait for the board's first signed reading after its reset, on the
project's own MQTT client, and check its signature against the key just registered."""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Callable

from gateway.errors import BrokerError
from gateway.fleet.provision.checks import parse_broker
from gateway.fleet.provision.errors import ProvisionError
from gateway.mqtt.client import Endpoint, session
from gateway.wire import cose
from gateway.wire.es256 import check_signature, load_public_key
from gateway.wire.mqtt import ConnectOptions
from gateway.wire.topics import readings_topic

log = logging.getLogger(__name__)


def wait_first_reading(broker: str, dev_id: str, key: bytes, timeout: float, min_seq: int = 0,
                       on_ready: Callable[[], None] | None = None) -> cose.Decoded:
    """Subscribe to anchor/<id>/readings, call on_ready() (the board reset), and return the
    first message with seq >= min_seq (a new one: the board also replays unacknowledged older
    readings from its outbox) that decodes and verifies under `key`."""
    return asyncio.run(_first_reading(broker, dev_id, key, timeout, min_seq, on_ready))


async def _first_reading(broker: str, dev_id: str, key: bytes, timeout: float, min_seq: int,
                         on_ready: Callable[[], None] | None) -> cose.Decoded:
    url = parse_broker(broker)
    got: asyncio.Queue[bytes] = asyncio.Queue()
    options = ConnectOptions(f"provision-{dev_id}-{os.getpid()}", 30, username=url.username,
                             password=url.password)
    where = f"{url.host}:{url.port}"
    topic = readings_topic(dev_id)
    pub = load_public_key(key)
    try:
        async with session(Endpoint.from_url(url), options,
                           lambda _t, payload, _p, _q: got.put_nowait(payload)) as conn:
            try:
                async with asyncio.timeout(15):
                    codes = await conn.subscribe([(topic, 1)])
            except TimeoutError:
                raise ProvisionError(f"the broker at {where} did not confirm the subscription",
                                     "check the broker's log and ACLs") from None
            if any(code >= 0x80 for code in codes):
                raise ProvisionError(f"the broker at {where} refused the subscription to {topic}",
                                     "check the ACL of the user in --broker")
            if on_ready:
                await asyncio.to_thread(on_ready)
            deadline = time.monotonic() + timeout
            while True:
                try:
                    raw = await asyncio.wait_for(got.get(), max(0.0, deadline - time.monotonic()))
                except TimeoutError:
                    raise ProvisionError(
                        f"no signed reading from '{dev_id}' within {timeout:.0f} s after the "
                        "reset",
                        "watch the board's console ('mpremote connect PORT repl', then Ctrl-D) "
                        "for Wi-Fi or broker errors; check that the broker URL is reachable "
                        "from the board's network",
                    ) from None
                try:
                    d = cose.decode(raw)
                except cose.Rejection as e:
                    log.warning("ignoring a malformed message on the readings topic: %s", e)
                    continue
                why = check_signature(pub, d.to_be_signed, d.signature)
                if why is None and d.dev == dev_id:
                    if d.seq >= min_seq:
                        return d
                    continue  # a replayed older reading
                log.warning("a reading on %s did not verify: %s", topic, why)
    except BrokerError as e:
        raise ProvisionError(f"broker unreachable: {e.what}",
                             "start the broker, or give the right --broker URL") from None
