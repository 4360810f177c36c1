"""The admin's commands on held mail that know about challenges: `held release`, `held discard [--block]`,
`held unblock`. Looked up by cli.run before ticketmail/commands.py (same `<command>_<action>` names).
"""

from __future__ import annotations

from ingest.release import release
from storage import challenge_store, store
from storage.models import Message, utcnow
from ticketmail.cli import CommandError, say


def _address(message: Message) -> str:
    """Whom a stored message is from, as the pipeline saw it (From, else the envelope sender)."""
    return message.from_addr or message.envelope_sender.lower()


def _held(session, message_id: int) -> Message:
    message = store.message(session, message_id)
    if message is None:
        raise CommandError(f"no message {message_id}")
    if message.status != "held":
        raise CommandError(f"message {message_id} is not held (it is {message.status})")
    return message


def _still_held(session, address: str) -> str:
    count = challenge_store.waiting_count(session, sender=address) if address else 0
    if not count:
        return ""
    return f"; {count} more message{'s' if count > 1 else ''} from {address} still held (held list)"


async def held_release(db, config, args):
    """Release one held message; its sender is a customer now, so their pending challenge is closed."""

    def release_one(s):
        message = _held(s, args.id)
        number = release(s, message, ticket_prefix=config.ticket_prefix, by="admin (ticketmail held release)")
        challenge_store.drop_waits(s, [message.id])
        address = _address(message)
        closed = challenge_store.close_open(s, address, "released by admin (held release)", utcnow())
        note = f"; {address}'s pending challenge closed" if closed else ""
        return number, note + _still_held(s, address)

    number, note = await db.run(release_one, write=True)
    say(f"message {args.id} released as ticket #{number}{note}")


async def held_discard(db, config, args):
    """Drop a held message (its raw bytes stay until `held purge`); --block also blocks its sender."""

    def discard(s):
        message = _held(s, args.id)
        address = _address(message)
        if args.block and not address:
            raise CommandError(f"message {args.id} has no sender address to block")
        message.status = "deleted"
        store.add_event(s, message, "discarded", "discarded by admin (ticketmail held discard); the raw message "
                                                 "is kept until `held purge`")
        challenge_store.drop_waits(s, [message.id])
        if not args.block:
            return ""
        challenge_store.block(s, address, f"ticketmail held discard {args.id} --block")
        challenge_store.close_open(s, address, "sender blocked by admin", utcnow())
        store.add_event(s, message, "blocked", f"sender {address} blocked: their mail is deleted on arrival")
        return f"; {address} blocked" + _still_held(s, address)

    note = await db.run(discard, write=True)
    say(f"message {args.id} discarded{note}")


async def held_unblock(db, config, args):
    if not await db.run(challenge_store.unblock, args.email, write=True):
        raise CommandError(f"{args.email} is not blocked")
    say(f"{args.email.lower()} unblocked")
