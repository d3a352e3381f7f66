"""The settings of `iot-anchor run`."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

DEFAULT_BROKER = "mqtt://127.0.0.1:1883"


@dataclass
class ServiceConfig:
    data_dir: Path
    broker: str = DEFAULT_BROKER
    batch_interval: float = 1.0
    batch_max: int = 4096
    puback: str = "commit"  # "commit" (after the batch commits) or "receipt" (on arrival)
    keepalive: int = 30
    backoff_min: float = 0.2
    backoff_max: float = 10.0
    inbox_max: int = 0  # messages waiting at most (0: max(8 x batch_max, 32768))
    http: tuple[str, int] | None = None  # serve the log over HTTP on (host, port)
    http_token: str | None = None  # the bearer token every HTTP request needs
    witnesses: list[tuple[str, str]] = field(default_factory=list)  # (URL, witness vkey)
    witness_quorum: int | None = None  # cosignatures a checkpoint needs (None: all)
    shared: str | None = None  # MQTT 5 shared-subscription group (`run --shared GROUP`)
