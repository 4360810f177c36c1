"""The admin commands behind the CLI: `<command>_<action>(db, config, args)`.

Each reads or writes in one transaction through `db.run(fn, ...)`, where `fn` is a plain function
of a session; output is printed after the commit.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from pathlib import Path

from sqlalchemy import select

from ingest.release import release
from ingest.rules import RuleError, parse_rules, rule_to_data, rules_from_data, rules_to_toml
from storage import store
from storage.models import Customer, Department, DepartmentAddress, utcnow
from ticketmail.cli import CommandError, emit, one_line, say


def _iso(at: datetime | None) -> str | None:
    """ISO 8601; storage hands timestamps back in UTC with their zone ("+00:00")."""
    return at.isoformat() if at else None


def _address(text: str) -> str:
    address = text.strip().lower()
    local, at, domain = address.rpartition("@")
    if not at or not local or not domain or " " in address or (local.startswith("*") and local != "*"):
        raise CommandError(f"{text!r} is not an email address (or *@domain catch-all)")
    return address


async def department_add(db, config, args):
    addresses = [_address(a) for a in args.address]

    def add(s):
        if store.department_by_name(s, args.name):
            raise CommandError(f"department {args.name!r} already exists")
        for address in s.scalars(select(DepartmentAddress.address).where(DepartmentAddress.address.in_(addresses))):
            raise CommandError(f"address {address} already belongs to a department")
        s.add(Department(name=args.name, unknown_sender=args.unknown_sender,
                         addresses=[DepartmentAddress(address=a) for a in addresses]))
        store.bump_revision(s)

    await db.run(add, write=True)
    say(f"department {args.name} added ({', '.join(addresses)}; unknown senders: {args.unknown_sender})")


async def department_list(db, config, args):
    def collect(s):
        return [{"name": d.name, "addresses": [a.address for a in d.addresses], "unknown_sender": d.unknown_sender}
                for d in store.departments(s)]

    data = await db.run(collect)
    emit(data, args.json, [f"{d['name']}\t{', '.join(d['addresses'])}\tunknown senders: {d['unknown_sender']}"
                           for d in data])


async def customer_add(db, config, args):
    email = _address(args.email)

    def add(s):
        if store.customer_by_email(s, email):
            raise CommandError(f"customer {email} already exists")
        s.add(Customer(email=email, name=args.name, verified=True, added_by="cli"))

    await db.run(add, write=True)
    say(f"customer {email} added")


async def customer_list(db, config, args):
    def collect(s):
        return [{"email": c.email, "name": c.name, "verified": c.verified, "added_by": c.added_by,
                 "created_at": _iso(c.created_at)} for c in s.scalars(select(Customer).order_by(Customer.email))]

    data = await db.run(collect)
    emit(data, args.json, [f"{one_line(c['email'])}\t{one_line(c['name'])}\t"
                           f"{'verified' if c['verified'] else 'unverified'} ({c['added_by']})" for c in data])


async def customer_remove(db, config, args):
    def remove(s):
        customer = store.customer_by_email(s, args.email)
        if customer is None:
            raise CommandError(f"no customer {args.email}")
        s.delete(customer)

    await db.run(remove, write=True)
    say(f"customer {args.email} removed")


async def rules_import(db, config, args):
    try:
        text = Path(args.file).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise CommandError(f"cannot read {args.file}: {e}") from None
    rules = parse_rules(text)

    def replace(s):
        for rule in rules:
            for action in rule.actions:
                if action.action == "assign" and not store.department_by_name(s, action.value):
                    raise RuleError(f'rule "{rule.name}": assigns unknown department "{action.value}"')
        store.replace_rules(s, [(r.name, rule_to_data(r)) for r in rules])

    await db.run(replace, write=True)
    say(f"{len(rules)} rules imported from {args.file}")


async def _rules(db):
    return rules_from_data([r.definition for r in await db.run(store.rules)])


async def rules_export(db, config, args):
    print(rules_to_toml(await _rules(db)), end="")  # exact: it is read back by `rules import`


async def rules_list(db, config, args):
    rules = await _rules(db)
    emit([rule_to_data(r) for r in rules], args.json,
         [f"{i}. {r.name} ({r.match}, {r.scope}): {len(r.conditions)} conditions -> "
          + ", ".join(a.action + (f" {a.value}" if a.value else "") for a in r.actions)
          for i, r in enumerate(rules, 1)])


def _ticket_data(ticket, department, customer, count) -> dict:
    return {"number": ticket.id, "subject": ticket.subject, "status": ticket.status, "department": department,
            "customer": customer, "priority": ticket.priority, "tags": ticket.tags, "messages": count,
            "created_at": _iso(ticket.created_at), "updated_at": _iso(ticket.updated_at)}


async def tickets_list(db, config, args):
    data = [_ticket_data(*row) for row in await db.run(store.tickets)]
    emit(data, args.json, [f"#{t['number']}\t{t['status']}\t{t['department'] or '-'}\t"
                           f"{one_line(t['customer'] or '-')}\t{t['messages']} msg\t{one_line(t['subject'])}"
                           for t in data] or ["no tickets"])


def _message_data(m) -> dict:
    return {"id": m.id, "message_id": m.message_id, "from": m.from_addr, "to": m.to_addrs, "cc": m.cc_addrs,
            "subject": m.subject, "date": _iso(m.date), "status": m.status,
            "text": m.text, "attachments": [{"filename": a.filename, "content_type": a.content_type,
                                             "size": a.size} for a in m.attachments],
            "events": [{"at": _iso(e.at), "kind": e.kind, "detail": e.detail} for e in m.events]}


async def tickets_show(db, config, args):
    def collect(s):
        row = store.ticket_row(s, args.number)
        if row is None:
            raise CommandError(f"no ticket #{args.number}")
        return _ticket_data(*row) | {"messages": [_message_data(m) for m in store.ticket_messages(s, args.number)]}

    data = await db.run(collect)
    lines = [f"Ticket #{data['number']}: {one_line(data['subject'])}",
             f"status {data['status']}, priority {data['priority']}, department {data['department'] or '-'}, "
             f"customer {one_line(data['customer'] or '-')}, tags {one_line(', '.join(data['tags'])) or '-'}"]
    for m in data["messages"]:
        lines += ["", f"--- {m['date'] or '(no date)'} from {one_line(m['from'] or '(unknown)')}: "
                      f"{one_line(m['subject'])}", m["text"]]  # the text keeps its lines and tabs
        lines += [f"[attachment] {one_line(a['filename'])} ({one_line(a['content_type'])}, {a['size']} bytes)"
                  for a in m["attachments"]]
        lines += [f"  {e['at']} {e['kind']}: {one_line(e['detail'])}" for e in m["events"]]
    emit(data, args.json, lines)


async def held_list(db, config, args):
    def collect(s):
        return [{"id": m.id, "from": m.from_addr or m.envelope_sender, "to": m.envelope_recipient,
                 "subject": m.subject, "received_at": _iso(m.received_at),
                 "reason": m.events[-1].detail if m.events else ""} for m in store.held_messages(s)]

    data = await db.run(collect)
    emit(data, args.json, [f"{m['id']}\t{m['received_at']}\t{one_line(m['from'])}\t{one_line(m['subject'])}\t"
                           f"{one_line(m['reason'])}" for m in data] or ["no held messages"])


async def held_release(db, config, args):
    def release_one(s):
        message = store.message(s, args.id)
        if message is None:
            raise CommandError(f"no message {args.id}")
        return release(s, message, ticket_prefix=config.ticket_prefix, by="admin (ticketmail held release)")

    number = await db.run(release_one, write=True)
    say(f"message {args.id} released as ticket #{number}")


async def held_purge(db, config, args):
    days = config.challenge.held_days if args.days is None else args.days
    if days < 0:
        raise CommandError("--days must be 0 or more")

    def purge(s):
        expired = store.expired_messages(s, ("held", "deleted"), utcnow() - timedelta(days=days))
        for m in expired:
            was = m.status
            m.status, m.raw, m.text, m.html, m.attachments = "purged", b"", "", "", []
            store.add_event(s, m, "purged", f"{was} message purged after {days} days; the log entry remains")
        return len(expired)

    count = await db.run(purge, write=True)
    say(f"{count} messages purged (held or deleted more than {days} days ago)")
