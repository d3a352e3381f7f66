# iot-anchor firmware: signed sensor readings (COSE_Sign1 / ES256) from MicroPython devices.
#
# One module per concept: p256 (ECDSA), hmac256, cbor (deterministic encoder, small decoder),
# cose (the Reading and its COSE_Sign1 message), state (the device's key, seq and prev on flash).
# This file stays tiny: importing `anchor` must not pull in the big modules.

VERSION = "0.1.0"


class Error(Exception):
    """The firmware's one error type: its message says what was wrong and what to do.

    The command line catches only this and prints `error: <message>`.
    """
