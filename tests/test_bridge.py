"""The IMAP bridge against a real Dovecot: accounts added with the CLI, mail APPENDed as an MTA would
deliver it, tickets read back as a user would (`tickets list`, `imap list`)."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging

from sqlalchemy import select

from bridge.accounts import Account, AfterAction, Secret
from bridge.imap import Connection
from bridge.sync import Options
from storage import imap_store
from storage.models import ImapAccount, Message
from tests import statuscodes as codes
from tests.bridge_helpers import (  # noqa: F401 - fixtures
    FAST,
    SALES,
    SUPPORT,
    add_account,
    bridge_key,
    counts,
    departments,
    mails,
    run_bridge,
    tickets_at_least,
    wait_until,
)
from tests.conftest import deliver, one_database
from tests.dovecot import USERS, Dovecot, dovecot, require_dovecot  # noqa: F401 - fixture
from tests.mail import message


async def imap_list(cli) -> list[dict]:
    code, out, err = await cli("imap", "list", "--json")
    assert code == 0, err
    return json.loads(out)


async def tickets(cli) -> list[dict]:
    code, out, err = await cli("tickets", "list", "--json")
    assert code == 0, err
    return json.loads(out)


async def synced_to(cli, uid: int, timeout: float = 30) -> dict:
    """Wait until the account's checkpoint reaches `uid`; returns its `imap list` entry."""
    async def check():
        account = (await imap_list(cli))[0]
        return account if account["last_uid"] >= uid else None

    return await wait_until(check, timeout, f"the account's checkpoint to reach UID {uid}", interval=0.2)


async def test_initial_sync_imports_every_message_once_and_marks_it_read(
        dovecot, add_account, run_bridge, db, cli):
    uids = await asyncio.to_thread(dovecot.append, "support", mails(300, "initial"))
    code, out, err = await add_account(dovecot)
    assert code == 0, err
    assert "IDLE yes" in out and "certificate verified" in out and "300 messages" in out

    await run_bridge()
    account = await synced_to(cli, max(uids))
    assert (await counts(db)) == (300, 300)
    assert sorted(t["subject"] for t in await tickets(cli)) == sorted(f"initial {n}" for n in range(300))
    assert account["backlog"] == 0 and account["last_error"] is None and account["last_sync"]
    # Only now, after the commit, marked read on the server: nothing was flagged before.
    assert await asyncio.to_thread(dovecot.uids, "support", "INBOX", "UNSEEN") == []
    assert len(await asyncio.to_thread(dovecot.uids, "support")) == 300

    async with db.session() as s:
        keys = {m.source_key for m in await s.scalars(select(Message).where(Message.source == "imap:support"))}
    assert keys == {f"{account['uidvalidity']}/{uid}" for uid in uids}


async def test_imap_list_never_shows_the_password_and_it_is_encrypted_at_rest(
        dovecot, add_account, db, cli, bridge_key):
    code, _, err = await add_account(dovecot)
    assert code == 0, err
    code, out, _ = await cli("imap", "list", "--json")
    assert "password" not in out.lower() and USERS["support"] not in out
    (account,) = json.loads(out)
    assert account["name"] == "support" and account["server"] == "127.0.0.1" and account["security"] == "tls"
    assert account["department"] is None  # follows the department that owns the address
    code, out, _ = await cli("imap", "list")
    assert USERS["support"] not in out and "support@xyzhosting.com" in out
    async with db.session() as s:
        stored = await s.scalar(select(ImapAccount.password_encrypted))
    assert USERS["support"].encode() not in stored
    assert bridge_key.stat().st_mode & 0o777 == 0o600


async def test_message_appended_during_idle_becomes_a_ticket_on_the_servers_push(
        dovecot, add_account, run_bridge, db, cli, caplog):
    """The push, not the next look: IDLE is renewed only after 600 s here, so a ticket within 30 s came from
    the server's EXISTS (how fast is bench/imap_bench.py's measure, not a test's)."""
    caplog.set_level(logging.DEBUG, logger="aioimaplib")
    await asyncio.to_thread(dovecot.append, "support", mails(1, "before"))
    assert (await add_account(dovecot))[0] == 0
    await run_bridge(dataclasses.replace(FAST, idle_seconds=600))
    await synced_to(cli, 1)

    async def idling():  # aioimaplib logs the server's go-ahead to IDLE, which comes after the first pass
        return "assuming IDLE is active" in caplog.text

    await wait_until(idling, 10, "the sync loop to wait in IDLE")

    await asyncio.to_thread(dovecot.append, "support", mails(1, "during idle"))
    assert await tickets_at_least(db, 2, timeout=30) == 2
    assert "during idle 0" in {t["subject"] for t in await tickets(cli)}


