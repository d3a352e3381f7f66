# iot-anchor firmware: signed sensor readings (COSE_Sign1 / ES256) from MicroPython devices.
#
# One module per concept: p256 (ECDSA signing, HMAC), cbor (deterministic encoder, small decoder),
# cose (the Reading and its COSE_Sign1 message), state (the device's key, seq and prev on flash).
# This file stays tiny: importing `anchor` must not pull in the big modules. Code that runs only
# at start-up or rarely is in separate modules (p256_keys, p256_verify, state_load, state_create, cose_verify, mqtt_setup,
# devicex, outbox_load, outbox_trim, cli), loaded on first use; where the device loop uses one only at start-up,
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
    import gc
    import sys

    pkg = sys.modules[__name__]
    for n in names:
        sys.modules.pop(__name__ + "." + n, None)
        try:
            delattr(pkg, n)
        except (AttributeError, KeyError):  # MicroPython raises KeyError for a missing name
            pass
    gc.collect()


def main(argv):
    """main.py's command line (argv: the arguments after main.py; none on a board, which then
    starts the device loop); returns the exit status. Here, not in main.py, because main.py is
    compiled from source at every start and what that leaves stays in RAM. The commands live in
    cli.py (dropped before the loop starts) and device.py."""
    import sys

    unix = sys.platform in ("linux", "darwin", "win32")
    try:
        if not unix:
            from anchor import startup  # a board: config, board layer, device loop

            return startup.main() or 0
        if argv[:1] != ["run"] or "-h" in argv or "--help" in argv:
            from anchor import cli  # keygen, sign, usage; `run` goes straight to the loop

            status = cli.main(argv)
            if status is not None:
                return status
            cli = None
            unload("cli")
        try:
            from anchor import device
        except ImportError as e:
            print("error: the device loop is not available in this build (%s)" % e,
                  file=sys.stderr)
            return 1
        try:
            return device.main(argv[1:]) or 0
        except Error as e:
            print("error: %s" % e, file=sys.stderr)
            return 1
    except MemoryError:
        if not unix:
            raise  # a board: the traceback on the REPL, then the watchdog resets it
        print("error: out of memory (the heap is too small for this command); give MicroPython"
              " a bigger heap (-X heapsize=...), or run the firmware compiled to .mpy",
              file=sys.stderr)
        return 1
