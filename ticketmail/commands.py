"""What each `ticketmail` command prints: it calls ticketmail/admin with the parsed arguments and shows the
result, as text or with --json as one JSON document. Each is `async (db, config, args)`."""

from __future__ import annotations

import getpass
import sys

from bridge.accounts import Secret
from ingest.challenges import ChallengeSettings
from ingest.rules import rule_to_data
from ticketmail.admin import admins, customers, departments, failed, held, rules, tickets
from ticketmail.admin.errors import AdminError
from ticketmail.terminal import emit, iso, one_line, password, say


def _cli_user() -> str:
    """Who the audit log says made a change at the command line: the operating-system user."""
    try:
        return f"cli {getpass.getuser()}"
    except (KeyError, OSError):  # no name for this uid (a container)
        return "cli"


BY = _cli_user()


async def department_add(db, config, args):
    d = await departments.add(db, args.name, args.address, args.unknown_sender, by=BY)
    say(f"department {d.name} added ({', '.join(a.address for a in d.addresses)}; "
        f"unknown senders: {d.unknown_sender})")


async def department_list(db, config, args):
    data = [{"name": d.name, "addresses": [a.address for a in d.addresses], "unknown_sender": d.unknown_sender}
            for d in await departments.list_all(db)]
    emit(data, args.json, [f"{d['name']}\t{', '.join(d['addresses'])}\tunknown senders: {d['unknown_sender']}"
                           for d in data] or ["no departments"])


async def department_edit(db, config, args):
    department, addresses = await departments.get(db, args.name)  # what is not given stays as stored
    done = await departments.edit(
        db, department.name, new_name=department.name if args.rename is None else args.rename,
        addresses=addresses if args.address is None else args.address,
        unknown_sender=args.unknown_sender or department.unknown_sender, by=BY)
    say(f"department {done.name} edited: {'; '.join(done.changes)}" if done.changes
        else f"department {done.name}: nothing changed")
    if done.rules:
        say(f"the rules that named {department.name} now name {done.name}: {', '.join(done.rules)}")


async def department_remove(db, config, args):
    say(f"department {await departments.remove(db, args.name, by=BY)} removed")


async def customer_add(db, config, args):
    customer = await customers.add(db, args.email, args.name, added_by="cli", by=BY)
    say(f"customer {customer.email} added")


async def customer_list(db, config, args):
    listed = (await customers.list_all(db) if args.search is None
              else (await customers.directory(db, args.search)).customers)
    data = [{"email": c.email, "name": c.name, "verified": c.verified, "added_by": c.added_by,
             "created_at": iso(c.created_at)} for c in listed]
    emit(data, args.json, [f"{one_line(c['email'])}\t{one_line(c['name'])}\t"
                           f"{'verified' if c['verified'] else 'unverified'} ({c['added_by']})" for c in data]
         or [f"no customer's address or name contains {args.search!r}" if args.search else "no customers"])


async def customer_rename(db, config, args):
    email = args.email.strip().lower()
    name = args.name.strip()
    if not await customers.rename(db, args.email, name, by=BY):
        say(f"customer {email}: name unchanged")
    else:
        say(f"customer {email} renamed {name!r}" if name else f"customer {email}: name cleared")


async def customer_verify(db, config, args):
    email = args.email.strip().lower()
    say(f"customer {email} verified (their mail waiting on a challenge is released by a running `serve`)"
        if await customers.verify(db, args.email, by=BY) else f"customer {email} was already verified")


async def customer_remove(db, config, args):
    await customers.remove(db, args.email, by=BY)
    say(f"customer {args.email} removed")


async def rules_import(db, config, args):
    imported = await rules.import_file(db, args.file, by=BY)
    say(f"{len(imported)} rules imported from {args.file}")


async def rules_export(db, config, args):
    print(await rules.export(db), end="")  # exact: it is read back by `rules import`


async def rules_list(db, config, args):
    listed = await rules.list_all(db)
    emit([rule_to_data(r) for r in listed], args.json,
         [f"{i}. {r.name} ({r.match}, {r.scope}): {len(r.conditions)} conditions -> "
          + ", ".join(a.action + (f" {a.value}" if a.value else "") for a in r.actions)
          for i, r in enumerate(listed, 1)] or ["no rules"])


async def rules_delete(db, config, args):
    name = await rules.delete(db, (await rules.named(db, args.name)).id, by=BY)
    say(f'rule "{one_line(name)}" deleted')


async def rules_move(db, config, args):
    moved = await rules.move(db, (await rules.named(db, args.name)).id, args.direction, by=BY)
    say(f'rule "{one_line(moved.rule.name)}" is now #{moved.position + 1}')


def _ticket_data(row: tickets.TicketRow) -> dict:
    t = row.ticket
    return {"number": t.id, "subject": t.subject, "status": t.status, "department": row.department,
            "customer": row.customer, "priority": t.priority, "tags": t.tags, "messages": row.messages,
            "created_at": iso(t.created_at), "updated_at": iso(t.updated_at)}


# Without --limit, every matching ticket in one read: one snapshot, as the listing always was. Pages read one
# after another (keyset, by updated_at) would miss a ticket updated while the listing runs.
EVERY = 1_000_000_000


async def tickets_list(db, config, args):
    department = (await departments.get(db, args.department))[0].name if args.department else ""  # any case
    filters = tickets.Filters(department=department, status=args.status or "", customer=args.customer or "",
                              tag=args.tag or "", text=args.search or "")
    page = await tickets.page(db, filters, limit=args.limit or EVERY)
    data = [_ticket_data(row) for row in page.rows]
    emit(data, args.json, [f"#{t['number']}\t{t['status']}\t{t['department'] or '-'}\t"
                           f"{one_line(t['customer'] or '-')}\t{t['messages']} msg\t{one_line(t['subject'])}"
                           for t in data] or ["no tickets" + (" match" if filters.any() else "")])
    if page.next is not None:  # on stderr: stdout stays the rows (or the JSON document) a script reads
        print(f"ticketmail: the {len(data)} most recently updated shown; more match (raise --limit)",
              file=sys.stderr)


