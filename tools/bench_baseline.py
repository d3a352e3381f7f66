"""The transport baseline for `make bench`: a bare paho-mqtt subscriber that only counts.

    .venv/bin/python tools/bench_baseline.py --broker mqtt://127.0.0.1:PORT --expect N

It subscribes to `anchor/+/readings` at QoS 1 with the same session settings as the gateway
(clean_session=False, a stable client id), lets paho PUBACK each message on receipt (paho's
default), and does nothing else per message but count it and note the time. It prints one line
"ready" once the subscription is granted (tools/bench.py waits for it before it starts the load),
and when it has seen N messages, or nothing arrived for --idle seconds, one JSON object:

    {"received": N, "first": monotonic s, "last": monotonic s, "cpu_s": user+system s}

`first`/`last` are CLOCK_MONOTONIC readings, comparable with the load engine's (same machine).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import threading
import time

import paho.mqtt.client as mqtt

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from gateway.wire.broker_url import parse_broker_url  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--broker", required=True, metavar="URL")
    ap.add_argument("--expect", type=int, required=True, metavar="N",
                    help="stop after N messages")
    ap.add_argument("--idle", type=float, default=15.0, metavar="S",
                    help="stop when nothing arrived for S seconds after the first message")
    ap.add_argument("--client-id", default="iot-anchor-bench-baseline")
    args = ap.parse_args()
    url = parse_broker_url(args.broker, tls_ok=False)
    host, port = url.host, url.port

    state = {"n": 0, "first": 0.0, "last": 0.0}
    done = threading.Event()
    ready = threading.Event()
    expect = args.expect
    clock = time.monotonic

    def on_message(_c: mqtt.Client, _u: object, _m: mqtt.MQTTMessage) -> None:
        now = clock()
        n = state["n"] + 1
        state["n"] = n
        if n == 1:
            state["first"] = now
        state["last"] = now
        if n >= expect:
            done.set()

    def on_connect(c: mqtt.Client, _u: object, _f: object, rc: object, _p: object) -> None:
        if rc != 0 and getattr(rc, "is_failure", True):
            print(f"error: broker refused the connection ({rc}); check --broker",
                  file=sys.stderr, flush=True)
            done.set()
            return
        c.subscribe("anchor/+/readings", qos=1)

    def on_subscribe(_c: mqtt.Client, _u: object, _mid: int, _rc: object, _p: object) -> None:
        ready.set()

    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=args.client_id,
                         clean_session=False)
    client.on_message = on_message
    client.on_connect = on_connect
    client.on_subscribe = on_subscribe
    try:
        client.connect(host, port, keepalive=60)
    except OSError as e:
        print(f"error: cannot connect to {args.broker}: {e}; is the broker running?",
              file=sys.stderr)
        return 2
    client.loop_start()
    if not ready.wait(30):
        print(f"error: no SUBACK from {args.broker} within 30 s; check the broker's log",
              file=sys.stderr)
        client.loop_stop()
        return 2
    print("ready", flush=True)
    while not done.wait(0.5):
        last = state["last"] or 0.0
        if state["n"] and clock() - last > args.idle:
            break
    client.disconnect()
    client.loop_stop()
    ru = resource.getrusage(resource.RUSAGE_SELF)
    print(json.dumps({"received": state["n"], "first": state["first"], "last": state["last"],
                      "cpu_s": round(ru.ru_utime + ru.ru_stime, 3)}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
