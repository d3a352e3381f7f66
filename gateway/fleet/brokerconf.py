"""Mosquitto configuration with a password file and per-device ACLs.

`iot-anchor broker-config` (gateway/cmd_broker_config.py) writes three files into one folder:

- `mosquitto.conf`: listeners (plain `mqtt://` and/or TLS `mqtts://`), no anonymous access,
  the password file, the ACL file and persistence (so the gateway's persistent session and its
  queued QoS 1 messages survive a broker restart);
- `passwd`: one `user:$7$...` line per client, in Mosquitto's PBKDF2-SHA512 format;
- `acl`: a `user` block per client.

What the ACL allows (topics are those of docs/protocol.md and issue 4):

- device `<id>` writes (publishes) `anchor/<id>/readings`, `anchor/<id>/status` and
  `anchor/<id>/confirm`, and reads (subscribes to, receives) `anchor/<id>/ack`,
  `anchor/<id>/cmd` and `anchor/checkpoint`;
- the gateway writes `anchor/+/ack`, `anchor/+/cmd`, `anchor/checkpoint` and the rules' alerts
  `anchor/alerts/#`, and reads `anchor/#`.

A device's MQTT username is its device id, and every client's MQTT client id is forced to its
username (`use_username_as_clientid`), so no device can take over the gateway's persistent
session by connecting with the gateway's client id (which is public: it derives from the
gateway key id). Anything not listed is denied: Mosquitto drops a
denied PUBLISH silently under MQTT 3.1.1 (the client gets its PUBACK all the same), and it
checks `read` when it delivers a message, so a subscription to another device's topics (which
Mosquitto 2.0.11 grants in its SUBACK) never receives anything. The gateway still refuses
a reading whose `dev` differs from the device named in its topic (`topic_mismatch`): the ACL is
a second wall, not the only one.

Password hashes. Mosquitto 2.0 reads `$7$<iterations>$<base64 salt>$<base64 hash>`, the hash
being PBKDF2-HMAC-SHA512 of the password with a 12-byte salt, 64 bytes long. We compute it with
`hashlib` (the same bytes as `mosquitto_passwd -H sha512-pbkdf2`; a test checks it against the
real broker) so that no extra binary is needed. The passwords are random 192-bit tokens, so the
iteration count does not protect them; it is kept low (1000) to keep connects cheap on small
brokers after a mass reconnect.

The plaintext passwords are kept in `<data>/broker-credentials.json` (mode 0600), from which the
gateway and the device set-up take them; re-running the command keeps existing passwords, so
adding a device does not change anyone else's.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import re
import secrets
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

from gateway.errors import ConfigError, StorageError
from gateway.wire.broker_url import parse_broker_url

GATEWAY_USER = "iot-anchor-gateway"
CREDENTIALS_FILE = "broker-credentials.json"
PBKDF2_ITERATIONS = 1000
SALT_BYTES = 12
DEFAULT_LISTENER = "mqtt://127.0.0.1:1883"
DEFAULT_MAX_PACKET = 16384

# MQTT usernames land in topic names (ACL lines), in `user:hash` lines and in URLs: keep them to
# characters that mean nothing in any of those. No '/', '+', '#' (topic syntax), ':' (password
# file), whitespace (ACL file tokens), '%' and '@' (URLs).
_USERNAME = re.compile(r"^[A-Za-z0-9._-]{1,128}$")

# Seconds between saves of the broker's persistence file (a crash loses at most this much of
# its queue; the devices' outboxes republish what it lost). The benches use it too.
AUTOSAVE_INTERVAL_S = 30


def check_username(name: str, what: str = "device id") -> str:
    """Return `name` if it is usable as an MQTT username and topic level, else raise."""
    if not _USERNAME.match(name):
        raise ConfigError(
            f"{what} {name!r} cannot be used as an MQTT username and topic level",
            "use 1 to 128 characters from A-Z a-z 0-9 . _ - (no '/', '+', '#', ':', spaces)",
        )
    return name


# ---------------------------------------------------------------------------------------------
# Password hashes


def hash_password(password: str, salt: bytes | None = None,
                  iterations: int = PBKDF2_ITERATIONS) -> str:
    """Mosquitto 2.0's `$7$` PBKDF2-SHA512 hash of `password` (a fresh salt unless given)."""
    if salt is None:
        salt = os.urandom(SALT_BYTES)
    digest = hashlib.pbkdf2_hmac("sha512", password.encode(), salt, iterations)
    salt64 = base64.b64encode(salt).decode()
    return f"$7${iterations}${salt64}${base64.b64encode(digest).decode()}"


