"""A person confirms in a real browser: headless Chromium opens the link from the challenge the SMTP sink
received, the page is read as shown, the button is clicked with the mouse, and the ticket number appears.

Skipped when Chromium is missing, except under CI=true, where it fails (the CI installs `chromium`)."""

from __future__ import annotations

import os

import pytest

from tests.browser import CHROMIUM, Browser
from tests.challenge_helpers import BOB, as_json, desk  # noqa: F401 - desk is a fixture
from tests.conftest import one_database
from tests.mail import message


@pytest.fixture
async def browser(tmp_path):
    if CHROMIUM is None:
        if os.environ.get("CI") == "true":
            pytest.fail("Chromium is required under CI=true (apt-get install chromium)")
        pytest.skip("Chromium is not installed")
    profile = tmp_path / "chromium-profile"
    profile.mkdir()
    running = await Browser.start(profile)
    yield running
    await running.close()


@one_database  # the browser's part does not depend on storage
async def test_a_person_confirms_in_the_browser_and_sees_the_ticket(desk, cli, browser, tmp_path):
    await desk.deliver(message(frm=f"Bob Newcomer <{BOB}>", subject="Cannot log in"))
    mail = await desk.challenge()

    await browser.open(mail.link)
    shown = await browser.text()
    assert "Confirm your message to Support" in shown
    assert f"You are confirming that {BOB} wrote to Support." in shown
    assert "1 message is waiting" in shown
    assert await browser.evaluate("document.querySelector('button').innerText") == "Confirm"
    # The inline style is allowed by its hash in the strict CSP, so the page looks as designed.
    color = await browser.evaluate("getComputedStyle(document.querySelector('button')).backgroundColor")
    assert color == "rgb(10, 98, 201)"
    await browser.screenshot(tmp_path / "confirm.png")
    assert await as_json(cli, "tickets", "list") == []  # opening the page confirmed nothing

    await browser.click("button")
    shown = await browser.text()
    assert "Thank you, you are confirmed" in shown and "Ticket #1" in shown
    assert (await browser.evaluate("location.href")) == mail.link + "/done"
    await browser.screenshot(tmp_path / "confirmed.png")
    assert browser.errors() == []

    [ticket] = await as_json(cli, "tickets", "list")
    assert (ticket["number"], ticket["customer"], ticket["subject"]) == (1, BOB, "Cannot log in")

    await browser.open(mail.link)  # the link again, later
    assert "This link has already been used" in await browser.text()
