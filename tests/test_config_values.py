"""Configuration values are checked, not only their types; `--version`; SIGHUP stops serve in order."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys

import pytest

from tests.ports import free_port
from tests.test_crash import start_server
from ticketmail import config as configuration


@pytest.mark.parametrize("env, says", [
    ({"TICKETMAIL_LMTP_PORT": "70000"},
     "lmtp.port (from TICKETMAIL_LMTP_PORT): expected a port from 1 to 65535, got 70000"),
    ({"TICKETMAIL_WEB_PORT": "-1"}, "web.port (from TICKETMAIL_WEB_PORT): expected a port from 1 to 65535, got -1"),
    ({"TICKETMAIL_CHALLENGE_TOKEN_DAYS": "0"},
     "challenge.token_days (from TICKETMAIL_CHALLENGE_TOKEN_DAYS): expected 1 or more, got 0"),
    ({"TICKETMAIL_WEB_PUBLIC_URL": "ftp://help.example"},
     "web.public_url (from TICKETMAIL_WEB_PUBLIC_URL): expected an http:// or https:// URL"),
    ({"TICKETMAIL_WEB_PUBLIC_URL": "help.example"},
     "web.public_url (from TICKETMAIL_WEB_PUBLIC_URL): expected an http:// or https:// URL"),
    ({"TICKETMAIL_SMTP_SECURITY": "ssl"},
     "smtp.security (from TICKETMAIL_SMTP_SECURITY): expected none, starttls or tls"),
    ({"TICKETMAIL_RESUBMISSION_DAYS": "-1"},
     "resubmission_days (from TICKETMAIL_RESUBMISSION_DAYS): expected 0 or more, got -1"),
])
def test_bad_values_are_refused_with_their_key(env, says):
    """A value from the environment is named by its key and by the variable it came from."""
    with pytest.raises(configuration.ConfigError) as refused:
        configuration.load(None, env=env)
    assert str(refused.value).startswith(says)


def test_a_bad_value_from_the_file_is_named_by_its_key(tmp_path):
    path = tmp_path / "ticketmail.toml"
    path.write_text("[lmtp]\nport = 70000\n")
    with pytest.raises(configuration.ConfigError) as refused:
        configuration.load(str(path), env={})
    assert str(refused.value) == "lmtp.port: expected a port from 1 to 65535, got 70000"


def test_good_values_pass():
    config = configuration.load(None, env={"TICKETMAIL_WEB_PUBLIC_URL": "https://help.example/desk",
                                           "TICKETMAIL_LMTP_PORT": "24"})
    assert (config.web.public_url, config.lmtp.port) == ("https://help.example/desk", 24)


def test_version():
    result = subprocess.run([sys.executable, "-m", "ticketmail.cli", "--version"], capture_output=True, text=True)
    assert result.returncode == 0 and result.stdout.startswith("ticketmail 0.")


async def test_sighup_stops_serve_in_order(cli, db_url, tmp_path):
    port = free_port()
    with open(tmp_path / "serve.log", "w") as log:
        server = await asyncio.to_thread(start_server, db_url, port, log)
        server.send_signal(signal.SIGHUP)
        assert await asyncio.to_thread(server.wait, 30) == 0  # it used to die at once, silently
    text = (tmp_path / "serve.log").read_text()
    assert "SIGHUP: stopping" in text and "stopped" in text