async def tickets_set(db, config, args):
    if args.status is None and args.priority is None and args.tags is None:
        raise AdminError("nothing to set: give --status, --priority or --tags")
    tags = None if args.tags is None else tickets.parse_tags(args.tags)  # checked before anything changes
    changes = []
    if args.status is not None:
        changes.append(f"status {await tickets.set_status(db, args.number, args.status, by=BY)} -> {args.status}")
    if args.priority is not None:
        was = await tickets.set_priority(db, args.number, args.priority, by=BY)
        changes.append(f"priority {was} -> {args.priority}")
    if tags is not None:
        was = await tickets.set_tags(db, args.number, tags, by=BY)
        changes.append(f"tags {one_line(tickets.tags_text(was))} -> {one_line(tickets.tags_text(tags))}")
    say(f"ticket #{args.number}: {'; '.join(changes)}")


def _message_data(m) -> dict:
    return {"id": m.id, "message_id": m.message_id, "from": m.from_addr, "to": m.to_addrs, "cc": m.cc_addrs,
            "subject": m.subject, "date": iso(m.date), "status": m.status,
            "text": m.text, "attachments": [{"filename": a.filename, "content_type": a.content_type,
                                             "size": a.size} for a in m.attachments],
            "events": [{"at": iso(e.at), "kind": e.kind, "detail": e.detail} for e in m.events]}


async def tickets_show(db, config, args):
    view = await tickets.show(db, args.number)
    data = _ticket_data(view.row) | {"messages": [_message_data(m) for m in view.messages]}
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
    data = [{"id": m.id, "from": m.from_addr or m.envelope_sender, "to": m.envelope_recipient,
             "subject": m.subject, "received_at": iso(m.received_at),
             "reason": m.events[-1].detail if m.events else ""} for m in await held.list_all(db)]
    emit(data, args.json, [f"{m['id']}\t{m['received_at']}\t{one_line(m['from'])}\t{one_line(m['subject'])}\t"
                           f"{one_line(m['reason'])}" for m in data] or ["no held messages"])


def _still_held(sender: str, count: int) -> str:
    return f"; {count} more message{'s' if count > 1 else ''} from {sender} still held (held list)" if count else ""


async def held_release(db, config, args):
    done = await held.release(db, args.id, ticket_prefix=config.ticket_prefix, by=BY)
    closed = f"; {done.sender}'s pending challenge closed" if done.challenge_closed else ""
    say(f"message {args.id} released as ticket #{done.ticket}{closed}{_still_held(done.sender, done.still_held)}")


async def held_discard(db, config, args):
    done = await held.discard(db, args.id, block=args.block, by=BY)
    blocked = f"; {done.sender} blocked{_still_held(done.sender, done.still_held)}" if done.blocked else ""
    say(f"message {args.id} discarded{blocked}")


async def held_block(db, config, args):
    say(f"{await customers.block(db, args.email, by=BY)} blocked: their mail is deleted on arrival "
        "(`held unblock` lifts it)")


async def held_unblock(db, config, args):
    say(f"{await held.unblock(db, args.email, by=BY)} unblocked")


async def held_purge(db, config, args):
    days = config.challenge.held_days if args.days is None else args.days
    count = await held.purge(db, days, by=BY)
    say(f"{count} messages purged (held, deleted or rejected more than {days} days ago)")


async def held_failed(db, config, args):
    data = [{"id": f.message.id, "from": f.message.from_addr or f.message.envelope_sender,
             "to": f.message.envelope_recipient, "subject": f.message.subject,
             "received_at": iso(f.message.received_at), "error": f.error} for f in await failed.page(db)]
    emit(data, args.json, [f"{m['id']}\t{m['received_at']}\t{one_line(m['from'])}\t{one_line(m['subject'])}\t"
                           f"{one_line(m['error'])}" for m in data] or ["no failed messages"])


async def held_retry(db, config, args):
    done = await failed.retry(db, args.id, ticket_prefix=config.ticket_prefix,
                              settings=ChallengeSettings.from_config(config), by=BY)
    if done.status == "failed":
        raise AdminError(f"message {args.id} failed again: {done.reason}")
    ticket = f" (ticket #{done.ticket})" if done.ticket else ""
    say(f"message {args.id} processed again: {done.status}{ticket}")


def _admin_password(name: str) -> Secret:
    """Asked twice without echo on a terminal; otherwise the first line of stdin (scripts, tests)."""
    return password(f"Password for admin {name}", from_stdin=not sys.stdin.isatty())


async def admin_add(db, config, args):
    user = await admins.add(db, args.user, _admin_password(args.user), by=BY)
    say(f"admin {user.name} added; sign in at {config.web.public_url.rstrip('/')}/admin/")


async def admin_list(db, config, args):
    data = [{"name": u.name, "created_at": iso(u.created_at), "password_changed_at": iso(u.password_changed_at)}
            for u in await admins.list_all(db)]
    emit(data, args.json, [f"{u['name']}\tadded {u['created_at']}\tpassword set {u['password_changed_at']}"
                           for u in data] or ["no admins (add one with `ticketmail admin add NAME`)"])


async def admin_passwd(db, config, args):
    user = await admins.set_password(db, args.user, _admin_password(args.user), by=BY)
    say(f"admin {user.name}: password changed; their sessions have ended")


async def admin_remove(db, config, args):
    user = await admins.remove(db, args.user, by=BY)
    say(f"admin {user.name} removed; their sessions have ended")
