# The device loop: read sensors (board layer) -> sign (state.Device) -> append to the flash
# outbox -> publish on anchor/<id>/readings (QoS 1) -> acks on anchor/<id>/ack remove readings
# from the outbox. Runs under asyncio with three tasks: the MQTT client's reconnect supervisor,
# the producer (one reading per interval), and the sender (publishes what is due).
#
# Command line (Unix port), via main.py:
#   micropython firmware/main.py run --dir DIR [--broker mqtt://HOST:PORT] [--interval S]
#       [--count N] [--timeout S] [--ack-timeout S] [--outbox-max N] [--keepalive S]
#   --broker       mqtt://[USER:PASSWORD@]HOST[:PORT] (or mqtts://, which needs a port with ssl
#                  and the broker's CA in DIR/ca.pem); default $IOT_ANCHOR_BROKER, else
#                  mqtt://127.0.0.1:1883
#   --interval     seconds between readings (default 60; 0 = as fast as signing allows)
#   --count N      produce N readings, then exit 0 once the outbox is empty (everything this
#                  device ever queued, including readings replayed from before a restart, is
#                  acknowledged as anchored); exit 1 with the summary if that takes more than
#                  --timeout S (default 120) after the Nth reading. Without --count: forever.
#   --ack-timeout  publish a reading again when no ack came this many seconds after its last
#                  publish (default 30), or twice the smoothed delay of the acks when that is
#                  longer (at most 8 times the option; Loop.ack_wait); every waiting reading
#                  is also published again after each reconnect
#   --outbox-max   readings kept waiting at most; beyond, the oldest is dropped and counted
#                  (default 1000; see outbox.py)
#
# Output: one line per event, at most one per reading, "key=value" words after an event name:
#   start dev=ID seq=N outbox=K
#   connected n=K                     (K-th connection to the broker)
#   connect-failed n=K err=E          (K-th failed attempt; retried with backoff up to 30 s)
#   disconnected err=E
#   pub seq=N outbox=K                (a new reading's first publish)
#   repub n=K                         (K waiting readings published again in one pass)
#   ack upto=U seqs=S entry=E removed=R outbox=K
#   bad-ack err=REASON                (an ack refused: forged, replayed, stale, or why it is
#                                      malformed; counted, the outbox unchanged)
#   cmd id=N op=OP ok=1|0             (a command run; its confirmation is published)
#   cmd-again id=N                    (the last command sent again: its confirmation again)
#   bad-cmd err=REASON                (a command refused, as for acks)
# and, when the loop ends (--count), one JSON object on the last line:
#   {"dev": ID, "produced": N, "acked": M, "outbox": K, "dropped": D, "seq": NEXT_SEQ,
#    "published": P, "republished": R, "connects": C, "heap_max": BYTES, "heap_end": BYTES,
#    "ack_wait_ms": MS, "ok": true|false, "error": null or why the loop stopped}   (heap_max:
#    gc.mem_alloc() after gc.collect(), sampled after each reading and each republish pass;
#    heap_end: the same, once the loop's wait is over, before it disconnects; ack_wait_ms: the
#    republish timeout at the end, Loop.ack_wait)
# "acked" counts readings removed from the outbox by acks during this run (replayed ones too).
#
# Cold companions (COLD): device_setup.py holds the command line (parse_args, USAGE) and builds
# the loop's objects and the Loop (make_loop); main() loads it and drops it again
# (anchor.unload) before the loop starts. What is printed once the loop ended (the error line,
# the summary) is cli.run_finish, loaded then.
#
# Topics (docs/protocol.md): readings anchor/<id>/readings (QoS 1); acks anchor/<id>/ack (QoS 1,
# a COSE_Mac0 over CBOR {"ctr": int, "upto": int, "seqs": [int], "entry": int}, upto -1 when
# seq 0 is not anchored yet); commands anchor/<id>/cmd (QoS 1, COSE_Mac0 too; Loop.open_sealed);
# confirmations anchor/<id>/confirm (QoS 1, COSE_Sign1 with the device key);
# status anchor/<id>/status, retained "online" on connect, "offline" as the last will and on a
# clean exit.

import asyncio
import gc
import sys
import time

from micropython import const

