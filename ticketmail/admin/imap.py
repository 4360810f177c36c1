"""The IMAP accounts the bridge syncs. Passwords are encrypted with the bridge key before they reach the
database and are never handed back."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from sqlalchemy.exc import IntegrityError

from bridge.accounts import (
    SECURITY_PORTS,
    Account,
    BridgeKeyError,
    Secret,
    account_from_row,
    check_name,
    decrypt,
    encrypt,
    load_key,
    parse_after,
    port_warning,
)
from bridge.imap import ImapError
from bridge.probe import Report, probe
from ingest import directory
from storage import imap_store, store
from storage.models import ImapAccount, utcnow
from ticketmail.admin import audit
from ticketmail.admin.addresses import address
from ticketmail.admin.errors import AdminError

log = logging.getLogger("ticketmail.imap")

TEST_TIMEOUT = 20.0


@dataclass(frozen=True)
class NewAccount:
    """A new account's settings, checked, not saved yet (`add` saves it)."""

    settings: dict  # Account's fields but id, password, department and enabled
    department_id: int | None  # None: the department that owns the address, looked up on each message
    department: str


@dataclass(frozen=True)
class Tested:
    account: Account
    report: Report | None  # None: saved without testing


@dataclass(frozen=True)
class Status:
    account: ImapAccount  # with its department
    synced_by: str | None  # the `serve` process holding its lease (PostgreSQL only)
    last_subject: str | None = None  # the newest message imported from it: its subject and when
    last_imported_at: datetime | None = None
    lease_expired: bool = False  # synced_by stopped renewing: that process is gone or cut off


def _settings(name, email, server, port, security, user, folder, after, poll_seconds, ca_file, verify_tls,
              warn) -> dict:
    try:
        name = check_name(name)
    except ValueError as e:
        raise AdminError(str(e), field="name") from None
    try:
        after = parse_after(after)
    except ValueError as e:
        raise AdminError(str(e), field="after") from None
    if security not in SECURITY_PORTS:
        raise AdminError(f"security {security!r}: one of {', '.join(SECURITY_PORTS)}", field="security")
    port = port or SECURITY_PORTS[security]
    if not 0 < port < 65536:
        raise AdminError(f"--port {port}: not a TCP port", field="port")
    if warning := port_warning(port):
        warn(warning)
    if poll_seconds < 5:
        raise AdminError("--poll-seconds must be 5 or more", field="poll_seconds")
    if ca_file:
        path = Path(ca_file).expanduser().resolve()
        if not path.is_file():
            raise AdminError(f"--ca-file {ca_file}: no such file", field="ca_file")
        ca_file = str(path)
    email = address(email, field="email")
    if not server.strip():
        raise AdminError("the IMAP server is missing", field="server")
    if not folder.strip():
        raise AdminError("the folder is missing (most servers call the inbox INBOX)", field="folder")
    for field, what, value, most in (("server", "the IMAP server", server.strip(), 255),
                                     ("user", "the user name", user or "", 320),
                                     ("folder", "the folder", folder.strip(), 255),
                                     ("move_folder", "the folder to move to", after.folder, 255)):
        if len(value) > most:  # the column's size: PostgreSQL refuses more
            raise AdminError(f"{what} is longer than {most} characters", field=field)
    return dict(name=name, email=email, server=server.strip(), port=port, security=security,
                username=user or email, folder=folder.strip(), after=after, poll_seconds=poll_seconds,
                ca_file=ca_file, verify_tls=verify_tls)


def _department(s, department: str, email: str) -> tuple[int | None, str]:
    """The department named, or (None, the one that owns `email`): prepare and edit check it alike."""
    if department:
        dept = store.department_by_name(s, department)
        if dept is None:
            raise AdminError(f"no department {department!r} (see `ticketmail department list`)", field="department")
        return dept.id, dept.name
    owner = directory.load(s).department_for(email)
    if owner is None:
        raise AdminError(f"no department owns {email}: give --department NAME, or add the address to a department",
                         field="department")
    return None, owner.name


