#!/usr/bin/env python3
"""The gateway's MQTT client against paho-mqtt, per packet, for what the service does per reading.

    .venv/bin/python tools/bench_mqtt_path.py [-n 20000] [--repeat 5]

Both clients talk to the same fake broker over real loopback TCP and are used through their
public APIs only. Each client runs on one asyncio event loop in a process of its own, as the
service runs: ours is `gateway.mqtt.client.session` (an asyncio.Protocol); paho is driven by
its external-event-loop API (`on_socket_open`, `on_socket_register_write` and their partners
adding the socket to the loop, `loop_read`, `loop_write`, `loop_misc` once a second), the way
aiomqtt drives it. Over one connection (persistent session, MQTT 3.1.1) each client does, in
turn, the three things the service does per reading:

1. read: it subscribes to `anchor/+/readings` at QoS 1 and the broker sends N QoS 1 PUBLISH
   packets of a 180-byte reading on `anchor/<id>/readings` (1,000 device ids). Manual acks:
   ours `manual_ack=True`, paho `manual_ack_set(True)` and `on_message`. Each message's
   packet id is kept, nothing else.
2. PUBACK: it acknowledges those N messages, as after a commit: ours `puback(pids)`, paho
   `ack(mid, 1)` per message. It ends when the broker, having counted N PUBACKs, sends a
   QoS 0 PUBLISH that says so.
3. device ack: it publishes N QoS 1 acks (`anchor/<id>/ack`, sealed: 68 bytes) and takes the
   broker's PUBACK of each: ours `publish`, paho `publish(topic, payload, qos=1)`, with no
   limit on messages in flight (paho's `max_inflight_messages_set(0)`).

The fake broker is a thread of this process on 127.0.0.1 (the clients' processes share no GIL
with it): it answers CONNECT with CONNACK and SUBSCRIBE with SUBACK, streams the readings, counts
PUBACKs, and PUBACKs every QoS 1 PUBLISH it reads. Each figure is the client process's CPU time
(`time.process_time`: user and system, so the system calls count) per packet from the start of
the step to its end, best of --repeat runs (the least disturbed by the rest of the machine).

It prints a line per step and one JSON object as the last line: for each step (`read`, `puback`,
`ack`) `<step>_paho_us`, `<step>_gateway_us` and `<step>_ratio` (ours / paho, from the same run),
and `packets`, `repeat`, `payload_bytes`. Not a test.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import socket
import sys
import threading
import time
from collections.abc import Callable, Coroutine
from multiprocessing.connection import Connection as Pipe
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import paho.mqtt.client as paho  # noqa: E402
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion  # noqa: E402

from gateway.mqtt.client import Endpoint, session  # noqa: E402
from gateway.wire import mqtt as wire  # noqa: E402
from gateway.wire.downlink import ack_payload, seal  # noqa: E402
from gateway.wire.topics import READINGS_TOPIC, ack_topic, readings_topic  # noqa: E402

PAYLOAD_BYTES = 180  # a reading's COSE message is about this size
DEVICES = 1000
STEP_TIMEOUT_S = 120.0
STEPS = (
    ("read", "QoS 1 PUBLISH of a reading received (manual ack)"),
    ("puback", "PUBACK after the commit, sent"),
    ("ack", "device ack published at QoS 1, its PUBACK received"),
)
CONNACK = b"\x20\x02\x00\x00"  # session not present, accepted
PINGRESP = b"\xd0\x00"
# The broker's word that it has counted every PUBACK: a QoS 0 PUBLISH (the clients' only one).
PUBACKS_COUNTED = wire.publish_packet(b"bench/pubacks-counted", b"", 0, qos=0)


def reading_stream(n: int) -> bytes:
    """N QoS 1 PUBLISH packets of a reading, as a broker sends them to the gateway."""
    payload = bytes(PAYLOAD_BYTES)
    topics = [readings_topic(f"dev-{i:04d}").encode() for i in range(DEVICES)]
    return b"".join(wire.publish_packet(topics[i % DEVICES], payload, i % 65535 + 1)
                    for i in range(n))


def device_acks(n: int) -> list[tuple[str, bytes]]:
    """N (topic, sealed ack) pairs, one device after another (docs/protocol.md, "The downlink")."""
    key = bytes(32)  # the clients only carry the bytes; nobody opens them here
    out = []
    for i in range(n):
        topic = ack_topic(f"dev-{i % DEVICES:04d}")
        out.append((topic, seal(key, topic, ack_payload(i, i, [], 7))))
    return out


# --------------------------------------------------------------------------- the fake broker


class FakeBroker:
    """A broker for one client at a time on 127.0.0.1, in a thread, for N packets per step."""

    def __init__(self, n: int) -> None:
        self.n = n
        self.stream = reading_stream(n)
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.thread = threading.Thread(target=self._accept, name="fake-broker", daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.listener.close()

    def _accept(self) -> None:
        while True:
            try:
                sock, _ = self.listener.accept()
            except OSError:
                return  # closed
            try:
                with sock:
                    self._serve(sock)
            except OSError:
                pass  # the client went away; the next one gets a fresh connection

    def _serve(self, sock: socket.socket) -> None:
        buf = bytearray()
        pubacks = 0
        while True:
            chunk = sock.recv(1 << 20)
            if not chunk:
                return
            buf += chunk
            packets, used = wire.split_packets(buf)
            out: list[bytes] = []
            to_puback: list[int] = []
            stream = False
            for first, start, _end in packets:
                kind = first >> 4
                if kind == wire.PUBLISH and (first >> 1) & 3 == 1:
                    at = start + 2 + ((buf[start] << 8) | buf[start + 1])
                    to_puback.append((buf[at] << 8) | buf[at + 1])
                elif kind == wire.PUBACK:
                    pubacks += 1
                    if pubacks == self.n:
                        out.append(PUBACKS_COUNTED)
                elif kind == wire.CONNECT:
                    out.append(CONNACK)
                elif kind == wire.SUBSCRIBE:
                    out.append(b"\x90\x03" + bytes(buf[start:start + 2]) + b"\x01")
                    stream = True
                elif kind == wire.PINGREQ:
                    out.append(PINGRESP)
                elif kind == wire.DISCONNECT:
                    return
                elif kind != wire.PUBLISH:
                    raise OSError(f"fake broker: unexpected packet type {kind}")
            del buf[:used]
            if to_puback:
                out.append(wire.puback_packets(to_puback))
            if out:
                sock.sendall(b"".join(out))
            if stream:
                sock.sendall(self.stream)


# --------------------------------------------------------------------------- the clients


class Steps:
    """What a client's callbacks report, as futures the measuring coroutine awaits."""

    def __init__(self, n: int) -> None:
        loop = asyncio.get_running_loop()
        self.n = n
        self.pids: list[int] = []
        self.acked = 0
        self.all_read: asyncio.Future[None] = loop.create_future()
        self.pubacks_counted: asyncio.Future[None] = loop.create_future()
        self.all_acked: asyncio.Future[None] = loop.create_future()

    def message(self, pid: int, qos: int) -> None:
        if not qos:
            done(self.pubacks_counted)
            return
        self.pids.append(pid)
        if len(self.pids) == self.n:
            done(self.all_read)

    def puback(self) -> None:
        self.acked += 1
        if self.acked == self.n:
            done(self.all_acked)


