"""Where a store is: `--store URL` (or $IOT_ANCHOR_STORE), else the SQLite file in `--data`.

Accepted forms:

- nothing: SQLite, ``DIR/ledger.db`` of the data directory;
- ``sqlite:PATH`` or ``sqlite:///ABSOLUTE/PATH``: a SQLite file elsewhere (`store copy`);
- ``postgresql://[USER[:PASSWORD]@]HOST[:PORT]/DATABASE[?PARAMS]`` (also ``postgres://``):
  a PostgreSQL database, in libpq's URL syntax (libpq also reads $PGPASSWORD, ~/.pgpass ...).

The gateway's signing key stays in the data directory in every case: each gateway of a group
has a copy of it there.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

from gateway.errors import ConfigError

DB_NAME = "ledger.db"
ENV = "IOT_ANCHOR_STORE"

# The store named on the command line (`--store`), set by the CLI for this process, so that
# every `Store.open(DIR)` of every command opens it; None: $IOT_ANCHOR_STORE, else SQLite.
command_line_store: str | None = None


@dataclass(frozen=True, slots=True)
class StoreLocation:
    kind: str  # "sqlite" | "postgresql"
    path: Path | None = None  # SQLite: the database file
    url: str | None = None  # PostgreSQL: the libpq URL, password included

    @property
    def shown(self) -> str:
        """For messages and logs: the path, or the URL without its password."""
        if self.kind == "sqlite":
            return str(self.path)
        return redact(self.url or "")


def redact(url: str) -> str:
    """`url` with its password replaced by ***."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "<a store URL that does not parse>"
    if parts.password is None:
        return url
    host = parts.netloc.rsplit("@", 1)[1]
    return urlunsplit(parts._replace(netloc=f"{parts.username}:***@{host}"))


def default_store() -> str | None:
    return command_line_store or os.environ.get(ENV) or None


def parse_store(value: str | None, data_dir: str | os.PathLike[str]) -> StoreLocation:
    """The location named by `value` (None: the default, see the module docstring)."""
    if value is None:
        value = default_store()
    if not value:
        return StoreLocation("sqlite", Path(data_dir) / DB_NAME)
    if value.startswith(("postgresql://", "postgres://")):
        parts = urlsplit(value)
        if not parts.hostname and "host=" not in (parts.query or ""):
            raise ConfigError(f"--store {redact(value)} names no host",
                              "give postgresql://USER@HOST[:PORT]/DATABASE")
        if not parts.path.strip("/"):
            raise ConfigError(f"--store {redact(value)} names no database",
                              "give postgresql://USER@HOST[:PORT]/DATABASE")
        return StoreLocation("postgresql", url=value)
    if value.startswith("sqlite:"):
        rest = value[len("sqlite:"):]
        if rest.startswith("//"):
            rest = rest[2:]  # sqlite:///abs -> /abs
        if not rest:
            raise ConfigError("--store sqlite: names no file", "give sqlite:PATH/TO/ledger.db")
        p = Path(rest)
        return StoreLocation("sqlite", p / DB_NAME if p.is_dir() else p)
    raise ConfigError(f"--store {redact(value)} is not a store URL",
                      "give postgresql://USER@HOST[:PORT]/DATABASE or sqlite:PATH "
                      "(or leave --store out for DIR/ledger.db)")
