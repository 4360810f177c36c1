"""IMAP accounts as the bridge sees them: settings, the encrypted password, and the key that opens it.

Passwords are Fernet tokens at rest. The key comes from `[bridge] key` (TICKETMAIL_BRIDGE_KEY) or from
`[bridge] key_file`, which is created with mode 0600 when an account is first added. A password is held
as a `Secret`, whose repr never shows it, so it cannot leak into a log line or a traceback by accident.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

from cryptography.fernet import Fernet, InvalidToken

from storage.files import private_folder

SECURITY_PORTS = {"tls": 993, "starttls": 143, "none": 143}
POP3_PORTS = {110: "POP3", 995: "POP3 over TLS"}
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


class BridgeKeyError(Exception):
    """The key to the stored IMAP passwords is missing, unreadable or wrong (one line for the operator)."""


class Secret:
    """A password that shows as ******** in any repr or str; `reveal()` is the one way to read it."""

    __slots__ = ("_value",)

    def __init__(self, value: str):
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "Secret('********')"

    __str__ = __repr__

    def __eq__(self, other) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)


@dataclass(frozen=True)
class AfterAction:
    """What is done on the server once a message is committed: seen | move:FOLDER | delete."""

    kind: str
    folder: str = ""

    def __str__(self) -> str:
        return f"move:{self.folder}" if self.kind == "move" else self.kind


def parse_after(text: str) -> AfterAction:
    """`seen`, `delete` or `move:FOLDER`; ValueError with the reason otherwise."""
    kind, colon, folder = text.strip().partition(":")
    kind = kind.lower()
    if kind in ("seen", "delete") and not colon:
        return AfterAction(kind)
    if kind == "move" and folder.strip():
        return AfterAction("move", folder.strip())
    raise ValueError(f"after-action {text!r}: expected seen, delete or move:FOLDER")


def check_name(name: str) -> str:
    if not NAME_RE.match(name):
        raise ValueError(f"account name {name!r}: use letters, digits, '.', '_' or '-' (up to 64)")
    return name


def port_warning(port: int) -> str | None:
    """A warning for the ports people confuse with IMAP's (the seed's form says 110)."""
    if port in POP3_PORTS:
        return (f"port {port} is the {POP3_PORTS[port]} port, not IMAP's: IMAP over TLS is 993, "
                "IMAP with STARTTLS 143")
    return None


@dataclass(frozen=True)
class Account:
    """A snapshot of one account's settings; equal snapshots mean the running sync can go on unchanged."""

    id: int
    name: str
    email: str
    server: str
    port: int
    security: str  # tls | starttls | none
    username: str
    password: Secret
    folder: str
    after: AfterAction
    department: str | None  # None: the department that owns `email`
    poll_seconds: int
    ca_file: str
    verify_tls: bool
    enabled: bool

    @property
    def source(self) -> str:
        return f"imap:{self.name}"

    def where(self) -> str:
        return f"{self.server}:{self.port}"


def account_from_row(row, password: Secret) -> Account:
    return Account(
        id=row.id, name=row.name, email=row.email, server=row.server, port=row.port, security=row.security,
        username=row.username, password=password, folder=row.folder, after=parse_after(row.after_action),
        department=row.department.name if row.department else None, poll_seconds=row.poll_seconds,
        ca_file=row.ca_file, verify_tls=row.verify_tls, enabled=row.enabled,
    )


# --- the key ---


def _valid_key(text: str, where: str) -> Fernet:
    try:
        return Fernet(text.strip().encode())
    except ValueError:
        raise BridgeKeyError(f"{where} is not a Fernet key (32 url-safe base64-encoded bytes)") from None


def load_key(bridge_config, create: bool = False) -> Fernet:
    """The Fernet key of `[bridge]`: `key` if set, else `key_file` (created 0600 when `create` and missing)."""
    if bridge_config.key:
        return _valid_key(bridge_config.key, "TICKETMAIL_BRIDGE_KEY ([bridge] key)")
    path = Path(bridge_config.key_file)
    try:
        return _valid_key(path.read_text(), f"key file {path}")
    except FileNotFoundError:
        if not create:
            raise BridgeKeyError(
                f"key file {path} does not exist: it holds the key to the IMAP passwords "
                "(set [bridge] key_file or TICKETMAIL_BRIDGE_KEY to the key they were stored with)"
            ) from None
    except OSError as e:
        raise BridgeKeyError(f"cannot read key file {path}: {e.strerror}") from None
    return _create_key_file(path)


def _create_key_file(path: Path) -> Fernet:
    key = Fernet.generate_key()
    private_folder(path.parent)
    try:
        # O_EXCL: never overwrite a key another process just wrote; 0600 from the first byte.
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return _valid_key(path.read_text(), f"key file {path}")
    except OSError as e:
        raise BridgeKeyError(f"cannot create key file {path}: {e.strerror}") from None
    with os.fdopen(fd, "wb") as f:
        f.write(key + b"\n")
    return Fernet(key)


def encrypt(key: Fernet, password: str) -> bytes:
    return key.encrypt(password.encode("utf-8"))


def decrypt(key: Fernet, token: bytes, account: str) -> Secret:
    try:
        return Secret(key.decrypt(bytes(token)).decode("utf-8"))
    except InvalidToken:
        raise BridgeKeyError(
            f"the bridge key does not open the password of IMAP account {account}: "
            "wrong [bridge] key_file or TICKETMAIL_BRIDGE_KEY"
        ) from None
