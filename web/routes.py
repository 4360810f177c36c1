"""Every URL of the web app, in one place."""

from __future__ import annotations

from aiohttp import web

from web import views


def setup_routes(app: web.Application) -> None:
    app.router.add_get("/healthz", views.health)
    app.router.add_get("/confirm/{token}", views.confirm_page)  # HEAD too; neither changes anything
    app.router.add_post("/confirm/{token}", views.confirm)
    app.router.add_get("/confirm/{token}/done", views.confirmed)
