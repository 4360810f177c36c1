"""The typed keys of the app's state, shared by the factory, the views and the middleware."""

from __future__ import annotations

from collections.abc import Callable
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


class Services:
    """What `serve` tells the health check about the services beside the web app: for each, a function
    saying why it cannot work ("" when it can). One expected but not registered yet is "not started"."""

    def __init__(self, *expected: str):
        self._checks: dict[str, Callable[[], str]] = {name: (lambda: "not started") for name in expected}
        # What each IMAP account's sync loop in this process does now, by name (the bridge's Supervisor).
        self.imap_activity: Callable[[], dict[str, str]] = dict

    def watch(self, name: str, trouble: Callable[[], str]) -> None:
        self._checks[name] = trouble

    def states(self) -> dict[str, str]:
        return {name: trouble() for name, trouble in self._checks.items()}


SERVICES = web.AppKey("services", Services)