from anchor import Error, unload
from anchor.p256 import hmac_sha256
from anchor.state import write_atomic

COLD = ("device_setup", "board", "downlink_setup", "downlink_cmd")
_UNIX = sys.platform not in ("esp32", "rp2")
# No asyncio.Event or wait_for in the loop: each wait_for allocates two tasks and a generator,
# held while it waits, which is while a reading is signed (the heap's peak), and the event
# module is RAM too. The sender sleeps up to 500 ms between its passes and produce() wakes it
# early by cancelling that sleep (only that one: `idle` is true only while the sender is in
# it); run() polls `done`, set when the count is satisfied or a task died, every _POLL_MS.
_POLL_MS = const(50)
_GC_EVERY = const(4096)


def _item(b, i, depth):
    """The CBOR data item at b[i] in an ack: (value, offset after it). Integers, byte and text
    strings, arrays, maps, false/true/null; a float decodes as None and a tag as its content
    (an ack has neither; later gateway versions may add keys with other values, which are
    ignored). Definite lengths only. Raises ValueError ("too deep": nested deeper than 8;
    "indefinite": an indefinite length or a reserved additional-information value),
    IndexError (truncated), TypeError or UnicodeError on what is not CBOR of that kind.

    The device's own decoder for acks, small enough to stay loaded (the general one, cbor_decode.py,
    is start-up code: loading it for each ack needs a large free block in the middle of the
    loop, and keeping it costs 1.6 KB)."""
    if depth > 8:
        raise ValueError("too deep")
    ib = b[i]
    major = ib >> 5
    n = ib & 31
    i += 1
    if n == 31 or 27 < n:
        raise ValueError("indefinite")
    if n > 23:
        k = 1 << (n - 24)
        if i + k > len(b):
            raise IndexError
        if major == 7:              # a float (or a two-byte simple value): skipped
            return None, i + k
        n = int.from_bytes(b[i:i + k], "big")
        i += k
    if major < 2:
        return (n if major == 0 else -1 - n), i
    if major < 6 and n > len(b) - i:   # a string's n bytes, or n items of a byte or more each
        raise IndexError
    if major < 4:
        v = bytes(b[i:i + n])
        return (str(v, "utf-8") if major == 3 else v), i + n
    if major == 6:
        return _item(b, i, depth + 1)
    if major == 7:
        return (False, True, None, None)[n - 20], i   # IndexError for the other simple values
    v = [] if major == 4 else {}
    for _ in range(n):
        x, i = _item(b, i, depth + 1)
        if major == 4:
            v.append(x)
        else:
            v[x], i = _item(b, i, depth + 1)
    return v, i


def decode_ack(payload, raw=False):
    """(ctr, upto, seqs, entry) from the payload of a sealed ack (its MAC already checked), or
    with raw the CBOR map the payload holds (downlink_cmd's commands); raises ValueError when
    it is not one, its message one word or two (the loop prints it as `bad-ack err=WORDS`;
    short words are interned names, a sentence would be a string object in RAM for the whole
    loop):
      not CBOR: "truncated", "trailing" (bytes after the item), "bad UTF-8", "too deep",
                "indefinite" (see _item), "not CBOR" (anything else)
      "not a map"   the item is not a CBOR map
      "bad ctr"     ctr missing, or not an integer >= 0
      "bad upto"    upto missing, or not an integer >= -1
      "bad seqs"    seqs not a list of integers >= 0
      "bad entry"   entry not an integer"""
    try:
        m, end = _item(payload, 0, 0)
        if end != len(payload):
            raise ValueError("trailing")
    except IndexError:
        raise ValueError("truncated")
    except UnicodeError:
        raise ValueError("bad UTF-8")
    except (ValueError, TypeError) as e:
        raise ValueError(str(e) or "not CBOR")
    if not isinstance(m, dict):
        raise ValueError("not a map")
    if raw:
        return m
    ctr = m.get("ctr")
    upto = m.get("upto")
    seqs = m.get("seqs", [])
    entry = m.get("entry", -1)
    # type() is exact: a bool is not an int here, and a long int is one
    if type(ctr) is not int or ctr < 0:
        raise ValueError("bad ctr")
    if type(upto) is not int or upto < -1:
        raise ValueError("bad upto")
    if type(seqs) is not list:
        raise ValueError("bad seqs")
    for s in seqs:
        if type(s) is not int or s < 0:
            raise ValueError("bad seqs")
    if type(entry) is not int:
        raise ValueError("bad entry")
    return ctr, upto, seqs, entry