class SlowPipeline:
    """The real pipeline, each batch slowed a little so that a server crash lands in the middle of a sync."""

    def __init__(self, pipeline, delay: float):
        self.pipeline, self.delay = pipeline, delay

    async def deliver(self, delivery, parsed=None):
        await asyncio.sleep(self.delay)
        return await self.pipeline.deliver(delivery, parsed)


async def test_server_killed_mid_sync_resumes_with_no_loss_and_no_duplicate(
        dovecot, add_account, run_bridge, pipeline, db, cli, caplog):
    await asyncio.to_thread(dovecot.append, "support", mails(400, "crash"))
    assert (await add_account(dovecot))[0] == 0
    await run_bridge(Options(timeout=5, batch=20, backoff_base=0.2, backoff_cap=1),
                     with_pipeline=SlowPipeline(pipeline, 0.05))
    at_kill = await tickets_at_least(db, 60, timeout=30)
    await asyncio.to_thread(dovecot.kill)
    assert 60 <= at_kill < 400, "the kill should land in the middle of the sync"

    async def error_recorded():
        return (await imap_list(cli))[0]["last_error"]

    await wait_until(error_recorded, 10, "the lost connection to be shown on the account")
    # The server stays down until the bridge has failed to reconnect to it at least once.
    lost = sum("reconnecting in" in r.getMessage() for r in caplog.records)

    async def retried():
        return sum("reconnecting in" in r.getMessage() for r in caplog.records) > lost

    await wait_until(retried, 10, "a reconnect to the dead server to fail")
    await asyncio.to_thread(dovecot.start)

    account = await synced_to(cli, 400, timeout=60)
    assert account["last_uid"] == 400 and account["last_error"] is None
    assert (await counts(db)) == (400, 400)
    assert len({t["subject"] for t in await tickets(cli)}) == 400
    assert await asyncio.to_thread(dovecot.uids, "support", "INBOX", "UNSEEN") == []


async def test_after_action_seen_flags_and_keeps(dovecot, add_account, run_bridge, db, cli):
    await asyncio.to_thread(dovecot.append, "support", mails(5, "seen"))
    assert (await add_account(dovecot, "support", "--after", "seen"))[0] == 0
    await run_bridge()
    await synced_to(cli, 5)
    assert await asyncio.to_thread(dovecot.uids, "support") == [1, 2, 3, 4, 5]
    assert await asyncio.to_thread(dovecot.uids, "support", "INBOX", "UNSEEN") == []
    assert (await counts(db)) == (5, 5)


async def test_after_action_move_moves_to_the_folder(dovecot, add_account, run_bridge, db, cli):
    await asyncio.to_thread(dovecot.create_folder, "support", "Imported")
    await asyncio.to_thread(dovecot.append, "support", mails(5, "move"))
    code, out, err = await add_account(dovecot, "support", "--after", "move:Imported")
    assert code == 0, err
    await run_bridge()
    await synced_to(cli, 5)
    assert await asyncio.to_thread(dovecot.uids, "support") == []
    assert len(await asyncio.to_thread(dovecot.uids, "support", "Imported")) == 5
    assert (await counts(db)) == (5, 5)


async def test_after_action_delete_expunges(dovecot, add_account, run_bridge, db, cli):
    await asyncio.to_thread(dovecot.append, "support", mails(5, "delete"))
    assert (await add_account(dovecot, "support", "--after", "delete"))[0] == 0
    await run_bridge()
    await synced_to(cli, 5)
    assert await asyncio.to_thread(dovecot.uids, "support") == []
    assert (await counts(db)) == (5, 5)


async def test_move_missing_folder_is_refused_at_add_and_reported_while_syncing(
        dovecot, add_account, run_bridge, db, cli):
    code, _, err = await add_account(dovecot, "support", "--after", "move:Nowhere")
    assert code == 1 and "folder 'Nowhere'" in err and "does not exist" in err and err.count("\n") == 1
    await asyncio.to_thread(dovecot.append, "support", mails(2, "no target"))
    assert (await add_account(dovecot, "support", "--after", "move:Nowhere", "--no-test"))[0] == 0
    await run_bridge()

    async def error():
        return (await imap_list(cli))[0]["last_error"]

    assert "folder 'Nowhere' for the after-action does not exist" in await wait_until(
        error, 10, "the sync error to be shown on the account")
    # Committed once; the server keeps the mail until the folder exists, and retries never duplicate.
    assert (await counts(db)) == (2, 2)
    await asyncio.to_thread(dovecot.create_folder, "support", "Nowhere")
    await synced_to(cli, 2)
    assert len(await asyncio.to_thread(dovecot.uids, "support", "Nowhere")) == 2
    assert (await counts(db)) == (2, 2)


