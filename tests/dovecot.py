"""A real Dovecot IMAP server for tests and benchmarks: own config in a temp folder, loopback, free ports.

Plain IMAP (STARTTLS offered) and implicit TLS listeners, certificates from a `trustme` test CA,
passwd-file users with Maildirs. Started as the current user when not root (Dovecot's rootless
setup); as root, Dovecot refuses to run its login processes or mail access as root, so it keeps its
own `dovenull`/`dovecot` users for those and mail is owned by `nobody`.
"""

from __future__ import annotations

import grp
import imaplib
import os
import pwd
import shutil
import signal
import socket
import ssl
import subprocess
import tempfile
import time
from pathlib import Path

import trustme

from tests.ports import free_port

DOVECOT = shutil.which("dovecot") or ("/usr/sbin/dovecot" if os.path.exists("/usr/sbin/dovecot") else None)



def _live_in_group(pgid: int) -> bool:
    """Whether a process of this group still runs (zombies, which this container's init reaps late, do not count)."""
    proc = Path("/proc")
    if not proc.is_dir():
        try:
            os.killpg(pgid, 0)
            return True
        except ProcessLookupError:
            return False
    for stat in proc.glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if int(fields[2]) == pgid and fields[0] != "Z":
            return True
    return False


class Dovecot:
    """One Dovecot instance; `start()`/`stop()`/`kill()`, users and mail via IMAP (imaplib)."""

    def __init__(self, users: dict[str, str], capabilities: str = "", root: Path | None = None, conf: str = ""):
        if DOVECOT is None:
            raise RuntimeError("dovecot is not installed (Debian: apt-get install dovecot-imapd)")
        # Not under pytest's 0700 tmp dirs: Dovecot's unprivileged processes must reach the mail.
        self.root = Path(root or tempfile.mkdtemp(prefix="ticketmail-dovecot-"))
        self.root.chmod(0o755)
        self.users = users
        self.capabilities = capabilities  # imap_capability override, e.g. to hide IDLE and MOVE
        self.conf = conf  # more configuration, e.g. a namespace
        self.host = "127.0.0.1"
        self.port = free_port()
        self.tls_port = free_port()
        self.ca = trustme.CA()
        self.ca_file = self.root / "ca.pem"
        self.ca.cert_pem.write_to_path(str(self.ca_file))
        self.process: subprocess.Popen | None = None
        self._write_config()

    # --- configuration ---

    def _ids(self) -> tuple[int, int, str]:
        """The uid/gid that owns the mail, and the extra config lines for the process users."""
        if os.geteuid() != 0:
            user, group = pwd.getpwuid(os.geteuid()).pw_name, grp.getgrgid(os.getegid()).gr_name
            rootless = (f"default_internal_user = {user}\ndefault_login_user = {user}\n"
                        f"default_internal_group = {group}\nservice stats {{\n  chroot =\n}}\n")
            return os.geteuid(), os.getegid(), rootless
        nobody = pwd.getpwnam("nobody")
        return nobody.pw_uid, nobody.pw_gid, ""

    def _write_config(self) -> None:
        uid, gid, extra = self._ids()
        for sub in ("run", "state", "mail"):
            (self.root / sub).mkdir(exist_ok=True)
        (self.root / "mail").chmod(0o755)
        for name in self.users:
            home = self.root / "mail" / name
            home.mkdir(exist_ok=True)
            os.chown(home, uid, gid)
        self.uid, self.gid = uid, gid
        cert = self.ca.issue_cert("127.0.0.1", "localhost", common_name="127.0.0.1")  # mbsync checks the CN
        cert.private_key_pem.write_to_path(str(self.root / "key.pem"))
        cert.cert_chain_pems[0].write_to_path(str(self.root / "cert.pem"))
        lines = [f"{name}:{{PLAIN}}{password}:{uid}:{gid}::{self.root}/mail/{name}::"
                 for name, password in self.users.items()]
        (self.root / "users").write_text("\n".join(lines) + "\n")
        dh = "ssl_dh = </usr/share/dovecot/dh.pem\n" if os.path.exists("/usr/share/dovecot/dh.pem") else ""
        login_chroot = "  chroot =\n" if extra else ""
        caps = f"imap_capability = {self.capabilities}\n" if self.capabilities else ""
        (self.root / "dovecot.conf").write_text(f"""\
protocols = imap
listen = {self.host}
base_dir = {self.root}/run
state_dir = {self.root}/state
log_path = {self.root}/dovecot.log
info_log_path = {self.root}/dovecot.log
{extra}first_valid_uid = {min(uid, 500)}
first_valid_gid = {min(gid, 500)}
auth_failure_delay = 0
mail_location = maildir:~/Maildir
ssl = yes
ssl_cert = <{self.root}/cert.pem
ssl_key = <{self.root}/key.pem
{dh}{caps}# No growing delay after failed logins: tests log in wrongly on purpose, then rightly.
service anvil {{
{login_chroot}  unix_listener anvil-auth-penalty {{
    mode = 0
  }}
}}
passdb {{
  driver = passwd-file
  args = scheme=PLAIN username_format=%u {self.root}/users
}}
userdb {{
  driver = passwd-file
  args = username_format=%u {self.root}/users
}}
service imap-login {{
{login_chroot}  inet_listener imap {{
    port = {self.port}
  }}
  inet_listener imaps {{
    port = {self.tls_port}
    ssl = yes
  }}
}}
{self.conf}""")

    # --- process ---

    def start(self, timeout: float = 20) -> Dovecot:
        """Start in the foreground of its own process group; return once the IMAP port answers.

        A port another process took since `free_port` chose it: new ports, up to three times."""
        for attempt in range(3):
            try:
                return self._start(timeout)
            except RuntimeError as e:
                if "Address already in use" not in str(e) or attempt == 2:
                    raise
                self.port, self.tls_port = free_port(), free_port()
                self._write_config()
        raise AssertionError("unreachable")

    def _start(self, timeout: float) -> Dovecot:
        self.process = subprocess.Popen(
            [DOVECOT, "-F", "-c", str(self.root / "dovecot.conf")],
            stdout=subprocess.DEVNULL, stderr=open(self.root / "stderr.log", "ab"), start_new_session=True,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                stderr = (self.root / "stderr.log").read_text(errors="replace")
                raise RuntimeError(f"dovecot exited with {self.process.returncode}: {(stderr + self.log())[-2000:]}")
            try:
                with socket.create_connection((self.host, self.port), timeout=0.5) as s:
                    s.settimeout(2)
                    if s.recv(100).startswith(b"* OK"):
                        return self
            except OSError:
                time.sleep(0.05)
        self.kill()
        raise RuntimeError(f"dovecot did not answer on {self.port}: {self.log()[-2000:]}")

    def stop(self) -> None:
        """Graceful stop (SIGTERM to the master), waiting for it and its children."""
        if self.process and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.kill()
        self._reap_group()

    def kill(self) -> None:
        """SIGKILL the whole process group at once: a server crash, connections cut mid-response."""
        if self.process:
            try:
                os.killpg(self.process.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self.process.wait(timeout=10)
        self._reap_group()

    def _reap_group(self) -> None:
        """No live process of this instance (its own process group) may outlive it: they hold its ports."""
        if not self.process:
            return
        pgid = self.process.pid
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and _live_in_group(pgid):
            try:
                os.killpg(pgid, signal.SIGKILL)
            except ProcessLookupError:
                return
            time.sleep(0.02)

    def cleanup(self) -> None:
        self.kill()  # a graceful stop takes seconds; the test is over
        shutil.rmtree(self.root, ignore_errors=True)

    def log(self) -> str:
        path = self.root / "dovecot.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def maildir(self, user: str) -> Path:
        return self.root / "mail" / user / "Maildir"

    def forget_uids(self, user: str) -> None:
        """Delete Dovecot's UID list and indexes (server stopped): the mailbox gets a new UIDVALIDITY.

        The `dovecot-uidvalidity` counter stays, so the new value is always another one (without it,
        Dovecot takes the clock's second, which may equal the old value in a fast test)."""
        for path in self.maildir(user).glob("dovecot*"):
            if not path.name.startswith("dovecot-uidvalidity"):
                path.unlink()

    # --- a client for the test's side ---

    def client(self, user: str) -> imaplib.IMAP4:
        c = imaplib.IMAP4(self.host, self.port, timeout=30)
        c.login(user, self.users[user])
        return c

    def tls_context(self) -> ssl.SSLContext:
        return ssl.create_default_context(cafile=str(self.ca_file))

    def append(self, user: str, messages: list[bytes], folder: str = "INBOX", flags: str = "") -> list[int]:
        """APPEND messages (as a sender's MTA would have delivered them); returns their UIDs."""
        uids = []
        with self.client(user) as c:
            if folder != "INBOX":
                c.create(folder)
            for raw in messages:
                typ, data = c.append(folder, flags or None, None, raw)
                if typ == "NO" and data[0].startswith(b"[TRYCREATE]"):
                    # A folder deleted and made anew while another session (the bridge's) had it selected:
                    # Dovecot may still see the old one go ("Mailbox was deleted under us"). TRYCREATE says
                    # to create it and try again (RFC 3501 6.3.11).
                    c.create(folder)
                    typ, data = c.append(folder, flags or None, None, raw)
                assert typ == "OK", data
                uids.append(int(data[0].split(b"]")[0].split()[-1]))  # [APPENDUID validity uid]
        return uids

    def create_folder(self, user: str, folder: str) -> None:
        with self.client(user) as c:
            c.create(folder)

    def uids(self, user: str, folder: str = "INBOX", criteria: str = "ALL") -> list[int]:
        with self.client(user) as c:
            typ, _ = c.select(folder)
            assert typ == "OK", folder
            typ, data = c.uid("SEARCH", None, criteria)
            return [int(u) for u in data[0].split()]

    def uidvalidity(self, user: str, folder: str = "INBOX") -> int:
        with self.client(user) as c:
            typ, data = c.status(folder, "(UIDVALIDITY)")
            return int(data[0].split(b"UIDVALIDITY")[1].strip(b" )"))


# --- pytest fixtures (import them into a test module to use them) ---

try:
    import pytest
except ImportError:  # the benchmark uses this module without pytest
    pytest = None

USERS = {"support": "support-pw", "sales": "sales-pw"}
IN_CI = os.environ.get("CI") == "true"


def require_dovecot() -> None:
    """Skip without Dovecot on a laptop; under CI=true its absence is a failure."""
    if DOVECOT is None:
        if IN_CI:
            pytest.fail("dovecot is required under CI=true (apt-get install dovecot-imapd; see .ci/run)")
        pytest.skip("dovecot is not installed (apt-get install dovecot-imapd)")


if pytest is not None:

    @pytest.fixture
    def dovecot():
        """A fresh Dovecot with the users `support` and `sales` (passwords in USERS)."""
        require_dovecot()
        server = Dovecot(USERS).start()
        yield server
        server.cleanup()
