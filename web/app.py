"""The aiohttp app: a health check now; confirmation pages and the admin interface later."""

from __future__ import annotations

from aiohttp import web
from sqlalchemy import text

from storage.database import Database

DB = web.AppKey("db", Database)


async def health(request: web.Request) -> web.Response:
    async with request.app[DB].session() as session:
        await session.execute(text("SELECT 1"))
    return web.json_response({"status": "ok"})


def create_app(db: Database, config) -> web.Application:
    app = web.Application()
    app[DB] = db
    app.router.add_get("/healthz", health)
    return app
