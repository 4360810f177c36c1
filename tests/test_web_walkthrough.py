"""An admin's first hour, in headless Chromium against the running helpdesk (LMTP, pipeline, outbox, web app)
and the test Dovecot: sign in, add an IMAP account and test it, create a rule and try it, see the ticket a
delivered message made, release a held message. Each main page is saved as a screenshot under
test-artifacts/walkthrough/ (or $TICKETMAIL_TEST_ARTIFACTS) and read as a person reads it.

Skipped when Chromium or Dovecot is missing, except under CI=true, where that fails."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from bridge.accounts import Secret
from tests.challenge_helpers import BOB, as_json, start_desk, stop_desk
from tests.conftest import deliver, one_database
from tests.dovecot import USERS, dovecot  # noqa: F401 - fixture
from tests.mail import message
from tests.test_web_browser import browser  # noqa: F401 - fixture
from ticketmail.admin import admins

ALICE, SUPPORT = "alice@customer.example", "support@xyzhosting.com"
PASSWORD = "correct horse battery"
FORM = "form:not(.inline) button[type=submit]"  # the page's form (sign-out and row buttons are inline forms)
ARTIFACTS = Path(os.environ.get("TICKETMAIL_TEST_ARTIFACTS", Path(__file__).parent.parent / "test-artifacts"))


@pytest.fixture
async def helpdesk(db, cli, tmp_path):
    for argv in (("department", "add", "Support", "--address", SUPPORT, "--unknown-sender", "challenge"),
                 ("customer", "add", ALICE, "--name", "Alice Customer")):
        code, _, err = await cli(*argv)
        assert code == 0, err
    await admins.add(db, "alice", Secret(PASSWORD), by="test")

    def configure(config):
        config.bridge.key_file = str(tmp_path / "secret.key")

    running = await start_desk(db, configure)
    yield running
    await stop_desk(running)


class Walk:
    """The browser on the panel: each step reads the page it lands on and keeps a screenshot of it."""

    def __init__(self, browser, base: str, folder: Path):
        self.browser, self.base, self.folder = browser, base, folder

    async def page(self, name: str) -> str:
        shown = await self.browser.text()
        await self.browser.screenshot(self.folder / f"{name}.png")
        assert "Something went wrong" not in shown and "Please try again" not in shown, shown
        return shown

    async def go(self, path: str, name: str) -> str:
        await self.browser.open(self.base + path)
        return await self.page(name)

    async def submit(self, fields: dict[str, str], button: str, name: str, choices: dict[str, str] = {}) -> str:
        for selector, text in fields.items():
            await self.browser.fill(selector, text)
        for selector, value in choices.items():
            await self.browser.choose(selector, value)
        await self.browser.click(button)
        return await self.page(name)


@one_database  # what the browser shows does not depend on the database kind
async def test_an_admin_signs_in_adds_an_account_makes_a_rule_and_handles_mail(helpdesk, dovecot, browser, cli):
    folder = ARTIFACTS / "walkthrough"
    folder.mkdir(parents=True, exist_ok=True)
    walk = Walk(browser, helpdesk.url, folder)

    shown = await walk.go("/admin/", "sign-in")
    assert "Sign in" in shown
    shown = await walk.submit({"#user": "alice", "#password": PASSWORD}, FORM, "home")
    assert "Signed in as alice" in shown and "Tickets" in shown

    # IMAP Accounts » Add IMAP Account, against the test Dovecot (TLS with its test CA), tested on saving.
    await walk.go("/admin/imap-accounts", "imap-accounts-empty")
    await browser.click('a[href$="imap-accounts/add"]')
    shown = await walk.page("imap-account-add")
    assert "Add IMAP Account" in shown and "Confirm password" in shown
    shown = await walk.submit(
        {"#name": "support-inbox", "#email": SUPPORT, "#server": "127.0.0.1", "#port": str(dovecot.tls_port),
         "#user": "support", "#password": USERS["support"], "#confirm": USERS["support"],
         "#ca_file": str(dovecot.ca_file)},
        FORM, "imap-account-added")
    assert "IMAP account support-inbox added" in shown and "logged in as support" in shown
    await browser.click('form[action$="support-inbox/test"] button')
    shown = await walk.page("imap-account-tested")
    assert f"connected to 127.0.0.1:{dovecot.tls_port} (TLS" in shown and "folder INBOX:" in shown

    # Processing rules » Create New Rule, then try it on a pasted message.
    await walk.go("/admin/rules", "rules-empty")
    await browser.click('a[href$="rules/new"]')
    await walk.page("rule-new")
    shown = await walk.submit({"#name": "urgent mail", 'input[name="cond-0-field"]': "subject",
                               'input[name="cond-0-value"]': "urgent", 'input[name="act-0-value"]': "high"},
                              FORM, "rules",
                              choices={'select[name="cond-0-op"]': "contains", 'select[name="act-0-action"]': "priority"})
    assert "urgent mail" in shown
    await browser.click('a[href$="rules/try"]')
    await walk.page("rules-try")
    pasted = message(frm=f"Alice Customer <{ALICE}>", subject="urgent: the printer is on fire").decode()
    shown = await walk.submit({"#raw": pasted, "#sender": ALICE, "#recipient": SUPPORT},
                              FORM, "rules-tried")
    assert "urgent mail" in shown and "new ticket" in shown.lower()
    assert await as_json(cli, "tickets", "list") == []  # trying made nothing

    # A delivered message is a ticket; its page shows the message and the rule's priority.
    [(code, _)] = await deliver(helpdesk.lmtp.port, ALICE, SUPPORT,
                                message(frm=f"Alice Customer <{ALICE}>", subject="urgent: the printer is on fire"))
    assert code == 250
    shown = await walk.go("/admin/tickets", "tickets")
    assert "urgent: the printer is on fire" in shown
    await browser.click('a[href$="tickets/1"]')
    shown = await walk.page("ticket")
    assert "the printer is on fire" in shown and "high" in shown

    # An unknown sender's mail is held (and challenged); the admin releases it as a ticket.
    [(code, _)] = await deliver(helpdesk.lmtp.port, BOB, SUPPORT, message(frm=f"Bob <{BOB}>", subject="New here"))
    assert code == 250
    shown = await walk.go("/admin/held", "held")
    assert "New here" in shown and BOB in shown
    await browser.click('form[action$="/release"] button')
    shown = await walk.page("held-released")
    assert "released as ticket #2" in shown
    assert {t["subject"] for t in await as_json(cli, "tickets", "list")} == {"urgent: the printer is on fire",
                                                                             "New here"}
    shown = await walk.go("/admin/audit", "audit")
    assert "imap.add" in shown and "rules.create" in shown and "held.release" in shown and "admin alice" in shown
    assert browser.errors() == []  # no console or CSP error on any page