def check_password(encoded: str, password: str) -> bool:
    """True if `password` matches a `$7$` hash (as written by us or by mosquitto_passwd)."""
    parts = encoded.split("$")
    if len(parts) != 5 or parts[0] != "" or parts[1] != "7":
        return False
    try:
        iterations = int(parts[2])
        salt = base64.b64decode(parts[3], validate=True)
        want = base64.b64decode(parts[4], validate=True)
    except ValueError:
        return False
    got = hashlib.pbkdf2_hmac("sha512", password.encode(), salt, iterations)
    return hmac.compare_digest(got, want)


def new_password() -> str:
    """A random password: 192 bits, URL-safe characters (fits in mqtt://user:pass@host)."""
    return secrets.token_urlsafe(24)


# ---------------------------------------------------------------------------------------------
# Listeners


@dataclass(frozen=True)
class Listener:
    host: str
    port: int
    tls: bool

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{'mqtts' if self.tls else 'mqtt'}://{host}:{self.port}"


def parse_listener(text: str) -> Listener:
    """`mqtt://HOST:PORT`, `mqtts://HOST:PORT` or plain `HOST:PORT` (= mqtt)."""
    u = parse_broker_url(text, bare_ok=True, what="listener",
                         example="mqtt://127.0.0.1:1883 or mqtts://0.0.0.0:8883")
    has_port = urlsplit(text if "://" in text else f"mqtt://{text}").port is not None
    if not has_port or u.username is not None or u.password is not None:
        raise ConfigError(
            f"listener {text!r} needs exactly a host and a port",
            "write it as mqtt://HOST:PORT or mqtts://HOST:PORT, e.g. mqtt://127.0.0.1:1883",
        )
    return Listener(u.host, u.port, u.tls)


@dataclass(frozen=True)
class TlsFiles:
    """Server-side TLS: the broker's certificate chain and key, and optionally a CA file."""

    cert: Path
    key: Path
    cafile: Path | None = None


# ---------------------------------------------------------------------------------------------
# Credentials (plaintext, in the data directory)


@dataclass
class Credentials:
    gateway_user: str = GATEWAY_USER
    gateway_password: str = ""
    devices: dict[str, str] = field(default_factory=dict)
    broker: str = ""  # the first listener's URL, without credentials

    def to_json(self) -> str:
        return json.dumps(
            {
                "version": 1,
                "broker": self.broker,
                "gateway": {"username": self.gateway_user, "password": self.gateway_password},
                "devices": {d: {"password": p} for d, p in sorted(self.devices.items())},
            },
            indent=2,
        ) + "\n"

    def password_for(self, user: str) -> str | None:
        if user == self.gateway_user:
            return self.gateway_password
        return self.devices.get(user)

    def url_for(self, user: str, listener: Listener | None = None) -> str:
        """`mqtt://user:password@host:port` on `listener` (default: the first one written)."""
        password = self.password_for(user)
        if password is None:
            raise ConfigError(
                f"{user!r} has no broker credentials",
                "register the device, then run 'iot-anchor broker-config' again",
            )
        lst = listener or parse_listener(self.broker or DEFAULT_LISTENER)
        host = f"[{lst.host}]" if ":" in lst.host else lst.host
        return f"{'mqtts' if lst.tls else 'mqtt'}://{user}:{password}@{host}:{lst.port}"


def load_credentials(path: Path) -> Credentials | None:
    """The credentials in `path`, None if the file does not exist."""
    try:
        text = path.read_text()
    except FileNotFoundError:
        return None
    except OSError as e:
        raise StorageError(f"cannot read {path}: {e.strerror}", "check its permissions") from e
    try:
        obj = json.loads(text)
        gw = obj["gateway"]
        creds = Credentials(
            gateway_user=str(gw["username"]),
            gateway_password=str(gw["password"]),
            devices={str(d): str(v["password"]) for d, v in obj["devices"].items()},
            broker=str(obj.get("broker", "")),
        )
    except (ValueError, KeyError, TypeError, AttributeError) as e:
        raise ConfigError(
            f"{path} is not a broker credentials file ({type(e).__name__}: {e})",
            "move it away and run 'iot-anchor broker-config' again (all passwords will change)",
        ) from e
    return creds


