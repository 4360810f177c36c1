"""The typed keys of the app's state, shared by the factory, the views and the middleware."""

from __future__ import annotations

from dataclasses import dataclass

from aiohttp import web

from ingest.challenges import ChallengeSettings
from storage.database import Database
from web.pages import Pages


@dataclass(frozen=True)
class Site:
    """What the views need of the configuration."""

    ticket_prefix: str
    public_origin: str  # scheme://host[:port] of [web] public_url: a form POST must come from it
    secure_cookies: bool  # public_url is https
    challenge: ChallengeSettings  # for a decision the panel makes or tries (a retry, "try the rules")
    held_days: int  # [challenge] held_days: the purge's default


DB = web.AppKey("db", Database)
SITE = web.AppKey("site", Site)
PAGES = web.AppKey("pages", Pages)
