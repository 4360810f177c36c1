"""The panel's IMAP accounts: the list with each account's state, and "Add IMAP Account". Both call
ticketmail/admin/imap.py, as `ticketmail imap list|add` do; an AdminError is shown beside its field."""

from __future__ import annotations

import re

import aiohttp_session
from aiohttp import web

from bridge.accounts import Secret
from ticketmail.admin import departments, imap
from ticketmail.admin.errors import AdminError
from web.keys import DB
from web.panel import PANEL, by, link, render

FIELDS = ("name", "email", "server", "port", "security", "user", "department")
SHOWN = FIELDS + ("password", "confirm")  # the fields an error can sit beside; other errors go on top
NEW = {"port": "993", "security": "tls"}
_PORT = re.compile(r"[0-9]{1,5}")


async def accounts(request: web.Request) -> web.Response:
    listed = await imap.list_all(request.app[DB])
    notices = (await aiohttp_session.get_session(request)).pop("notices", [])  # shown once, after an add
    return render(request, "imap_accounts.html", accounts=listed, notices=notices)


async def _form(request, values: dict, errors: dict, warnings: list[str], status: int = 200) -> web.Response:
    listed = await departments.list_all(request.app[DB])
    return render(request, "imap_account_add.html", status=status, values=values, errors=errors, warnings=warnings,
                  departments=[d.name for d in listed])


async def add_page(request: web.Request) -> web.Response:
    return await _form(request, dict.fromkeys(FIELDS, "") | NEW, {}, [])


async def add(request: web.Request) -> web.Response:
    """Check, test (unless asked not to) and save; the form again with the errors, or the list."""
    form, db = await request.post(), request.app[DB]
    values = {k: str(form.get(k, "")).strip() for k in FIELDS}
    password, confirm = str(form.get("password", "")), str(form.get("confirm", ""))
    errors, warnings = {}, []
    if values["port"] and not _PORT.fullmatch(values["port"]):
        errors["port"] = "A port is a number, e.g. 993."
    if password != confirm:
        errors["confirm"] = "The two passwords do not match."
    new = None
    if "port" not in errors:
        try:
            new = await imap.prepare(
                db, values["name"], email=values["email"], server=values["server"],
                port=int(values["port"]) if values["port"] else None, security=values["security"] or "tls",
                user=values["user"], department=values["department"], warn=warnings.append)
        except AdminError as e:
            errors.setdefault(e.field if e.field in SHOWN else "form", str(e))
    if not errors:
        try:
            added = await imap.add(db, request.app[PANEL].bridge_config, new, Secret(password),
                                   check=form.get("no_test") != "on", by=by(request))
        except AdminError as e:
            errors[e.field if e.field in SHOWN else "form"] = str(e)
    if errors:
        return await _form(request, values, errors, warnings, status=400)
    account = added.account
    report = added.report.lines(account) if added.report else ["Saved without testing the connection."]
    (await aiohttp_session.get_session(request))["notices"] = [
        *(f"Warning: {w}" for w in warnings), *report, f"IMAP account {account.name} added ({account.email} on {account.where()}, "
                            f"department {new.department}); `ticketmail serve` syncs it."]
    raise web.HTTPSeeOther(location=link(request, "imap-accounts"))


def add_routes(router: web.UrlDispatcher) -> None:
    router.add_get("/admin/imap-accounts", accounts)
    router.add_get("/admin/imap-accounts/add", add_page)
    router.add_post("/admin/imap-accounts/add", add)