@one_database
async def test_server_without_idle_and_move_is_polled_and_moved_by_copy(
        add_account, run_bridge, db, cli):
    require_dovecot()
    server = Dovecot(USERS, capabilities="IMAP4rev1 LITERAL+ SASL-IR UIDPLUS").start()
    try:
        await asyncio.to_thread(server.create_folder, "support", "Imported")
        await asyncio.to_thread(server.append, "support", mails(3, "old server"))
        code, out, err = await add_account(server, "support", "--after", "move:Imported", "--poll-seconds", "5")
        assert code == 0, err
        assert "IDLE no" in out and "MOVE no" in out and "polled every 5 s" in out
        await run_bridge()
        await synced_to(cli, 3)
        await asyncio.to_thread(server.append, "support", mails(1, "polled"))
        await synced_to(cli, 4, timeout=15)
        assert await asyncio.to_thread(server.uids, "support") == []
        assert len(await asyncio.to_thread(server.uids, "support", "Imported")) == 4
        assert (await counts(db)) == (4, 4)
    finally:
        server.cleanup()


@one_database
async def test_wrong_password_is_one_line_and_saves_nothing(dovecot, add_account, cli):
    code, out, err = await add_account(dovecot, password="not-the-password")
    assert code == 1 and err.count("\n") == 1
    assert "login failed for user support" in err and "nothing saved" in err
    assert "not-the-password" not in err + out
    assert await imap_list(cli) == []


async def test_failing_account_does_not_stop_the_others_or_lmtp(
        dovecot, add_account, run_bridge, lmtp, db, cli, caplog):
    caplog.set_level(logging.DEBUG)
    assert (await add_account(dovecot, "support", "--no-test", password="not-the-password"))[0] == 0
    assert (await add_account(dovecot, "sales"))[0] == 0
    await asyncio.to_thread(dovecot.append, "sales", mails(3, "sales mail", to=SALES))
    await run_bridge()
    replies = await deliver(lmtp.port, "bob@else.example", SUPPORT, message(frm="bob@else.example", subject="lmtp"))
    assert replies[0][0] == codes.OK

    async def failed():
        accounts = {a["name"]: a for a in await imap_list(cli)}
        return accounts if accounts["support"]["last_error"] and accounts["sales"]["last_uid"] == 3 else None

    accounts = await wait_until(failed, 15, "the support account's error and the sales account's 3 messages")
    assert "login failed for user support" in accounts["support"]["last_error"]
    assert {t["subject"] for t in await tickets(cli)} == {"lmtp", "sales mail 0", "sales mail 1", "sales mail 2"}
    assert "not-the-password" not in caplog.text and USERS["sales"] not in caplog.text


@one_database
async def test_untrusted_certificate_is_refused_with_the_reason(dovecot, add_account, cli):
    code, _, err = await add_account(dovecot, ca=False)
    assert code == 1 and err.count("\n") == 1
    assert "TLS certificate of 127.0.0.1 not trusted" in err and "--ca-file" in err
    assert await imap_list(cli) == []


@one_database
async def test_starttls_upgrades_the_connection_before_login(dovecot, add_account, run_bridge, db, cli):
    await asyncio.to_thread(dovecot.append, "support", mails(3, "starttls"))
    code, out, err = await add_account(dovecot, "support", "--security", "starttls", port=dovecot.port)
    assert code == 0, err
    assert "STARTTLS, TLSv1" in out and "certificate verified" in out
    await run_bridge()
    await synced_to(cli, 3)
    assert (await counts(db)) == (3, 3)
    logins = [line for line in dovecot.log().splitlines() if "Login: user=<support>" in line]
    # The first login is this test's own APPEND, in clear; `imap add`'s test and the bridge's are TLS.
    assert len(logins) >= 3 and "TLS" not in logins[0] and all("TLS" in line for line in logins[1:])


@one_database
async def test_starttls_against_an_untrusted_certificate_fails_before_the_password_is_sent(dovecot, add_account):
    code, _, err = await add_account(dovecot, "support", "--security", "starttls", port=dovecot.port, ca=False)
    assert code == 1 and "not trusted" in err
    assert "Login: user=<support>" not in dovecot.log()


