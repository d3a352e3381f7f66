"""C2SP tlog-tiles: tile paths, which tiles a tree has, bundles, and nodes read from tiles.

Tiles have height 8 (WIDTH = 256 hashes). Tile (L, N) holds the tree nodes at tree level 8L
with indices N*256 .. N*256+255, i.e. MTH(D[(N*256+i) * 256**L : (N*256+i+1) * 256**L]); a
partial tile holds the first W (1..255) of them. The ledger store keeps every perfect-subtree
node as (level, index), so tile (L, N) is the stored nodes (8L, N*256 + i).

Paths: ``tile/<L>/<N>[.p/<W>]`` and ``tile/entries/<N>[.p/<W>]``; <N> is written in 3-digit
groups, all but the last prefixed with ``x`` (1234067 -> ``x001/x234/067``). A bundle (entry
bundles, and this project's batch-readings bundles) is a sequence of items, each a big-endian
uint16 length followed by that many bytes.

Everything here is pure: paths, tree arithmetic, bundle framing, and `TileNodes`, which reads
any perfect-subtree node out of a set of tiles so a client can compute roots and proofs.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from gateway.errors import AnchorError
from gateway.ledger.merkle import HASH_SIZE, node_hash

HEIGHT = 8
WIDTH = 1 << HEIGHT  # 256 hashes per full tile
MAX_LEVEL = 63
TILE_BYTES = WIDTH * HASH_SIZE
MAX_ITEM = 0xFFFF  # a bundle item's length is a uint16
# An index beyond this cannot be a tile of a tree of fewer than 2**63 leaves.
MAX_INDEX = (1 << 63) // WIDTH


class TileError(AnchorError):
    """A tile path, tile or bundle is malformed, or does not match what it should hold."""

    def __init__(self, what: str, hint: str = "") -> None:
        super().__init__(what, hint or "see docs/tlog.md for the tile paths and formats")


@dataclass(frozen=True, slots=True)
class Tile:
    """A hash tile (level >= 0) or an entry bundle (level None): index and width (1..256)."""

    level: int | None
    index: int
    width: int = WIDTH

    @property
    def full(self) -> bool:
        return self.width == WIDTH

    @property
    def path(self) -> str:
        return tile_path(self.level, self.index, self.width)


def encode_index(n: int) -> str:
    """1234067 -> ``x001/x234/067``; 0 -> ``000``."""
    if n < 0:
        raise TileError(f"negative tile index {n}")
    groups = []
    while True:
        groups.append(f"{n % 1000:03d}")
        n //= 1000
        if n == 0:
            break
    groups.reverse()
    return "/".join([*("x" + g for g in groups[:-1]), groups[-1]])


def tile_path(level: int | None, index: int, width: int = WIDTH) -> str:
    """``tile/<L>/<N>[.p/<W>]``, or ``tile/entries/<N>[.p/<W>]`` for level None."""
    if not 1 <= width <= WIDTH:
        raise TileError(f"tile width {width} is not 1..{WIDTH}")
    if level is not None and not 0 <= level <= MAX_LEVEL:
        raise TileError(f"tile level {level} is not 0..{MAX_LEVEL}")
    head = "entries" if level is None else str(level)
    tail = "" if width == WIDTH else f".p/{width}"
    return f"tile/{head}/{encode_index(index)}{tail}"


def _decimal(text: str, what: str, lo: int, hi: int) -> int:
    if not text or not text.isascii() or not text.isdigit() or (len(text) > 1 and text[0] == "0"):
        raise TileError(f"{what} {text[:24]!r} is not a decimal number without leading zeros")
    if len(text) > 3:
        raise TileError(f"{what} {text[:24]!r} is out of range")
    v = int(text)
    if not lo <= v <= hi:
        raise TileError(f"{what} {v} is not {lo}..{hi}")
    return v


def parse_index(parts: Sequence[str]) -> int:
    """The inverse of `encode_index`, from its path elements (strict)."""
    if not parts or len(parts) > 7:
        raise TileError("a tile index has 1 to 7 path elements")
    n = 0
    for k, p in enumerate(parts):
        last = k == len(parts) - 1
        if not last:
            if not p.startswith("x"):
                raise TileError(f"tile index element {p[:24]!r} must start with 'x'")
            p = p[1:]
        if len(p) != 3 or not p.isascii() or not p.isdigit():
            raise TileError(f"tile index element {p[:24]!r} is not 3 digits")
        n = n * 1000 + int(p)
    if len(parts) > 1 and parts[0] == "x000":
        raise TileError("a tile index has no leading x000 element")
    if n > MAX_INDEX:
        raise TileError(f"tile index {n} is beyond any tree of 2**63 leaves")
    return n


def parse_tile_path(path: str) -> Tile:
    """``tile/<L>/<N>[.p/<W>]`` or ``tile/entries/<N>[.p/<W>]`` (a leading "/" is allowed)."""
    if len(path) > 128:
        raise TileError("tile path is too long")
    parts = path.lstrip("/").split("/")
    if len(parts) < 3 or parts[0] != "tile":
        raise TileError(f"{path[:64]!r} is not a tile path")
    level: int | None
    if parts[1] == "entries":
        level = None
    else:
        level = _decimal(parts[1], "tile level", 0, MAX_LEVEL)
    rest = parts[2:]
    width = WIDTH
    if len(rest) >= 2 and rest[-2].endswith(".p"):
        width = _decimal(rest[-1], "partial tile width", 1, WIDTH - 1)
        rest = [*rest[:-2], rest[-2][:-2]]
    return Tile(level, parse_index(rest), width)


# --------------------------------------------------------------------------- tree arithmetic


def level_width(size: int, level: int) -> int:
    """Hashes at tile level `level` of a tree of `size` leaves: floor(size / 256**level)."""
    return size >> (HEIGHT * level)


def tile_exists(tile: Tile, size: int) -> bool:
    """Whether a tree of `size` leaves (or a later one) has this tile, full or partial."""
    have = size if tile.level is None else level_width(size, tile.level)
    return tile.index * WIDTH + tile.width <= have


def tiles_for(size: int, old: int = 0, *, entries: bool = False) -> list[Tile]:
    """The tiles (hash tiles, or entry bundles with `entries`) a client that holds the tree of
    `old` leaves must fetch to hold the tree of `size` leaves: every full tile that completes
    after `old` and the partial tile of `size` at each level. Bottom level first."""
    if not 0 <= old <= size:
        raise TileError(f"no tiles from size {old} to size {size}")
    out: list[Tile] = []
    for level in (None,) if entries else range(MAX_LEVEL + 1):
        have = size if level is None else level_width(size, level)
        had = old if level is None else level_width(old, level)
        if have == 0:
            break
        out += [Tile(level, n) for n in range(had // WIDTH, have // WIDTH)]
        if have % WIDTH and have != had:
            out.append(Tile(level, have // WIDTH, have % WIDTH))
    return out


# --------------------------------------------------------------------------- bundles


def encode_bundle(items: Iterable[bytes]) -> bytes:
    out = bytearray()
    for it in items:
        if len(it) > MAX_ITEM:
            raise TileError(f"a bundle item of {len(it)} bytes does not fit a uint16 length")
        out += len(it).to_bytes(2, "big")
        out += it
    return bytes(out)


def decode_bundle(data: bytes, count: int) -> list[bytes]:
    """Exactly `count` items; TileError for a truncated bundle or trailing bytes."""
    out: list[bytes] = []
    pos = 0
    n = len(data)
    mv = memoryview(data)
    for k in range(count):
        if pos + 2 > n:
            raise TileError(f"the bundle ends after {k} of {count} items (truncated)")
        ln = (data[pos] << 8) | data[pos + 1]
        pos += 2
        if pos + ln > n:
            raise TileError(f"item {k} of the bundle is cut short (truncated)")
        out.append(bytes(mv[pos:pos + ln]))
        pos += ln
    if pos != n:
        raise TileError(f"the bundle has {n - pos} bytes after its {count} items")
    return out


def split_tile(data: bytes, width: int) -> list[bytes]:
    """A hash tile's bytes -> its `width` hashes; TileError for any other length."""
    if len(data) != width * HASH_SIZE:
        raise TileError(f"a tile of width {width} is {width * HASH_SIZE} bytes, got {len(data)}")
    return [data[i:i + HASH_SIZE] for i in range(0, len(data), HASH_SIZE)]


