# A tiny test runner for the firmware's MicroPython tests (micropython-lib's unittest is not
# installable here). A test file ends with `runner.main(globals())`; then
#   micropython firmware/tests/test_x.py [test_name ...]
# runs the named tests (all test_* functions by default), prints "ok NAME" or "FAIL NAME" with
# the traceback, a summary line, and exits 1 if any failed. tests/firmware/test_firmware_unit.py
# runs every test this way through pytest.

import sys


def main(g, after=None):
    """Run the tests in module globals g; `after()` (clean-up) runs before the summary."""
    names = sys.argv[1:] or sorted(k for k in g if k.startswith("test_"))
    failed = 0
    for name in names:
        try:
            g[name]()
            print("ok", name)
        except Exception as e:
            failed += 1
            print("FAIL", name)
            sys.print_exception(e)
    if after:
        after()
    print("%d passed, %d failed" % (len(names) - failed, failed))
    sys.exit(1 if failed else 0)


def rmtree(p):
    """Remove the directory p and everything under it (no shutil on MicroPython)."""
    import os

    try:
        names = os.listdir(p)
    except OSError:
        return
    for n in names:
        q = p + "/" + n
        try:
            os.remove(q)
        except OSError:
            rmtree(q)
    os.rmdir(p)


def raises(exc, fn, *args):
    """True if fn(*args) raises exc (or a subclass)."""
    try:
        fn(*args)
    except exc:
        return True
    return False


def h(s):
    """bytes from hex with spaces and '|' allowed, for annotated expected bytes."""
    from binascii import unhexlify

    return unhexlify(s.replace(" ", "").replace("|", "").replace("\n", ""))
