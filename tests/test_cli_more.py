"""The command-line counterparts of the panel's directory, ticket and IMAP edits: `department edit|remove`,
`customer rename|verify|list --search`, `held block`, `tickets list` filters, `tickets set`, `imap edit`.
Each prints one line, is seen by the list commands, leaves an audit entry, and refuses bad input in one line."""

from __future__ import annotations

import getpass
import io
import json
import sys

from bridge.accounts import decrypt, load_key
from storage import imap_store
from tests.bridge_helpers import SALES, SUPPORT, add_account, bridge_key, departments  # noqa: F401 - fixtures
from tests.conftest import deliver, one_database
from tests.dovecot import dovecot  # noqa: F401 - fixture
from tests.mail import message
from tests.ports import free_port
from ticketmail import config as configuration
from ticketmail.admin import audit
from ticketmail.commands import BY

ALICE, BOB, CAROL, EVE = "alice@customer.example", "bob@customer.example", "carol@other.example", "eve@spam.example"
TICKET_KEYS = {"number", "subject", "status", "department", "customer", "priority", "tags", "messages",
               "created_at", "updated_at"}


async def as_json(cli, *argv):
    code, out, err = await cli(*argv, "--json")
    assert code == 0, err
    return json.loads(out)


async def audited(db, count: int) -> list[tuple[str, str, str, str]]:
    """The newest `count` audit entries, newest first."""
    return [(e.actor, e.action, e.subject, e.detail) for e in await audit.recent(db, limit=count)]


def one_line_error(result, code: int, text: str) -> None:
    got, out, err = result
    assert (got, out, err.count("\n")) == (code, "", 1) and err.startswith("ticketmail: ") and text in err, result


async def test_department_edit_keeps_what_is_not_given_and_remove(cli, db, tmp_path):
    assert (await cli("department", "add", "Support", "--address", SUPPORT, "--unknown-sender", "accept"))[0] == 0
    code, out, err = await cli("department", "edit", "support", "--rename", "Helpdesk", "--address", "HELP@xyz.example",
                               "--address", "*@help.example", "--unknown-sender", "hold")
    assert (code, err) == (0, "")
    assert out == ("department Helpdesk edited: renamed from Support; addresses help@xyz.example, *@help.example; "
                   "unknown senders: hold\n")
    assert await as_json(cli, "department", "list") == [
        {"name": "Helpdesk", "addresses": ["help@xyz.example", "*@help.example"], "unknown_sender": "hold"}]
    assert await audited(db, 1) == [(BY, "department.edit", "Support", out.split(": ", 1)[1].strip())]

    assert await cli("department", "edit", "Helpdesk", "--unknown-sender", "challenge") == (
        0, "department Helpdesk edited: unknown senders: challenge\n", "")
    assert await cli("department", "edit", "Helpdesk") == (0, "department Helpdesk: nothing changed\n", "")
    [listed] = await as_json(cli, "department", "list")
    assert listed["addresses"] == ["help@xyz.example", "*@help.example"]  # kept when no --address is given

    rules = tmp_path / "rules.toml"
    rules.write_text('[[rule]]\nname = "to-helpdesk"\nscope = "department:helpdesk"\nconditions = [{ field = '
                     '"subject", op = "contains", value = "help" }]\nactions = [{ action = "assign", department = '
                     '"Helpdesk" }]\n\n[[rule]]\nname = "others"\nconditions = [{ field = "subject", op = "contains", '
                     'value = "x" }]\nactions = [{ action = "tag", tag = "helpdesk" }]\n')
    assert (await cli("rules", "import", str(rules)))[0] == 0
    assert await cli("department", "edit", "Helpdesk", "--rename", "Desk") == (
        0, "department Desk edited: renamed from Helpdesk\nthe rules that named Helpdesk now name Desk: to-helpdesk\n", "")
    assert await audited(db, 2) == [(BY, "rules.update", "to-helpdesk", "department Helpdesk renamed Desk"),
                                    (BY, "department.edit", "Helpdesk", "renamed from Helpdesk")]
    code, out, _ = await cli("rules", "export")
    assert 'scope = "department:Desk"' in out and 'department = "Desk"' in out and 'tag = "helpdesk"' in out
    assert "Helpdesk" not in out
    one_line_error(await cli("department", "remove", "desk"), 1,
                   "department Desk is still in use by 1 rule (to-helpdesk)")
    assert (await cli("rules", "delete", "to-helpdesk"))[0] == 0

    assert await cli("department", "remove", "desk") == (0, "department Desk removed\n", "")
    assert await as_json(cli, "department", "list") == []
    assert await audited(db, 1) == [(BY, "department.remove", "Desk", "")]

    one_line_error(await cli("department", "edit", "Nope", "--rename", "X"), 1, "no department 'Nope'")
    one_line_error(await cli("department", "remove", "Nope"), 1, "no department 'Nope'")
    one_line_error(await cli("department", "edit", "Nope", "--unknown-sender", "drop"), 2, "invalid choice: 'drop'")


