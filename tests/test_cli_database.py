"""What the CLI says about its database: which one, what `db upgrade` did, and nothing created by a
command that only reads; a bad database_url and a closed pipe, each as a Unix tool would."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from storage.database import head_revision

TICKETMAIL = [sys.executable, "-m", "ticketmail.cli"]


def ticketmail(*argv: str, url: str, cwd) -> subprocess.CompletedProcess:
    return subprocess.run([*TICKETMAIL, *argv], capture_output=True, text=True, cwd=cwd, timeout=60,
                          env=dict(os.environ, TICKETMAIL_DATABASE_URL=url, PYTHONPATH=os.getcwd()))


def test_db_upgrade_says_what_it_did(tmp_path):
    from alembic import command

    from storage.database import _alembic_config

    (tmp_path / "var").mkdir()
    url, path, head = "sqlite+aiosqlite:///var/t.db", tmp_path / "var" / "t.db", head_revision()
    created = ticketmail("db", "upgrade", url=url, cwd=tmp_path)
    assert (created.returncode, created.stdout) == (0, f"database {path}: schema {head} created\n")
    again = ticketmail("db", "upgrade", url=url, cwd=tmp_path)
    assert again.stdout == f"database {path}: schema {head}, already up to date\n"
    old = tmp_path / "old.db"
    command.upgrade(_alembic_config(f"sqlite+aiosqlite:///{old}"), "0004")
    upgraded = ticketmail("db", "upgrade", url=f"sqlite+aiosqlite:///{old}", cwd=tmp_path)
    assert upgraded.stdout == f"database {old}: upgraded from schema 0004 to {head}\n"


def test_a_command_names_its_database_and_never_creates_it(tmp_path):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    result = ticketmail("tickets", "list", url="sqlite+aiosqlite:///var/ticketmail.db", cwd=elsewhere)
    missing = elsewhere / "var" / "ticketmail.db"
    assert result.returncode == 1
    assert result.stderr == f"ticketmail: database {missing} does not exist: run `ticketmail db upgrade` first\n"
    assert not (elsewhere / "var").exists()
    (elsewhere / "var").mkdir()
    missing.touch()  # there, but never migrated
    result = ticketmail("tickets", "list", url="sqlite+aiosqlite:///var/ticketmail.db", cwd=elsewhere)
    assert result.stderr == (f"ticketmail: database {missing}: schema is at nothing, this ticketmail needs "
                             f"{head_revision()}: run `ticketmail db upgrade` (or `serve --upgrade`)\n")


@pytest.mark.parametrize("url, says", [
    ("foo://bar", "database_url (from TICKETMAIL_DATABASE_URL): driver 'foo' is not supported; expected one of "
                  "sqlite+aiosqlite, postgresql+asyncpg"),
    ("postgresql://u:secret@db/t", "database_url (from TICKETMAIL_DATABASE_URL): driver 'postgresql' is not supported"),
    ("::::", "database_url (from TICKETMAIL_DATABASE_URL): not a database URL: '::::'"),
])
def test_a_bad_database_url_is_one_line_naming_the_key(tmp_path, url, says):
    result = ticketmail("tickets", "list", url=url, cwd=tmp_path)
    assert result.returncode == 2 and result.stderr.startswith(f"ticketmail: {says}")
    assert result.stderr.count("\n") == 1 and "secret" not in result.stderr


def test_a_closed_pipe_ends_the_command_quietly(tmp_path):
    (tmp_path / "var").mkdir()
    url = "sqlite+aiosqlite:///var/t.db"
    assert ticketmail("db", "upgrade", url=url, cwd=tmp_path).returncode == 0
    rules = tmp_path / "rules.toml"
    rules.write_text("".join(f'[[rule]]\nname = "r{n}"\nconditions = [{{ field = "subject", op = "contains", '
                             f'value = "x{n}" }}]\nactions = [{{ action = "tag", tag = "t" }}]\n' for n in range(1000)))  # ~230 KB: more than a pipe holds
    assert ticketmail("rules", "import", str(rules), url=url, cwd=tmp_path).returncode == 0
    reader = subprocess.Popen([*TICKETMAIL, "rules", "list", "--json"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              cwd=tmp_path, env=dict(os.environ, TICKETMAIL_DATABASE_URL=url, PYTHONPATH=os.getcwd()))
    assert reader.stdout.read(10) == b'[\n  {\n    '  # what `| head -c 10` reads, then it goes away
    reader.stdout.close()
    assert reader.wait(60) == 141  # 128 + SIGPIPE, as cat or grep would end
    assert reader.stderr.read() == b""
