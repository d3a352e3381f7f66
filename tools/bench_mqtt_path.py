#!/usr/bin/env python3
"""The gateway's MQTT hot path against paho's own, per packet, on real sockets.

`iot-anchor run` replaces three of paho-mqtt's per-packet steps (gateway/service.py); this
measures each against paho's way in the same run, as CPU time of the measuring thread (the
system calls included) per packet:

1. read: N QoS 1 PUBLISH packets (reading-sized, 180-byte payload) through `loop_read` from a
   socketpair, paho's reader against `_lean_read` (both with the lean PUBLISH handler and the
   read-ahead socket, so this isolates the packet framing);
2. PUBACK: N PUBACKs after a commit on loopback TCP, paho's `ack(mid, 1)` per message and its
   writer (one `send` each) against `_puback_all` and `_coalesce_writes`;
3. device acks: N QoS 1 acks (`anchor/<id>/ack`, 20-byte CBOR) on loopback TCP, paho's
   `publish` against `_LeanAcks.publish` with the coalesced writer.

Not a test: it prints a line per step and one JSON object as the last line. Each figure is the
best of --repeat runs (the least disturbed by the rest of the machine).
"""

from __future__ import annotations

import argparse
import json
import socket
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import paho.mqtt.client as mqtt  # noqa: E402
from paho.mqtt.enums import CallbackAPIVersion  # noqa: E402

from gateway.service.runner import (  # noqa: E402
    _coalesce_writes,
    _Inbound,
    _lean_publish,
    _lean_read,
    _LeanAcks,
    _puback_all,
    _ReadAhead,
    ack_topic,
    encode_ack,
)
from gateway.sim.loadgen import publish_packet  # noqa: E402


def _cpu() -> float:
    return time.thread_time()  # this thread's CPU time, user and system, in ns steps


def _client() -> Any:
    c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="bench", protocol=mqtt.MQTTv311,
                    manual_ack=True)
    c.disable_logger()
    c.max_inflight_messages_set(0)
    c.on_socket_register_write = lambda *_a: None  # we call loop_write, like aiomqtt's writer
    return c


def _tcp_pair() -> tuple[socket.socket, socket.socket, threading.Thread]:
    """A loopback TCP connection whose far end is drained by a thread (the broker's part)."""
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen()
    a = socket.create_connection(srv.getsockname())
    b, _ = srv.accept()
    srv.close()

    def drain() -> None:
        while b.recv(1 << 20):
            pass
        b.close()

    t = threading.Thread(target=drain, daemon=True)
    t.start()
    return a, b, t


def bench_read(n: int, lean: bool) -> float:
    c = _client()
    taken = [0]

    def take(*_a: Any) -> None:
        taken[0] += 1

    publish = _lean_publish(c, take)
    if lean:
        _lean_read(c, publish)
    stream = b"".join(publish_packet(b"anchor/dev-%04d/readings" % (i % 1000), bytes(180),
                                     i % 65535 + 1) for i in range(n))
    a, b = socket.socketpair()
    b.setblocking(False)
    c._sock = _ReadAhead(b)  # noqa: SLF001
    sender = threading.Thread(target=a.sendall, args=(stream,))
    sender.start()
    t0 = _cpu()
    while taken[0] < n:
        c.loop_read()
    cpu = _cpu() - t0
    sender.join()
    a.close()
    b.close()
    return cpu / n


def _written(n: int, queue: Callable[[Any], None]) -> float:
    """CPU per packet to queue n packets on a client over loopback TCP and write them all."""
    c = _client()
    a, _b, t = _tcp_pair()
    c._sock = a  # noqa: SLF001
    t0 = _cpu()
    queue(c)
    while c.want_write():
        c.loop_write()
    cpu = _cpu() - t0
    a.close()
    t.join()
    return cpu / n


def bench_puback(n: int, lean: bool) -> float:
    msgs = [_Inbound("d", b"", i % 65535 + 1, 1, 1) for i in range(n)]

    def queue(c: Any) -> None:
        if lean:
            _coalesce_writes(c)
            _puback_all(c, msgs)
        else:
            for m in msgs:
                c.ack(m.mid, m.qos)

    return _written(n, queue)


def bench_acks(n: int, lean: bool) -> float:
    items = [(ack_topic(f"dev-{i:04d}"), encode_ack(i, [], 7)) for i in range(n)]

    def queue(c: Any) -> None:
        if lean:
            _coalesce_writes(c)
            acks = _LeanAcks(c)
            for topic, payload in items:
                acks.publish(topic, payload)
        else:
            for topic, payload in items:
                c.publish(topic, payload, qos=1)

    return _written(n, queue)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("-n", type=int, default=20000, help="packets per step (default 20000)")
    ap.add_argument("--repeat", type=int, default=5, help="runs per figure, best kept (5)")
    args = ap.parse_args()
    steps: list[tuple[str, str, Callable[[int, bool], float]]] = [
        ("read", "QoS 1 PUBLISH read through loop_read", bench_read),
        ("puback", "PUBACK after the commit, written", bench_puback),
        ("ack", "device ack (QoS 1 PUBLISH) queued and written", bench_acks),
    ]
    out: dict[str, Any] = {"packets": args.n, "repeat": args.repeat}
    for key, what, fn in steps:
        paho_us = min(fn(args.n, False) for _ in range(args.repeat)) * 1e6
        lean_us = min(fn(args.n, True) for _ in range(args.repeat)) * 1e6
        print(f"{what}: paho {paho_us:.2f} us, gateway {lean_us:.2f} us per packet "
              f"(ratio {lean_us / paho_us:.2f})")
        out[f"{key}_paho_us"] = round(paho_us, 3)
        out[f"{key}_gateway_us"] = round(lean_us, 3)
        out[f"{key}_ratio"] = round(lean_us / paho_us, 3)
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
