# MicroPython side of the Mosquitto integration tests (tests/integration/test_mqtt_client.py).
# Usage:
#   micropython mqtt_live.py pub  URL CLIENT_ID TOPIC N       publish N QoS 1, wait PUBACKs
#   micropython mqtt_live.py sub  URL CLIENT_ID TOPIC N       print N received messages
#   micropython mqtt_live.py will URL CLIENT_ID               will + birth, then idle
#   micropython mqtt_live.py soak URL CLIENT_ID TOPIC N       publish N through reconnects
#   micropython mqtt_live.py once URL CLIENT_ID               one connect: "connected" or
#                                                                   "refused ERRNO"
#   micropython mqtt_live.py bench URL [N]                    QoS 1 publish rate (a bench:
#       prints figures, the last line JSON), against a baseline in the same run that writes
#       each packet piecewise (what the client did first: Nagle + delayed ACK)
# Lines printed are parsed by the test: "ready", "acked N", "got TOPIC HEX", "connected K".

import sys

_here = __file__.rsplit("/", 1)[0] if "/" in __file__ else "."
sys.path.insert(0, _here + "/..")

import asyncio
import binascii
import time

from anchor.mqtt_setup import make_client, parse_url


def client(url, cid, **kw):
    host, port, tls, user, password = parse_url(url)
    return make_client(cid, host, port, ssl=tls or None, user=user, password=password, **kw)


async def pub(url, cid, topic, n):
    c = client(url, cid)
    task = asyncio.create_task(c.run())
    await c.wait_connected()
    for i in range(n):
        await c.publish(topic, b"msg-%d" % i, qos=1, wait=True)
    print("acked", n)
    await c.disconnect()
    await task


async def sub(url, cid, topic, n):
    c = client(url, cid, clean_session=True)
    got = []

    def on_message(t, p, retained):
        got.append(1)
        print("got", t.decode(), binascii.hexlify(p).decode())
    c.on_message = on_message
    c.subscribe(topic, 1)
    task = asyncio.create_task(c.run())
    await c.wait_connected()
    print("ready")
    while len(got) < n:
        await asyncio.sleep_ms(10)
    await c.disconnect()
    await task


async def will(url, cid):
    c = client(url, cid, keepalive=30)
    c.set_last_will("anchor/%s/status" % cid, "offline", retain=True, qos=1)
    c.set_birth("anchor/%s/status" % cid, "online", retain=True, qos=1)
    asyncio.create_task(c.run())
    await c.wait_connected()
    while c.inflight:
        await asyncio.sleep_ms(10)
    print("ready")
    while True:
        await asyncio.sleep(1)


async def soak(url, cid, topic, n):
    # clean session: the broker forgets our subscription on disconnect, so a message received
    # after a reconnect proves that the client subscribed again by itself.
    c = client(url, cid, clean_session=True, keepalive=5, response_timeout=2,
               backoff_min=0.1, backoff_max=1)
    bye = []

    def on_message(t, p, retained):
        print("got", t.decode(), binascii.hexlify(p).decode())
        if p == b"bye":
            bye.append(1)
    c.on_message = on_message
    c.subscribe("%s/in" % cid, 1)
    task = asyncio.create_task(c.run())
    seen = 0
    i = 0
    while i < n or not bye:
        if c.connects != seen and c.isconnected():
            seen = c.connects
            print("connected", seen)
        if i < n:
            try:
                await c.publish(topic, b"soak-%d" % i, qos=1, wait=True)
                i += 1
                print("acked", i)
            except OSError:
                await asyncio.sleep_ms(100)
        await asyncio.sleep_ms(50)
    await c.disconnect()
    await task


async def once(url, cid):
    c = client(url, cid)
    try:
        await c.connect()
    except OSError as e:
        print("refused", e.args[0])
        return
    print("connected")
    await c.disconnect()


def _piecewise(c):
    """The baseline: c writes one write() per packet part, as the first version did."""
    async def write_packet(*parts):
        s = c.stream
        if s is None:
            raise OSError(107)
        for p in parts:
            s.write(p)
        await s.drain()

    c.write_packet = write_packet
    return c


async def _rate(piecewise, url, n, inflight):
    host, port, _, user, password = parse_url(url)
    c = make_client("bench-%d" % inflight, host, port, max_inflight=inflight, user=user,
                    password=password, clean_session=True)
    if piecewise:
        _piecewise(c)
    task = asyncio.create_task(c.run())
    await c.wait_connected()
    msg = b"x" * 160            # about the size of a signed reading
    t0 = time.ticks_ms()
    for _ in range(n):
        await c.publish("bench/readings", msg, qos=1)
    while c.inflight:
        await asyncio.sleep_ms(1)
    dt = max(1, time.ticks_diff(time.ticks_ms(), t0))
    await c.disconnect()
    await task
    return n * 1000 / dt


async def bench(url, n):
    import json

    out = {}
    for inflight in (1, 8):
        base = await _rate(True, url, max(20, n // 50), inflight)
        ours = await _rate(False, url, n, inflight)
        print("QoS 1 publishes/s with %d in flight: %.0f (one write per packet), %.0f "
              "(piecewise baseline), ratio %.1f" % (inflight, ours, base, ours / base))
        out["inflight_%d" % inflight] = {"per_s": round(ours), "baseline_per_s": round(base),
                                         "ratio": round(ours / base, 1)}
    print(json.dumps(out))


def main():
    a = sys.argv[1:]
    mode = a[0]
    if mode == "pub":
        asyncio.run(pub(a[1], a[2], a[3], int(a[4])))
    elif mode == "sub":
        asyncio.run(sub(a[1], a[2], a[3], int(a[4])))
    elif mode == "will":
        asyncio.run(will(a[1], a[2]))
    elif mode == "bench":
        asyncio.run(bench(a[1], int(a[2]) if len(a) > 2 else 2000))
    elif mode == "once":
        asyncio.run(once(a[1], a[2]))
    elif mode == "soak":
        asyncio.run(soak(a[1], a[2], a[3], int(a[4])))
    else:
        print("unknown mode %r: use pub, sub, will or soak" % mode)
        sys.exit(2)


main()
