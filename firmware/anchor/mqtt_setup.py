# Setting up the MQTT client (start-up): the broker URL parsed, the client built. A cold
# companion of mqtt.py (mqtt.COLD): the device loop drops it once its client is made, so the
# constructor's code takes no RAM while the loop runs.

from anchor.mqtt import MQTTClient, _open, _ssl


def make_client(client_id, host, port=1883, keepalive=60, clean_session=False,
                ssl=None, user=None, password=None, response_timeout=10, retries=2,
                max_inflight=8, backoff_min=0.5, backoff_max=30, max_packet=4096,
                connector=None, tick_ms=1000, wait_network=None):
    """A new mqtt.MQTTClient (mqtt.py documents its behaviour), not connected yet.

    ssl: None, True (the port's default TLS context) or an SSLContext; ValueError when TLS is
    asked for on a port without ssl. connector(host, port, ssl): an async function returning
    the stream (default: asyncio.open_connection). wait_network: an async function awaited
    before each connection attempt. Times in seconds, but tick_ms."""
    if ssl and _ssl is None and connector is None:
        raise ValueError("TLS was asked for (mqtts://) but this MicroPython has no ssl "
                         "module; use mqtt:// or a firmware build with ssl")
    if ssl is True:
        ctx = _ssl.SSLContext(_ssl.PROTOCOL_TLS_CLIENT)
        ssl = ctx
    c = MQTTClient()        # mqtt.MQTTClient lists these attributes
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
    c.connector = connector or _open
    c.wait_network = wait_network
    c.tick_ms = tick_ms
    c.will = None
    c.birth = None
    c.subs = []
    c.on_message = None
    c.inflight = {}
    c.stream = None
    c.session_present = False
    c.error = None
    c.connects = 0
    c.failures = 0
    c.retransmits = 0
    c.pings = 0
    c.received = 0
    c.pid = 0
    c.up = False
    c.ready = False
    c.closing = False
    c.tasks = []
    c.hdr = bytearray(5)
    c.buf = bytearray(256)
    c.wt = None
    c.subacks = {}
    return c


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
            raise ValueError("broker URL %r has a bad port %r" % (redact_url(url), p))
    else:
        host = rest
    if not host:
        raise ValueError("broker URL %r has no host" % redact_url(url))
    return host, port, tls, user, password


def redact_url(url):
    """The URL with any password replaced by ***, for error messages."""
    i = url.find("://")
    at = url.rfind("@")
    if i < 0 or at < 0:
        return url
    cred = url[i + 3:at]
    if ":" in cred:
        return url[:i + 3] + cred.split(":", 1)[0] + ":***" + url[at:]
    return url
