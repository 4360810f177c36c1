"""`ticketmail imap ...` as an admin uses it, and `ticketmail serve` syncing an account end to end."""

from __future__ import annotations

import asyncio
import getpass
import json
import os
import signal
import subprocess
import sys

from tests.bridge_helpers import (  # noqa: F401 - fixtures
    SUPPORT,
    add_account,
    bridge_key,
    counts,
    departments,
    mails,
    serve,
    tickets_at_least,
)
from tests.conftest import one_database
from tests.dovecot import USERS, dovecot  # noqa: F401 - fixture


@one_database
async def test_password_is_asked_twice_and_must_match(dovecot, cli, monkeypatch, bridge_key, departments):
    answers = iter(["support-pw", "support-pw-typo"])
    monkeypatch.setattr(getpass, "getpass", lambda prompt="": next(answers))
    argv = ("imap", "add", "support", "--email", SUPPORT, "--server", "127.0.0.1", "--port", str(dovecot.tls_port),
            "--user", "support", "--ca-file", str(dovecot.ca_file))
    code, _, err = await cli(*argv)
    assert code == 1 and "passwords do not match" in err and err.count("\n") == 1
    prompts = []
    monkeypatch.setattr(getpass, "getpass", lambda prompt="": prompts.append(prompt) or "support-pw")
    code, out, err = await cli(*argv)
    assert code == 0, err
    assert prompts == ["IMAP password for support: ", "Repeat the password: "]
    assert "imap account support added" in out and "support-pw" not in out


async def test_listings_print_timestamps_in_utc_with_the_zone(cli, db, monkeypatch, bridge_key, departments):
    """Regression (issue 8): `imap list --json` printed naive times on SQLite while `customer list` said
    "+00:00"; both print the same form on both databases."""
    import io
    from datetime import datetime, timezone

    from storage import imap_store

    started = datetime.now(timezone.utc)
    monkeypatch.setattr(sys, "stdin", io.StringIO("pw\n"))
    code, _, err = await cli("imap", "add", "support", "--email", SUPPORT, "--server", "mail.example.com",
                             "--password-stdin", "--no-test")
    assert code == 0, err
    code, _, err = await cli("customer", "add", "alice@customer.example")
    assert code == 0, err

    def sync_then_fail(s):
        (account,) = imap_store.accounts(s)
        imap_store.record_sync(s, account.id, 0)
        imap_store.record_error(s, account.id, "connection refused")

    await db.run(sync_then_fail, write=True)
    (account,) = json.loads((await cli("imap", "list", "--json"))[1])
    (customer,) = json.loads((await cli("customer", "list", "--json"))[1])
    stamps = [account["last_sync"], account["last_error_at"], customer["created_at"]]
    assert all(stamp.endswith("+00:00") for stamp in stamps), stamps
    assert all(started <= datetime.fromisoformat(stamp) <= datetime.now(timezone.utc)
               for stamp in stamps), stamps
    code, out, _ = await cli("imap", "list")
    assert code == 0 and f"last sync {account['last_sync']}," in out


@one_database
async def test_add_defaults_and_warnings(cli, monkeypatch, bridge_key, departments):
    import io

    monkeypatch.setattr(sys, "stdin", io.StringIO("pw\n"))
    code, out, err = await cli("imap", "add", "legacy", "--email", SUPPORT, "--server", "mail.example.com",
                               "--port", "110", "--password-stdin", "--no-test")
    assert code == 0, err
    assert "port 110 is the POP3 port" in err
    (account,) = json.loads((await cli("imap", "list", "--json"))[1])
    assert account["user"] == SUPPORT and account["folder"] == "INBOX" and account["after"] == "seen"
    assert account["verify_tls"] is True and account["port"] == 110

    monkeypatch.setattr(sys, "stdin", io.StringIO("pw\n"))
    code, _, _ = await cli("imap", "add", "plain", "--email", SUPPORT, "--server", "mail.example.com",
                           "--security", "starttls", "--password-stdin", "--no-test")
    assert code == 0
    accounts = {a["name"]: a for a in json.loads((await cli("imap", "list", "--json"))[1])}
    assert accounts["plain"]["port"] == 143


