"""The LMTP unix socket: the mode and group the MTA needs from the moment it exists, removed on exit,
and never put in place of something that is not a stale socket of ours."""

from __future__ import annotations

import asyncio
import grp
import os
import smtplib
import socket
import stat

import pytest

from ingest.lmtp import LMTPListener
from ingest.unix_socket import SocketError, UnixSocket, group_id
from ticketmail import config as configuration

SUPPORT = "support@xyzhosting.com"


async def test_the_socket_has_its_mode_and_group_serves_and_goes_away(cli, pipeline, tmp_path):
    await cli("department", "add", "Support", "--address", SUPPORT, "--unknown-sender", "accept")
    (tmp_path / "run").mkdir()
    path = tmp_path / "run" / "ticketmail"
    groups = os.getgroups() or [os.getgid()]
    listener = LMTPListener(pipeline, socket=str(path), socket_mode=0o660, socket_gid=groups[-1])
    await listener.start()
    try:
        info = path.stat()
        assert stat.S_ISSOCK(info.st_mode) and stat.S_IMODE(info.st_mode) == 0o660 and info.st_gid == groups[-1]
        assert [p.name for p in path.parent.iterdir()] == ["ticketmail"]  # the private staging folder is gone

        def send():
            with smtplib.LMTP(str(path)) as client:
                return client.sendmail("bob@else.example", [SUPPORT], b"From: bob@else.example\r\nSubject: s\r\n\r\nhi\r\n")

        assert await asyncio.to_thread(send) == {}
    finally:
        await listener.stop()
    assert not path.exists()


def test_a_path_that_is_not_a_socket_is_never_replaced(tmp_path):
    path = tmp_path / "ticketmail"
    path.write_text("keep me")
    with pytest.raises(SocketError, match="exists and is not a socket: not replaced"):
        UnixSocket(str(path), 0o660, os.getgid())
    assert path.read_text() == "keep me"
    link = tmp_path / "link"
    link.symlink_to(tmp_path / "elsewhere")
    with pytest.raises(SocketError, match="not a socket"):
        UnixSocket(str(link), 0o660, os.getgid())


def test_a_stale_socket_is_replaced_and_a_live_one_refused(tmp_path):
    path = tmp_path / "ticketmail"
    stale = socket.socket(socket.AF_UNIX)
    stale.bind(str(path))  # bound, never listening: what a killed process leaves
    stale.close()
    first = UnixSocket(str(path), 0o660, os.getgid())
    try:
        with pytest.raises(SocketError, match="in use by another process"):
            UnixSocket(str(path), 0o660, os.getgid())
    finally:
        first.remove()
        first.sock.close()
    assert not path.exists()


def test_socket_mode_and_group_are_checked(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text('[lmtp]\nsocket_mode = "rw-rw----"\n')
    with pytest.raises(configuration.ConfigError, match=r"lmtp.socket_mode: expected octal permissions"):
        configuration.load(str(bad))
    assert configuration.load(None, env={}).lmtp.socket_mode == "0660"
    with pytest.raises(KeyError):
        group_id("no-such-group-here")


@pytest.mark.skipif("postfix" not in {g.gr_name for g in grp.getgrall()} and not os.environ.get("CI"),
                    reason="Postfix's group is not on this machine")
def test_socket_group_postfix_is_the_group_postfix_connects_with(tmp_path):
    path = tmp_path / "ticketmail"
    made = UnixSocket(str(path), 0o660, group_id("postfix"))
    try:
        assert path.stat().st_gid == grp.getgrnam("postfix").gr_gid
    finally:
        made.remove()
        made.sock.close()
