# The parts of the MQTT client's module that a running device does not need: broker URL parsing
# (start-up) and building a whole PUBLISH packet as bytes (tests). mqtt.py forwards these names
# here (mqtt.parse_url, ...), so callers need not know; the device drops this module after
# start-up to free its RAM.

import struct

from anchor.mqtt import _bytes, _field, publish_header


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
