# iot-anchor firmware: signed sensor readings (COSE_Sign1 / ES256) from MicroPython devices.
#
# One module per concept: p256 (ECDSA), hmac256, cbor (deterministic encoder, small decoder),
# cose (the Reading and its COSE_Sign1 message), state (the device's key, seq and prev on flash).
# This file stays tiny: importing `anchor` must not pull in the big modules. Rarely used code is
# in the *x.py modules (p256x, statex, cosex, mqttx, devicex, outboxx), loaded on first use and,
# where the device loop uses one only at start-up, dropped again with unload().

VERSION = "0.1.0"


class Error(Exception):
    """The firmware's one error type: its message says what was wrong and what to do.

    The command line catches only this and prints `error: <message>`.
    """


def unload(*names):
    """Forget the named submodules (e.g. "devicex") once the caller is done with them, so that
    the garbage collector can free their code: RAM matters on a board. A later import loads
    them again."""
    import sys

    pkg = sys.modules[__name__]
    for n in names:
        sys.modules.pop(__name__ + "." + n, None)
        try:
            delattr(pkg, n)
        except (AttributeError, KeyError):  # MicroPython raises KeyError for a missing name
            pass