def done(fut: asyncio.Future[None]) -> None:
    if not fut.done():
        fut.set_result(None)


async def measured(steps: Steps, read: Callable[[], None], puback: Callable[[], None],
                   ack: Callable[[], None]) -> dict[str, float]:
    """CPU seconds per packet of this process for each step: `read` starts the readings
    (subscribes), `puback` acknowledges them, `ack` publishes the device acks."""
    cpu = time.process_time
    t0 = cpu()
    read()
    await asyncio.wait_for(steps.all_read, STEP_TIMEOUT_S)
    t1 = cpu()
    puback()
    await asyncio.wait_for(steps.pubacks_counted, STEP_TIMEOUT_S)
    t2 = cpu()
    ack()
    await asyncio.wait_for(steps.all_acked, STEP_TIMEOUT_S)
    t3 = cpu()
    n = steps.n
    return {"read": (t1 - t0) / n, "puback": (t2 - t1) / n, "ack": (t3 - t2) / n}


async def run_ours(port: int, n: int) -> dict[str, float]:
    """The gateway's client, as the service uses it."""
    acks = [(topic.encode(), payload) for topic, payload in device_acks(n)]
    steps = Steps(n)
    subscribing: list[asyncio.Task[list[int]]] = []
    options = wire.ConnectOptions("bench-ours", keepalive=60, clean=False)
    async with session(Endpoint("127.0.0.1", port), options,
                       lambda _t, _p, pid, qos: steps.message(pid, qos),
                       lambda _pid: steps.puback(), manual_ack=True) as conn:

        def read() -> None:
            subscribing.append(asyncio.ensure_future(conn.subscribe([(READINGS_TOPIC, 1)])))

        def ack() -> None:
            for topic, payload in acks:
                conn.publish(topic, payload)

        return await measured(steps, read, lambda: conn.puback(steps.pids), ack)


