"""The tables of ticketmail. Nothing outside storage/ writes SQL."""

from __future__ import annotations

from datetime import datetime, timezone

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    String,
    Text,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship
from sqlalchemy.types import TypeDecorator


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


class UTCDateTime(TypeDecorator):
    """A timestamp that is written as UTC and read back as an aware UTC datetime, on both databases.

    SQLite keeps no zone: SQLAlchemy writes the wall time as given and reads it back naive. So a value
    is converted to UTC on the way in (a naive one is refused: its zone is unknown) and marked UTC on
    the way out. The column stays DateTime(timezone=True): the schema is unchanged."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError(f"naive datetime {value.isoformat()} for a UTC column: give it a zone")
        return value.astimezone(timezone.utc)

    def process_result_value(self, value: datetime | None, dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=timezone.utc) if value.tzinfo is None else value.astimezone(timezone.utc)


class Base(DeclarativeBase):
    pass


class Meta(Base):
    """Small key/value facts, e.g. `revision`, bumped whenever departments or rules change."""

    __tablename__ = "meta"
    key: Mapped[str] = mapped_column(String(64), primary_key=True)
    value: Mapped[int] = mapped_column(Integer, default=0)


class Department(Base):
    __tablename__ = "departments"
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(200), unique=True)
    # challenge | accept | reject | hold
    unknown_sender: Mapped[str] = mapped_column(String(20), default="challenge")
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    addresses: Mapped[list[DepartmentAddress]] = relationship(  # in the order given: challenges come from the first
        back_populates="department", lazy="raise", cascade="all, delete-orphan", order_by="DepartmentAddress.id"
    )


class DepartmentAddress(Base):
    """An address a department owns; `*@example.com` is a catch-all for the domain."""

    __tablename__ = "department_addresses"
    id: Mapped[int] = mapped_column(primary_key=True)
    department_id: Mapped[int] = mapped_column(ForeignKey("departments.id", ondelete="CASCADE"))
    address: Mapped[str] = mapped_column(String(320), unique=True)
    department: Mapped[Department] = relationship(back_populates="addresses", lazy="raise")


class Customer(Base):
    __tablename__ = "customers"
    id: Mapped[int] = mapped_column(primary_key=True)
    email: Mapped[str] = mapped_column(String(320), unique=True)
    name: Mapped[str] = mapped_column(String(200), default="")
    verified: Mapped[bool] = mapped_column(Boolean, default=False)
    # how the customer came to be: cli | accepted | trusted | released
    added_by: Mapped[str] = mapped_column(String(40), default="cli")
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class Ticket(Base):
    """A ticket; its `id` is the number customers see in `[Ticket #42]`."""

    __tablename__ = "tickets"
    id: Mapped[int] = mapped_column(primary_key=True)
    subject: Mapped[str] = mapped_column(Text, default="")
    department_id: Mapped[int | None] = mapped_column(ForeignKey("departments.id"))
    customer_id: Mapped[int | None] = mapped_column(ForeignKey("customers.id"))
    status: Mapped[str] = mapped_column(String(20), default="open")  # open | closed
    priority: Mapped[str] = mapped_column(String(20), default="normal")
    tags: Mapped[list[str]] = mapped_column(JSON, default=list)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    customer: Mapped[Customer | None] = relationship(lazy="raise")


class Message(Base):
    """One delivered message, raw bytes kept byte-exact whatever became of it."""

    __tablename__ = "messages"
    id: Mapped[int] = mapped_column(primary_key=True)
    # The idempotency key: the same delivery arriving twice maps to the same key.
    dedup_key: Mapped[str] = mapped_column(String(200), unique=True)
    # The same message submitted again (same Message-ID, department and body; other Received headers):
    # ingest/resubmission.py. Cleared once the window is over, so a later one is a message of its own.
    resubmission_key: Mapped[str | None] = mapped_column(String(64), index=True, unique=True)
    ticket_id: Mapped[int | None] = mapped_column(ForeignKey("tickets.id"), index=True)
    department_id: Mapped[int | None] = mapped_column(ForeignKey("departments.id"))
    # ticket | followup | auto_reply | held | deleted | rejected | ignored | released | purged | resubmitted
    # | failed (deciding or acting on it raised: kept as it came, for an admin to retry)
    status: Mapped[str] = mapped_column(String(20), index=True)
    message_id: Mapped[str | None] = mapped_column(String(998), index=True)
    from_addr: Mapped[str] = mapped_column(String(320), default="", index=True)
    from_name: Mapped[str] = mapped_column(Text, default="")
    to_addrs: Mapped[list[str]] = mapped_column(JSON, default=list)
    cc_addrs: Mapped[list[str]] = mapped_column(JSON, default=list)
    subject: Mapped[str] = mapped_column(Text, default="")
    date: Mapped[datetime | None] = mapped_column(UTCDateTime)
    text: Mapped[str] = mapped_column(Text, default="")
    html: Mapped[str] = mapped_column(Text, default="")
    sha256: Mapped[str] = mapped_column(String(64))
    size: Mapped[int] = mapped_column(Integer)
    source: Mapped[str] = mapped_column(String(200))  # lmtp | imap:NAME
    source_key: Mapped[str] = mapped_column(String(200), default="")
    envelope_sender: Mapped[str] = mapped_column(String(320), default="")
    envelope_recipient: Mapped[str] = mapped_column(String(320), default="")
    received_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    # A held message's rules verdict (ingest.rules.Verdict as a dict), so that its release acts on it
    # as the delivery would have.
    verdict: Mapped[dict | None] = mapped_column(JSON)
    # Last: SQLite keeps a zeroblob() out of memory only in a row's last column (migration 0007).
    raw: Mapped[bytes] = mapped_column(LargeBinary)
    ticket: Mapped[Ticket | None] = relationship(lazy="raise")
    attachments: Mapped[list[Attachment]] = relationship(
        lazy="raise", cascade="all, delete-orphan", order_by="Attachment.id"
    )
    events: Mapped[list[Event]] = relationship(
        lazy="raise", cascade="all, delete-orphan", order_by="Event.id", back_populates="message"
    )


class Attachment(Base):
    __tablename__ = "attachments"
    id: Mapped[int] = mapped_column(primary_key=True)
    message_id: Mapped[int] = mapped_column(ForeignKey("messages.id", ondelete="CASCADE"), index=True)
    filename: Mapped[str] = mapped_column(Text, default="")
    content_type: Mapped[str] = mapped_column(String(200), default="application/octet-stream")
    size: Mapped[int] = mapped_column(Integer)
    sha256: Mapped[str] = mapped_column(String(64))
    content_id: Mapped[str | None] = mapped_column(String(998))
    inline: Mapped[bool] = mapped_column(Boolean, default=False)
    content: Mapped[bytes] = mapped_column(LargeBinary)  # last, as raw in Message


class Event(Base):
    """What the pipeline decided about a message, and why."""

    __tablename__ = "events"
    id: Mapped[int] = mapped_column(primary_key=True)
    message_id: Mapped[int] = mapped_column(ForeignKey("messages.id", ondelete="CASCADE"), index=True)
    at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    kind: Mapped[str] = mapped_column(String(40))
    detail: Mapped[str] = mapped_column(Text, default="")
    message: Mapped[Message] = relationship(lazy="raise", back_populates="events")


class Rule(Base):
    """One processing rule, stored as the validated dict of its [[rule]] table."""

    __tablename__ = "rules"
    id: Mapped[int] = mapped_column(primary_key=True)
    position: Mapped[int] = mapped_column(Integer)
    name: Mapped[str] = mapped_column(String(200), unique=True)
    definition: Mapped[dict] = mapped_column(JSON)


Index("ix_tickets_customer", Ticket.customer_id)


# --- Challenge-response (issue 3): challenges, mail waiting for them, outgoing mail, blocked senders ---


class Challenge(Base):
    """A confirmation asked of an unknown sender. The link's token is stored only as its SHA-256."""

    __tablename__ = "challenges"
    id: Mapped[int] = mapped_column(primary_key=True)
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    sender: Mapped[str] = mapped_column(String(320))  # the address it is mailed to
    mailbox: Mapped[str] = mapped_column(String(320))  # the sender without case or sub-address tag, for the caps
    domain: Mapped[str] = mapped_column(String(255))  # the mailbox's registrable domain, for the per-domain cap
    authenticated: Mapped[bool] = mapped_column(Boolean, default=False)  # which hourly budget it used
    department_id: Mapped[int] = mapped_column(ForeignKey("departments.id", ondelete="CASCADE"))
    state: Mapped[str] = mapped_column(String(20), default="open")  # open | confirmed | expired | closed
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime)
    used_at: Mapped[datetime | None] = mapped_column(UTCDateTime)  # confirmed or closed
    closed_reason: Mapped[str] = mapped_column(Text, default="")
    tickets: Mapped[list[int]] = mapped_column(JSON, default=list)  # what the confirmation released
    mail_id: Mapped[str] = mapped_column(String(998))  # the challenge mail's Message-ID