async def test_department_edit_refusals_change_nothing(cli, db):
    for name, address in (("Support", SUPPORT), ("Sales", SALES)):
        assert (await cli("department", "add", name, "--address", address))[0] == 0
    before = await as_json(cli, "department", "list")
    one_line_error(await cli("department", "edit", "Sales", "--address", SUPPORT), 1,
                   f"address {SUPPORT} already belongs to department Support")
    one_line_error(await cli("department", "edit", "Sales", "--rename", "support"), 1,
                   "department 'Support' already exists")
    one_line_error(await cli("department", "edit", "Sales", "--rename", ""), 1, "a department needs a name")
    assert await as_json(cli, "department", "list") == before
    assert [e.action for e in await audit.recent(db)] == ["department.add", "department.add"]


async def test_a_department_with_tickets_is_not_removed(cli, db, lmtp):
    assert (await cli("department", "add", "Support", "--address", SUPPORT, "--unknown-sender", "accept"))[0] == 0
    [(code, _)] = await deliver(lmtp.port, ALICE, SUPPORT, message(frm=ALICE, subject="help"))
    assert code == 250
    one_line_error(await cli("department", "remove", "Support"), 1,
                   "department Support is still in use by 1 ticket")
    assert [d["name"] for d in await as_json(cli, "department", "list")] == ["Support"]


async def test_customer_rename_verify_and_search(cli, db, lmtp):
    assert (await cli("department", "add", "Support", "--address", SUPPORT, "--unknown-sender", "accept"))[0] == 0
    assert (await cli("customer", "add", ALICE, "--name", "Alice"))[0] == 0
    assert (await cli("customer", "add", BOB))[0] == 0
    [(code, _)] = await deliver(lmtp.port, CAROL, SUPPORT, message(frm=CAROL, subject="hello"))
    assert code == 250  # the accept policy makes Carol an unverified customer

    assert await cli("customer", "rename", "ALICE@customer.example", "Alice Liddell") == (
        0, f"customer {ALICE} renamed 'Alice Liddell'\n", "")
    assert await cli("customer", "rename", ALICE, "Alice Liddell") == (0, f"customer {ALICE}: name unchanged\n", "")
    assert await audited(db, 1) == [(BY, "customer.edit", ALICE, "name 'Alice' -> 'Alice Liddell'")]

    found = await as_json(cli, "customer", "list", "--search", "LIDDELL")
    assert [(c["email"], c["name"]) for c in found] == [(ALICE, "Alice Liddell")]
    assert [c["email"] for c in await as_json(cli, "customer", "list", "--search", "@customer.")] == [ALICE, BOB]
    assert [c["email"] for c in await as_json(cli, "customer", "list")] == [ALICE, BOB, CAROL]  # unchanged
    code, out, _ = await cli("customer", "list", "--search", "Liddell")
    assert (code, out) == (0, f"{ALICE}\tAlice Liddell\tverified (cli)\n")
    assert await cli("customer", "list", "--search", "zzz") == (
        0, "no customer's address or name contains 'zzz'\n", "")

    [carol] = await as_json(cli, "customer", "list", "--search", "carol")
    assert carol["verified"] is False
    code, out, err = await cli("customer", "verify", CAROL)
    assert (code, err) == (0, "") and out.startswith(f"customer {CAROL} verified")
    [carol] = await as_json(cli, "customer", "list", "--search", "carol")
    assert carol["verified"] is True
    assert (await audited(db, 1))[0][1:3] == ("customer.verify", CAROL)
    assert await cli("customer", "verify", CAROL) == (0, f"customer {CAROL} was already verified\n", "")

    one_line_error(await cli("customer", "rename", "nobody@x.example", "N"), 1, "no customer nobody@x.example")
    one_line_error(await cli("customer", "rename", ALICE, "two\nlines"), 1, "a name is one line")
    one_line_error(await cli("customer", "verify", "nobody@x.example"), 1, "no customer nobody@x.example")
    one_line_error(await cli("customer", "rename", ALICE), 2, "the following arguments are required: name")


