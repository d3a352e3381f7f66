# iot-anchor firmware: signed sensor readings (COSE_Sign1 / ES256) from MicroPython devices.
#
# One module per concept: p256 (ECDSA), hmac256, cbor (deterministic encoder, small decoder),
# cose (the Reading and its COSE_Sign1 message), state (the device's key, seq and prev on flash).
# This file stays tiny: importing `anchor` must not pull in the big modules. Code that runs only
# at start-up or rarely is in separate modules (p256key, p256x, statex, statenew, cosex, mqttx,
# devicex, outboxx, cli), loaded on first use; where the device loop uses one only at start-up,
# it is dropped again with unload() (docs/boards.md, "Memory").

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