# -- the authenticated downlink --------------------------------------------------------------
# Every ack (anchor/<id>/ack) and every command (anchor/<id>/cmd) from the gateway is a COSE_Mac0
# (RFC 9052 section 6.2, HMAC 256/256) under the device's downlink key, the topic as external
# AAD, and its payload carries a counter for freshness; docs/protocol.md ("The downlink").
#   Loop.open_sealed(topic, msg) -> payload  the MAC checked; ValueError("malformed" | "forged")
#   Loop.fresh(ctr)                           the replay window; ValueError("replayed" | "stale")
#   downlink_cmd.save(loop)                   DIR/downlink.json: top, last command, refusals:
#                                              after each command and when `run` ends
#                                              (cli.run_finish)
# The key: HKDF-SHA-256 over the ECDH secret of the device key and the gateway's downlink key
# (downlink_setup.py, derived once per pair of keys and kept in DIR/gateway.json, which
# device_setup.downlink_state reads), so a message costs two SHA-256 passes over it, not an ECDSA
# verification (tools/bench_firmware.py, "downlink"). The replay window: the highest counter
# accepted (top) and a bitmap of the _WINDOW counters below it; a counter above top is new, one
# inside the window is new unless its bit is set ("replayed"), one below it is "stale". Only a
# message whose MAC holds moves the window.
# Here, in Loop (open_sealed, fresh), not in a module or class of its own: each costs the loop
# RAM that a 48 KiB heap lacks.
_WINDOW = const(30)  # bits of the replay bitmap: a small int on a 32-bit board
# Loop.dl, the downlink state, one list (one attribute of the loop instead of five):
_KEY = const(0)     # the 32-byte MAC key (HKDF over the ECDH secret)
_TOP = const(1)     # the highest counter accepted, -1 before the first
_SEEN = const(2)    # bit i set: counter top - i was accepted (bit 0 is top itself)
_REFUSED = const(3)  # reason -> refusals since the device state was made
_CONFIRM = const(4)  # the signed confirmations the sender publishes next (<= 4, oldest first)
_MASK = const(0x3FFFFFFF)   # device_setup.make_loop: the same bits
_ACK_SPAN = const(8)        # ack_wait() is at most this many times ack_ms
# 17([protected = h'a10105' ({1: 5}, alg HMAC 256/256), unprotected = {}, payload, tag])
_HEAD = b"\xd1\x84\x43\xa1\x01\x05\xa0"
# MAC_structure = ["MAC0", protected, external_aad, payload]: its first two items
_MAC0 = b"\x84\x64MAC0\x43\xa1\x01\x05"
_REFUSALS = ("malformed", "forged", "replayed", "stale")


