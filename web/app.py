"""The aiohttp app: the challenge confirmation pages, a health check, and the admin panel (web/panel.py).

It serves on `[web]` host/port and builds nothing from the request's host: links in mails come from
`[web] public_url`, and the pages use relative URLs, so it works behind a reverse proxy.
"""

from __future__ import annotations

from functools import partial
from urllib.parse import urlsplit

from aiohttp import web

from ingest import mailer
from ingest.challenges import ChallengeSettings
from storage.database import Database
from web import panel
from web.keys import DB, PAGES, SITE, Site
from web.middleware import BARE_CSP, error_pages, protect, security_headers
from web.pages import Pages
from web.routes import setup_routes

__all__ = ["DB", "Runner", "create_app"]


def create_app(db: Database, config) -> web.Application:
    app = web.Application(middlewares=[error_pages, panel.guard], client_max_size=64 * 1024)
    public = urlsplit(config.web.public_url)
    app[DB] = db
    app[SITE] = Site(ticket_prefix=config.ticket_prefix, public_origin=f"{public.scheme}://{public.netloc}",
                     secure_cookies=public.scheme == "https", challenge=ChallengeSettings.from_config(config),
                     held_days=config.challenge.held_days)
    app[PAGES] = Pages(mailer.environment("web", config.challenge.template_dir))
    app.on_response_prepare.append(security_headers)
    panel.install(app, config)
    setup_routes(app)
    return app


class _Request(web.Request):
    """A request whose reply gets our headers even when nothing routed it.

    aiohttp answers a request it cannot parse with a 400 of its own (`RequestHandler.handle_error`),
    made without routing, so no middleware and no on_response_prepare sees it (aio-libs/aiohttp#6463).
    `_prepare_hook` is where every reply passes, after aiohttp's default headers and before they are
    written: a private method (aiohttp 3.14, pinned in pyproject.toml; tests/test_web_headers.py tells
    when an upgrade breaks it)."""

    async def _prepare_hook(self, response: web.StreamResponse) -> None:
        protect(response.headers, BARE_CSP)
        await super()._prepare_hook(response)  # a routed request: on_response_prepare, the page's own CSP


class Runner(web.AppRunner):
    """`web.AppRunner` whose every reply carries our headers, aiohttp's own 400s included."""

    async def setup(self) -> None:
        await super().setup()
        # The app's request factory, told to make our requests (through its private `_cls` parameter).
        self.server.request_factory = partial(self.server.request_factory, _cls=_Request)
