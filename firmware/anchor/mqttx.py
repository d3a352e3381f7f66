# The parts of the MQTT client's module that a running device does not keep in RAM: broker URL
# parsing and the client's constructor (start-up), and a whole PUBLISH packet as bytes (tests).
# mqtt.py forwards these names here (mqtt.parse_url, ...), so callers need not know.

import struct

from anchor.mqtt import _bytes, _field, _open, _ssl, publish_header


def init(c, client_id, host, port=1883, keepalive=60, clean_session=False,
         ssl=None, user=None, password=None, response_timeout=10, retries=2,
         max_inflight=8, backoff_min=0.5, backoff_max=30, max_packet=4096,
         connector=None, tick_ms=1000, wait_network=None):
    """MQTTClient.__init__ (mqtt.py documents the client): its arguments and attributes."""
    if ssl and _ssl is None and connector is None:
        raise ValueError("TLS was asked for (mqtts://) but this MicroPython has no ssl "
                         "module; use mqtt:// or a firmware build with ssl")
    if ssl is True:
        ctx = _ssl.SSLContext(_ssl.PROTOCOL_TLS_CLIENT)
        ssl = ctx
    c.client_id = client_id
    c.host = host
    c.port = port
    c.keepalive = keepalive
    c.clean_session = clean_session
    c.ssl = ssl
    c.user = user
    c.password = password
    c.response_ms = int(response_timeout * 1000)
    c.retries = retries
    c.max_inflight = max_inflight
    c.backoff_min_ms = int(backoff_min * 1000)
    c.backoff_max_ms = int(backoff_max * 1000)
    c.max_packet = max_packet
    c._connector = connector or _open
    c._wait_network = wait_network   # async fn, awaited before each connect attempt
    c._tick_ms = tick_ms
    c.will = None
    c.birth = None
    c.subs = []              # [(topic bytes, qos)], sent again after every connect
    c.on_message = None      # callback(topic: bytes, payload: bytes, retained: bool)
    c.inflight = {}          # pid -> [topic, payload, retain, sent_ticks, tries]
    c._pid = 0
    c._stream = None
    c._up = False            # the socket is usable (set before the subscriptions)
    c._ready = False         # connected, subscribed, birth sent: isconnected()
    c._closing = False
    c._tasks = []
    c._hdr = bytearray(5)
    c._buf = bytearray(256)  # packet assembly; grows to the largest packet sent
    c._wt = None             # ticks_ms when the drain in progress started (see _write)
    c._down = False          # the current connection died (run() then tears it down)
    c._subacks = {}
    c._last_rx = 0
    c._last_tx = 0
    c.session_present = False
    c.error = None           # the OSError that ended the last connection
    # counters for status lines and tests
    c.connects = 0
    c.failures = 0           # failed connection attempts
    c.retransmits = 0
    c.pings = 0
    c.received = 0


def length_error(n, field=False):
    """The messages of mqtt.encode_length (n out of range) and mqtt._field (a field of n
    bytes), here to keep them out of the resident module's RAM."""
    if field:
        return ("MQTT field of %d bytes is longer than 65535 bytes; use a shorter client id, "
                "topic, user name or password" % n)
    return "MQTT remaining length %d out of range 0..268435455" % n


def publish_packet(topic, payload, qos=0, pid=0, retain=False, dup=False):
    """The whole PUBLISH packet as bytes (used by tests and for small messages)."""
    t = _bytes(topic)
    h = bytearray(5)
    n = publish_header(h, len(t), len(payload), qos, retain, dup)
    return bytes(h[:n]) + _field(t) + (struct.pack("!H", pid) if qos else b"") + bytes(payload)


def _unquote(s):
    """Percent-decoding for the user and password of a URL."""
    if "%" not in s:
        return s
    out = bytearray()
    i = 0
    while i < len(s):
        if s[i] == "%" and i + 2 < len(s) + 1:
            try:
                out.append(int(s[i + 1:i + 3], 16))
            except ValueError:
                raise ValueError("broker URL has a bad %-escape in its user or password")
            i += 3
        else:
            out.extend(s[i].encode())
            i += 1
    return out.decode()


def parse_url(url):
    """mqtt://[USER[:PASSWORD]@]HOST[:PORT] or mqtts://... -> (host, port, tls, user, password).

    user and password are None when absent (percent-escapes decoded). Raises ValueError.
    """
    if url.startswith("mqtt://"):
        rest, port, tls = url[7:], 1883, False
    elif url.startswith("mqtts://"):
        rest, port, tls = url[8:], 8883, True
    else:
        raise ValueError("broker URL %r must start with mqtt:// or mqtts://" % url)
    rest = rest.rstrip("/")
    user = password = None
    if "@" in rest:
        cred, rest = rest.rsplit("@", 1)
        if ":" in cred:
            user, password = cred.split(":", 1)
            password = _unquote(password)
        else:
            user = cred
        user = _unquote(user)
        if not user:
            raise ValueError("broker URL has an empty user name before '@'")
    if ":" in rest:
        host, p = rest.rsplit(":", 1)
        try:
            port = int(p)
        except ValueError:
            raise ValueError("broker URL %r has a bad port %r" % (_safe(url), p))
    else:
        host = rest
    if not host:
        raise ValueError("broker URL %r has no host" % _safe(url))
    return host, port, tls, user, password


def _safe(url):
    """The URL with any password replaced by ***, for error messages."""
    i = url.find("://")
    at = url.rfind("@")
    if i < 0 or at < 0:
        return url
    cred = url[i + 3:at]
    if ":" in cred:
        return url[:i + 3] + cred.split(":", 1)[0] + ":***" + url[at:]
    return url