async def test_uidvalidity_change_rescans_without_duplicate_tickets(dovecot, add_account, run_bridge, db, cli):
    await asyncio.to_thread(dovecot.append, "support", mails(5, "before the change"))
    assert (await add_account(dovecot))[0] == 0
    await run_bridge()
    before = await synced_to(cli, 5)

    # The server loses its UID list (a restore, a migration): same mail, new UIDVALIDITY, UIDs from 1.
    await asyncio.to_thread(dovecot.kill)
    dovecot.forget_uids("support")
    await asyncio.to_thread(dovecot.start)
    await asyncio.to_thread(dovecot.append, "support", mails(2, "after the change"))

    async def rescanned():
        account = (await imap_list(cli))[0]
        return account if account["uidvalidity"] != before["uidvalidity"] and account["last_uid"] >= 7 else None

    await wait_until(rescanned, 30, "a rescan under the new UIDVALIDITY up to UID 7", interval=0.2)
    assert (await counts(db)) == (7, 7)
    assert len({t["subject"] for t in await tickets(cli)}) == 7


async def test_folder_recreated_with_rewritten_copies_matches_them_by_message_id(
        dovecot, add_account, run_bridge, db, cli):
    originals = mails(4, "rewritten")
    await asyncio.to_thread(dovecot.append, "support", originals, "Helpdesk")
    assert (await add_account(dovecot, "support", "--folder", "Helpdesk"))[0] == 0
    await run_bridge()
    before = await synced_to(cli, 4)

    def recreate():
        with dovecot.client("support") as c:
            c.delete("Helpdesk")
        # A migration tool that added a header: other bytes, same Message-ID.
        dovecot.append("support", [b"X-Migrated: yes\r\n" + raw for raw in originals] + mails(1, "new"), "Helpdesk")

    await asyncio.to_thread(recreate)

    async def rescanned():
        account = (await imap_list(cli))[0]
        return account if account["uidvalidity"] != before["uidvalidity"] and account["last_uid"] >= 5 else None

    await wait_until(rescanned, 30, "a rescan of the recreated folder up to UID 5", interval=0.2)
    assert (await counts(db)) == (5, 5)


async def test_rules_scoped_to_an_account_apply_only_to_its_mail(
        dovecot, add_account, run_bridge, db, cli, tmp_path):
    rules = tmp_path / "rules.toml"
    rules.write_text('''
[[rule]]
name = "sales-invoices"
scope = "account:sales"
conditions = [{ field = "subject", op = "contains", value = "invoice" }]
actions = [{ action = "tag", tag = "billing" }, { action = "priority", priority = "high" }]
''')
    code, _, err = await cli("rules", "import", str(rules))
    assert code == 0, err
    assert (await add_account(dovecot, "support"))[0] == 0
    assert (await add_account(dovecot, "sales"))[0] == 0
    await asyncio.to_thread(dovecot.append, "support", mails(1, "invoice via support"))
    await asyncio.to_thread(dovecot.append, "sales", mails(1, "invoice via sales", to=SALES))
    await run_bridge()
    assert await tickets_at_least(db, 2, timeout=15) == 2
    by_subject = {t["subject"]: t for t in await tickets(cli)}
    sales, support = by_subject["invoice via sales 0"], by_subject["invoice via support 0"]
    assert sales["tags"] == ["billing"] and sales["priority"] == "high" and sales["department"] == "Sales"
    assert support["tags"] == [] and support["priority"] == "normal" and support["department"] == "Support"


async def test_account_department_overrides_the_address(dovecot, add_account, run_bridge, db, cli):
    await asyncio.to_thread(dovecot.append, "support", mails(1, "to sales by account"))
    assert (await add_account(dovecot, "support", "--department", "Sales"))[0] == 0
    await run_bridge()
    assert await tickets_at_least(db, 1, timeout=15) == 1
    assert (await tickets(cli))[0]["department"] == "Sales"