async def test_held_block_deletes_the_senders_mail(cli, db, lmtp):
    assert (await cli("department", "add", "Support", "--address", SUPPORT, "--unknown-sender", "hold"))[0] == 0
    assert await cli("held", "block", "EVE@spam.example") == (
        0, f"{EVE} blocked: their mail is deleted on arrival (`held unblock` lifts it)\n", "")
    assert await audited(db, 1) == [(BY, "sender.block", EVE, "")]
    [(code, _)] = await deliver(lmtp.port, EVE, SUPPORT, message(frm=EVE, subject="buy now"))
    assert code == 250
    assert await as_json(cli, "held", "list") == [] and await as_json(cli, "tickets", "list") == []

    one_line_error(await cli("held", "block", EVE), 1, f"{EVE} is already blocked")
    assert (await cli("customer", "add", ALICE))[0] == 0  # a customer's mail is stopped by a block too
    assert (await cli("held", "block", ALICE))[0] == 0
    [(code, _)] = await deliver(lmtp.port, ALICE, SUPPORT, message(frm=ALICE, subject="from a blocked customer"))
    assert code == 250 and await as_json(cli, "tickets", "list") == []
    one_line_error(await cli("held", "block", "not an address"), 1, "not an email address")

    assert await cli("held", "unblock", EVE) == (0, f"{EVE} unblocked\n", "")
    await deliver(lmtp.port, EVE, SUPPORT, message(frm=EVE, subject="a real question"))
    assert [m["subject"] for m in await as_json(cli, "held", "list")] == ["a real question"]


async def tickets_on_two_desks(cli, lmtp) -> None:
    """#1 from Alice to Support, #2 from Bob to Sales (the most recently updated)."""
    for name, address in (("Support", SUPPORT), ("Sales", SALES)):
        assert (await cli("department", "add", name, "--address", address, "--unknown-sender", "accept"))[0] == 0
    for sender, to, subject in ((ALICE, SUPPORT, "printer on fire"), (BOB, SALES, "invoice missing")):
        [(code, _)] = await deliver(lmtp.port, sender, to, message(frm=sender, to=to, subject=subject,
                                                                  body=f"About: {subject}.\n"))
        assert code == 250


async def test_tickets_set_and_list_filters(cli, db, lmtp):
    await tickets_on_two_desks(cli, lmtp)
    code, out, err = await cli("tickets", "set", "1", "--status", "closed", "--priority", "high",
                               "--tags", "vip, billing")
    assert (code, out, err) == (0, "ticket #1: status open -> closed; priority normal -> high; "
                                   "tags (none) -> vip, billing\n", "")
    assert await audited(db, 3) == [(BY, "ticket.tags", "#1", "(none) -> vip, billing"),
                                    (BY, "ticket.priority", "#1", "normal -> high"),
                                    (BY, "ticket.status", "#1", "open -> closed")]
    everything = await as_json(cli, "tickets", "list")  # #1 is now the most recently updated
    assert [t["number"] for t in everything] == [1, 2] and all(set(t) == TICKET_KEYS for t in everything)
    assert (everything[0]["status"], everything[0]["priority"], everything[0]["tags"]) == (
        "closed", "high", ["vip", "billing"])
    assert everything[0]["updated_at"] > everything[1]["updated_at"] > everything[0]["created_at"]

    async def numbers(*argv):
        return [t["number"] for t in await as_json(cli, "tickets", "list", *argv)]

    assert await numbers("--status", "closed") == [1] and await numbers("--status", "open") == [2]
    assert await numbers("--department", "sales") == [2]  # any case, as everywhere in the CLI
    assert await numbers("--customer", "ALICE@customer.example") == [1]
    assert await numbers("--tag", "vip") == [1] and await numbers("--tag", "vi") == []
    assert await numbers("--search", "printer fire") == [1]
    assert await numbers("--status", "open", "--department", "Support") == []

    code, out, err = await cli("tickets", "list", "--limit", "1")
    assert (code, err) == (0, "ticketmail: the 1 most recently updated shown; more match (raise --limit)\n")
    assert out == f"#1\tclosed\tSupport\t{ALICE}\t1 msg\tprinter on fire\n"
    code, out, err = await cli("tickets", "list", "--limit", "2")
    assert (code, err, out.count("\n")) == (0, "", 2)
    assert await cli("tickets", "list", "--search", "nothing-like-this") == (0, "no tickets match\n", "")

    assert await cli("tickets", "set", "1", "--tags", "") == (0, "ticket #1: tags vip, billing -> (none)\n", "")
    assert await numbers("--tag", "vip") == []
    assert (await as_json(cli, "tickets", "show", "1"))["tags"] == []


