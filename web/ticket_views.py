"""The panel's tickets: the list with filters and search, a ticket with its messages and events."""

from __future__ import annotations

from aiohttp import web


def add_routes(router: web.UrlDispatcher) -> None:
    pass
