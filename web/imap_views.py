"""The panel's IMAP accounts: the list with each account's state, "Add IMAP Account", edit, "Test connection",
enable/disable and remove. Each calls ticketmail/admin/imap.py, as `ticketmail imap ...` does; an AdminError
is shown beside its field, and what a POST did is a notice on the page it redirects to."""

from __future__ import annotations

import functools
import re

from aiohttp import web

from bridge.accounts import Secret
from ticketmail.admin import departments, imap
from ticketmail.admin.errors import AdminError
from web.keys import DB, SERVICES
from web.panel import PANEL, by, link, notify, place, render, shown_once

FIELDS = ("name", "email", "server", "port", "security", "user", "folder", "after", "move_folder", "department",
          "poll_seconds", "ca_file")
# The fields an error can sit beside; other errors go on top.
SHOWN = FIELDS + ("password", "confirm", "verify_tls")
UNSENT = {"security": "tls", "folder": "INBOX", "after": "seen", "poll_seconds": "60"}  # a field not sent
NEW = UNSENT | {"port": "993"}  # the add form's first values
_NUMBER = re.compile(r"[0-9]{1,5}")


def _accounts_page(request: web.Request) -> str:
    return link(request, "imap-accounts")


async def accounts(request: web.Request) -> web.Response:
    db = request.app[DB]
    listed = await imap.list_all(db)
    notices, alerts = await shown_once(request)
    services = request.app.get(SERVICES)  # None: an app not run by serve (tests) has no bridge beside it
    return render(request, "imap_accounts.html", accounts=listed, notices=notices, alerts=alerts,
                  one_process=db.is_sqlite, activity=services.imap_activity() if services else {})


# --- the add and edit form ---


async def _form(request, values: dict, errors: dict, warnings: list[str], status: int = 200,
                editing: str | None = None) -> web.Response:
    listed = await departments.list_all(request.app[DB])
    return render(request, "imap_account_form.html", status=status, values=values, errors=errors,
                  warnings=warnings, departments=[d.name for d in listed], editing=editing)


def _values(form) -> dict:
    values = {k: str(form.get(k, UNSENT.get(k, ""))).strip() for k in FIELDS}
    values["verify_tls"] = form.get("skip_verify") != "on"
    values["test"] = form.get("no_test") != "on"
    return values


def _check(values: dict, password: str, confirm: str) -> dict:
    """What the form itself can tell before the admin layer looks: numbers, the move folder, the two passwords."""
    errors = {}
    if values["port"] and not _NUMBER.fullmatch(values["port"]):
        errors["port"] = "A port is a number, e.g. 993."
    if not _NUMBER.fullmatch(values["poll_seconds"]):
        errors["poll_seconds"] = "Seconds between polls: a number, e.g. 60."
    if values["after"] == "move" and not values["move_folder"]:
        errors["move_folder"] = "Name the folder to move imported mail to."
    if password != confirm:
        errors["confirm"] = "The two passwords do not match."
    return errors


def _settings(values: dict) -> dict:
    """The keyword arguments prepare and edit take, from the form's values."""
    after = f"move:{values['move_folder']}" if values["after"] == "move" else values["after"]
    return dict(email=values["email"], server=values["server"],
                port=int(values["port"]) if values["port"] else None, security=values["security"] or "tls",
                user=values["user"], folder=values["folder"], after=after, department=values["department"],
                poll_seconds=int(values["poll_seconds"]), ca_file=values["ca_file"], verify_tls=values["verify_tls"])


async def add_page(request: web.Request) -> web.Response:
    return await _form(request, dict.fromkeys(FIELDS, "") | NEW | {"verify_tls": True, "test": True}, {}, [])


async def add(request: web.Request) -> web.Response:
    """Check, test (unless asked not to) and save; the form again with the errors, or the list."""
    form, db = await request.post(), request.app[DB]
    values = _values(form)
    password, confirm = str(form.get("password", "")), str(form.get("confirm", ""))
    errors, warnings = _check(values, password, confirm), []
    new = None
    if "port" not in errors and "poll_seconds" not in errors:
        try:
            new = await imap.prepare(db, values["name"], **_settings(values), warn=warnings.append)
        except AdminError as e:
            place(errors, e, SHOWN)
    if not errors:
        try:
            added = await imap.add(db, request.app[PANEL].bridge_config, new, Secret(password),
                                   check=values["test"], by=by(request))
        except AdminError as e:
            place(errors, e, SHOWN)
    if errors:
        return await _form(request, values, errors, warnings, status=400)
    account = added.account
    report = added.report.lines(account) if added.report else ["Saved without testing the connection."]
    await notify(request, [*(f"Warning: {w}" for w in warnings), *report,
                            f"IMAP account {account.name} added ({account.email} on {account.where()}, "
                            f"department {new.department}); `ticketmail serve` syncs it."])
    raise web.HTTPSeeOther(location=_accounts_page(request))


