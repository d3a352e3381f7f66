"""The tests' private PostgreSQL cluster (gateway/sim/postgres.py): its own folder and port,
an unprivileged server, data kept over a restart and a crash, nothing left after close()."""

from __future__ import annotations

import os

import psycopg

from gateway.sim.postgres import PrivatePostgres


def _postmaster_pid(pg: PrivatePostgres) -> int:
    return int((pg.data / "postmaster.pid").read_text().split()[0])


def test_private_cluster_lifecycle() -> None:
    pg = PrivatePostgres()
    try:
        pg.start()
        url = pg.create_database("t")
        with psycopg.connect(url, autocommit=True) as c:
            c.execute("CREATE TABLE x (n INTEGER)")
            c.execute("INSERT INTO x VALUES (1)")
            user = c.execute("SELECT current_setting('listen_addresses'), "
                             "current_setting('port')").fetchone()
        assert user == ("127.0.0.1", str(pg.port))
        pid = _postmaster_pid(pg)
        owner = os.stat(f"/proc/{pid}").st_uid
        assert owner != 0, "the server must not run as root"
        pg.restart()
        pg.kill()  # a crash: the WAL brings the committed row back
        pg.start()
        with psycopg.connect(url) as c:
            assert c.execute("SELECT n FROM x").fetchall() == [(1,)]
        pid = _postmaster_pid(pg)
    finally:
        pg.close()
    assert not pg.dir.exists()
    assert not os.path.exists(f"/proc/{pid}")
