import socket

from gateway.sim.broker import PrivateBroker


def test_private_broker_listens_on_loopback_and_stops(tmp_path):
    b = PrivateBroker(workdir=tmp_path / "b")
    with b:
        with socket.create_connection(("127.0.0.1", b.port), timeout=2):
            pass
        assert b.proc is not None and b.proc.poll() is None
        proc = b.proc
    assert proc.poll() is not None