def _risks(settings: dict, warn: Callable[[str], None]) -> None:
    if settings["security"] == "none":
        warn("--security none: the password and the mail cross the network in clear")
    if not settings["verify_tls"] and settings["security"] != "none":
        warn("--insecure-skip-verify: the server's TLS certificate is not checked (anyone in between "
             "can read the password)")
        log.warning("imap %s: TLS certificate verification turned off by the admin", settings["name"])


async def prepare(db, name: str, *, email: str, server: str, port: int | None = None, security: str = "tls",
                  user: str = "", folder: str = "INBOX", after: str = "seen", department: str = "",
                  poll_seconds: int = 60, ca_file: str = "", verify_tls: bool = True,
                  warn: Callable[[str], None]) -> NewAccount:
    """Check a new account's settings before its password is asked; `warn` gets each risk, in order."""
    settings = _settings(name, email, server, port, security, user, folder, after, poll_seconds, ca_file,
                         verify_tls, warn)

    def resolve(s) -> tuple[int | None, str]:
        if imap_store.account_by_name(s, settings["name"]):
            raise AdminError(f"IMAP account {settings['name']!r} already exists", field="name")
        return _department(s, department, settings["email"])

    department_id, department_name = await db.run(resolve)
    _risks(settings, warn)
    return NewAccount(settings, department_id, department_name)


async def _probe(account: Account, outcome: str = "") -> Report:
    """`imap test`'s connection; a failure is the one sentence why, and `outcome`: what that means here."""
    try:
        return await probe(account, TEST_TIMEOUT)
    except ImapError as e:
        raise AdminError(f"imap test {account.name}: {e}{outcome}") from None


async def add(db, bridge_config, new: NewAccount, password: Secret, *, check: bool = True, by: str) -> Tested:
    """Save the account, after connecting with `password` when `check` (if that fails, nothing is saved)."""
    if not password.reveal():
        raise AdminError("the password is empty; nothing saved", field="password")
    account = Account(id=0, password=password, department=new.department, enabled=True, **new.settings)
    report = await _probe(account, " (nothing saved; --no-test saves it anyway)") if check else None
    try:
        key = load_key(bridge_config, create=True)
    except BridgeKeyError as e:
        raise AdminError(str(e)) from None

    def save(s):
        s.add(ImapAccount(
            name=account.name, email=account.email, server=account.server, port=account.port,
            security=account.security, username=account.username, password_encrypted=encrypt(key, password.reveal()),
            folder=account.folder, after_action=str(account.after), department_id=new.department_id,
            poll_seconds=account.poll_seconds, ca_file=account.ca_file, verify_tls=account.verify_tls, enabled=True,
        ))
        audit.record(s, by, "imap.add", account.name, f"{account.email} on {account.where()}")

    try:
        await db.run(save, write=True)
    except IntegrityError:
        raise AdminError(f"IMAP account {account.name!r} already exists", field="name") from None
    return Tested(account, report)


@dataclass(frozen=True)
class Edited:
    account: Account
    report: Report | None  # None: saved without testing
    changes: list[str]  # what changed, in words (a new password as "password changed"); empty: nothing


# A change to any of these points the account at other mail: its checkpoint starts again.
_MAILBOX = ("server", "port", "username", "folder")
_COLUMNS = {"after": "after_action"}


