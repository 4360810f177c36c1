"""What the health check and the metrics read from the database: can it answer at all (schema or not),
the IMAP accounts' state, and the counts shown as gauges (held mail, challenges)."""

from __future__ import annotations

from sqlalchemy import func, select, text

from storage.models import Challenge, ImapAccount, Message, Outbox


def ping(session) -> None:
    session.execute(text("SELECT 1"))


def imap_states(session) -> list[dict]:
    """Each account's sync state, by name: nothing that logs in (no server, user name or password)."""
    rows = session.execute(select(ImapAccount.name, ImapAccount.enabled, ImapAccount.last_sync,
                                  ImapAccount.last_error, ImapAccount.last_error_at, ImapAccount.backlog)
                           .order_by(ImapAccount.name))
    return [{"name": name, "enabled": enabled, "last_sync": _iso(last_sync), "last_error": last_error or None,
             "last_error_at": _iso(last_error_at), "backlog": backlog}
            for name, enabled, last_sync, last_error, last_error_at, backlog in rows]


def gauges(session) -> dict:
    """Counts read at scrape time: held messages, challenges by state, challenge mails by state."""

    def by(column, *where):
        return dict(session.execute(select(column, func.count()).where(*where).group_by(column)).all())

    return {
        "held": session.scalar(select(func.count()).select_from(Message).where(Message.status == "held")),
        "challenges": by(Challenge.state),
        "challenge_mails": by(Outbox.state, Outbox.challenge_id.is_not(None)),
    }


def _iso(at) -> str | None:
    return at.isoformat() if at else None