async def test_tickets_set_and_list_refusals(cli, db, lmtp):
    await tickets_on_two_desks(cli, lmtp)
    before = await as_json(cli, "tickets", "list")
    one_line_error(await cli("tickets", "set", "99", "--status", "closed"), 1, "no ticket #99")
    one_line_error(await cli("tickets", "set", "1"), 1, "nothing to set: give --status, --priority or --tags")
    one_line_error(await cli("tickets", "set", "1", "--priority", "asap"), 2, "invalid choice: 'asap'")
    one_line_error(await cli("tickets", "set", "1", "--status", "closed", "--tags", "x" * 65), 1,
                   "a tag is at most 64 printable characters")  # checked first: the status did not change either
    one_line_error(await cli("tickets", "list", "--limit", "0"), 2, "'0' is not a whole number of at least 1")
    one_line_error(await cli("tickets", "list", "--status", "pending"), 2, "invalid choice: 'pending'")
    one_line_error(await cli("tickets", "list", "--department", "Nope"), 1, "no department 'Nope'")
    assert await as_json(cli, "tickets", "list") == before
    assert all(e.action == "department.add" for e in await audit.recent(db))


async def test_imap_edit_keeps_what_is_not_given(cli, db, monkeypatch, bridge_key, departments):
    monkeypatch.setattr(sys, "stdin", io.StringIO("old-pw\n"))
    code, _, err = await cli("imap", "add", "support", "--email", SUPPORT, "--server", "mail.example.com",
                             "--user", "sup", "--password-stdin", "--no-test")
    assert code == 0, err
    [before] = await as_json(cli, "imap", "list")

    code, out, err = await cli("imap", "edit", "support", "--server", "imap2.example.com", "--security", "starttls",
                               "--folder", "Support", "--after", "move:Done", "--department", "Sales",
                               "--poll-seconds", "30", "--no-test")
    assert (code, err) == (0, "")
    assert out == ("imap account support edited: server mail.example.com -> imap2.example.com; port 993 -> 143; "
                   "security tls -> starttls; folder INBOX -> Support; after seen -> move:Done; poll_seconds 60 -> 30; "
                   "department Sales\n")
    [after] = await as_json(cli, "imap", "list")
    assert after == before | {"server": "imap2.example.com", "port": 143, "security": "starttls", "folder": "Support",
                              "after": "move:Done", "department": "Sales", "poll_seconds": 30}
    assert await audited(db, 1) == [(BY, "imap.edit", "support", out.split(": ", 1)[1].strip())]

    code, out, err = await cli("imap", "edit", "support", "--port", "1143", "--no-verify-tls", "--department", "",
                               "--no-test")
    assert (code, out) == (0, "imap account support edited: port 143 -> 1143; verify_tls True -> False; "
                              "department by address\n")
    assert "TLS certificate is not checked" in err and err.count("\n") == 1  # warned, as `imap add` warns
    [after] = await as_json(cli, "imap", "list")
    assert (after["port"], after["verify_tls"], after["department"], after["user"]) == (1143, False, None, "sup")
    assert await cli("imap", "edit", "support", "--verify-tls", "--port", "143", "--no-test") == (
        0, "imap account support edited: port 1143 -> 143; verify_tls False -> True\n", "")
    assert await cli("imap", "edit", "support", "--no-test") == (0, "imap account support: nothing changed\n", "")

    prompts = []
    monkeypatch.setattr(getpass, "getpass", lambda prompt="": prompts.append(prompt) or "new-pw")
    assert await cli("imap", "edit", "support", "--name", "desk", "--password", "--no-test") == (
        0, "imap account desk edited: name support -> desk; password changed\n", "")
    assert prompts == ["IMAP password for support: ", "Repeat the password: "]
    assert stored_password(await db.run(imap_store.account_by_name, "desk")) == "new-pw"
    [entry] = await audit.recent(db, limit=1)
    assert "new-pw" not in entry.detail and entry.detail == "name support -> desk; password changed"
    assert [a["name"] for a in await as_json(cli, "imap", "list")] == ["desk"]


