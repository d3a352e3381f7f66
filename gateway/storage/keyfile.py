"""Ed25519 private key files: unencrypted PKCS#8 PEM, mode 0600 (the gateway's signing key in
the data directory; a raw 32-byte seed file is also read)."""

from __future__ import annotations

import os
import stat
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from gateway.errors import ConfigError


def save_private_key(path: str | os.PathLike[str], key: Ed25519PrivateKey) -> None:
    """Write the key as unencrypted PKCS#8 PEM, created with mode 0600; never overwrites."""
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    p = Path(path)
    try:
        fd = os.open(p, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        raise ConfigError(
            f"key file {p} already exists", "refusing to overwrite it; move it away first"
        ) from None
    except OSError as e:
        raise ConfigError(f"cannot create key file {p}: {e.strerror}", "check the path") from e
    try:
        os.fchmod(fd, 0o600)  # umask cannot widen it, but be explicit
        os.write(fd, pem)
        os.fsync(fd)
    finally:
        os.close(fd)


def load_private_key(path: str | os.PathLike[str]) -> Ed25519PrivateKey:
    """Load an Ed25519 private key: PKCS#8 PEM or a raw 32-byte seed.

    Refuses a file that group or others can read (mode must be 0600 or stricter).
    """
    p = Path(path)
    try:
        st = p.stat()
        data = p.read_bytes()
    except OSError as e:
        raise ConfigError(
            f"cannot read the gateway key {p}: {e.strerror}",
            "run 'iot-anchor init' or pass the right --data directory",
        ) from e
    if st.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise ConfigError(
            f"gateway key {p} is readable by others (mode {stat.S_IMODE(st.st_mode):o})",
            f"run 'chmod 600 {p}'",
        )
    if len(data) == 32:
        return Ed25519PrivateKey.from_private_bytes(data)
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError) as e:
        raise ConfigError(
            f"gateway key {p} is neither PEM nor a raw 32-byte key",
            "restore the key file from a backup",
        ) from e
    if not isinstance(key, Ed25519PrivateKey):
        raise ConfigError(f"gateway key {p} is not an Ed25519 key", "restore the right key file")
    return key