def _one_account(view):
    """The view gets the account its path names (as stored); an unknown name is a 404 page."""

    @functools.wraps(view)
    async def one(request: web.Request) -> web.Response:
        try:
            account = await imap.get(request.app[DB], request.match_info["name"])
        except AdminError:
            return render(request, "panel_error.html", status=404, heading="No such IMAP account",
                          text=f"There is no IMAP account {request.match_info['name']}.")
        return await view(request, account)

    return one


@_one_account
async def edit_page(request: web.Request, a) -> web.Response:
    after, _, move_folder = a.after_action.partition(":")
    values = {"name": a.name, "email": a.email, "server": a.server, "port": str(a.port), "security": a.security,
              "user": a.username, "folder": a.folder, "after": after, "move_folder": move_folder,
              "department": a.department.name if a.department else "", "poll_seconds": str(a.poll_seconds),
              "ca_file": a.ca_file, "verify_tls": a.verify_tls, "test": True}
    return await _form(request, values, {}, [], editing=a.name)


@_one_account
async def edit(request: web.Request, account) -> web.Response:
    """Save the changed settings (a blank password keeps the stored one), after a test unless asked not to."""
    name = account.name
    form = await request.post()
    values = _values(form)
    password, confirm = str(form.get("password", "")), str(form.get("confirm", ""))
    errors, warnings = _check(values, password, confirm), []
    if not errors:
        try:
            edited = await imap.edit(request.app[DB], request.app[PANEL].bridge_config, name,
                                     new_name=values["name"], **_settings(values),
                                     password=Secret(password) if password else None, check=values["test"],
                                     warn=warnings.append, by=by(request))
        except AdminError as e:
            place(errors, e, SHOWN)
    if errors:
        return await _form(request, values, errors, warnings, status=400, editing=name)
    account = edited.account
    notices = [f"Warning: {w}" for w in warnings]
    notices += edited.report.lines(account) if edited.report else []
    if not edited.changes:
        notices.append(f"IMAP account {account.name}: nothing changed.")
    else:
        notices.append(f"IMAP account {account.name} saved: {'; '.join(edited.changes)}.")
    if account.name != name:
        notices.append(f"Renamed from {name}: rules scoped account:{name} no longer apply to it, and the mail "
                       f"imported before keeps its source imap:{name}.")
    await notify(request, notices)
    raise web.HTTPSeeOther(location=_accounts_page(request))


# --- actions on one account: test, enable, disable, remove ---


@_one_account
async def test(request: web.Request, account) -> web.Response:
    """Run `imap test` and show its lines (or its one error sentence) on the list."""
    name = account.name
    try:
        tested = await imap.test(request.app[DB], request.app[PANEL].bridge_config, name)
    except AdminError as e:
        await notify(request, alerts=[f"Test connection failed: {e}"])
    else:
        await notify(request, [f"Test connection of {name}:", *tested.report.lines(tested.account),
                                f"IMAP account {name}: OK"])
    raise web.HTTPSeeOther(location=_accounts_page(request))


@_one_account
async def enable(request: web.Request, account) -> web.Response:
    name = await imap.enable(request.app[DB], account.name, by=by(request))
    await notify(request, [f"IMAP account {name} enabled: `ticketmail serve` syncs it again."])
    raise web.HTTPSeeOther(location=_accounts_page(request))


@_one_account
async def disable(request: web.Request, account) -> web.Response:
    name = await imap.disable(request.app[DB], account.name, by=by(request))
    await notify(request, [f"IMAP account {name} disabled: it is not synced until enabled again."])
    raise web.HTTPSeeOther(location=_accounts_page(request))


@_one_account
async def remove_page(request: web.Request, account) -> web.Response:
    """Asks first: the POST form that removes."""
    return render(request, "imap_account_remove.html", account=account)


@_one_account
async def remove(request: web.Request, account) -> web.Response:
    name = await imap.remove(request.app[DB], account.name, by=by(request))
    await notify(request, [f"IMAP account {name} removed. The mail it imported stays; nothing changed on the server."])
    raise web.HTTPSeeOther(location=_accounts_page(request))


def add_routes(router: web.UrlDispatcher) -> None:
    router.add_get("/admin/imap-accounts", accounts)
    router.add_get("/admin/imap-accounts/add", add_page)
    router.add_post("/admin/imap-accounts/add", add)
    router.add_get("/admin/imap-accounts/{name}/edit", edit_page)
    router.add_post("/admin/imap-accounts/{name}/edit", edit)
    router.add_post("/admin/imap-accounts/{name}/test", test)
    router.add_post("/admin/imap-accounts/{name}/enable", enable)
    router.add_post("/admin/imap-accounts/{name}/disable", disable)
    router.add_get("/admin/imap-accounts/{name}/remove", remove_page)
    router.add_post("/admin/imap-accounts/{name}/remove", remove)