# At most one open challenge per mailbox, even with several processes deciding at once.
Index("uq_challenges_open_mailbox", Challenge.mailbox, unique=True,
      sqlite_where=Challenge.state == "open", postgresql_where=Challenge.state == "open")
Index("ix_challenges_mailbox_created", Challenge.mailbox, Challenge.created_at)
Index("ix_challenges_domain_created", Challenge.domain, Challenge.created_at)
Index("ix_challenges_created", Challenge.created_at)


class ChallengeWait(Base):
    """A held message that is released when its sender confirms a challenge."""

    __tablename__ = "challenge_waits"
    message_id: Mapped[int] = mapped_column(ForeignKey("messages.id", ondelete="CASCADE"), primary_key=True)
    sender: Mapped[str] = mapped_column(String(320), index=True)
    mailbox: Mapped[str] = mapped_column(String(320), index=True)  # a confirmation of it releases the message
    # The challenge it joined; None when a rate cap stopped the challenge (it still waits for the next one).
    challenge_id: Mapped[int | None] = mapped_column(ForeignKey("challenges.id", ondelete="SET NULL"), index=True)
    authenticated: Mapped[bool] = mapped_column(Boolean, default=False)  # the trusted MTA authenticated it
    capped: Mapped[bool] = mapped_column(Boolean, default=False, index=True)  # to be challenged when the budget allows
    message: Mapped[Message] = relationship(lazy="raise")
    challenge: Mapped[Challenge | None] = relationship(lazy="raise")


