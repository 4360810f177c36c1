"""`ticketmail admin add|list|passwd|remove`: who may sign in to the web panel, on both databases."""

from __future__ import annotations

import io
import json

import pytest

from storage import admin_store
from ticketmail.admin import admins

PASSWORD = "correct horse battery"


@pytest.fixture
def stdin(monkeypatch):
    """What the command reads from a standard input that is not a terminal (a script's pipe)."""

    def give(text: str) -> None:
        monkeypatch.setattr("sys.stdin", io.StringIO(text))

    return give


async def test_add_list_passwd_remove(db, cli, stdin):
    stdin(PASSWORD + "\n")
    code, out, err = await cli("admin", "add", "Alice")
    assert (code, err) == (0, "") and out.startswith("admin alice added; sign in at http://")
    code, out, _ = await cli("admin", "list", "--json")
    listed = json.loads(out)
    assert code == 0 and [a["name"] for a in listed] == ["alice"] and set(listed[0]) == {
        "name", "created_at", "password_changed_at"}  # never the hash
    stored = await db.run(admin_store.admin_by_name, "alice")
    assert stored.password_hash.startswith("$argon2id$") and PASSWORD not in stored.password_hash
    assert await admins.sign_in(db, "ALICE", PASSWORD) is not None
    assert await admins.sign_in(db, "alice", PASSWORD + "x") is None

    stdin("a new long password\n")
    code, out, err = await cli("admin", "passwd", "alice")
    assert code == 0 and "sessions have ended" in out, err
    after = await db.run(admin_store.admin_by_name, "alice")
    assert after.session_epoch == stored.session_epoch + 1  # every session of the old password ends
    assert await admins.sign_in(db, "alice", PASSWORD) is None
    assert await admins.sign_in(db, "alice", "a new long password") is not None

    code, out, _ = await cli("admin", "remove", "alice")
    assert code == 0 and out == "admin alice removed; their sessions have ended\n"
    code, out, _ = await cli("admin", "list")
    assert out == "no admins (add one with `ticketmail admin add NAME`)\n"


async def test_refusals_are_one_line_and_change_nothing(db, cli, stdin):
    stdin("short\n")
    assert await cli("admin", "add", "bob") == (
        1, "", "ticketmail: the password is shorter than 10 characters; nothing saved\n")
    stdin(PASSWORD + "\n")
    code, _, err = await cli("admin", "add", "bad name!")
    assert code == 1 and err.startswith("ticketmail: admin name 'bad name!'") and err.count("\n") == 1
    stdin(PASSWORD + "\n")
    assert (await cli("admin", "add", "bob"))[0] == 0
    stdin("another long password\n")
    code, _, err = await cli("admin", "add", "Bob")
    assert code == 1 and err.startswith("ticketmail: admin bob already exists")
    assert await admins.sign_in(db, "bob", PASSWORD) is not None  # the first password stays
    for argv in (("passwd", "carol"), ("remove", "carol")):
        stdin(PASSWORD + "\n")
        assert await cli("admin", *argv) == (1, "", "ticketmail: no admin carol (see `ticketmail admin list`)\n")


async def test_the_password_is_asked_twice_on_a_terminal(db, cli, monkeypatch):
    class Terminal(io.StringIO):
        def isatty(self):
            return True

    answers = iter([PASSWORD, PASSWORD + "typo"])
    monkeypatch.setattr("sys.stdin", Terminal())
    monkeypatch.setattr("getpass.getpass", lambda prompt: next(answers))
    assert await cli("admin", "add", "dave") == (1, "", "ticketmail: the two passwords do not match; nothing saved\n")
    assert await db.run(admin_store.admins) == []
