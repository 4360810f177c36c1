"""Configuration: a TOML file, every key overridable by TICKETMAIL_<SECTION>_<KEY>.

Read by hand (_coerce, _apply), not with pydantic-settings: it could keep this contract (errors naming the
key, and the variable a value came from), but importing it costs ~0.2 s, which every `ticketmail` command
would pay (measured with `python -X importtime`, against ~0.5 s for all of ticketmail.cli).
"""

from __future__ import annotations

import os
import re
import tomllib
from dataclasses import dataclass, field, fields
from pathlib import Path

from ingest.challenges import PUBLIC_URL, ChallengeSection  # the [challenge] section lives beside what it configures


class ConfigError(ValueError):
    pass


@dataclass
class LMTP:
    host: str = "127.0.0.1"
    port: int = 8024
    socket: str = ""
    socket_mode: str = "0660"  # the socket's permissions, octal: the MTA's user must be able to connect
    socket_group: str = ""  # the socket's group, e.g. "postfix"; "" = the process's group
    max_message_bytes: int = 26214400
    max_sessions: int = 100  # connections at once; beyond it 421 at the greeting
    idle_seconds: int = 300  # a session that delivers nothing for this long is closed (NOOPs don't count)
    max_inflight_bytes: int = 104857600  # message bytes being received or stored at once; beyond it 452
    hostname: str = ""  # the name in the greeting; "" = this host's name


@dataclass
class Web:
    host: str = "127.0.0.1"
    port: int = 8080
    public_url: str = PUBLIC_URL


@dataclass
class SMTP:
    host: str = "127.0.0.1"
    port: int = 25
    security: str = "none"
    username: str = ""
    password: str = ""
    timeout: int = 30  # seconds per SMTP conversation


@dataclass
class Bridge:
    key_file: str = "var/secret.key"
    key: str = ""  # the Fernet key itself, usually from TICKETMAIL_BRIDGE_KEY; wins over key_file
    lease_seconds: int = 30  # PostgreSQL: another process takes an account over this long after its holder died


@dataclass
class Metrics:
    enabled: bool = False  # /metrics (Prometheus) on a listener of its own, never on the web port
    host: str = "127.0.0.1"
    port: int = 9465


@dataclass
class Log:
    format: str = "text"  # text | json (one JSON object per line)


@dataclass
class Config:
    database_url: str = "sqlite+aiosqlite:///var/ticketmail.db"
    ticket_prefix: str = "Ticket"
    resubmission_days: int = 7  # the same Message-ID and body again within this many days: one message; 0 = off
    lmtp: LMTP = field(default_factory=LMTP)
    web: Web = field(default_factory=Web)
    smtp: SMTP = field(default_factory=SMTP)
    challenge: ChallengeSection = field(default_factory=ChallengeSection)
    bridge: Bridge = field(default_factory=Bridge)
    metrics: Metrics = field(default_factory=Metrics)
    log: Log = field(default_factory=Log)


def _coerce(key: str, value, default):
    """Convert a file or environment value to the type of the key's default, or name the key."""
    kind = type(default)
    if isinstance(value, str) and kind is not str:
        text = value.strip().lower()
        if kind is bool and text in ("true", "1", "yes", "on", "false", "0", "no", "off"):
            return text in ("true", "1", "yes", "on")
        if kind is int:
            try:
                return int(text)
            except ValueError:
                pass
        raise ConfigError(f"{key}: expected {kind.__name__}, got {value!r}")
    if kind is int and isinstance(value, bool) or not isinstance(value, kind):
        raise ConfigError(f"{key}: expected {kind.__name__}, got {value!r}")
    return value


def _apply(obj, data: dict, prefix: str, env: dict, origin: dict[str, str]) -> None:
    """Set `obj`'s keys from the file's `data`, then from the environment; `origin` records which key's
    value came from which environment variable, so that a later check names the variable."""
    known = {f.name for f in fields(obj)}
    for key in data:
        if key not in known:
            raise ConfigError(f"{prefix}{key}: unknown configuration key")
    for f in fields(obj):
        current = getattr(obj, f.name)
        name = f"{prefix}{f.name}"
        if hasattr(current, "__dataclass_fields__"):
            section = data.get(f.name, {})
            if not isinstance(section, dict):
                raise ConfigError(f"{name}: expected a [{f.name}] table")
            _apply(current, section, f"{name}.", env, origin)
            continue
        if f.name in data:
            setattr(obj, f.name, _coerce(name, data[f.name], current))
        env_name = "TICKETMAIL_" + name.replace(".", "_").upper()
        if env_name in env:
            setattr(obj, f.name, _coerce(env_name, env[env_name], current))
            origin[name] = env_name


