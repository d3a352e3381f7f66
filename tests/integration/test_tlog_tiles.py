"""tlog-tiles over HTTP: paths and contents against the spec's examples and a plain reference
computed here; bundles; hostile requests."""

from __future__ import annotations

import asyncio
import hashlib
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from gateway.http.app import serve, url_of
from gateway.http.context import HttpContext
from gateway.ledger import note, tiles
from gateway.ledger.entry import device_entry
from gateway.storage.store import Store
from tests.helpers_readings import Device

SIZE = 70_000  # the spec's example tree


def _mth(leaves: list[bytes]) -> bytes:
    """RFC 6962 MTH over leaf hashes, the textbook recursion."""
    if len(leaves) == 1:
        return leaves[0]
    k = 1
    while k * 2 < len(leaves):
        k *= 2
    return hashlib.sha256(b"\x01" + _mth(leaves[:k]) + _mth(leaves[k:])).digest()


def test_paths_and_tile_sets_match_the_spec_examples() -> None:
    assert tiles.encode_index(1234067) == "x001/x234/067"
    assert tiles.tile_path(0, 1234067) == "tile/0/x001/x234/067"
    assert tiles.tile_path(None, 5, 17) == "tile/entries/005.p/17"
    assert tiles.parse_tile_path("tile/3/x001/x234/067.p/8") == tiles.Tile(3, 1234067, 8)
    assert tiles.parse_tile_path("/tile/entries/000") == tiles.Tile(None, 0, 256)
    # a tree of size 70,000: 273 full level-0 tiles, a partial one of width 112, one full
    # level-1 tile, a partial level-1 tile of width 17, a partial level-2 tile of width 1
    ts = tiles.tiles_for(SIZE)
    full0 = [t for t in ts if t.level == 0 and t.full]
    assert len(full0) == 273
    assert [t for t in ts if not t.full] == [tiles.Tile(0, 273, 112), tiles.Tile(1, 1, 17),
                                             tiles.Tile(2, 0, 1)]
    assert [t for t in ts if t.level == 1 and t.full] == [tiles.Tile(1, 0)]
    # a tree of size 256: a full level-0 tile and a partial level-1 tile of width 1
    assert tiles.tiles_for(256) == [tiles.Tile(0, 0), tiles.Tile(1, 0, 1)]
    # growing from 300 to 600: level-0 tile 1 completes, then the partials of size 600
    assert tiles.tiles_for(600, 300) == [tiles.Tile(0, 1), tiles.Tile(0, 2, 88),
                                         tiles.Tile(1, 0, 2)]
    for bad in ["tile/64/000", "tile/00/000", "tile/0/0001", "tile/0/1", "tile/0/x000/001",
                "tile/0/000.p/256", "tile/0/000.p/0", "tile/0/000.p/007", "tile/0/001/002",
                "tile/-1/000", "tile/entries", "tiles/0/000", "tile/0/x1000/000",
                "tile/0/" + "/".join(["x999"] * 7) + "/999", "tile/0/٣٣٣"]:
        with pytest.raises(tiles.TileError):
            tiles.parse_tile_path(bad)
    items = [b"", b"a", bytes(300)]
    blob = tiles.encode_bundle(items)
    assert tiles.decode_bundle(blob, 3) == items
    for cut in (blob[:-1], blob + b"\0", blob[:1]):
        with pytest.raises(tiles.TileError):
            tiles.decode_bundle(cut, 3)


def _check_checkpoint_alone(text: str, vkey: str, size: int, root: bytes) -> None:
    """The checkpoint as C2SP tlog-checkpoint and signed-note give it, verified with
    `cryptography`'s Ed25519 alone (no gateway code)."""
    import base64

    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    body, sigs = text.split("\n\n", 1)
    lines = body.split("\n")
    name, kid_hex, key_b64 = vkey.split("+", 2)
    assert lines[0] == name and lines[1] == str(size)
    assert base64.b64decode(lines[2], validate=True) == root
    raw = base64.b64decode(key_b64)
    assert raw[0] == 0x01
    kid = hashlib.sha256(name.encode() + b"\n\x01" + raw[1:]).digest()[:4]
    assert kid.hex() == kid_hex
    mine = [ln for ln in sigs.split("\n") if ln.startswith("\u2014 " + name + " ")]
    assert len(mine) == 1
    blob = base64.b64decode(mine[0].split(" ")[2], validate=True)
    assert blob[:4] == kid and len(blob) == 68
    Ed25519PublicKey.from_public_bytes(raw[1:]).verify(blob[4:], (body + "\n").encode())


def _grow(store: Store, n: int) -> list[bytes]:
    key = Device("k").public_bytes
    bodies = []
    with store.write() as c:
        head = store.head(c)
        for k in range(n):
            body = device_entry(head.size, head.last_hash, f"d{k}", key, "add", 1_700_000_000_000)
            e = store.append_entry(c, head, "device", body)
            head = type(head)(e.index + 1, e.hash, head.tree)
            bodies.append(body)
        store.checkpoint(c, head.tree, store.load_signer())
    return bodies