async def edit(db, bridge_config, name: str, *, new_name: str, email: str, server: str, port: int | None = None,
               security: str = "tls", user: str = "", folder: str = "INBOX", after: str = "seen",
               department: str = "", poll_seconds: int = 60, ca_file: str = "", verify_tls: bool = True,
               password: Secret | None = None, check: bool = True, warn: Callable[[str], None], by: str) -> Edited:
    """Change every setting of account `name`, checked as `prepare` checks a new one. `password` None keeps
    the stored one; a new one is encrypted with the bridge key. With `check`, the new settings must pass
    `imap test` first (if not, nothing changes). Enabled or not stays as it was."""
    settings = _settings(new_name, email, server, port, security, user, folder, after, poll_seconds, ca_file,
                         verify_tls, warn)

    def resolve(s):
        row = imap_store.account_by_name(s, name)
        if row is None:
            raise AdminError(f"no IMAP account {name!r} (see `ticketmail imap list`)")
        other = imap_store.account_by_name(s, settings["name"])
        if other is not None and other.id != row.id:
            raise AdminError(f"IMAP account {settings['name']!r} already exists", field="name")
        return row, _department(s, department, settings["email"])

    row, (department_id, department_name) = await db.run(resolve)
    _risks(settings, warn)
    if password is not None and not password.reveal():
        raise AdminError("the password is empty; nothing changed", field="password")
    key = secret = None
    if password is not None or check:  # a kept password is only opened to test it
        try:
            key = load_key(bridge_config, create=password is not None)
            secret = password or decrypt(key, row.password_encrypted, row.name)
        except BridgeKeyError as e:
            raise AdminError(str(e)) from None
    account = Account(id=row.id, password=secret or Secret(""), department=department_name, enabled=row.enabled,
                      **settings)
    report = await _probe(account, " (nothing changed)") if check else None
    values = dict(settings, after=str(settings["after"]), department_id=department_id)

    def save(s):
        current = imap_store.account_by_id(s, row.id)
        if current is None:
            raise AdminError(f"no IMAP account {name!r}: removed meanwhile")
        if any(getattr(current, f) != values[f] for f in _MAILBOX):
            current.uidvalidity, current.last_uid, current.rescan_below = None, 0, 0
        changes = []
        for field, value in values.items():
            column = _COLUMNS.get(field, field)
            if getattr(current, column) != value:
                if field == "department_id":
                    changes.append(f"department {department_name if value else 'by address'}")
                else:
                    changes.append(f"{field} {getattr(current, column)} -> {value}")
                setattr(current, column, value)
        if password is not None:
            current.password_encrypted = encrypt(key, password.reveal())
            changes.append("password changed")
        if changes:
            audit.record(s, by, "imap.edit", current.name, "; ".join(changes))
        return changes

    try:
        changes = await db.run(save, write=True)
    except IntegrityError:
        raise AdminError(f"IMAP account {settings['name']!r} already exists", field="name") from None
    return Edited(account, report, changes)


async def test(db, bridge_config, name: str) -> Tested:
    """Connect, log in and open the folder; changes nothing on the server."""
    row = await db.run(imap_store.account_by_name, name)
    if row is None:
        raise AdminError(f"no IMAP account {name!r} (see `ticketmail imap list`)")
    try:
        account = account_from_row(row, decrypt(load_key(bridge_config), row.password_encrypted, row.name))
    except BridgeKeyError as e:
        raise AdminError(str(e)) from None
    return Tested(account, await _probe(account))


async def get(db, name: str) -> ImapAccount:
    """One account with its department (never its password in clear)."""
    row = await db.run(imap_store.account_by_name, name)
    if row is None:
        raise AdminError(f"no IMAP account {name!r} (see `ticketmail imap list`)")
    return row


async def list_all(db) -> list[Status]:
    """Every account by name, with who syncs it and the last message it imported."""

    def collect(s):
        holders = imap_store.lease_holders(s) if not db.is_sqlite else {}
        out = []
        for a in imap_store.accounts(s):
            last = imap_store.last_imported(s, f"imap:{a.name}")
            holder, expires = holders.get(a.id, (None, None))
            out.append(Status(a, holder, last.subject if last else None, last.received_at if last else None,
                              expires is not None and expires < utcnow()))
        return out

    return await db.run(collect)


async def _change(db, name: str, change, *, by: str, action: str) -> str:
    def apply(s):
        row = imap_store.account_by_name(s, name)
        if row is None:
            raise AdminError(f"no IMAP account {name!r} (see `ticketmail imap list`)")
        change(s, row)
        audit.record(s, by, action, row.name)
        return row.name

    return await db.run(apply, write=True)


async def remove(db, name: str, *, by: str) -> str:
    """Remove the account (the mail it imported stays); returns its name as stored."""
    return await _change(db, name, lambda s, row: s.delete(row), by=by, action="imap.remove")


async def enable(db, name: str, *, by: str) -> str:
    return await _change(db, name, lambda s, row: setattr(row, "enabled", True), by=by, action="imap.enable")


async def disable(db, name: str, *, by: str) -> str:
    return await _change(db, name, lambda s, row: setattr(row, "enabled", False), by=by, action="imap.disable")
