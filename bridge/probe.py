"""`imap test`: connect, log in, open the folder, and say what the server offers, or the one reason it failed."""

from __future__ import annotations

from dataclasses import dataclass

from bridge.accounts import Account
from bridge.imap import Connection, ImapError

INTERESTING = ("IDLE", "UIDPLUS", "MOVE")


@dataclass(frozen=True)
class Report:
    tls: str  # "" without TLS
    capabilities: dict[str, bool]  # IDLE, UIDPLUS, MOVE
    messages: int
    unseen: int | None
    uidvalidity: int
    uidnext: int | None
    after_folder_exists: bool | None  # None unless the after-action is move:FOLDER

    def lines(self, account: Account) -> list[str]:
        security = {"tls": "TLS", "starttls": "STARTTLS", "none": "no TLS"}[account.security]
        out = [f"connected to {account.where()} ({security}{', ' + self.tls if self.tls else ''})",
               f"logged in as {account.username}",
               f"folder {account.folder}: {self.messages} message{'' if self.messages == 1 else 's'}"
               + (f", {self.unseen} unseen" if self.unseen is not None else "")
               + f", UIDVALIDITY {self.uidvalidity}" + (f", UIDNEXT {self.uidnext}" if self.uidnext else ""),
               "capabilities: " + ", ".join(f"{c} {'yes' if v else 'no'}" for c, v in self.capabilities.items())]
        if not self.capabilities["IDLE"]:
            out.append(f"no IDLE: new mail is polled every {account.poll_seconds} s")
        if account.after.kind == "move" and not self.capabilities["MOVE"]:
            out.append("no MOVE: messages are copied, then flagged \\Deleted"
                       + (" and expunged by UID" if self.capabilities["UIDPLUS"] else " (no UIDPLUS: not expunged)"))
        if account.security == "none":
            out.append("warning: no TLS: the password and the mail cross the network in clear")
        if account.security != "none" and not account.verify_tls:
            out.append("warning: the server's certificate is not verified")
        return out


async def probe(account: Account, timeout: float = 20.0) -> Report:
    """Raises ImapError with one sentence if anything fails; changes nothing on the server."""
    conn = await Connection.open(account, timeout)
    try:
        status = await conn.status(account.folder)
        if status is None:
            raise ImapError(await conn.missing_folder(account.folder))
        mailbox = await conn.examine(account.folder)
        after_exists = None
        if account.after.kind == "move":
            after_exists = await conn.status(account.after.folder) is not None
            if not after_exists:
                raise ImapError(await conn.missing_folder(account.after.folder, " for the after-action"))
        caps = conn.capabilities
        return Report(tls=conn.tls, capabilities={c: c in caps for c in INTERESTING},
                      messages=status.get("MESSAGES", mailbox.exists), unseen=status.get("UNSEEN"),
                      uidvalidity=mailbox.uidvalidity, uidnext=mailbox.uidnext, after_folder_exists=after_exists)
    finally:
        await conn.close()
