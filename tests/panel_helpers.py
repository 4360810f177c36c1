"""The admin panel's test client and the steps every panel test takes: sign in, read a form's CSRF token."""

from __future__ import annotations

import re

import pytest
from aiohttp.test_utils import TestClient, TestServer

from bridge.accounts import Secret
from ticketmail.admin import admins
from ticketmail.config import Config
from web.app import create_app
from web.panel import PANEL

PASSWORD = "correct horse battery"


class Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
async def panel(db, tmp_path):
    """The web app over real HTTP on loopback with one admin, alice; not signed in yet. `panel.clock` drives
    the sign-in throttle."""
    config = Config(database_url=db.url)
    config.bridge.key_file = str(tmp_path / "secret.key")
    app = create_app(db, config)
    app[PANEL].throttle.clock = clock = Clock()
    client = TestClient(TestServer(app, host="127.0.0.1"))
    await client.start_server()
    client.clock = clock
    await admins.add(db, "alice", Secret(PASSWORD), by="test")
    yield client
    await client.close()


def csrf_of(page: str) -> str:
    return re.search(r'name="csrf" value="([^"]+)"', page).group(1)


async def sign_in(client, user="alice", password=PASSWORD, **extra):
    async with client.get("/admin/sign-in") as response:
        token = csrf_of(await response.text())
    return await client.post("/admin/sign-in", data={"csrf": token, "user": user, "password": password, **extra},
                             allow_redirects=False)


async def form_token(client, path="/admin/imap-accounts/add") -> str:
    """The CSRF token of the form on page `path` (which must answer 200)."""
    async with client.get(path) as response:
        assert response.status == 200
        return csrf_of(await response.text())