class Loop:
    """One device's loop. Made by device_setup.make_loop(board, dev, outbox, client, ...): no
    constructor here, its code is start-up code."""

    # Attributes (make_loop sets every one):
    #   parts      board, dev (a state.Device), outbox, client; out(line) prints an event line
    #   settings   interval_ms, count (None: forever), timeout_ms, ack_ms; t_readings, t_ack,
    #              t_status: the device's topics
    #   downlink   dl: [MAC key, window top, window bitmap, refusals by reason ("malformed",
    #              "forged", "replayed", "stale"), confirmations waiting]: the _KEY ...
    #              _CONFIRM constants above; the last command is only in DIR/downlink.json
    #   counters   produced, acked, published, republished, heap_max, heap_end (the summary's,
    #              see the module comment)
    #   state      crash: why a task died, or None; done: the loop is over (the count satisfied,
    #              or a task died)
    #   internal   only the methods change these: kick (a new reading is queued), idle (the
    #              sender sleeps between passes: produce() may wake it), stop (run() is ending);
    #              announced: the highest seq published in this run (make_loop sets it to the
    #              seq before the device's next; a lower one is published again)
    # run() sets the private _snd (the sender's task) before anything reads it.

    # -- acks and commands ----------------------------------------------------------------

    def open_sealed(self, topic, msg):
        """The payload bytes of a sealed message received on topic (bytes: its external AAD),
        once its tag is checked. Raises ValueError("malformed") when msg is not a COSE_Mac0 of
        this layout, ValueError("forged") when the tag does not match. Nothing is copied but
        the payload."""
        n = len(msg) - 34       # where the tag's head (58 20) must be
        try:
            p, end = _item(msg, 7, 0)   # the payload's byte string
        except Exception:
            raise ValueError("malformed")
        if msg[:7] != _HEAD or end != n or type(p) is not bytes or msg[n:n + 2] != b"\x58\x20":
            raise ValueError("malformed")
        t = len(topic)      # < 256: an id is at most 64 characters
        h = hmac_sha256(self.dl[_KEY], _MAC0, bytes((0x40 | t,)) if t < 24 else bytes((0x58, t)),
                        topic, memoryview(msg)[7:n])
        d = 0
        for k in range(32):   # no early exit: the time does not tell how much of it matched
            d |= h[k] ^ msg[n + 2 + k]
        if d:
            raise ValueError("forged")
        return p

    def fresh(self, c):
        """Accept counter c (an int) or raise ValueError("replayed" | "stale")."""
        g = self.dl
        t = g[_TOP]
        if c > t:
            s = c - t
            g[_SEEN] = ((g[_SEEN] & (_MASK >> s)) << s | 1) if s < _WINDOW else 1
            g[_TOP] = c
            return
        d = t - c
        if d >= _WINDOW:
            raise ValueError("stale")
        if g[_SEEN] >> d & 1:
            raise ValueError("replayed")
        g[_SEEN] |= 1 << d

    def on_message(self, topic, payload, retained):
        """The MQTT client's handler: a sealed ack on t_ack removes readings from the outbox;
        a sealed command on anchor/<id>/cmd runs (downlink_cmd.py). Anything refused
         (forged, replayed, stale, malformed) is counted and changes nothing."""
        # the subscriptions are t_ack and anchor/<id>/cmd only (and the MAC covers the topic)
        cmd = topic[-4:] == b"/cmd"
        if not cmd and topic != self.t_ack.encode():
            return
        try:
            p = self.open_sealed(topic, payload)
            if cmd:
                gc.collect()    # room for the module: loaded for a command whose MAC holds
                try:
                    from anchor import downlink_cmd

                    m = downlink_cmd.handle(self, p)
                finally:        # also when refused, or out of heap (then the gateway resends)
                    downlink_cmd = None
                    unload("downlink_cmd")
                if m[0] != 0xD2:    # the confirmation's payload: signed now, the module gone
                    m = self.dev.sign1(m)
                    write_atomic(self.dev.dir + "/confirm.cose", m)
                q = self.dl[_CONFIRM]
                if len(q) > 3:      # the gateway sends again what stays unconfirmed
                    q.pop(0)
                q.append(m)
                return
            ctr, upto, seqs, entry = decode_ack(p)
            self.fresh(ctr)
        except ValueError as e:
            w = str(e)
            r = w if w in _REFUSALS else "malformed"
            # saved with the next command, or when the loop ends: a flood of forgeries writes
            # nothing to flash
            q = self.dl[_REFUSED]
            q[r] = q.get(r, 0) + 1
            self.out("bad-%s err=%s" % ("cmd" if cmd else "ack", w.replace(" ", "_")))
            return
        removed = self.outbox.ack(upto, seqs, time.ticks_ms())
        self.acked += removed
        self.out("ack upto=%d seqs=%d entry=%d removed=%d outbox=%d" % (
            upto, len(seqs), entry, removed, self.outbox.pending))
        self._check_done()

    def ack_wait(self):
        """ms after a publish without an ack before a reading is published again: twice the
        smoothed ack delay (outbox.delay), at least ack_ms and at most _ACK_SPAN times it. A
        gateway that falls behind acks later, and its devices wait longer instead of sending
        it copies. A republish after this wait raises the delay to it (publish_due), so the
        next wait doubles: a copy's ack gives no sample (Karn's rule), and without that the
        estimate would stay with the few acks that came in time."""
        w = 2 * self.outbox.delay
        a = self.ack_ms
        return a if w < a else min(w, a * _ACK_SPAN)

    def _check_done(self):
        if self.count is not None and self.produced >= self.count and not self.outbox.pending:
            self.done = True

    # -- producing ------------------------------------------------------------------------

    def produce(self):
        data = self.board.read_sensors()
        seq = self.dev.seq
        msg = self.dev.next_reading(data, self.board.time())
        self.outbox.append(seq, msg)
        self.produced += 1
        self.kick = True
        if self.idle:          # the sender sleeps: wake it, a new reading is due now
            self.idle = False
            self._snd.cancel()
        return seq

    async def _producer(self):
        next_t = time.ticks_ms()
        while not self.stop and (self.count is None or self.produced < self.count):
            self.produce()
            self._sample_heap()
            next_t = time.ticks_add(next_t, self.interval_ms)
            delay = time.ticks_diff(next_t, time.ticks_ms())
            if delay < 0:           # signing or the flash was slower than the interval
                next_t = time.ticks_ms()
                delay = 0
            await self.board.sleep_fed(delay)
        self._check_done()

    # -- sending --------------------------------------------------------------------------

    async def publish_due(self):
        """One pass of the sender: publish each waiting reading not published yet or not
        acknowledged within ack_wait() of its last publish."""
        ob = self.outbox
        c = self.client
        n_re = 0
        wait = self.ack_wait()
        late = False
        for seg, i, seq in ob.waiting():
            if not ob.is_waiting(seg, i):
                continue
            age = ob.sent_age(seg, i, time.ticks_ms())
            if age is not None:
                if age < wait:
                    continue
                late = True
            try:
                msg = ob.read(seg, i)
            except OSError as e:    # the flash lost it (CRC mismatch, file gone): give up on it
                ob.drop(seg, i)
                self.out("bad-record seq=%d err=%s" % (seq, _err(e)))
                continue
            await c.publish(self.t_readings, msg, qos=1)
            msg = None
            again = seq <= self.announced
            if ob.is_waiting(seg, i):
                ob.mark_sent(seg, i, time.ticks_ms(), again)
            if not again:           # a reading of this run, published the first time
                self.announced = seq
                self.published += 1
                self.out("pub seq=%d outbox=%d" % (seq, ob.pending))
            else:
                n_re += 1
        if late and ob.delay < wait:    # no ack within wait: the delay is at least that
            ob.delay = wait
        if n_re:
            self.republished += n_re
            self.out("repub n=%d" % n_re)
            self._sample_heap()

    async def _sender(self):
        seen = 0
        fails = 0
        up = False
        while not self.stop:
            c = self.client
            if c.failures != fails:
                fails = c.failures
                self.out("connect-failed n=%d err=%s" % (fails, _err(c.error)))
            if c.isconnected():
                if c.connects != seen:
                    seen = c.connects
                    up = True
                    self.outbox.clear_sent()
                    self.out("connected n=%d" % seen)
                try:
                    await self.publish_due()
                except OSError:
                    pass            # the client noticed too and reconnects; reported below
                q = self.dl[_CONFIRM]   # commands' confirmations, oldest first
                while q and c.isconnected():
                    try:
                        await c.publish("anchor/%s/confirm" % self.dev.dev_id, q[0], qos=1)
                    except OSError:
                        break       # again once connected
                    q.pop(0)
            if up and not c.isconnected():
                up = False
                self.out("disconnected err=%s" % _err(c.error))
            if not (self.kick or self.stop):     # a new reading, or 500 ms at most
                self.idle = True
                try:
                    await asyncio.sleep_ms(500)
                except asyncio.CancelledError:
                    if self.stop or not self.kick:
                        raise       # not produce() waking it: the loop is ending
                finally:
                    self.idle = False
            self.kick = False
            self.board.feed()

    async def _guard(self, coro, name):
        """Run one of the loop's tasks; if it dies (a bug, MemoryError), end the whole loop
        instead of leaving the others running without it."""
        try:
            await coro
        except Exception as e:
            self.crash = "%s task failed: %s: %s" % (name, type(e).__name__, e)
            self.done = True

    def _sample_heap(self):
        gc.collect()
        a = gc.mem_alloc()
        if a > self.heap_max:
            self.heap_max = a

    # -- the whole loop -------------------------------------------------------------------

    async def run(self):
        """With a count: run until it is satisfied (True) or its timeout passed (False).
        Without: forever. If one of the tasks dies (a bug, MemoryError), `crash` says why and
        the loop ends: returning False with a count, raising Error without one (so a board's
        start-up resets the board)."""
        # A collection every _GC_EVERY bytes allocated, not only when the heap is full: the
        # garbage of acks and readings is freed before it spreads over the heap, so the blocks
        # a signature needs are found in one piece. Measured (LoopRig, 50 readings under
        # -X heapsize=48k on the 32-bit build, 8 runs each): 8 of 8 passed with 4096, 7 of 8
        # with 8192, 4 of 8 without; a signature then takes 3.7 ms instead of 2.4 (the Unix
        # port), nothing next to a reading interval of seconds.
        gc.threshold(_GC_EVERY)
        self.out("start dev=%s seq=%d outbox=%d" % (
            self.dev.dev_id, self.dev.seq, self.outbox.pending))
        await self.board.network_up()
        sup = asyncio.create_task(self._guard(self.client.run(), "mqtt"))
        # The first reading waits until the first connection attempt has ended (connected, or
        # failed: then the loop goes on offline and the client retries; 30 s at most): building
        # a connection and signing a reading at the same time would be the loop's heap peak.
        c = self.client
        t0 = time.ticks_ms()
        while not (c.connects or c.failures or self.crash) and \
                time.ticks_diff(time.ticks_ms(), t0) < 30000:
            await self.board.sleep_fed(10)
        # the producer first: a reading due now is queued before the backlog is sent
        prod = asyncio.create_task(self._guard(self._producer(), "producer"))
        snd = self._snd = asyncio.create_task(self._guard(self._sender(), "sender"))
        ok = True
        end = None      # with a count, once it is produced: the deadline for the acks
        try:
            while not self.done:
                if end is None and self.count is not None and self.produced >= self.count:
                    end = time.ticks_add(time.ticks_ms(), self.timeout_ms)
                if end is not None and time.ticks_diff(end, time.ticks_ms()) <= 0:
                    ok = False
                    break
                await asyncio.sleep_ms(100 if end is None else _POLL_MS)
            if self.crash is not None:
                ok = False
            # the same state at the end of every run that met its count (all acknowledged, the
            # tasks still up): a heap that grew with the readings shows here (heap_max varies
            # with what was in flight when it was sampled)
            gc.collect()
            self.heap_end = gc.mem_alloc()
        finally:
            self.stop = True
            prod.cancel()
            snd.cancel()
            if self.client.isconnected():
                try:   # a clean DISCONNECT suppresses the will, so say "offline" ourselves
                    await asyncio.wait_for_ms(self.client.publish(
                        self.t_status, b"offline", retain=True, qos=1, wait=True), 5000)
                except (OSError, asyncio.TimeoutError):
                    pass
            await self.client.disconnect()
            sup.cancel()
        if self.crash is not None and self.count is None:
            raise Error("the device loop stopped: %s" % self.crash)
        return ok


def _err(e):
    import errno

    if e is None:
        return "none"
    code = e.args[0] if e.args else 0
    return errno.errorcode.get(code, str(code)) if hasattr(errno, "errorcode") else str(code)


def main(args):
    """`run` (args after "run"); returns the exit status. No args on a board: startup.main()
    (config, board layer, watchdog, first-boot key; it resets the board if the loop stops).
    Starting (options, building the objects: device_setup.py) and finishing (the error line,
    the summary: cli.py) are loaded for each and not kept while the loop runs."""
    if not args and not _UNIX:
        from anchor import startup

        return startup.main()
    from anchor import device_setup

    r = device_setup.start(args)    # (loop, opts), or the exit status of a usage error
    device_setup = None
    unload()                        # every cold module: what start-up loaded
    if isinstance(r, int):
        return r
    try:
        ok = asyncio.run(r[0].run())
    except Error:           # without --count the loop only ends when a task died
        ok = False
    # The loop is over: drop the signing code (and the comb table) so that loading cli.py for
    # the error line and the summary fits even when the loop ran out of heap.
    unload("cose", "p256", "cbor")
    from anchor.cli import run_finish

    return run_finish(r[0], r[1], ok)

