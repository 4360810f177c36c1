"""Memory under a large message: `serve` and its writer process each grow by a small multiple of the
message (a 24 MiB message took serve to 315 MB: 9.7x its size)."""

from __future__ import annotations

import asyncio
import hashlib
import os
import signal
import subprocess
from email import policy
from email.message import EmailMessage
from email.parser import BytesParser

import pytest
from sqlalchemy import select

from storage.models import Attachment, Message
from tests.conftest import deliver
from tests.ports import free_port
from tests.test_crash import start_server

SUPPORT = "support@xyzhosting.com"


def _status(pid: int, key: str) -> int:
    """A /proc/PID/status figure in bytes (VmRSS: now, VmHWM: the peak since the last reset)."""
    with open(f"/proc/{pid}/status") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith(key + ":"))


def _big_message(size: int) -> bytes:
    m = EmailMessage()
    m["From"], m["To"], m["Subject"], m["Message-ID"] = "bob@else.example", SUPPORT, "big", "<big@else.example>"
    m.set_content("The logs are attached.\n")
    m.add_attachment(os.urandom(size * 3 // 4), maintype="application", subtype="octet-stream", filename="logs.bin")
    return m.as_bytes().replace(b"\n", b"\r\n")


@pytest.mark.skipif(not os.path.exists("/proc/self/clear_refs"), reason="needs Linux /proc to read peak memory")
async def test_a_24_mib_message_grows_each_process_by_a_small_multiple(cli, db, db_url, tmp_path):
    await cli("department", "add", "Support", "--address", SUPPORT, "--unknown-sender", "accept")
    port = free_port()
    with open(tmp_path / "serve.log", "w") as log:
        server = await asyncio.to_thread(start_server, db_url, port, log)
        try:
            [writer] = map(int, subprocess.run(["pgrep", "-P", str(server.pid)], capture_output=True,
                                               text=True, check=True).stdout.split())
            raw = _big_message(24 << 20)
            before = {}
            for pid in (server.pid, writer):
                with open(f"/proc/{pid}/clear_refs", "w") as f:
                    f.write("5")  # resets VmHWM to the current RSS
                before[pid] = _status(pid, "VmRSS")
            [(code, _)] = await deliver(port, "bob@else.example", SUPPORT, raw)
            assert code == 250
            growth = {pid: (_status(pid, "VmHWM") - before[pid]) / len(raw) for pid in (server.pid, writer)}
        finally:
            server.send_signal(signal.SIGTERM)
            assert await asyncio.to_thread(server.wait, 30) == 0
    print(f"peak growth: serve {growth[server.pid]:.2f}x, writer {growth[writer]:.2f}x of {len(raw) >> 20} MiB")
    assert growth[server.pid] <= 3.0  # was 9.7x
    # The writer reads it from the pipe (~2x for a moment), parses it without the feed parser's copies
    # of its attachment and writes the large blobs a piece at a time: 2.0x on SQLite, 2.4x on
    # PostgreSQL (was 3.9x and 4.7x).
    assert growth[writer] <= 3.0
    async with db.session() as s:
        stored = await s.scalar(select(Message))
        assert hashlib.sha256(stored.raw).digest() == hashlib.sha256(raw).digest()
        attachment = await s.scalar(select(Attachment).where(Attachment.message_id == stored.id))
    part = next(p for p in BytesParser(policy=policy.default).parsebytes(raw).iter_attachments())
    assert (attachment.filename, attachment.content) == ("logs.bin", part.get_content())
