"""The panel's tickets: the list with filters and search, a ticket with its messages and events, its
attachments as downloads, and its status, priority and tags (ticketmail/admin/tickets.py, as the CLI).

What came in a mail is hostile. Jinja escapes every text; a message's HTML is shown only as nh3 leaves it
(a small allow-list: no script, style, forms or event attributes, no image but a cid: one, links only to
http, https and mailto) and the page's Content-Security-Policy loads nothing anyway. An attachment is
always a download, never a page of this site (see `download`).
"""

from __future__ import annotations

import re
import unicodedata
from datetime import datetime, timedelta, timezone
from urllib.parse import quote, urlencode

import nh3
from aiohttp import web
from markupsafe import Markup

from ticketmail.admin import departments, tickets
from ticketmail.admin.errors import AdminError
from web.keys import DB
from web.panel import by, link, notify, render, row_id, shown_once

FILTERS = ("department", "status", "customer", "tag", "q")
_KEY = re.compile(r"([0-9]{1,17})-([0-9]{1,9})")  # ?before=MICROSECONDS-NUMBER
_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)


# --- the list ---


def _key_text(key: tickets.Key) -> str:
    at, number = key
    return f"{(at - _EPOCH) // timedelta(microseconds=1)}-{number}"


def _key(value: str) -> tickets.Key | None:
    if match := _KEY.fullmatch(value):
        return _EPOCH + timedelta(microseconds=int(match[1])), int(match[2])
    return None


async def ticket_list(request: web.Request) -> web.Response:
    values = {name: request.query.get(name, "").strip() for name in FILTERS}
    filters = tickets.Filters(department=values["department"], status=values["status"],
                              customer=values["customer"], tag=values["tag"], text=values["q"])
    db, errors, page = request.app[DB], {}, tickets.Page([], None)
    try:
        page = await tickets.page(db, filters, before=_key(request.query.get("before", "")))
    except AdminError as e:
        field = "q" if e.field == "text" else e.field
        errors[field if field in values else "form"] = str(e)
    chosen = {name: value for name, value in values.items() if value}
    next_url = (link(request, "tickets") + "?" + urlencode(chosen | {"before": _key_text(page.next)})
                if page.next else None)
    notices, _ = await shown_once(request)
    return render(request, "tickets.html", status=400 if errors else 200, page=page, values=values,
                  errors=errors, filtered=filters.any(), next_url=next_url,
                  first_url=link(request, "tickets") + ("?" + urlencode(chosen) if chosen else ""),
                  paged="before" in request.query, statuses=tickets.STATUSES,
                  departments=[d.name for d in await departments.list_all(db)],
                  notices=notices)


# --- one ticket ---

_TAGS = {"a", "abbr", "b", "blockquote", "br", "caption", "cite", "code", "dd", "div", "dl", "dt", "em", "font",
         "h1", "h2", "h3", "h4", "h5", "h6", "hr", "i", "img", "li", "ol", "p", "pre", "q", "s", "small", "span",
         "strike", "strong", "sub", "sup", "table", "tbody", "td", "tfoot", "th", "thead", "tr", "u", "ul"}
_ATTRIBUTES = {"a": {"href", "title"}, "img": {"src", "alt", "width", "height"}, "td": {"colspan", "rowspan"},
               "th": {"colspan", "rowspan"}}


def _only_cid_images(tag: str, attribute: str, value: str) -> str | None:
    """No image from anywhere else: loading one tells the sender the mail was read, and from where."""
    if tag == "img" and attribute == "src" and not value.lower().startswith("cid:"):
        return None
    return value


def safe_html(html: str) -> Markup:
    """A message's HTML as nh3 leaves it with our allow-list: safe to put in the page as it is."""
    return Markup(nh3.clean(html, tags=_TAGS, clean_content_tags={"script", "style", "title", "head"},
                            attributes=_ATTRIBUTES, attribute_filter=_only_cid_images,
                            url_schemes={"http", "https", "mailto", "cid"}, url_relative="deny",
                            link_rel="noopener noreferrer nofollow", strip_comments=True))


def _number(request: web.Request) -> int | None:
    value = request.match_info["number"]
    return row_id(value)


def _not_found(request: web.Request, number) -> web.Response:
    return render(request, "panel_error.html", status=404, heading="No such ticket",
                  text=f"There is no ticket #{number}.")


