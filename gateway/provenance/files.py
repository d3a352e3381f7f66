"""File helpers of the provenance commands: hashing, atomic writes, errors as AnchorErrors."""

from __future__ import annotations

import errno
import hashlib
import os
from pathlib import Path

from gateway.errors import StorageError

_CHUNK = 1 << 20


def sha256_file(path: Path) -> bytes:
    h = hashlib.sha256()
    try:
        with open(path, "rb") as f:
            while block := f.read(_CHUNK):
                h.update(block)
    except OSError as e:
        raise file_error(e, path, "reading") from e
    return h.digest()


def file_error(e: OSError, path: Path, doing: str) -> StorageError:
    """An OSError on `path` as a StorageError that says what to do."""
    why = e.strerror or str(e)
    if e.errno == errno.ENOSPC:
        hint = f"free space on the disk holding {path.parent} and run the command again"
    elif e.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        hint = f"check the permissions of {path} (and that its file system is writable)"
    elif e.errno == errno.ENOENT:
        hint = f"check that {path} exists"
    else:
        hint = "check the path and the disk, then run the command again"
    return StorageError(f"{doing} {path} failed: {why}", hint)


def fsync_path(path: Path) -> None:
    """fsync a file written by someone else's writer (pyarrow's)."""
    try:
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError as e:
        raise file_error(e, path, "syncing") from e


def write_atomic(path: Path, data: bytes) -> None:
    """Write `data` to `path` through PATH.tmp, fsync'd and renamed over it."""
    tmp = path.with_name(path.name + ".tmp")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as e:
        try:
            tmp.unlink()
        except OSError:
            pass
        raise file_error(e, path, "writing") from e
