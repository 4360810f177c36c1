"""The command line as an operator meets it: one-line errors, the schema guard, a unix socket, SIGTERM."""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import smtplib
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import one_database
from tests.lmtp_session import until
from ticketmail import config as configuration


def run_cli(*argv: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "ticketmail.cli", *argv], capture_output=True, text=True,
                          env=dict(os.environ, **(env or {})), timeout=60)


def test_bad_argument_is_one_line_not_a_traceback():
    result = run_cli("department", "add", "Support")
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and "--address" in result.stderr
    assert "Traceback" not in result.stderr


# Both ways the command is started: as a module (the tests, a checkout) and as the installed script.
PROGRAMS = {"module": [sys.executable, "-m", "ticketmail.cli"], "script": [str(Path(sys.executable).with_name("ticketmail"))]}


@pytest.mark.parametrize("program", PROGRAMS.values(), ids=PROGRAMS.keys())
def test_a_failing_command_is_one_line_however_it_is_started(program, sqlite_template, tmp_path):
    """Regression (issue 8): under `python -m ticketmail.cli` a failing command printed a traceback, because
    its error class existed twice (in `__main__` and in `ticketmail.cli`)."""
    shutil.copy(sqlite_template, tmp_path / "ticketmail.db")
    env = dict(os.environ, TICKETMAIL_DATABASE_URL=f"sqlite+aiosqlite:///{tmp_path}/ticketmail.db")
    env.pop("TICKETMAIL_CONFIG", None)
    result = subprocess.run([*program, "held", "release", "999"], capture_output=True, text=True, env=env,
                            timeout=60)
    assert (result.returncode, result.stdout, result.stderr) == (1, "", "ticketmail: no message 999\n")


def test_the_admin_layer_needs_no_terminal():
    """ticketmail/admin is what the web panel calls too: importing it loads neither the CLI nor its printing."""
    code = ("import sys, ticketmail.admin.customers, ticketmail.admin.departments, ticketmail.admin.held, "
            "ticketmail.admin.imap, ticketmail.admin.rules, ticketmail.admin.tickets; "
            "print(sorted(m for m in sys.modules if m in ('argparse', 'getpass', 'ticketmail.cli', "
            "'ticketmail.commands', 'ticketmail.imap_commands', 'ticketmail.terminal')))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    assert result.stdout == "[]\n"


def test_bad_config_value_names_the_key(tmp_path):
    path = tmp_path / "ticketmail.toml"
    path.write_text('[lmtp]\nport = "twenty-four"\n')
    result = run_cli("--config", str(path), "tickets", "list")
    assert result.returncode == 2 and "lmtp.port" in result.stderr and result.stderr.count("\n") == 1


def test_unknown_config_key_and_environment_override_are_named():
    with pytest.raises(configuration.ConfigError, match="TICKETMAIL_LMTP_PORT"):
        configuration.load(env={"TICKETMAIL_LMTP_PORT": "abc"})
    assert configuration.load(env={"TICKETMAIL_LMTP_PORT": "2424"}).lmtp.port == 2424
    with pytest.raises(configuration.ConfigError, match="lmtp.prot"):
        configuration._apply(configuration.Config(), {"lmtp": {"prot": 1}}, "", {}, {})


def test_unmigrated_database_is_one_clear_line(tmp_path):
    env = {"TICKETMAIL_DATABASE_URL": f"sqlite+aiosqlite:///{tmp_path}/new.db"}
    for argv in (["tickets", "list"], ["serve"]):
        result = run_cli(*argv, env=env)
        assert result.returncode == 1, result.stderr
        assert "ticketmail db upgrade" in result.stderr and result.stderr.count("\n") == 1


def test_unreachable_database_is_one_line():
    result = run_cli("tickets", "list", env={"TICKETMAIL_DATABASE_URL": "postgresql+asyncpg://nobody@127.0.0.1:1/x"})
    assert result.returncode == 1 and result.stderr.startswith("ticketmail: database or network error")
    assert result.stderr.count("\n") == 1


@one_database
async def test_serve_on_unix_socket_delivers_and_stops_cleanly_on_sigterm(db_url, cli, tmp_path):
    await cli("department", "add", "Support", "--address", "support@xyzhosting.com", "--unknown-sender", "accept")
    sock = tmp_path / "lmtp.sock"
    env = dict(os.environ, TICKETMAIL_DATABASE_URL=db_url, TICKETMAIL_LMTP_SOCKET=str(sock),
               TICKETMAIL_WEB_PORT="0")
    server = subprocess.Popen([sys.executable, "-m", "ticketmail.cli", "serve"], env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        await until(lambda: sock.exists() or server.poll() is not None, "serve to create its LMTP socket", seconds=30)
        assert server.poll() is None, "serve exited before listening on its socket"

        def send():
            with smtplib.LMTP(str(sock)) as client:
                client.sendmail("bob@else.example", ["support@xyzhosting.com"],
                                b"From: bob@else.example\r\nSubject: via socket\r\n\r\nhi\r\n")

        await asyncio.to_thread(send)
    finally:
        server.send_signal(signal.SIGTERM)
        _, err = server.communicate(timeout=30)
    assert server.returncode == 0, err
    assert "stopped" in err
    code, out, _ = await cli("tickets", "list")
    assert "via socket" in out and "bob@else.example" in out