def _write_private(path: Path, text: str) -> None:
    """Write `text` to `path` atomically, readable by the owner only (0600)."""
    tmp = path.with_name(path.name + ".tmp")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o600)
        os.replace(tmp, path)
    except OSError as e:
        raise StorageError(
            f"cannot write {path}: {e.strerror}", "check that the folder exists and is writable"
        ) from e


# ---------------------------------------------------------------------------------------------
# The files


def render_passwd(creds: Credentials, iterations: int = PBKDF2_ITERATIONS) -> str:
    lines = [f"{creds.gateway_user}:{hash_password(creds.gateway_password, None, iterations)}"]
    for dev in sorted(creds.devices):
        lines.append(f"{dev}:{hash_password(creds.devices[dev], None, iterations)}")
    return "\n".join(lines) + "\n"


def render_acl(gateway_user: str, devices: Iterable[str]) -> str:
    out = [
        "# Written by 'iot-anchor broker-config'; run it again rather than editing this file.",
        "# Everything not allowed here is denied.",
        "",
        "# The gateway reads every device's readings, status and confirmations, and alone",
        "# writes acks, commands, the checkpoint and the rules' alerts (docs/rules.md).",
        f"user {gateway_user}",
        "topic read anchor/#",
        "topic write anchor/+/ack",
        "topic write anchor/+/cmd",
        "topic write anchor/checkpoint",
        "topic write anchor/alerts/#",
    ]
    for dev in sorted(devices):
        out += [
            "",
            f"user {dev}",
            f"topic write anchor/{dev}/readings",
            f"topic write anchor/{dev}/status",
            f"topic write anchor/{dev}/confirm",
            f"topic read anchor/{dev}/ack",
            f"topic read anchor/{dev}/cmd",
            "topic read anchor/checkpoint",
        ]
    return "\n".join(out) + "\n"


def render_conf(
    out_dir: Path,
    listeners: list[Listener],
    tls: TlsFiles | None,
    run_as: str | None,
    max_packet_size: int = DEFAULT_MAX_PACKET,
) -> str:
    out = [
        "# Written by 'iot-anchor broker-config'. Start the broker with:",
        f"#   mosquitto -c {out_dir / 'mosquitto.conf'}",
        "per_listener_settings false",
        "allow_anonymous false",
        f"password_file {out_dir / 'passwd'}",
        f"acl_file {out_dir / 'acl'}",
        "persistence true",
        f"persistence_location {out_dir / 'persist'}/",
        f"autosave_interval {AUTOSAVE_INTERVAL_S}",
        # The gateway's persistent session holds readings while it is down; devices resend
        # anything unacknowledged anyway, so this bounds memory, not durability.
        "max_queued_messages 100000",
        # The gateway PUBACKs a reading only after the batch holding it has committed, so a
        # whole batch is in flight at once; Mosquitto's default of 20 in flight per client
        # would cap it at 20 readings per batch interval.
        "max_inflight_messages 0",

        f"max_packet_size {max_packet_size}",
        "log_dest stderr",
        "log_type error",
        "log_type warning",
        "log_type notice",
    ]
    if run_as:
        out.insert(1, f"user {run_as}")
    for lst in listeners:
        # The client id is the username: the gateway's own id is public (derived from its key
        # id), and a device using it would otherwise kick the gateway off and take its
        # persistent session. (Mosquitto 2.0.11 reads this option per listener.)
        out += ["", f"listener {lst.port} {lst.host}", "protocol mqtt",
                "use_username_as_clientid true"]
        if lst.tls:
            assert tls is not None
            out += [f"certfile {tls.cert}", f"keyfile {tls.key}", "tls_version tlsv1.2"]
            if tls.cafile:
                out.append(f"cafile {tls.cafile}")
    return "\n".join(out) + "\n"


@dataclass
class BrokerConfig:
    """What `write_broker_config` wrote."""

    conf: Path
    passwd: Path
    acl: Path
    credentials: Path
    listeners: list[Listener]
    creds: Credentials
    new_users: list[str]
    removed_users: list[str]

    def url_for(self, user: str, listener: Listener | None = None) -> str:
        """`mqtt://user:password@host:port` for a client of this broker."""
        return self.creds.url_for(user, listener or self.listeners[0])


