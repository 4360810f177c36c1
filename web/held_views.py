"""The panel's held, rejected and failed mail: three lists (a tab each) and the buttons release, discard,
discard and block the sender (asks first), and retry. They call ticketmail/admin/held.py and failed.py, as
`ticketmail held ...` does; every change is a POST, answered by a redirect to its list."""

from __future__ import annotations

import re

from aiohttp import web

from ticketmail.admin import failed, held
from ticketmail.admin.errors import AdminError
from web.keys import DB, SITE
from web.panel import by, link, notify, render, row_id, shown_once

PAGE = 100
_DAYS = re.compile(r"[0-9]{1,5}")
TABS = {"held": "held", "rejected": "held/rejected", "failed": "held/failed"}


def _before(request: web.Request) -> int | None:
    before = request.query.get("before", "")
    return row_id(before)


async def _list(request: web.Request, tab: str, *, status: int = 200, error: str = "") -> web.Response:
    db, before = request.app[DB], _before(request)
    if tab == "held":
        items = await held.held_page(db, limit=PAGE + 1, before=before)
    elif tab == "rejected":
        items = await held.rejected_page(db, limit=PAGE + 1, before=before)
    else:
        items = await failed.page(db, limit=PAGE + 1, before=before)
    notices, _ = await shown_once(request)
    more = len(items) > PAGE
    return render(request, "held.html", status=status, tab=tab, tabs=TABS, items=items[:PAGE], notices=notices,
                  error=error, next_before=items[PAGE - 1].message.id if more else None)


async def held_list(request: web.Request) -> web.Response:
    return await _list(request, "held")


async def rejected_list(request: web.Request) -> web.Response:
    return await _list(request, "rejected")


async def failed_list(request: web.Request) -> web.Response:
    return await _list(request, "failed")


async def _done(request: web.Request, tab: str, notice: str) -> web.Response:
    await notify(request, [notice])
    raise web.HTTPSeeOther(location=link(request, TABS[tab]))


def _id(request: web.Request) -> int:
    return int(request.match_info["id"])


def _still(sender: str, count: int) -> str:
    return f" {count} more message{'s' if count > 1 else ''} from {sender} still held." if count else ""


async def release(request: web.Request) -> web.Response:
    message_id = _id(request)
    try:
        done = await held.release(request.app[DB], message_id, ticket_prefix=request.app[SITE].ticket_prefix,
                                  by=by(request))
    except AdminError as e:
        return await _list(request, "held", status=400, error=str(e))
    closed = f" {done.sender}'s pending challenge was closed." if done.challenge_closed else ""
    return await _done(request, "held", f"Message {message_id} released as ticket #{done.ticket}."
                                        f"{closed}{_still(done.sender, done.still_held)}")


async def discard(request: web.Request) -> web.Response:
    message_id = _id(request)
    try:
        done = await held.discard(request.app[DB], message_id, by=by(request))
    except AdminError as e:
        return await _list(request, "held", status=400, error=str(e))
    return await _done(request, "held", f"Message {message_id} from {done.sender or '(no sender)'} discarded; "
                                        "it is listed under Rejected and deleted until purged.")


async def block_page(request: web.Request) -> web.Response:
    """Asks first: what discarding and blocking would do, and the button that does it."""
    message_id = _id(request)
    [item] = [i for i in await held.held_page(request.app[DB], limit=1, before=message_id + 1)
              if i.message.id == message_id] or [None]
    if item is None:
        return await _list(request, "held", status=404, error=f"Message {message_id} is not held (any more).")
    return render(request, "held_block.html", item=item)


async def block(request: web.Request) -> web.Response:
    message_id = _id(request)
    try:
        done = await held.discard(request.app[DB], message_id, block=True, by=by(request))
    except AdminError as e:
        return await _list(request, "held", status=400, error=str(e))
    return await _done(request, "held", f"Message {message_id} discarded and {done.sender} blocked: their mail is "
                                        f"deleted on arrival.{_still(done.sender, done.still_held)}")


async def retry(request: web.Request) -> web.Response:
    message_id = _id(request)
    try:
        done = await failed.retry(request.app[DB], message_id, ticket_prefix=request.app[SITE].ticket_prefix,
                                  settings=request.app[SITE].challenge, by=by(request))
    except AdminError as e:
        return await _list(request, "failed", status=400, error=str(e))
    if done.status == "failed":
        return await _done(request, "failed", f"Message {message_id} failed again: {done.reason}")
    now = f"ticket #{done.ticket}" if done.ticket else done.status
    return await _done(request, "failed", f"Message {message_id} processed again: {now} ({done.reason}).")


def _days(value: str) -> tuple[int | None, dict]:
    if not _DAYS.fullmatch(value.strip()) or int(value) > 36500:
        return None, {"days": "A whole number of days, from 0 to 36500."}
    return int(value), {}


async def _purge_form(request: web.Request, value: str, errors: dict) -> web.Response:
    """The purge page for `value` days: how many messages it would empty, or the error beside the field."""
    count = None
    if not errors:
        days, errors = _days(value)
        if not errors:
            count = await held.purgeable(request.app[DB], days)
    return render(request, "held_purge.html", status=400 if errors else 200, days=value, errors=errors, count=count)


async def purge_page(request: web.Request) -> web.Response:
    """Asks first: how many messages a purge of mail older than `days` would empty (GET: nothing changes)."""
    return await _purge_form(request, request.query.get("days", str(request.app[SITE].held_days)), {})


async def purge(request: web.Request) -> web.Response:
    value = str((await request.post()).get("days", ""))
    days, errors = _days(value)
    if errors:
        return await _purge_form(request, value, errors)
    try:
        count = await held.purge(request.app[DB], days, by=by(request))
    except AdminError as e:
        return await _purge_form(request, value, {e.field or "days": str(e)})
    return await _done(request, "rejected", f"{count} messages purged (held, deleted or rejected more than {days} "
                                            "days ago); their records and event logs remain.")


def add_routes(router: web.UrlDispatcher) -> None:
    router.add_get("/admin/held", held_list)
    router.add_get("/admin/held/rejected", rejected_list)
    router.add_get("/admin/held/failed", failed_list)
    router.add_post(r"/admin/held/{id:\d{1,9}}/release", release)
    router.add_post(r"/admin/held/{id:\d{1,9}}/discard", discard)
    router.add_get(r"/admin/held/{id:\d{1,9}}/discard-and-block", block_page)
    router.add_post(r"/admin/held/{id:\d{1,9}}/discard-and-block", block)
    router.add_post(r"/admin/held/failed/{id:\d{1,9}}/retry", retry)
    router.add_get("/admin/held/purge", purge_page)
    router.add_post("/admin/held/purge", purge)
