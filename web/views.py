"""The views: short, each a call into ingest/confirm.py and a page. Errors become pages in middleware.py."""

from __future__ import annotations

from functools import partial

from aiohttp import web

from ingest import confirm as confirmation
from storage import health as database_health
from web import csrf
from web.keys import DB, PAGES, SITE


async def health(request: web.Request) -> web.Response:
    await request.app[DB].run(database_health.ping)
    return web.json_response({"status": "ok"})


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
