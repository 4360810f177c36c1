"""Every URL of the web app: the public pages here, the admin panel's by the module of each section."""

from __future__ import annotations

from aiohttp import web

from web import (
    audit_views,
    directory_views,
    held_views,
    imap_views,
    panel_views,
    rules_views,
    ticket_views,
    views,
)


def setup_routes(app: web.Application) -> None:
    app.router.add_get("/healthz", views.health)
    app.router.add_get("/confirm/{token}", views.confirm_page)  # HEAD too; neither changes anything
    app.router.add_post("/confirm/{token}", views.confirm)
    app.router.add_get("/confirm/{token}/done", views.confirmed)

    # The admin panel: every page but sign-in needs a session, every POST a CSRF token (web/panel.py).
    app.router.add_get("/admin", panel_views.to_home)
    app.router.add_get("/admin/", panel_views.home)
    app.router.add_get("/admin/sign-in", panel_views.sign_in_page)
    app.router.add_post("/admin/sign-in", panel_views.sign_in)
    app.router.add_post("/admin/sign-out", panel_views.sign_out)
    for section in (ticket_views, held_views, rules_views, directory_views, imap_views, audit_views):
        section.add_routes(app.router)
