"""The panel's processing rules: listed per scope in order; create, edit, delete, reorder; try a rule."""

from __future__ import annotations

from aiohttp import web


def add_routes(router: web.UrlDispatcher) -> None:
    pass
