"""The panel's audit log: who changed what, newest first, a page at a time (by id: no OFFSET)."""

from __future__ import annotations

from aiohttp import web

from ticketmail.admin import audit
from web.keys import DB
from web.panel import render, row_id

PAGE = 100


async def audit_log(request: web.Request) -> web.Response:
    before = request.query.get("before", "")
    entries = await audit.recent(request.app[DB], limit=PAGE + 1,
                                 before=row_id(before))
    more = len(entries) > PAGE
    return render(request, "audit.html", entries=entries[:PAGE], next_before=entries[PAGE - 1].id if more else None)


def add_routes(router: web.UrlDispatcher) -> None:
    router.add_get("/admin/audit", audit_log)
