"""Ed25519 key files (gateway/storage/keyfile.py): mode 0600, never overwritten, raw seeds."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from gateway.errors import ConfigError
from gateway.storage import keyfile

SEED = bytes(range(32))


def fixed_key() -> Ed25519PrivateKey:
    return Ed25519PrivateKey.from_private_bytes(SEED)


def raw_pub(k: Ed25519PrivateKey) -> bytes:
    return k.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def test_key_file_round_trip_mode_and_no_overwrite(tmp_path: Path) -> None:
    k = Ed25519PrivateKey.generate()
    path = tmp_path / "gateway.key"
    old = os.umask(0)  # even a permissive umask must give 0600
    try:
        keyfile.save_private_key(path, k)
    finally:
        os.umask(old)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert path.read_bytes().startswith(b"-----BEGIN PRIVATE KEY-----")
    assert raw_pub(keyfile.load_private_key(path)) == raw_pub(k)
    with pytest.raises(ConfigError, match="already exists"):
        keyfile.save_private_key(path, Ed25519PrivateKey.generate())
    assert raw_pub(keyfile.load_private_key(path)) == raw_pub(k)


def test_load_raw_seed_and_refusals(tmp_path: Path) -> None:
    raw = tmp_path / "raw.key"
    raw.write_bytes(SEED)
    raw.chmod(0o600)
    assert raw_pub(keyfile.load_private_key(raw)) == raw_pub(fixed_key())
    raw.chmod(0o644)
    with pytest.raises(ConfigError, match="readable by others") as e:
        keyfile.load_private_key(raw)
    assert "chmod 600" in e.value.hint
    junk = tmp_path / "junk.key"
    junk.write_bytes(b"not a key")
    junk.chmod(0o600)
    with pytest.raises(ConfigError, match="neither PEM"):
        keyfile.load_private_key(junk)
    with pytest.raises(ConfigError, match="cannot read"):
        keyfile.load_private_key(tmp_path / "missing.key")