# --------------------------------------------------------------------------- nodes from tiles


def tile_of_node(level: int, index: int) -> tuple[int, int, int, int]:
    """Where node (tree level, index) comes from: (tile level L, tile index N, first hash
    position in the tile, number of tile hashes to fold = 2**(level - 8L))."""
    tl = level // HEIGHT
    r = level - HEIGHT * tl
    first = index << r
    return tl, first // WIDTH, first % WIDTH, 1 << r


def fold(hashes: Sequence[bytes]) -> bytes:
    """MTH of a power-of-two number of subtree hashes."""
    level = list(hashes)
    while len(level) > 1:
        level = [node_hash(level[i], level[i + 1]) for i in range(0, len(level), 2)]
    return level[0]


class TileNodes:
    """Perfect-subtree nodes of a tree of `size` leaves, read from its hash tiles.

    `tiles` maps (level, index) -> the tile's hashes (full, or the partial tile of `size`).
    `node(level, index)` folds the tile hashes under the node; `needed(nodes)` lists the tiles
    to fetch for a set of nodes. Suits `merkle.range_root_from_nodes` and so the proofs.
    """

    def __init__(self, size: int, tiles: Mapping[tuple[int, int], Sequence[bytes]]) -> None:
        self.size = size
        self.tiles = tiles

    def tile_for(self, tl: int, tn: int) -> Tile:
        have = level_width(self.size, tl)
        width = min(WIDTH, have - tn * WIDTH)
        if width <= 0:
            raise TileError(f"tile {tl}/{tn} is beyond the tree of size {self.size}")
        return Tile(tl, tn, width)

    def needed(self, nodes: Iterable[tuple[int, int]]) -> list[Tile]:
        out: dict[tuple[int, int], Tile] = {}
        for level, index in nodes:
            if ((index + 1) << level) > self.size:
                raise TileError(f"node ({level}, {index}) is not complete in size {self.size}")
            tl, tn, _, _ = tile_of_node(level, index)
            out.setdefault((tl, tn), self.tile_for(tl, tn))
        return list(out.values())

    def node(self, level: int, index: int) -> bytes:
        if ((index + 1) << level) > self.size:
            raise TileError(f"node ({level}, {index}) is not complete in size {self.size}")
        tl, tn, first, count = tile_of_node(level, index)
        hashes = self.tiles.get((tl, tn))
        if hashes is None or len(hashes) < first + count:
            raise TileError(f"tile {tl}/{tn} was not fetched or is too short")
        return fold(hashes[first:first + count])


def range_nodes(lo: int, hi: int) -> list[tuple[int, int]]:
    """The perfect-subtree nodes `merkle.range_root_from_nodes(get, lo, hi)` reads."""
    out = []
    pos = lo
    while pos < hi:
        level = (hi - pos).bit_length() - 1
        out.append((level, pos >> level))
        pos += 1 << level
    return out
