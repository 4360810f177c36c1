"""The panel's audit log: who changed what, newest first."""

from __future__ import annotations

from aiohttp import web


def add_routes(router: web.UrlDispatcher) -> None:
    pass
