# On the board: can it open a TCP connection to the broker?

import socket


def reach_broker(host, port, timeout_s):
    """Connect to host:port within timeout_s seconds and close. Print "ok", or "fail" and the
    OSError."""
    addr = socket.getaddrinfo(host, port)[0][-1]
    s = socket.socket()
    try:
        s.settimeout(timeout_s)
        s.connect(addr)
        print("ok")
    except OSError as e:
        print("fail", e)
    finally:
        s.close()
