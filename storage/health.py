"""The web app's health check: can the database answer at all (schema or not)."""

from __future__ import annotations

from sqlalchemy import text


def ping(session) -> None:
    session.execute(text("SELECT 1"))
