"""The bridge's pure parts, without servers: IMAP response parsing, UID sets, backoff, keys and secrets."""

from __future__ import annotations

import socket
import ssl

import pytest

from bridge.accounts import (
    Account,
    AfterAction,
    BridgeKeyError,
    Secret,
    check_name,
    decrypt,
    encrypt,
    load_key,
    parse_after,
    port_warning,
)
from bridge.imap import describe
from bridge.responses import (
    ImapError,
    encode_mailbox,
    parse_fetch,
    parse_namespace,
    parse_search,
    parse_select,
    parse_status,
    uid_set,
)
from bridge.sync import backoff, envelope_sender
from ticketmail.config import Bridge


def account(**changes) -> Account:
    fields = dict(id=1, name="support", email="support@xyzhosting.com", server="imap.example.com", port=993,
                  security="tls", username="support", password=Secret("hunter2"), folder="INBOX",
                  after=AfterAction("seen"), department=None, poll_seconds=60, ca_file="", verify_tls=True,
                  enabled=True)
    return Account(**(fields | changes))


def test_uid_set_compresses_runs():
    assert uid_set([1, 2, 3, 7, 9, 10]) == "1:3,7,9:10"
    assert uid_set([5]) == "5"
    assert uid_set([3, 1, 2, 2]) == "1:3"


def test_parse_select_reads_uidvalidity_exists_and_uidnext():
    lines = [b"FLAGS (\\Answered \\Seen)", b"OK [PERMANENTFLAGS (\\Seen \\*)] Flags permitted.", b"3 EXISTS",
             b"0 RECENT", b"OK [UIDVALIDITY 4294967295] UIDs valid", b"OK [UIDNEXT 4] Predicted next UID",
             b"[READ-WRITE] Select completed"]
    mailbox = parse_select(lines)
    assert (mailbox.uidvalidity, mailbox.exists, mailbox.uidnext) == (4294967295, 3, 4)
    with pytest.raises(ImapError, match="UIDVALIDITY"):
        parse_select([b"3 EXISTS", b"Select completed"])


def test_parse_search_drops_the_highest_uid_that_star_always_matches():
    # `UID SEARCH UID 9:*` on a folder whose highest UID is 3 answers "3" (RFC 3501 6.4.8).
    assert parse_search([b"3", b"Search completed"], above=8) == []
    assert parse_search([b"2 3 10", b"Search completed"], above=2) == [3, 10]
    assert parse_search([b"Search completed"], above=0) == []


def test_parse_fetch_pairs_uids_with_literals_and_skips_flag_updates():
    lines = [b"1 FETCH (UID 11 BODY[] {5}", bytearray(b"hello"), b")",
             b"2 FETCH (FLAGS (\\Seen))",  # unsolicited, no body
             b"3 FETCH (BODY[] {3}", bytearray(b"abc"), b" UID 13)",  # UID after the literal
             b"Fetch completed"]
    assert parse_fetch(lines) == [(11, b"hello"), (13, b"abc")]


def test_parse_namespace_reads_the_first_personal_prefix_and_separator():
    assert parse_namespace([b'(("INBOX." ".")) NIL NIL', b"Namespace completed"]) == ("INBOX.", ".")  # aioimaplib
    assert parse_namespace([b'* NAMESPACE (("" "/")("#shared/" "/")) NIL NIL']) == ("", "/")
    assert parse_namespace([b'NAMESPACE (("" NIL)) NIL NIL']) == ("", "")  # a flat server
    assert parse_namespace([b"NAMESPACE NIL NIL NIL"]) is None


def test_a_burst_of_untagged_lines_in_one_read_is_handled_without_recursion():
    """aioimaplib 2.0.3 handled each line of a read by calling itself: thousands failed with RecursionError."""
    import asyncio

    import aioimaplib

    from bridge.imap import _Protocol

    seen, errors = [], []
    protocol = _Protocol(asyncio.new_event_loop(), None, (), lambda: seen.append("exists"),
                         lambda: seen.append("expunge"), None, None, errors.append)
    protocol.state = aioimaplib.SELECTED
    protocol.data_received(b"".join(b"* %d EXPUNGE\r\n" % n for n in range(5000, 0, -1)) + b"* 1 EXISTS\r\n")
    assert errors == [] and seen == ["expunge"] * 5000 + ["exists"]


def test_parse_status():
    assert parse_status([b'"INBOX" (MESSAGES 3 UIDNEXT 4 UIDVALIDITY 99 UNSEEN 2)', b"Status completed"]) == {
        "MESSAGES": 3, "UIDNEXT": 4, "UIDVALIDITY": 99, "UNSEEN": 2}


def test_mailbox_names_are_quoted_in_modified_utf7():
    assert encode_mailbox("INBOX") == '"INBOX"'
    assert encode_mailbox("Entwürfe") == '"Entw&APw-rfe"'
    assert encode_mailbox('Tom & "Jerry"') == '"Tom &- \\"Jerry\\""'
    assert encode_mailbox("日本語") == '"&ZeVnLIqe-"'


def test_backoff_grows_exponentially_with_jitter_and_a_cap():
    assert backoff(0, 1, 300, rand=lambda: 0) == 0.5
    assert backoff(0, 1, 300, rand=lambda: 1) == 1
    assert backoff(3, 1, 300, rand=lambda: 1) == 8
    assert 150 <= backoff(50, 1, 300) <= 300