async def test_imap_edit_refusals_change_nothing(cli, db, monkeypatch, bridge_key, departments):
    monkeypatch.setattr(sys, "stdin", io.StringIO("pw\n"))
    assert (await cli("imap", "add", "support", "--email", SUPPORT, "--server", "127.0.0.1", "--port",
                      str(free_port()), "--password-stdin", "--no-test"))[0] == 0
    [before] = await as_json(cli, "imap", "list")
    one_line_error(await cli("imap", "edit", "nope", "--no-test"), 1, "no IMAP account 'nope'")
    one_line_error(await cli("imap", "edit", "support", "--after", "archive", "--no-test"), 1,
                   "seen, delete or move:FOLDER")
    one_line_error(await cli("imap", "edit", "support", "--password", "--password-stdin"), 2,
                   "not allowed with argument")
    for option, value, sentence in (("--server", "m" * 256, "the IMAP server is longer than 255 characters"),
                                    ("--user", "u" * 321, "the user name is longer than 320 characters"),
                                    ("--folder", "F" * 256, "the folder is longer than 255 characters"),
                                    ("--after", "move:" + "F" * 256, "the folder to move to is longer than 255")):
        # longer than their columns: PostgreSQL refused the row (a database error, not a sentence)
        one_line_error(await cli("imap", "edit", "support", option, value, "--no-test"), 1, sentence)
    code, out, err = await cli("imap", "edit", "support", "--folder", "Other")  # tested first: the port is closed
    assert (code, out) == (1, "") and "imap test support:" in err and err.endswith("(nothing changed)\n")
    assert await as_json(cli, "imap", "list") == [before]
    assert [e.action for e in await audit.recent(db, limit=1)] == ["imap.add"]


def stored_password(db_row) -> str:
    return decrypt(load_key(configuration.load(None).bridge), db_row.password_encrypted, db_row.name).reveal()


@one_database
async def test_imap_edit_tests_the_new_settings_against_dovecot(cli, db, monkeypatch, dovecot, add_account):
    code, _, err = await add_account(dovecot)
    assert code == 0, err
    code, out, err = await cli("imap", "edit", "support", "--folder", "Nowhere")
    assert (code, out, err.count("\n")) == (1, "", 1) and "Nowhere" in err and err.endswith("(nothing changed)\n")
    monkeypatch.setattr(sys, "stdin", io.StringIO("wrong-pw\n"))
    code, _, err = await cli("imap", "edit", "support", "--password-stdin")
    assert code == 1 and "(nothing changed)" in err
    assert stored_password(await db.run(imap_store.account_by_name, "support")) == "support-pw"

    code, out, err = await cli("imap", "edit", "support", "--poll-seconds", "30")
    assert (code, err) == (0, "")
    lines = out.splitlines()
    assert lines[0].startswith(f"  connected to 127.0.0.1:{dovecot.tls_port} (TLS")
    assert "  logged in as support" in lines
    assert lines[-1] == "imap account support edited: poll_seconds 60 -> 30"
    [listed] = await as_json(cli, "imap", "list")
    assert listed["poll_seconds"] == 30
    assert [e.action for e in await audit.recent(db, limit=2)] == ["imap.edit", "imap.add"]


@one_database
async def test_every_list_of_a_new_database_says_it_is_empty(cli, db):
    """A new operator's first `list` gets a sentence, not an empty screen; --json an empty array."""
    for argv, sentence in ((["department", "list"], "no departments"), (["customer", "list"], "no customers"),
                           (["rules", "list"], "no rules"), (["tickets", "list"], "no tickets"),
                           (["held", "list"], "no held messages"), (["held", "failed"], "no failed messages"),
                           (["imap", "list"], "no IMAP accounts")):
        assert await cli(*argv) == (0, sentence + "\n", ""), argv
        code, out, err = await cli(*argv, "--json")
        assert (code, json.loads(out), err) == (0, [], ""), argv