async def run_paho(port: int, n: int) -> dict[str, float]:
    """paho-mqtt on the event loop through its external-loop callbacks."""
    acks = device_acks(n)
    steps = Steps(n)
    loop = asyncio.get_running_loop()
    connected: asyncio.Future[None] = loop.create_future()
    c = paho.Client(CallbackAPIVersion.VERSION2, client_id="bench-paho", clean_session=False,
                    protocol=MQTTProtocolVersion.MQTTv311)
    c.manual_ack_set(True)
    c.max_inflight_messages_set(0)
    c.on_socket_open = lambda client, _u, sock: loop.add_reader(sock, client.loop_read)
    c.on_socket_close = lambda _c, _u, sock: loop.remove_reader(sock)
    c.on_socket_register_write = lambda client, _u, sock: loop.add_writer(sock,
                                                                          client.loop_write)
    c.on_socket_unregister_write = lambda _c, _u, sock: loop.remove_writer(sock)
    c.on_connect = lambda *_a: done(connected)
    c.on_message = lambda _c, _u, msg: steps.message(msg.mid, msg.qos)
    c.on_publish = lambda *_a: steps.puback()

    async def misc() -> None:
        while True:
            await asyncio.sleep(1)
            c.loop_misc()

    c.connect("127.0.0.1", port, keepalive=60)
    housekeeping = asyncio.ensure_future(misc())
    try:
        await asyncio.wait_for(connected, STEP_TIMEOUT_S)

        def puback() -> None:
            for mid in steps.pids:
                c.ack(mid, 1)

        def ack() -> None:
            for topic, payload in acks:
                c.publish(topic, payload, qos=1)

        return await measured(steps, lambda: c.subscribe(READINGS_TOPIC, qos=1), puback, ack)
    finally:
        housekeeping.cancel()
        c.disconnect()
        await asyncio.sleep(0.05)  # the DISCONNECT leaves


CLIENTS: dict[str, Callable[[int, int], Coroutine[Any, Any, dict[str, float]]]] = {
    "paho": run_paho,
    "gateway": run_ours,
}


def client_process(which: str, port: int, n: int, tx: Pipe) -> None:
    """One client's run in a process of its own; sends its figures (or {"error": ...})."""
    try:
        tx.send(asyncio.run(CLIENTS[which](port, n)))
    except BaseException as e:  # noqa: BLE001 - reported to the parent
        tx.send({"error": f"{which}: {type(e).__name__}: {e}"})
    finally:
        tx.close()


def run_client(which: str, port: int, n: int) -> dict[str, float]:
    ctx = multiprocessing.get_context("spawn")  # this process has the broker's thread
    rx, tx = ctx.Pipe(duplex=False)
    p = ctx.Process(target=client_process, args=(which, port, n, tx), daemon=True)
    p.start()
    tx.close()
    try:
        result: dict[str, Any] = rx.recv()
    except EOFError:
        result = {"error": f"{which}: the client process died (exit {p.exitcode})"}
    p.join(10)
    if "error" in result:
        raise SystemExit(f"bench_mqtt_path: {result['error']}")
    return result


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("-n", type=int, default=20000, help="packets per step (default 20000)")
    ap.add_argument("--repeat", type=int, default=5, help="runs per figure, best kept (5)")
    args = ap.parse_args()
    if args.n < 1 or args.repeat < 1:
        ap.error("-n and --repeat must be positive")
    broker = FakeBroker(args.n)
    best: dict[str, dict[str, float]] = {c: {} for c in CLIENTS}
    try:
        for r in range(args.repeat):
            order = list(CLIENTS) if r % 2 == 0 else list(reversed(CLIENTS))
            for which in order:
                for step, s in run_client(which, broker.port, args.n).items():
                    best[which][step] = min(s, best[which].get(step, s))
    finally:
        broker.close()
    out: dict[str, Any] = {"packets": args.n, "repeat": args.repeat,
                           "payload_bytes": PAYLOAD_BYTES}
    for step, what in STEPS:
        paho_us = best["paho"][step] * 1e6
        ours_us = best["gateway"][step] * 1e6
        print(f"{what}: paho {paho_us:.2f} us, gateway {ours_us:.2f} us per packet "
              f"(ours / paho {ours_us / paho_us:.2f})")
        out[f"{step}_paho_us"] = round(paho_us, 3)
        out[f"{step}_gateway_us"] = round(ours_us, 3)
        out[f"{step}_ratio"] = round(ours_us / paho_us, 3)
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