def test_envelope_sender_prefers_return_path_and_keeps_the_null_sender():
    raw = b"Return-Path: <Bounces@Lists.example>\r\nFrom: Alice <alice@customer.example>\r\n\r\nhi\r\n"
    assert envelope_sender(raw) == "bounces@lists.example"
    assert envelope_sender(b"Return-Path: <>\r\nFrom: a@b.example\r\n\r\nx\r\n") == ""
    assert envelope_sender(b"From: =?utf-8?q?Al=C3=AFce?= <Alice@Customer.example>\r\n\r\nReturn-Path: <x@y.z>\r\n") \
        == "alice@customer.example"
    assert envelope_sender(b"Subject: no sender\r\n\r\nbody") == ""
    long = b"r" * 250 + b"@lists.example"  # longer than any mailbox: no address
    assert envelope_sender(b"Return-Path: <" + long + b">\r\nFrom: a@b.example\r\n\r\nx\r\n") == "a@b.example"
    assert envelope_sender(b"From: <" + long + b">\r\n\r\nx\r\n") == ""


def test_after_actions_and_names_are_checked():
    assert parse_after("seen") == AfterAction("seen")
    assert parse_after("move:Archive/Tickets") == AfterAction("move", "Archive/Tickets")
    assert str(parse_after("MOVE: Done ")) == "move:Done"
    for bad in ("move:", "flag", "seen:x", ""):
        with pytest.raises(ValueError, match="seen, delete or move:FOLDER"):
            parse_after(bad)
    assert check_name("support-de.2") == "support-de.2"
    with pytest.raises(ValueError):
        check_name("with space")


def test_pop3_ports_get_a_warning():
    assert "POP3" in port_warning(110) and "993" in port_warning(110)
    assert "POP3 over TLS" in port_warning(995)
    assert port_warning(993) is None and port_warning(143) is None


def test_a_secret_never_shows_in_reprs_of_what_holds_it():
    a = account()
    assert "hunter2" not in repr(a) and "hunter2" not in str(a.password) and a.password.reveal() == "hunter2"


def test_key_file_is_created_0600_once_and_reused(tmp_path):
    config = Bridge(key_file=str(tmp_path / "var" / "secret.key"))
    with pytest.raises(BridgeKeyError, match="does not exist"):
        load_key(config)
    key = load_key(config, create=True)
    path = tmp_path / "var" / "secret.key"
    assert path.stat().st_mode & 0o777 == 0o600
    token = encrypt(key, "hunter2")
    assert b"hunter2" not in token
    assert decrypt(load_key(config), token, "support").reveal() == "hunter2"


def test_wrong_or_malformed_key_is_one_clear_error(tmp_path):
    token = encrypt(load_key(Bridge(key_file=str(tmp_path / "a.key")), create=True), "hunter2")
    other = load_key(Bridge(key_file=str(tmp_path / "b.key")), create=True)
    with pytest.raises(BridgeKeyError, match="does not open the password of IMAP account support"):
        decrypt(other, token, "support")
    with pytest.raises(BridgeKeyError, match="TICKETMAIL_BRIDGE_KEY"):
        load_key(Bridge(key="not a key"))
    (tmp_path / "bad.key").write_text("garbage\n")
    with pytest.raises(BridgeKeyError, match="bad.key is not a Fernet key"):
        load_key(Bridge(key_file=str(tmp_path / "bad.key")))


def test_connection_failures_are_one_sentence():
    a = account()
    assert describe(socket.gaierror(-2, "Name or service not known"), a, 20) == \
        "server name imap.example.com does not resolve (Name or service not known)"
    assert "refused" in describe(ConnectionRefusedError(111, "Connection refused"), a, 20)
    cert = ssl.SSLCertVerificationError(1, "certificate verify failed")
    cert.verify_message = "self-signed certificate"
    assert describe(cert, a, 20).startswith("TLS certificate of imap.example.com not trusted: self-signed")
    assert "did not answer within 20 s" in describe(TimeoutError(), a, 20)
    assert "hunter2" not in describe(RuntimeError('LOGIN "support" "hunter2" failed'), a, 20)


async def test_a_garbled_answer_to_login_fails_fast_without_showing_the_password(caplog):
    """A server answering LOGIN with another command's tag: aioimaplib's error quotes the pending LOGIN."""
    import asyncio
    import logging

    from bridge.imap import Connection

    async def handle(reader, writer):
        writer.write(b"* OK [CAPABILITY IMAP4rev1] fake ready\r\n")
        while line := await reader.readline():
            tag = line.split()[0]
            if b"CAPABILITY" in line:
                writer.write(b"* CAPABILITY IMAP4rev1\r\n" + tag + b" OK done\r\n")
            elif b"LOGIN" in line:
                writer.write(b"WRONGTAG OK logged in, or so\r\n")
            await writer.drain()

    caplog.set_level(logging.DEBUG)
    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        with pytest.raises(ImapError) as failure:
            await asyncio.wait_for(Connection.open(account(server="127.0.0.1", port=port, security="none"), 5), 4)
    finally:
        server.close()
        await server.wait_closed()
    assert "unexpected response" in str(failure.value)
    assert "hunter2" not in str(failure.value) and "hunter2" not in caplog.text