async def _ticket_page(request: web.Request, number: int, errors: dict | None = None,
                       values: dict | None = None) -> web.Response:
    try:
        view = await tickets.show(request.app[DB], number)
    except AdminError:
        return _not_found(request, number)
    notices, _ = await shown_once(request)
    ticket = view.row.ticket
    values = {"status": ticket.status, "priority": ticket.priority, "tags": ", ".join(ticket.tags)} | (values or {})
    return render(request, "ticket.html", status=400 if errors else 200, view=view, ticket=ticket,
                  errors=errors or {}, values=values, statuses=tickets.STATUSES, priorities=tickets.PRIORITIES,
                  html={m.id: safe_html(m.html) for m in view.messages if m.html},
                  here=f"tickets/{number}", notices=notices)


async def ticket_page(request: web.Request) -> web.Response:
    number = _number(request)
    if number is None:
        return _not_found(request, request.match_info["number"])
    return await _ticket_page(request, number)


# --- attachments ---

# Served as application/octet-stream whatever they claim: a type a browser would run or render as a
# document (HTML, SVG, XML, scripts) could act as a page of this site.
_ACTIVE = re.compile(r"html|xml|svg|script|multipart/|^text/(?!plain$|csv$|calendar$)")
_MEDIA_TYPE = re.compile(r"[a-z0-9][a-z0-9!#$&^_.+-]{0,63}/[a-z0-9][a-z0-9!#$&^_.+-]{0,126}")
_UNSAFE_ASCII = re.compile(r"[^A-Za-z0-9._ -]+")


def served_type(content_type: str) -> str:
    kind = content_type.split(";", 1)[0].strip().lower()
    if not _MEDIA_TYPE.fullmatch(kind) or _ACTIVE.search(kind):
        return "application/octet-stream"
    return kind


def download_names(filename: str) -> tuple[str, str]:
    """The file's name without any folder, quote or control character: (an ASCII fallback, the UTF-8 name)."""
    name = re.split(r"[/\\]", filename)[-1]
    name = "".join(c for c in name if unicodedata.category(c)[0] != "C" and c not in "\"'").strip().lstrip(".")
    name = name.strip() or "attachment"
    ascii_name = _UNSAFE_ASCII.sub("_", unicodedata.normalize("NFKD", name).encode("ascii", "ignore").decode())
    ascii_name = ascii_name.strip(" _").lstrip(".") or "attachment"
    return ascii_name[:150], name[:200]


def content_disposition(filename: str) -> str:
    """RFC 6266 with an RFC 5987 UTF-8 name for browsers that read it, the ASCII one for the rest."""
    ascii_name, name = download_names(filename)
    return f"attachment; filename=\"{ascii_name}\"; filename*=UTF-8''{quote(name, safe='!#$&+.^_`|~-')}"


async def download(request: web.Request) -> web.Response:
    number, attachment_id = _number(request), row_id(request.match_info["attachment"])
    if number is None or attachment_id is None:
        raise web.HTTPNotFound()
    try:
        found = await tickets.attachment(request.app[DB], number, attachment_id)
    except AdminError:
        return render(request, "panel_error.html", status=404, heading="No such attachment",
                      text=f"Ticket #{number} has no attachment {attachment_id}.")
    response = web.Response(body=found.content, content_type=served_type(found.content_type))
    response.headers["Content-Disposition"] = content_disposition(found.filename)
    # The app's security headers follow (web/middleware.py: nosniff again, and a policy that runs no script).
    response.headers["X-Content-Type-Options"] = "nosniff"
    return response


# --- changes ---


def _change(field: str, apply):
    async def post(request: web.Request) -> web.Response:
        number = _number(request)
        if number is None:
            return _not_found(request, request.match_info["number"])
        value = str((await request.post()).get(field, "")).strip()
        try:
            was = await apply(request.app[DB], number, value, by=by(request))
        except AdminError as e:
            if e.field is None:  # the ticket is gone
                return _not_found(request, number)
            return await _ticket_page(request, number, {field: str(e)}, {field: value})
        now = value if field != "tags" else (", ".join(tickets.parse_tags(value)) or "none")
        before = was if field != "tags" else (", ".join(was) or "none")
        await notify(request, [f"Ticket #{number}: {field} changed from {before} to {now}."])
        raise web.HTTPSeeOther(location=link(request, f"tickets/{number}"))

    return post


async def _set_tags(db, number: int, value: str, *, by: str) -> list[str]:
    return await tickets.set_tags(db, number, tickets.parse_tags(value), by=by)


def add_routes(router: web.UrlDispatcher) -> None:
    router.add_get("/admin/tickets", ticket_list)
    router.add_get("/admin/tickets/{number}", ticket_page)
    router.add_get("/admin/tickets/{number}/attachments/{attachment}", download)
    router.add_post("/admin/tickets/{number}/status", _change("status", tickets.set_status))
    router.add_post("/admin/tickets/{number}/priority", _change("priority", tickets.set_priority))
    router.add_post("/admin/tickets/{number}/tags", _change("tags", _set_tags))
