"""The aiohttp app: the challenge confirmation pages and a health check (the admin interface later).

It serves on `[web]` host/port and builds nothing from the request's host: links in mails come from
`[web] public_url`, and the pages use relative URLs, so it works behind a reverse proxy.
"""

from __future__ import annotations

from urllib.parse import urlsplit

from aiohttp import web

from ingest import mailer
from storage.database import Database
from web.keys import DB, PAGES, SITE, Site
from web.middleware import error_pages, security_headers
from web.pages import Pages
from web.routes import setup_routes

__all__ = ["DB", "create_app"]


def create_app(db: Database, config) -> web.Application:
    app = web.Application(middlewares=[error_pages], client_max_size=64 * 1024)
    public = urlsplit(config.web.public_url)
    app[DB] = db
    app[SITE] = Site(ticket_prefix=config.ticket_prefix, public_origin=f"{public.scheme}://{public.netloc}",
                     secure_cookies=public.scheme == "https")
    app[PAGES] = Pages(mailer.environment("web", config.challenge.template_dir))
    app.on_response_prepare.append(security_headers)
    setup_routes(app)
    return app