class Outbox(Base):
    """Mail written in the transaction that decided it, sent after the commit, retried while the relay is down."""

    __tablename__ = "outbox"
    id: Mapped[int] = mapped_column(primary_key=True)
    challenge_id: Mapped[int | None] = mapped_column(ForeignKey("challenges.id", ondelete="SET NULL"), index=True)
    held_message_id: Mapped[int | None] = mapped_column(ForeignKey("messages.id", ondelete="SET NULL"))
    mail_from: Mapped[str] = mapped_column(String(320), default="")  # "" is the null sender <>
    rcpt_to: Mapped[str] = mapped_column(String(320))
    mail_id: Mapped[str] = mapped_column(String(998))
    content: Mapped[bytes] = mapped_column(LargeBinary)  # emptied once sent: it carries the token
    state: Mapped[str] = mapped_column(String(20), default="pending")  # pending | sent | failed
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime)  # not sent by then: given up
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    sent_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    last_error: Mapped[str] = mapped_column(Text, default="")
    challenge: Mapped[Challenge | None] = relationship(lazy="raise")
    held_message: Mapped[Message | None] = relationship(lazy="raise")


Index("ix_outbox_due", Outbox.state, Outbox.next_attempt_at)


class BlockedSender(Base):
    """An address whose mail is deleted on arrival (`held discard --block`)."""

    __tablename__ = "blocked_senders"
    id: Mapped[int] = mapped_column(primary_key=True)
    address: Mapped[str] = mapped_column(String(320), unique=True)
    reason: Mapped[str] = mapped_column(Text, default="")
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