DRIVERS = ("sqlite+aiosqlite", "postgresql+asyncpg")


def _check_database_url(url: str, key: str) -> None:
    """One line naming the key for a URL SQLAlchemy cannot use, instead of its traceback."""
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    try:
        driver = make_url(url).drivername
    except (ArgumentError, ValueError):
        raise ConfigError(f"{key}: not a database URL: {url!r}; expected sqlite+aiosqlite:///PATH "
                          "or postgresql+asyncpg://USER@HOST/NAME") from None
    if driver not in DRIVERS:
        raise ConfigError(f"{key}: driver {driver!r} is not supported; expected one of {', '.join(DRIVERS)}")


def load(path: str | None = None, env: dict | None = None) -> Config:
    """Load the config file (or TICKETMAIL_CONFIG, or none) and apply environment overrides."""
    env = dict(os.environ if env is None else env)
    path = path or env.get("TICKETMAIL_CONFIG")
    data: dict = {}
    if path:
        try:
            data = tomllib.loads(Path(path).read_text())
        except FileNotFoundError:
            raise ConfigError(f"config file {path} does not exist") from None
        except tomllib.TOMLDecodeError as e:
            raise ConfigError(f"config file {path}: {e}") from None
    config, origin = Config(), {}
    _apply(config, data, "", env, origin)
    _check(config, lambda key: f"{key} (from {origin[key]})" if key in origin else key)
    return config


def _check(config: Config, named) -> None:
    """Values, not only types: each refusal names its key (`named(key)` adds the environment variable the
    value came from, if it came from one)."""

    def refuse(key: str, expected: str, got) -> None:
        raise ConfigError(f"{named(key)}: expected {expected}, got {got!r}")

    if config.smtp.security not in ("none", "starttls", "tls"):
        refuse("smtp.security", "none, starttls or tls", config.smtp.security)
    _check_database_url(config.database_url, named("database_url"))
    if config.resubmission_days < 0:
        refuse("resubmission_days", "0 or more", config.resubmission_days)
    for key in ("lmtp.port", "web.port", "smtp.port", "metrics.port"):
        section, name = key.split(".")
        port = getattr(getattr(config, section), name)
        if not 0 <= port <= 65535:  # 0: any free port (tests)
            refuse(key, "a port from 1 to 65535", port)
    for key in ("token_days", "held_days"):
        if getattr(config.challenge, key) < 1:
            refuse(f"challenge.{key}", "1 or more", getattr(config.challenge, key))
    if not re.fullmatch(r"https?://[^\s/?#]+(/[^\s?#]*)?", config.web.public_url):
        refuse("web.public_url", "an http:// or https:// URL", config.web.public_url)
    lmtp = config.lmtp
    if not re.fullmatch(r"0?[0-7]{3}", lmtp.socket_mode):
        refuse("lmtp.socket_mode", 'octal permissions like "0660"', lmtp.socket_mode)
    for key in ("max_message_bytes", "max_sessions", "idle_seconds"):
        if getattr(lmtp, key) < 1:
            refuse(f"lmtp.{key}", "1 or more", getattr(lmtp, key))
    if lmtp.max_inflight_bytes < lmtp.max_message_bytes:
        refuse("lmtp.max_inflight_bytes", f"at least lmtp.max_message_bytes ({lmtp.max_message_bytes})",
               lmtp.max_inflight_bytes)
    if config.log.format not in ("text", "json"):
        refuse("log.format", "text or json", config.log.format)
    if config.metrics.enabled and config.metrics.port and config.metrics.port == config.web.port:
        refuse("metrics.port", f"a port other than web.port ({config.web.port}): the metrics must not be "
                               "served on the public web port", config.metrics.port)
    if config.bridge.lease_seconds < 3:
        refuse("bridge.lease_seconds", "3 or more", config.bridge.lease_seconds)