async def _fetch_all(url: str, paths: list[str]) -> dict[str, tuple[int, bytes, Any]]:
    out = {}
    async with aiohttp.ClientSession() as s:
        for p in paths:
            async with s.get(f"{url}/{p}") as r:
                out[p] = (r.status, await r.read(), r.headers)
    return out


async def _with_server(data: Path, fn: Any) -> Any:
    ctx = HttpContext.for_data_dir(data)
    runner = await serve(ctx, "127.0.0.1", 0, None)
    try:
        return await fn(url_of(runner))
    finally:
        await runner.cleanup()
        ctx.close()


def test_served_tiles_and_bundles_equal_the_reference(tmp_path: Path) -> None:
    store, vkey = Store.create(tmp_path / "d")
    bodies = _grow(store, SIZE)
    store.close()
    leaves = [hashlib.sha256(b"\x00" + b).digest() for b in bodies]
    ts = tiles.tiles_for(SIZE)
    bundles = tiles.tiles_for(SIZE, entries=True)
    paths = ["checkpoint"] + [t.path for t in ts] + [t.path for t in bundles]
    got = asyncio.run(_with_server(tmp_path / "d", lambda url: _fetch_all(url, paths)))
    status, body, headers = got["checkpoint"]
    cp = note.verify_checkpoint(body.decode(), vkey)
    assert (cp.size, cp.root) == (SIZE, _mth(leaves))
    _check_checkpoint_alone(body.decode(), vkey, SIZE, _mth(leaves))
    for t in ts:
        status, body, headers = got[t.path]
        assert status == 200, t.path
        assert headers["Content-Type"] == "application/octet-stream"
        assert ("immutable" in headers["Cache-Control"]) == t.full
        span = 256 ** t.level
        want = [_mth(leaves[(t.index * 256 + i) * span:(t.index * 256 + i + 1) * span])
                for i in range(t.width)]
        assert tiles.split_tile(body, t.width) == want, t.path
    for t in bundles:
        status, body, headers = got[t.path]
        assert status == 200
        lo = t.index * 256
        assert tiles.decode_bundle(body, t.width) == bodies[lo:lo + t.width]
    # the nodes a client reads from the tiles give the checkpoint's root
    fetched = {(t.level, t.index): tiles.split_tile(got[t.path][1], t.width) for t in ts
               if t.level is not None}
    from gateway.ledger import merkle
    tn = tiles.TileNodes(SIZE, fetched)
    assert merkle.range_root_from_nodes(tn.node, 0, SIZE) == cp.root


async def _hostile(url: str) -> list[int]:
    codes = []
    async with aiohttp.ClientSession() as s:
        for p in ["tile/0/000.p/300", "tile/64/000", "tile/0/0001", "tile/0/x999/x999/x999/"
                  "x999/x999/x999/999", "tile/entries/x999/999", "tile/1/000", "tile/0/001",
                  "tile/0/000.p/5", "batch/99999999999999999999", "batch/0", "batch/01",
                  "receipt/nobody/0", "receipt/x/-1", "receipt/" + "a" * 65 + "/0",
                  "tile/" + "0/" * 200 + "000"]:
            async with s.get(f"{url}/{p}") as r:
                codes.append(r.status)
        async with s.get(f"{url}/checkpoint", headers={"Range": "bytes=0-99999999999"}) as r:
            codes.append(r.status)
    host, port = url.removeprefix("http://").split(":")
    for raw in [b"GARBAGE\r\n\r\n", b"GET /" + b"a" * 20000 + b" HTTP/1.1\r\n\r\n",
                b"GET /checkpoint HTTP/1.1\r\nHost: x\r\nContent-Length: 999999999\r\n\r\n",
                b"GET /checkpoint HTTP/1.1\r\n" + b"X: " + b"y" * 20000 + b"\r\n\r\n"]:
        reader, writer = await asyncio.open_connection(host, int(port))
        writer.write(raw)
        await writer.drain()
        line = await asyncio.wait_for(reader.readline(), 10)
        codes.append(int(line.split()[1]) if line else 0)
        writer.close()
    async with aiohttp.ClientSession() as s, s.get(f"{url}/tile/0/000.p/5") as r:
        codes.append(r.status)
    return codes


def test_hostile_requests_get_4xx_and_the_server_stays_up(tmp_path: Path) -> None:
    store, _ = Store.create(tmp_path / "d")
    _grow(store, 10)
    store.close()
    codes = asyncio.run(_with_server(tmp_path / "d", _hostile))
    assert codes[:15] == [400, 400, 400, 400, 404, 404, 404, 200, 400, 404, 400, 404, 400,
                          400, 400]
    assert codes[15] == 200  # the checkpoint, whatever the Range asks
    assert all(400 <= c < 500 for c in codes[16:20]), codes
    assert codes[-1] == 200