# --- IMAP bridge (issue 4): remote IMAP accounts, their sync checkpoints, and who syncs them ---


class ImapAccount(Base):
    """A remote mailbox the bridge pulls into the pipeline; the password is stored Fernet-encrypted."""

    __tablename__ = "imap_accounts"
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(64), unique=True)  # source "imap:NAME", rule scope account:NAME
    email: Mapped[str] = mapped_column(String(320))  # the envelope recipient of what it imports
    server: Mapped[str] = mapped_column(String(255))
    port: Mapped[int] = mapped_column(Integer)
    security: Mapped[str] = mapped_column(String(10), default="tls")  # tls | starttls | none
    username: Mapped[str] = mapped_column(String(320))
    password_encrypted: Mapped[bytes] = mapped_column(LargeBinary)
    folder: Mapped[str] = mapped_column(String(255), default="INBOX")
    after_action: Mapped[str] = mapped_column(String(270), default="seen")  # seen | move:FOLDER | delete
    # None: the department that owns `email`, as for LMTP.
    department_id: Mapped[int | None] = mapped_column(ForeignKey("departments.id", ondelete="SET NULL"))
    poll_seconds: Mapped[int] = mapped_column(Integer, default=60)  # when the server has no IDLE
    enabled: Mapped[bool] = mapped_column(Boolean, default=True)
    ca_file: Mapped[str] = mapped_column(Text, default="")
    verify_tls: Mapped[bool] = mapped_column(Boolean, default=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    # Sync state. Everything with a UID at or below last_uid under this UIDVALIDITY is committed and
    # its after-action applied. UIDs and UIDVALIDITY are unsigned 32-bit: BigInteger.
    uidvalidity: Mapped[int | None] = mapped_column(BigInteger)
    last_uid: Mapped[int] = mapped_column(BigInteger, default=0)
    # After a UIDVALIDITY change, UIDs below this are the old mail seen again: also matched by Message-ID.
    rescan_below: Mapped[int] = mapped_column(BigInteger, default=0)
    last_sync: Mapped[datetime | None] = mapped_column(UTCDateTime)
    last_error: Mapped[str] = mapped_column(Text, default="")
    last_error_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    backlog: Mapped[int] = mapped_column(Integer, default=0)  # messages above the checkpoint at last look
    department: Mapped[Department | None] = relationship(lazy="raise")


class ImapLease(Base):
    """Which `serve` process syncs an account (PostgreSQL); taken over by another once it expires."""

    __tablename__ = "imap_leases"
    account_id: Mapped[int] = mapped_column(ForeignKey("imap_accounts.id", ondelete="CASCADE"), primary_key=True)
    holder: Mapped[str] = mapped_column(String(200))
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime)


# --- The admin panel (issue 10): who may sign in ---


class AdminUser(Base):
    """Someone who may sign in to the web panel; the password is kept as an argon2 hash only."""

    __tablename__ = "admin_users"
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(64), unique=True)  # lowercased
    password_hash: Mapped[str] = mapped_column(String(200))
    # Each session carries the epoch it began in; bumping it (new password, sign out) ends them all.
    session_epoch: Mapped[int] = mapped_column(Integer, default=0)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    password_changed_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class AuditEntry(Base):
    """A change an admin made, in the panel or with the CLI: who, when, what (never a secret)."""

    __tablename__ = "audit_log"
    id: Mapped[int] = mapped_column(primary_key=True)
    at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, index=True)
    actor: Mapped[str] = mapped_column(String(200))  # "admin alice" (the panel), "cli root" (the OS user)
    action: Mapped[str] = mapped_column(String(60))  # "department.add", "held.release", ...
    subject: Mapped[str] = mapped_column(Text, default="")  # what it was done to: a name, an address, a number
    detail: Mapped[str] = mapped_column(Text, default="")


# --- The panel's ticket list (issue 10): newest first by (updated_at, id), paged by that key ---
# Migration 0010 also creates the text search objects the ORM cannot describe (storage/ticket_search.py).

Index("ix_tickets_updated", Ticket.updated_at, Ticket.id)
