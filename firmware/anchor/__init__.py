# iot-anchor firmware: signed sensor readings (COSE_Sign1 / ES256) from MicroPython devices.
#
# One module per concept: p256 (ECDSA signing, HMAC), cbor (deterministic encoder), cose (the
# Reading and its COSE_Sign1 message), state (the device's key, seq and prev on flash), outbox
# (readings on flash until anchored), mqtt (the MQTT client), device (the device loop). This file
# stays tiny: importing `anchor` must not pull in the big modules.
#
# Hot and cold modules. A board's heap is small (docs/boards.md, "Memory"), so the code that a
# running device loop needs (hot) is kept apart from the code that runs at start-up or rarely,
# or never on a device (cold): each hot module names its cold companions once, in a tuple COLD
# (p256.COLD = ("p256_keys", "p256_verify"), ...). Cold code is imported explicitly where it is
# used, and unload() drops it again; error_text.py holds the hot modules' error messages. A
# class whose constructor is start-up code has none: a setup function builds it
# (mqtt_setup.make_client, device_setup.make_loop, outbox_load.load_outbox), so the loop keeps
# no constructor in RAM; the attributes it sets have public names, listed in the class.

VERSION = "0.1.0"


class Error(Exception):
    """The firmware's one error type: its message says what was wrong and what to do.

    The command line catches only this and prints `error: <message>`.
    """


def unload(*names):
    """Forget submodules so that the garbage collector can free their code (RAM matters on a
    board); a later import loads them again. names: the submodules to forget (e.g. "cli");
    none: every cold module, i.e. each one that a loaded submodule names in its COLD tuple
    (the device loop calls this once it has started). The names a module interned as qstrs
    stay: MicroPython never frees them."""
    import gc
    import sys

    pkg = sys.modules[__name__]
    if not names:
        cold = []
        for k in sys.modules:
            if k.startswith("anchor."):
                cold.extend(getattr(sys.modules[k], "COLD", ()))
        names = cold
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
