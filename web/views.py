"""The views: short, each a call into ingest/confirm.py and a page. Errors become pages in middleware.py."""

from __future__ import annotations

import asyncio
import logging
from functools import partial

from aiohttp import web

from ingest import confirm as confirmation
from storage import health as database_health
from web import csrf
from web.keys import DB, PAGES, SERVICES, SITE

log = logging.getLogger(__name__)
DATABASE_SECONDS = 5.0  # a database that hangs is as down as one that refuses


async def health(request: web.Request) -> web.Response:
    """200 when the database answers and every service serve runs is up, else 503; each component's
    state either way. Public: no names but the IMAP accounts', no addresses, no secrets. An IMAP
    account's error is shown, not counted as down: the rest of the mail still flows."""
    db = request.app[DB]
    components: dict[str, dict] = {}
    try:
        await asyncio.wait_for(db.run(database_health.ping), DATABASE_SECONDS)
        imap = await asyncio.wait_for(db.run(database_health.imap_states), DATABASE_SECONDS)
        components["database"] = {"ok": True}
    except Exception as e:  # noqa: BLE001 - any failure is the answer; its details go to the log only
        log.warning("health check: the database did not answer: %s", str(e).splitlines()[0] if str(e) else repr(e))
        components["database"] = {"ok": False, "error": f"did not answer ({type(e).__name__})"}
        imap = None
    services = request.app.get(SERVICES)  # None: an app not run by serve (tests) knows only the database
    for name, trouble in (services.states() if services else {}).items():
        components[name] = {"ok": True} if not trouble else {"ok": False, "error": trouble}
    components["web"] = {"ok": True}  # it answers this
    activity = services.imap_activity() if services else {}
    for account in imap or ():
        if account["name"] in activity:  # synced by this process: what its loop does now
            account["activity"] = activity[account["name"]]
    failing = [name for name, state in components.items() if not state["ok"]]
    body = {"status": "failing" if failing else "ok", "failing": failing, "components": components,
            "imap_accounts": imap}
    return web.json_response(body, status=503 if failing else 200)


async def confirm_page(request: web.Request) -> web.Response:
    """GET and HEAD: who is confirmed for which department, and one button. Changes nothing:
    link scanners and mail gateways fetch links before a person does."""
    pending = await request.app[DB].run(confirmation.pending, request.match_info["token"])
    value = csrf.value_for(request)
    response = request.app[PAGES].render("confirm.html", pending=pending, csrf=value)
    csrf.remember(response, value, secure=request.app[SITE].secure_cookies)
    return response


async def confirm(request: web.Request) -> web.Response:
    """POST: confirm in one transaction, then redirect to the result (post/redirect/get)."""
    token, site = request.match_info["token"], request.app[SITE]
    csrf.check(request, await request.post(), site.public_origin)
    await request.app[DB].run(partial(confirmation.confirm, ticket_prefix=site.ticket_prefix), token, write=True)
    # Relative to /…/confirm/TOKEN, so it stays right behind a reverse proxy with a path prefix.
    raise web.HTTPSeeOther(location=f"{token}/done")


async def confirmed(request: web.Request) -> web.Response:
    tickets = await request.app[DB].run(confirmation.outcome, request.match_info["token"])
    return request.app[PAGES].render("confirmed.html", tickets=tickets, prefix=request.app[SITE].ticket_prefix)