async def test_disable_stops_and_enable_resumes_the_sync(dovecot, add_account, run_bridge, db, cli, monkeypatch):
    assert (await add_account(dovecot))[0] == 0
    supervisor = await run_bridge()
    # Each supervisor scan begins by reading the accounts; it starts and stops the sync loops by them.
    reads, accounts = [], imap_store.accounts

    def counted(session):
        reads.append(1)
        return accounts(session)

    monkeypatch.setattr(imap_store, "accounts", counted)

    async def connected():
        return (await imap_list(cli))[0]["last_sync"]

    await wait_until(connected, 15, "the account's first sync")
    code, out, _ = await cli("imap", "disable", "support")
    assert code == 0 and "disabled" in out

    async def stopped():
        return not supervisor.loops

    await wait_until(stopped, 10, "the supervisor to stop the disabled account's sync loop")
    await asyncio.to_thread(dovecot.append, "support", mails(2, "while disabled"))
    # Two whole scans after the mail arrived (a third has begun): each had the chance to sync it.
    seen = len(reads)

    async def scanned_twice():
        return len(reads) >= seen + 3

    await wait_until(scanned_twice, 10, "two supervisor scans after the APPEND")
    assert not supervisor.loops, "a scan started the disabled account again"
    assert (await counts(db)) == (0, 0)
    assert len(await asyncio.to_thread(dovecot.uids, "support", "INBOX", "UNSEEN")) == 2
    assert (await cli("imap", "enable", "support"))[0] == 0
    await synced_to(cli, 2, timeout=15)
    assert (await counts(db)) == (2, 2)
    code, out, _ = await cli("imap", "remove", "support")
    assert code == 0 and await imap_list(cli) == []


def _fill(dovecot, user: str, count: int) -> None:
    """`count` messages in INBOX in a few commands: one APPEND, then COPY doubling them."""
    dovecot.append(user, mails(1, "many"))
    with dovecot.client(user) as c:
        c.select("INBOX")
        have = 1
        while have < count:
            typ, data = c.copy(f"1:{min(have, count - have)}", "INBOX")
            assert typ == "OK", data
            have += min(have, count - have)


def _expunge_all(dovecot, user: str) -> None:
    with dovecot.client(user) as c:
        c.select("INBOX")
        assert c.store("1:*", "+FLAGS", r"(\Deleted)")[0] == "OK"
        assert c.expunge()[0] == "OK"


def _plain_account(dovecot, user="support") -> Account:
    return Account(id=1, name=user, email=f"{user}@xyzhosting.com", server=dovecot.host, port=dovecot.port,
                   security="none", username=user, password=Secret(USERS[user]), folder="INBOX",
                   after=AfterAction("seen"), department=None, poll_seconds=60, ca_file="", verify_tls=True,
                   enabled=True)


async def test_another_client_expunging_thousands_during_idle_ends_the_wait_not_the_connection(dovecot, caplog):
    """Each expunged message is one `* N EXPUNGE` line; aioimaplib 2.0.3 recursed once per line of a read
    and failed with RecursionError. An EXPUNGE also means the selection changed: the wait ends (False) so
    that the caller looks at the folder again (Cyrus says nothing else when the folder is deleted)."""
    caplog.set_level(logging.DEBUG, logger="aioimaplib")
    await asyncio.to_thread(_fill, dovecot, "support", 4000)
    conn = await Connection.open(_plain_account(dovecot), 10)
    try:
        assert (await conn.select("INBOX")).exists == 4000
        conn.news.clear()  # SELECT's EXISTS; the sync loop clears it before each pass likewise
        waiting = asyncio.create_task(conn.wait_for_news(60))

        async def idling():
            return "assuming IDLE is active" in caplog.text

        await wait_until(idling, 10, "the connection to wait in IDLE")
        await asyncio.to_thread(_expunge_all, dovecot, "support")
        assert await asyncio.wait_for(waiting, 20) is False  # changed, no new mail: well before the 60 s
        assert (await conn.select("INBOX")).exists == 0  # the same connection, still good
    finally:
        await conn.close()


# Personal folders under "INBOX." with "." between levels, as Cyrus and Courier keep them.
INBOX_PREFIX = "namespace inbox {\n  inbox = yes\n  prefix = INBOX.\n  separator = .\n}\n"


async def test_a_folder_missing_its_namespace_prefix_is_refused_with_the_name_it_has(add_account, cli, tmp_path):
    require_dovecot()
    server = Dovecot(USERS, conf=INBOX_PREFIX).start()
    try:
        await asyncio.to_thread(server.create_folder, "support", "INBOX.Support")
        code, _, err = await add_account(server, "support", "--folder", "Support")
        assert code == 1 and err.count("\n") == 1, err
        assert "folder 'Support' does not exist on 127.0.0.1:" in err
        assert "personal folders on this server are under 'INBOX.' (hierarchy separator '.'): did you mean " \
               "'INBOX.Support'?" in err
        code, _, err = await add_account(server, "support", "--after", "move:Done/Old")
        assert code == 1 and "folder 'Done/Old' for the after-action does not exist" in err
        assert "e.g. 'INBOX.Done.Old'" in err  # it does not exist under the prefix either: the spelling only
        code, out, err = await add_account(server, "support", "--folder", "INBOX.Support")
        assert code == 0, err
    finally:
        server.cleanup()