def write_broker_config(
    out_dir: Path,
    credentials_path: Path,
    devices: Iterable[str],
    listeners: list[Listener] | None = None,
    tls: TlsFiles | None = None,
    gateway_user: str = GATEWAY_USER,
    rotate: Iterable[str] = (),
    run_as: str | None = None,
    max_packet_size: int = DEFAULT_MAX_PACKET,
    iterations: int = PBKDF2_ITERATIONS,
) -> BrokerConfig:
    """Write mosquitto.conf, passwd and acl into `out_dir`; keep passwords in `credentials_path`.

    Existing passwords are kept, except for the users in `rotate`. Devices that are no longer
    in `devices` (revoked or removed) lose their credentials and every permission.
    """
    listeners = listeners or [parse_listener(DEFAULT_LISTENER)]
    check_username(gateway_user, "gateway username")
    device_list = sorted({check_username(d) for d in devices})
    if gateway_user in device_list:
        raise ConfigError(
            f"device id {gateway_user!r} is the gateway's MQTT username",
            "choose another gateway username with --gateway-user",
        )
    if any(lst.tls for lst in listeners) and tls is None:
        raise ConfigError(
            "an mqtts:// listener needs a server certificate",
            "give --tls-cert FILE and --tls-key FILE",
        )
    if tls is not None:
        if not any(lst.tls for lst in listeners):
            raise ConfigError(
                "TLS files were given but no listener uses TLS",
                "add a listener such as --listener mqtts://0.0.0.0:8883",
            )
        for p in (tls.cert, tls.key, tls.cafile):
            if p is not None and not p.is_file():
                raise ConfigError(f"TLS file {p} does not exist", "give the path of a PEM file")
    if max_packet_size < 1024:
        raise ConfigError(
            f"--max-packet-size {max_packet_size} is too small for a reading",
            "use at least 1024 (the gateway's own limit is 2048 bytes per message)",
        )
    rotate_set = set(rotate)
    unknown = rotate_set - set(device_list) - {gateway_user}
    if unknown:
        raise ConfigError(
            f"cannot rotate unknown user(s) {', '.join(sorted(unknown))}",
            "name a registered device or the gateway user",
        )

    old = load_credentials(credentials_path) or Credentials(gateway_user=gateway_user)
    creds = Credentials(gateway_user=gateway_user, broker=listeners[0].url)
    new_users: list[str] = []
    if old.gateway_user == gateway_user and old.gateway_password and gateway_user not in rotate_set:
        creds.gateway_password = old.gateway_password
    else:
        creds.gateway_password = new_password()
        new_users.append(gateway_user)
    for dev in device_list:
        if dev in old.devices and dev not in rotate_set:
            creds.devices[dev] = old.devices[dev]
        else:
            creds.devices[dev] = new_password()
            new_users.append(dev)
    removed = sorted(set(old.devices) - set(device_list))

    out_dir = out_dir.resolve()
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / "persist").mkdir(exist_ok=True)
    except OSError as e:
        raise StorageError(f"cannot create {out_dir}: {e.strerror}", "choose another --out") from e
    # Credentials first: if writing the broker files fails, the passwords are not lost.
    _write_private(credentials_path, creds.to_json())
    passwd, acl, conf = out_dir / "passwd", out_dir / "acl", out_dir / "mosquitto.conf"
    _write_private(passwd, render_passwd(creds, iterations))
    _write_private(acl, render_acl(gateway_user, device_list))
    _write_private(conf, render_conf(out_dir, listeners, tls, run_as, max_packet_size))
    _hand_over(out_dir, [passwd, acl, conf], run_as)
    return BrokerConfig(conf, passwd, acl, credentials_path, listeners, creds, new_users, removed)


def _hand_over(out_dir: Path, files: list[Path], run_as: str | None) -> None:
    """Let the broker read its files after it drops root privileges.

    Mosquitto started as root switches to `run_as` (default 'mosquitto') before it opens the
    password and ACL files, so when we run as root they must belong to that user.
    """
    if os.geteuid() != 0:
        return
    user = run_as or "mosquitto"
    if user == "root":
        return
    try:
        import pwd

        entry = pwd.getpwnam(user)
    except KeyError:
        return
    try:
        for p in [*files, out_dir / "persist"]:
            os.chown(p, entry.pw_uid, entry.pw_gid)
    except OSError as e:
        raise StorageError(
            f"cannot give the broker files to user {user!r}: {e.strerror}",
            "run the command as that user, or pass --run-as",
        ) from e


def user_urls(cfg: BrokerConfig) -> Mapping[str, str]:
    """Every client's connection URL on the first listener (tests and simulations)."""
    users = [cfg.creds.gateway_user, *sorted(cfg.creds.devices)]
    return {u: cfg.url_for(u) for u in users}
