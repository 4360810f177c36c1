"""A private Postfix instance for tests (Debian's `postfix`, installed with "No configuration").

Its own main.cf/master.cf, queue and log in a temp folder (`postfix -c DIR/etc`), smtpd on a free loopback
port, the helpdesk domain xyzhosting.com routed by a transport map to the test's ticketmail (LMTP over TCP
or a unix socket), other domains to an SMTP sink on loopback. Every chroot is off, so the lmtp client needs
nothing copied. Postfix's master runs as root: skipped where it cannot (a laptop without root or without
Postfix), a failure under CI=true.
"""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import smtplib
import subprocess
import tempfile
from pathlib import Path

from tests.ports import free_port

POSTFIX = shutil.which("postfix", path=os.environ.get("PATH", "") + ":/usr/sbin")
DOMAIN = "xyzhosting.com"


def unavailable() -> str:
    """Why a private Postfix cannot run here, or ""."""
    if POSTFIX is None:
        return "postfix is not installed (Debian: apt-get install postfix, 'No configuration')"
    if os.geteuid() != 0:
        return "a Postfix instance needs root to start its master process"
    return ""


class Postfix:
    """One instance. `lmtp` is the transport's nexthop for the helpdesk domain: "inet:127.0.0.1:PORT" or
    "unix:private/NAME" (relative to the queue directory, `self.queue`); `main` adds main.cf lines."""

    def __init__(self, lmtp: str, *, sink_port: int | None = None, main: str = ""):
        self.root = Path(tempfile.mkdtemp(prefix="ticketmail-postfix-"))
        os.chmod(self.root, 0o755)  # the daemons (user postfix) chdir into the queue below it
        self.etc, self.queue, self.logfile = self.root / "etc", self.root / "queue", self.root / "postfix.log"
        self.port = free_port()
        for folder in (self.etc, self.queue, self.root / "data"):
            folder.mkdir(mode=0o755)
        shutil.chown(self.root / "data", "postfix")
        (self.etc / "master.cf").write_text(self._master_cf())
        (self.etc / "main.cf").write_text(f"""\
compatibility_level = 3.6
queue_directory = {self.queue}
data_directory = {self.root}/data
maillog_file = {self.logfile}
maillog_file_prefixes = {self.root}
myhostname = mx.test.example
inet_interfaces = loopback-only
inet_protocols = ipv4
mydestination =
alias_maps =
alias_database =
relay_domains = {DOMAIN}
transport_maps = hash:{self.etc}/transport
lmtp_destination_recipient_limit = 50
disable_dns_lookups = yes
smtp_host_lookup = native
lmtp_host_lookup = native
{main}""")
        transport = f"{DOMAIN} lmtp:{lmtp}\n"
        if sink_port:  # bounces and anything else: to the test's SMTP sink
            transport += f"* smtp:[127.0.0.1]:{sink_port}\n"
        (self.etc / "transport").write_text(transport)
        self._postfix("postmap", "-c", str(self.etc), f"hash:{self.etc}/transport")

    def _master_cf(self) -> str:
        lines = []
        for line in Path("/etc/postfix/master.cf").read_text().splitlines():
            fields = line.split()
            if line and not line[0].isspace() and not line.startswith("#") and len(fields) >= 8:
                if fields[:2] == ["smtp", "inet"]:
                    fields[0] = f"127.0.0.1:{self.port}"
                fields[4] = "n"  # chroot off
                line = " ".join(fields)
            lines.append(line)
        return "\n".join(lines) + "\n"

    def _postfix(self, *argv: str) -> str:
        result = subprocess.run(argv, capture_output=True, text=True, timeout=60)
        if result.returncode != 0:
            raise RuntimeError(f"{' '.join(argv)} failed ({result.returncode}): {result.stderr.strip()}\n{self.log()}")
        return result.stdout

    def start(self) -> Postfix:
        self._postfix(POSTFIX, "-c", str(self.etc), "check")
        self._postfix(POSTFIX, "-c", str(self.etc), "start")
        return self

    def stop(self) -> None:
        subprocess.run([POSTFIX, "-c", str(self.etc), "stop"], capture_output=True, timeout=60)
        shutil.rmtree(self.root, ignore_errors=True)

    def log(self) -> str:
        return self.logfile.read_text(errors="replace") if self.logfile.exists() else ""

    def queue_listing(self) -> str:
        return self._postfix("postqueue", "-c", str(self.etc), "-p")

    def flush(self) -> None:
        self._postfix("postqueue", "-c", str(self.etc), "-f")

    async def wait_log(self, pattern: str, seconds: float = 30.0, count: int = 1) -> list[re.Match]:
        """The first `count` log lines matching `pattern`; fails, showing the log, if they do not come."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + seconds
        while True:
            found = list(re.finditer(pattern, self.log(), re.MULTILINE))
            if len(found) >= count:
                return found[:count]
            if loop.time() > deadline:
                raise AssertionError(f"Postfix logged {len(found)} of {count} lines matching {pattern!r} in "
                                     f"{seconds} s; its log:\n{self.log()}")
            await asyncio.sleep(0.1)

    async def send(self, sender: str, recipients: list[str], raw: bytes) -> dict:
        """Submit over SMTP; the refused recipients (smtplib's dict), or raises if all are refused."""

        def submit():
            with smtplib.SMTP("127.0.0.1", self.port, timeout=60) as client:
                return client.sendmail(sender, recipients, raw)

        return await asyncio.to_thread(submit)
