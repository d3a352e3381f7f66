"""The gateway's P-256 downlink key (`DATA/downlink.key`, PKCS#8 PEM, mode 0600): its ECDH with
each device key gives that device's downlink MAC key (gateway/wire/downlink.py). Made by
`iot-anchor init`, and on first use for a data directory made before the downlink existed."""

from __future__ import annotations

import os
import stat
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from gateway.errors import ConfigError

DOWNLINK_KEY_NAME = "downlink.key"


def create(data_dir: str | os.PathLike[str]) -> ec.EllipticCurvePrivateKey:
    """A new key in DATA/downlink.key (mode 0600, never overwriting one)."""
    key = ec.generate_private_key(ec.SECP256R1())
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption())
    p = Path(data_dir) / DOWNLINK_KEY_NAME
    try:
        fd = os.open(p, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        raise ConfigError(f"key file {p} already exists",
                          "refusing to overwrite it; move it away first") from None
    except OSError as e:
        raise ConfigError(f"cannot create key file {p}: {e.strerror}",
                          "check the data directory's permissions") from e
    try:
        os.fchmod(fd, 0o600)
        os.write(fd, pem)
        os.fsync(fd)
    finally:
        os.close(fd)
    return key


def load_or_create(data_dir: str | os.PathLike[str]) -> ec.EllipticCurvePrivateKey:
    """DATA/downlink.key, made now when it is missing. Refuses a file group or others can read,
    or one that is not a P-256 key."""
    p = Path(data_dir) / DOWNLINK_KEY_NAME
    try:
        st = p.stat()
    except FileNotFoundError:
        try:
            return create(data_dir)
        except ConfigError:
            if not p.exists():
                raise
        st = p.stat()  # made by another process meanwhile: read that one
    if st.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise ConfigError(f"downlink key {p} is readable by others "
                          f"(mode {stat.S_IMODE(st.st_mode):o})", f"run 'chmod 600 {p}'")
    try:
        key = serialization.load_pem_private_key(p.read_bytes(), password=None)
    except (ValueError, TypeError, OSError) as e:
        raise ConfigError(f"downlink key {p} is unreadable ({e})",
                          "restore it from a backup (or remove it to make a new one, and "
                          "give every device the new key)") from e
    if not isinstance(key, ec.EllipticCurvePrivateKey) or key.curve.name != "secp256r1":
        raise ConfigError(f"downlink key {p} is not a P-256 key", "restore the right key file")
    return key


def public_bytes(key: ec.EllipticCurvePrivateKey) -> bytes:
    """The 65-byte SEC1 point of the key, as devices take it (`keygen --downlink-key`)."""
    return key.public_key().public_bytes(serialization.Encoding.X962,
                                         serialization.PublicFormat.UncompressedPoint)