@one_database
async def test_add_refuses_bad_input_in_one_line(cli, monkeypatch, bridge_key, departments):
    base = ["--server", "mail.example.com", "--password-stdin", "--no-test"]
    for argv, expected in (
        (["bad name", "--email", SUPPORT], "account name 'bad name'"),
        (["x", "--email", "nobody@elsewhere.example"], "no department owns nobody@elsewhere.example"),
        (["x", "--email", SUPPORT, "--department", "Nope"], "no department 'Nope'"),
        (["x", "--email", SUPPORT, "--after", "archive"], "seen, delete or move:FOLDER"),
        (["x", "--email", SUPPORT, "--ca-file", "/nonexistent.pem"], "--ca-file /nonexistent.pem: no such file"),
        (["x", "--email", "not-an-address"], "not an email address"),
    ):
        code, _, err = await cli("imap", "add", *argv, *base)
        assert code == 1 and expected in err and err.count("\n") == 1, (argv, err)
    code, out, _ = await cli("imap", "list")
    assert out.strip() == "no IMAP accounts"


@one_database
async def test_imap_test_reports_what_the_server_offers_and_each_failure_plainly(
        dovecot, add_account, cli, bridge_key):
    await asyncio.to_thread(dovecot.append, "support", mails(4, "counted"))
    assert (await add_account(dovecot))[0] == 0
    code, out, err = await cli("imap", "test", "support")
    assert code == 0, err
    assert f"connected to 127.0.0.1:{dovecot.tls_port} (TLS, TLSv1" in out
    assert "logged in as support" in out and "folder INBOX: 4 messages, 4 unseen, UIDVALIDITY" in out
    assert "capabilities: IDLE yes, UIDPLUS yes, MOVE yes" in out and "imap account support: OK" in out
    code, out, _ = await cli("imap", "test", "support", "--json")
    report = json.loads(out)
    assert report["messages"] == 4 and report["capabilities"] == {"IDLE": True, "UIDPLUS": True, "MOVE": True}
    # Testing changed nothing: the mail is still unread.
    assert len(await asyncio.to_thread(dovecot.uids, "support", "INBOX", "UNSEEN")) == 4

    await asyncio.to_thread(dovecot.kill)
    code, _, err = await cli("imap", "test", "support")
    assert code == 1 and err == f"ticketmail: imap test support: connection to 127.0.0.1:{dovecot.tls_port} " \
                                "refused (no IMAP server listening there?)\n"

    await asyncio.to_thread(dovecot.start)
    code, _, err = await add_account(dovecot, "sales", "--folder", "Missing")
    assert code == 1 and "folder 'Missing' does not exist" in err and err.count("\n") == 1

    bridge_key.write_bytes(b"")  # the key lost (or another installation's)
    code, _, err = await cli("imap", "test", "support")
    assert code == 1 and "is not a Fernet key" in err and err.count("\n") == 1


async def test_serve_syncs_the_account_and_stops_cleanly(dovecot, add_account, db, db_url, tmp_path, bridge_key):
    assert (await add_account(dovecot))[0] == 0
    await asyncio.to_thread(dovecot.append, "support", mails(3, "served"))
    log_path = tmp_path / "serve.log"
    with open(log_path, "w") as log:
        server = serve(db_url, log, TICKETMAIL_BRIDGE_KEY_FILE=str(bridge_key))
        try:
            assert await tickets_at_least(db, 3, timeout=30) == 3, log_path.read_text()
            await asyncio.to_thread(dovecot.append, "support", mails(1, "while serving"))
            assert await tickets_at_least(db, 4, timeout=10) == 4, log_path.read_text()
        finally:
            server.send_signal(signal.SIGTERM)
            assert await asyncio.to_thread(server.wait, 30) == 0
    text = log_path.read_text()
    assert "imap support: syncing INBOX" in text and "stopped" in text
    assert USERS["support"] not in text
    assert (await counts(db)) == (4, 4)


@one_database
async def test_serve_without_the_key_refuses_to_start_in_one_line(dovecot, add_account, db_url, tmp_path):
    assert (await add_account(dovecot))[0] == 0
    result = await asyncio.to_thread(
        subprocess.run, [sys.executable, "-m", "ticketmail.cli", "serve"], capture_output=True, text=True,
        timeout=60, env=dict(os.environ, TICKETMAIL_DATABASE_URL=db_url,
                             TICKETMAIL_BRIDGE_KEY_FILE=str(tmp_path / "elsewhere.key")))
    assert result.returncode == 1
    assert result.stderr.count("\n") == 1 and "elsewhere.key does not exist" in result.stderr
