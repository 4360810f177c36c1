"""`ticketmail imap add|list|test|remove|enable|disable`: the IMAP accounts the bridge syncs.

Passwords are asked twice without echo (or read from --password-stdin), encrypted with the bridge key
before they reach the database, and never printed.
"""

from __future__ import annotations

import getpass
import logging
import sys
from pathlib import Path

from sqlalchemy.exc import IntegrityError

from bridge.accounts import (
    SECURITY_PORTS,
    Account,
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
from bridge.probe import probe
from ingest import directory
from storage import imap_store, store
from storage.models import ImapAccount
from ticketmail.cli import CommandError, emit, one_line, say

log = logging.getLogger("ticketmail.imap")

TEST_TIMEOUT = 20.0


def _warn(text: str) -> None:
    print(f"ticketmail: warning: {one_line(text)}", file=sys.stderr)


def _email(text: str) -> str:
    address = text.strip().lower()
    local, at, domain = address.rpartition("@")
    if not at or not local or not domain or " " in address or "*" in address:
        raise CommandError(f"{text!r} is not an email address")
    return address


def _password(args) -> Secret:
    """From stdin (one line) or asked twice without echo; both must match, like the seed's confirm field."""
    try:
        if args.password_stdin:
            password = sys.stdin.readline().rstrip("\r\n")
        else:
            password = getpass.getpass(f"IMAP password for {args.name}: ")
            if getpass.getpass("Repeat the password: ") != password:
                raise CommandError("the two passwords do not match; nothing saved")
    except EOFError:
        raise CommandError("no password given (no terminal to ask? use --password-stdin)") from None
    if not password:
        raise CommandError("the password is empty; nothing saved")
    return Secret(password)


def _settings(args) -> dict:
    """The account's settings from the command line, checked; raises CommandError naming the problem."""
    try:
        name = check_name(args.name)
        after = parse_after(args.after)
    except ValueError as e:
        raise CommandError(str(e)) from None
    port = args.port or SECURITY_PORTS[args.security]
    if not 0 < port < 65536:
        raise CommandError(f"--port {port}: not a TCP port")
    if warning := port_warning(port):
        _warn(warning)
    if args.poll_seconds < 5:
        raise CommandError("--poll-seconds must be 5 or more")
    ca_file = ""
    if args.ca_file:
        path = Path(args.ca_file).expanduser().resolve()
        if not path.is_file():
            raise CommandError(f"--ca-file {args.ca_file}: no such file")
        ca_file = str(path)
    email = _email(args.email)
    return dict(name=name, email=email, server=args.server.strip(), port=port, security=args.security,
                username=args.user or email, folder=args.folder, after=after, poll_seconds=args.poll_seconds,
                ca_file=ca_file, verify_tls=not args.insecure_skip_verify)


async def imap_add(db, config, args):
    settings = _settings(args)

    def resolve(s) -> tuple[int | None, str]:
        if imap_store.account_by_name(s, settings["name"]):
            raise CommandError(f"IMAP account {settings['name']!r} already exists")
        if args.department:
            dept = store.department_by_name(s, args.department)
            if dept is None:
                raise CommandError(f"no department {args.department!r} (see `ticketmail department list`)")
            return dept.id, dept.name
        owner = directory.load(s).department_for(settings["email"])
        if owner is None:
            raise CommandError(f"no department owns {settings['email']}: give --department NAME, or add the "
                               "address to a department")
        return None, owner.name

    department_id, department = await db.run(resolve)
    if settings["security"] == "none":
        _warn("--security none: the password and the mail cross the network in clear")
    if not settings["verify_tls"] and settings["security"] != "none":
        _warn("--insecure-skip-verify: the server's TLS certificate is not checked (anyone in between "
              "can read the password)")
        log.warning("imap %s: TLS certificate verification turned off by the admin", settings["name"])
    password = _password(args)
    account = Account(id=0, password=password, department=department, enabled=True, **settings)
    report = None
    if not args.no_test:
        try:
            report = await probe(account, TEST_TIMEOUT)
        except ImapError as e:
            raise CommandError(f"imap test {account.name}: {e} (nothing saved; --no-test saves it anyway)") from None
    key = load_key(config.bridge, create=True)

    def add(s):
        s.add(ImapAccount(
            name=account.name, email=account.email, server=account.server, port=account.port,
            security=account.security, username=account.username, password_encrypted=encrypt(key, password.reveal()),
            folder=account.folder, after_action=str(account.after), department_id=department_id,
            poll_seconds=account.poll_seconds, ca_file=account.ca_file, verify_tls=account.verify_tls, enabled=True,
        ))

    try:
        await db.run(add, write=True)
    except IntegrityError:
        raise CommandError(f"IMAP account {account.name!r} already exists") from None
    if report:
        for line in report.lines(account):
            say(f"  {line}")
    say(f"imap account {account.name} added: {account.email} on {account.where()} ({account.security}), "
          f"folder {account.folder}, after import: {account.after}, department {department}; "
          "`ticketmail serve` syncs it")


async def _account(db, config, name: str) -> Account:
    row = await db.run(imap_store.account_by_name, name)
    if row is None:
        raise CommandError(f"no IMAP account {name!r} (see `ticketmail imap list`)")
    return account_from_row(row, decrypt(load_key(config.bridge), row.password_encrypted, row.name))


async def imap_test(db, config, args):
    account = await _account(db, config, args.name)
    try:
        report = await probe(account, TEST_TIMEOUT)
    except ImapError as e:
        raise CommandError(f"imap test {account.name}: {e}") from None
    data = {"name": account.name, "server": account.server, "port": account.port, "security": account.security,
            "tls": report.tls, "capabilities": report.capabilities, "folder": account.folder,
            "messages": report.messages, "unseen": report.unseen, "uidvalidity": report.uidvalidity,
            "uidnext": report.uidnext, "ok": True}
    emit(data, args.json, report.lines(account) + [f"imap account {account.name}: OK"])


def _iso(value):
    return value.isoformat() if value else None


async def imap_list(db, config, args):
    def collect(s):
        holders = imap_store.lease_holders(s) if not db.is_sqlite else {}
        return [{
            "name": a.name, "email": a.email, "server": a.server, "port": a.port, "security": a.security,
            "user": a.username, "folder": a.folder, "after": a.after_action,
            "department": a.department.name if a.department else None, "poll_seconds": a.poll_seconds,
            "enabled": a.enabled, "verify_tls": a.verify_tls, "ca_file": a.ca_file or None,
            "uidvalidity": a.uidvalidity, "last_uid": a.last_uid, "last_sync": _iso(a.last_sync),
            "last_error": a.last_error or None, "last_error_at": _iso(a.last_error_at), "backlog": a.backlog,
            "synced_by": holders[a.id][0] if a.id in holders else None,
        } for a in imap_store.accounts(s)]

    data = await db.run(collect)
    emit(data, args.json, [_line(a) for a in data] or ["no IMAP accounts"])


def _line(a: dict) -> str:
    state = "enabled" if a["enabled"] else "disabled"
    sync = f"last sync {a['last_sync']}, backlog {a['backlog']}" if a["last_sync"] else "never synced"
    error = f"\tlast error ({a['last_error_at']}): {one_line(a['last_error'])}" if a["last_error"] else ""
    return (f"{a['name']}\t{a['email']}\t{a['server']}:{a['port']} {a['security']}\t{a['folder']}\t"
            f"after {a['after']}\t{a['department'] or '(by address)'}\t{state}\t{sync}{error}")


async def _change(db, name: str, change) -> str:
    def apply(s):
        row = imap_store.account_by_name(s, name)
        if row is None:
            raise CommandError(f"no IMAP account {name!r} (see `ticketmail imap list`)")
        change(s, row)
        return row.name

    return await db.run(apply, write=True)


async def imap_remove(db, config, args):
    name = await _change(db, args.name, lambda s, row: s.delete(row))
    say(f"imap account {name} removed (the mail it imported stays; nothing changes on the server)")


async def imap_enable(db, config, args):
    name = await _change(db, args.name, lambda s, row: setattr(row, "enabled", True))
    say(f"imap account {name} enabled")


async def imap_disable(db, config, args):
    name = await _change(db, args.name, lambda s, row: setattr(row, "enabled", False))
    say(f"imap account {name} disabled")
