# The text of the errors that the device loop's resident modules raise (cose, state, mqtt),
# built only when one is raised: a string constant longer than 10 characters is an object in
# RAM for as long as its module is loaded (50 to 180 bytes each), so the resident modules test
# cheaply and take their messages from here. A cold companion of each of them (their COLD).
# (The CBOR encoder's errors are in cbor_types.py, with CBORError.)


def reading(data, prev, ts=None):
    """Why cose.reading refused data, prev or ts (it calls this only then)."""
    if ts is not None and (type(ts) is not int or ts < 0):
        return "ts must be a non-negative integer (unix seconds)"
    if not isinstance(data, dict):
        return "data must be a map of sensor name -> number"
    for k in data:
        if not isinstance(k, str) or not k:
            return "sensor names must be non-empty strings"
        v = data[k]
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            return "value of %r must be a number, not %s" % (k, type(v).__name__)
        if isinstance(v, float):
            if v != v or v in (float("inf"), float("-inf")):
                return "value of %r must be finite" % (k,)
        elif not -(1 << 64) <= v < (1 << 64):
            return "value of %r does not fit in 64 bits" % (k,)
    return "prev must be 32 bytes"


def reading_size(n):
    """state.Device.next_reading's message for a signed reading over cose.MAX_MESSAGE."""
    from anchor.cose import MAX_MESSAGE

    return ("reading is %d bytes, over the %d-byte limit; send fewer or shorter sensor values"
            % (n, MAX_MESSAGE))


_ERRNO = {
    2: "no such file or directory",
    13: "permission denied",
    17: "file exists",
    20: "not a directory",
    21: "is a directory",
    28: "no space left on device",
    30: "read-only file system",
}


def errno_name(e):
    """The name of OSError e's errno, e.g. "no space left on device"."""
    code = e.args[0] if e.args else 0
    return _ERRNO.get(code, "errno %s" % code)


def write(path, e):
    """state.write_atomic's message for OSError e while writing path."""
    return "cannot write %s (%s); check that the directory is writable" % (path, errno_name(e))


def mqtt_length(n, field=False):
    """mqtt.encode_length's message (n out of range), or with field mqtt._field's (a field of
    n bytes)."""
    if field:
        return ("MQTT field of %d bytes is longer than 65535 bytes; use a shorter client id, "
                "topic, user name or password" % n)
    return "MQTT remaining length %d out of range 0..268435455" % n
