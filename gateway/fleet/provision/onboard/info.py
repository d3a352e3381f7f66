# On the board: what it is, for BoardTransport.info(). Also makes the board's root the working
# directory (a board's REPL may start elsewhere; the Unix port keeps its own).


def board_info():
    """Print repr((platform, version[:3], .mpy format (sys.implementation._mpy), machine,
    unique id in hex or "", os.urandom present, free heap after a collection))."""
    import gc
    import sys

    try:
        import os

        if sys.platform not in ("linux", "darwin"):
            os.chdir("/")
        urandom = hasattr(os, "urandom")
    except ImportError:
        urandom = False
    try:
        import machine

        uid = "".join("%02x" % b for b in machine.unique_id())
    except (ImportError, AttributeError):
        uid = ""
    gc.collect()
    print(repr((sys.platform, tuple(sys.implementation.version[:3]),
                getattr(sys.implementation, "_mpy", 0),
                getattr(sys.implementation, "_machine", ""), uid, urandom, gc.mem_free())))
