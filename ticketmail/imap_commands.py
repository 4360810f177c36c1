"""What `ticketmail imap add|edit|list|test|remove|enable|disable` print, and the password prompt.

The password is asked twice without echo (or read from --password-stdin) and never printed.
"""

from __future__ import annotations

from bridge.accounts import SECURITY_PORTS, Secret
from ticketmail.admin import imap
from ticketmail.commands import BY
from ticketmail.terminal import emit, iso, one_line, password, say, warn


def _password(args) -> Secret:
    return password(f"IMAP password for {args.name}", from_stdin=args.password_stdin,
                    hint=" (no terminal to ask? use --password-stdin)")


async def imap_add(db, config, args):
    new = await imap.prepare(
        db, args.name, email=args.email, server=args.server, port=args.port, security=args.security,
        user=args.user, folder=args.folder, after=args.after, department=args.department,
        poll_seconds=args.poll_seconds, ca_file=args.ca_file, verify_tls=not args.insecure_skip_verify, warn=warn)
    added = await imap.add(db, config.bridge, new, _password(args), check=not args.no_test, by=BY)
    account = added.account
    if added.report:
        for line in added.report.lines(account):
            say(f"  {line}")
    say(f"imap account {account.name} added: {account.email} on {account.where()} ({account.security}), "
        f"folder {account.folder}, after import: {account.after}, department {new.department}; "
        "`ticketmail serve` syncs it")


async def imap_test(db, config, args):
    tested = await imap.test(db, config.bridge, args.name)
    account, report = tested.account, tested.report
    data = {"name": account.name, "server": account.server, "port": account.port, "security": account.security,
            "tls": report.tls, "capabilities": report.capabilities, "folder": account.folder,
            "messages": report.messages, "unseen": report.unseen, "uidvalidity": report.uidvalidity,
            "uidnext": report.uidnext, "ok": True}
    emit(data, args.json, report.lines(account) + [f"imap account {account.name}: OK"])


def _account_data(status: imap.Status) -> dict:
    a = status.account
    return {
        "name": a.name, "email": a.email, "server": a.server, "port": a.port, "security": a.security,
        "user": a.username, "folder": a.folder, "after": a.after_action,
        "department": a.department.name if a.department else None, "poll_seconds": a.poll_seconds,
        "enabled": a.enabled, "verify_tls": a.verify_tls, "ca_file": a.ca_file or None,
        "uidvalidity": a.uidvalidity, "last_uid": a.last_uid, "last_sync": iso(a.last_sync),
        "last_error": a.last_error or None, "last_error_at": iso(a.last_error_at), "backlog": a.backlog,
        "synced_by": status.synced_by,
    }


async def imap_list(db, config, args):
    data = [_account_data(status) for status in await imap.list_all(db)]
    emit(data, args.json, [_line(a) for a in data] or ["no IMAP accounts"])


def _line(a: dict) -> str:
    state = "enabled" if a["enabled"] else "disabled"
    sync = f"last sync {a['last_sync']}, backlog {a['backlog']}" if a["last_sync"] else "never synced"
    error = f"\tlast error ({a['last_error_at']}): {one_line(a['last_error'])}" if a["last_error"] else ""
    return (f"{a['name']}\t{a['email']}\t{a['server']}:{a['port']} {a['security']}\t{a['folder']}\t"
            f"after {a['after']}\t{a['department'] or '(by address)'}\t{state}\t{sync}{error}")


async def imap_remove(db, config, args):
    name = await imap.remove(db, args.name, by=BY)
    say(f"imap account {name} removed (the mail it imported stays; nothing changes on the server)")


async def imap_enable(db, config, args):
    say(f"imap account {await imap.enable(db, args.name, by=BY)} enabled")


async def imap_disable(db, config, args):
    say(f"imap account {await imap.disable(db, args.name, by=BY)} disabled")


async def imap_edit(db, config, args):
    row = await imap.get(db, args.name)  # what is not given stays as stored

    def given(value, stored):
        return stored if value is None else value

    security = given(args.security, row.security)
    port = args.port
    if port is None:  # the old security's standard port follows a new --security; any other port stays
        port = None if security != row.security and row.port == SECURITY_PORTS[row.security] else row.port
    new_password = _password(args) if args.password or args.password_stdin else None
    edited = await imap.edit(
        db, config.bridge, row.name, new_name=given(args.new_name, row.name), email=given(args.email, row.email),
        server=given(args.server, row.server), port=port, security=security, user=given(args.user, row.username),
        folder=given(args.folder, row.folder), after=given(args.after, row.after_action),
        department=given(args.department, row.department.name if row.department else ""),
        poll_seconds=given(args.poll_seconds, row.poll_seconds), ca_file=given(args.ca_file, row.ca_file),
        verify_tls=given(args.verify_tls, row.verify_tls), password=new_password, check=not args.no_test,
        warn=warn, by=BY)
    if edited.report:
        for line in edited.report.lines(edited.account):
            say(f"  {line}")
    name = edited.account.name
    say(f"imap account {name} edited: {'; '.join(edited.changes)}" if edited.changes
        else f"imap account {name}: nothing changed")
