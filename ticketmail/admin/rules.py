"""Processing rules: the whole list replaced at once (`rules import`, all or nothing) and read back in order;
one rule created, changed, deleted or moved (the panel), checked as an import checks it; and a trial: what
the decision chain would do with a message, writing nothing."""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass
from pathlib import Path

from ingest import chain, directory
from ingest.chain import Decision
from ingest.delivery import Delivery
from ingest.parse import parse_message
from ingest.rules import (Rule, RuleError, RuleSet, Verdict, explain, hit_text, parse_rules, rule_to_data,
                          rules_from_data, rules_to_toml)
from storage import rule_store, store
from ticketmail.admin import audit
from ticketmail.admin.errors import AdminError


async def replace(db, text: str, *, by: str) -> list[Rule]:
    """Replace every rule with those of a rules file's TOML `text`; nothing changes if any is wrong."""
    try:
        rules = parse_rules(text)
    except RuleError as e:
        raise AdminError(str(e)) from None

    def store_rules(s):
        for rule in rules:
            for action in rule.actions:
                if action.action == "assign" and not store.department_by_name(s, action.value):
                    raise AdminError(f'rule "{rule.name}": assigns unknown department "{action.value}"')
        store.replace_rules(s, [(r.name, rule_to_data(r)) for r in rules])
        audit.record(s, by, "rules.replace", f"{len(rules)} rules", ", ".join(r.name for r in rules))

    await db.run(store_rules, write=True)
    return rules


async def import_file(db, path: str, *, by: str) -> list[Rule]:
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise AdminError(f"cannot read {path}: {e}") from None
    return await replace(db, text, by=by)


async def list_all(db) -> list[Rule]:
    try:
        return rules_from_data([r.definition for r in await db.run(store.rules)])
    except RuleError as e:
        raise AdminError(str(e)) from None


async def export(db) -> str:
    """The rules as a rules file that `replace` reads back to the same rules."""
    return rules_to_toml(await list_all(db))


# --- One rule at a time (the panel): each change checked as `rules import` would check the whole list ---


@dataclass(frozen=True)
class Listed:
    """A stored rule: its row id (for links), its place in the evaluation order, and what it does."""

    id: int
    position: int
    rule: Rule

    @property
    def description(self) -> str:
        return explain(self.rule)


async def listed(db) -> list[Listed]:
    def read(s):
        rows = store.rules(s)
        return [Listed(row.id, row.position, rule) for row, rule in zip(rows, _rules_of(rows))]

    return await db.run(read)


async def get(db, rule_id: int) -> Listed:
    for item in await listed(db):
        if item.id == rule_id:
            return item
    raise AdminError(f"there is no rule {rule_id}")


async def named(db, name: str) -> Listed:
    """The rule called `name` (case-insensitively, as names are unique): for a command line that names it."""
    for item in await listed(db):
        if item.rule.name.casefold() == name.casefold():
            return item
    raise AdminError(f'there is no rule named "{name}"')


def _rules_of(rows) -> list[Rule]:
    try:
        return rules_from_data([row.definition for row in rows])
    except RuleError as e:
        raise AdminError(str(e)) from None


NAME_LENGTH = 200  # the rules table's name column
_LABEL = re.compile(r'rule (?:#\d+|"(?:[^"\\]|\\.)*"): ')
_ITEM = re.compile(r"(condition|action) (\d+): ")
_KEY = re.compile(r'(?:empty |bad |no |")(name|match|scope|conditions|actions)\b')


def _beside(problem: str) -> AdminError:
    """The error for one problem of one rule, with the field it concerns: "condition-2" is the rule's
    second condition, "action-1" its first action."""
    problem = _LABEL.sub("", problem, count=1)
    item = _ITEM.match(problem)
    if item:
        return AdminError(problem[item.end():], field=f"{item[1]}-{item[2]}")
    key = _KEY.match(problem)  # "empty name", "bad scope ...", "no conditions", '"match" must be ...'
    return AdminError(problem, field=key[1] if key else None)


def _checked(s, data: dict, rows, at: int | None) -> Rule:
    """`data` (a [[rule]] table) validated as `rules import` validates it, in the list of the stored rules
    with it at row `at` (None: added at the end); AdminError beside the field at fault."""
    try:
        [rule] = rules_from_data([data])
    except RuleError as e:
        raise _beside(e.problems[0]) from None
    if len(rule.name) > NAME_LENGTH:
        raise AdminError(f"a name is at most {NAME_LENGTH} characters", field="name")
    tables = [data if row.id == at else row.definition for row in rows] + ([data] if at is None else [])
    try:
        rules_from_data(tables)  # the whole list: names are unique (case-insensitively)
    except RuleError as e:
        raise AdminError(f'another rule is named "{rule.name}"', field="name") if any(
            "duplicate name" in p for p in e.problems) else AdminError(str(e)) from None
    for number, action in enumerate(rule.actions, 1):
        if action.action == "assign" and not store.department_by_name(s, action.value):
            raise AdminError(f'unknown department "{action.value}"', field=f"action-{number}")
    return rule


async def create(db, data: dict, *, by: str) -> Listed:
    """Add the rule of `data` (a [[rule]] table) after all the others."""

    def add(s):
        rule = _checked(s, data, store.rules(s), None)
        row = rule_store.add_rule(s, rule.name, rule_to_data(rule))
        audit.record(s, by, "rules.create", rule.name, f"#{row.position + 1}: {explain(rule)}")
        return Listed(row.id, row.position, rule)

    return await db.run(add, write=True)


def _row(s, rule_id: int):
    row = rule_store.rule(s, rule_id)
    if row is None:
        raise AdminError(f"there is no rule {rule_id}")
    return row


async def update(db, rule_id: int, data: dict, *, by: str) -> Listed:
    """Replace rule `rule_id` by the rule of `data`, in the same place."""

    def change(s):
        row = _row(s, rule_id)
        rule = _checked(s, data, store.rules(s), row.id)
        before = row.name
        rule_store.change_rule(s, row, rule.name, rule_to_data(rule))
        renamed = f" (was {before})" if before != rule.name else ""
        audit.record(s, by, "rules.update", rule.name, f"#{row.position + 1}{renamed}: {explain(rule)}")
        return Listed(row.id, row.position, rule)

    return await db.run(change, write=True)


async def delete(db, rule_id: int, *, by: str) -> str:
    """Delete rule `rule_id`; the rules after it move up. Returns its name."""

    def remove(s):
        row = _row(s, rule_id)
        name, position, [rule] = row.name, row.position, _rules_of([row])
        rule_store.delete_rule(s, row)
        audit.record(s, by, "rules.delete", name, f"was #{position + 1}: {explain(rule)}")
        return name

    return await db.run(remove, write=True)


async def move(db, rule_id: int, direction: str, *, by: str) -> Listed:
    """Swap rule `rule_id` with the nearest rule of the same scope before it ("up") or after it ("down"):
    the order within a scope is what the list shows; rules of other scopes keep their places."""
    if direction not in ("up", "down"):
        raise AdminError(f'move "up" or "down", not "{direction}"', field="direction")

    def swap(s):
        row = _row(s, rule_id)
        rows = store.rules(s)
        scope_of = {r.id: rule.scope for r, rule in zip(rows, _rules_of(rows))}
        scope = scope_of[row.id]
        same = [r for r in rows if scope_of[r.id] == scope]
        at = same.index(row)
        other_at = at - 1 if direction == "up" else at + 1
        if not 0 <= other_at < len(same):
            raise AdminError(f'rule "{row.name}" is already the {"first" if direction == "up" else "last"} '
                             f"of scope {scope}")
        other = same[other_at]
        rule_store.swap_positions(s, row, other)
        audit.record(s, by, "rules.move", row.name,
                     f"{direction}: #{other.position + 1} -> #{row.position + 1}, swapped with {other.name}")
        return Listed(row.id, row.position, _rules_of([row])[0])

    return await db.run(swap, write=True)


# --- Trying the rules on a message: what the chain would decide, with nothing written ---


@dataclass(frozen=True)
class Tried:
    """One rule's part in a trial: `hit`, it matched and its actions applied; `holds`, its conditions hold
    for the message (whatever its scope, and whether or not an earlier rule ended the evaluation)."""

    listed: Listed
    hit: bool
    holds: bool


@dataclass(frozen=True)
class Trial:
    rules: list[Tried]
    verdict: Verdict | None  # None: a step before the rules decided (a mail loop)
    decision: Decision
    events: list[tuple[str, str]]
    department: str | None  # where the message would be, after the rules
    challenge: bool  # a challenge would be mailed to the sender
    sender: str
    recipient: str
    account: str
    subject: str
    from_addr: str
    message_id: int | None  # the stored message tried, if one was


async def trial(db, raw: bytes | None = None, *, message_id: int | None = None, sender: str | None = None,
                recipient: str | None = None, account: str | None = None, department: str | None = None,
                ticket_prefix: str, settings=None) -> Trial:
    """What the pipeline's writer would decide for `raw` (or the stored message `message_id`), delivered
    now from `sender` to `recipient` (defaults: the stored envelope, else From and the first To), with the
    rules, departments, customers and tickets as stored; nothing is written (the chain runs in a savepoint
    that is rolled back). `department`: the one an IMAP account delivers to, else the recipient's."""

    def run(s):
        nonlocal raw, sender, recipient, account
        source = "lmtp"
        if message_id is not None:
            stored = store.message(s, message_id)
            if stored is None:
                raise AdminError(f"there is no stored message {message_id}", field="message")
            raw, source = bytes(stored.raw), stored.source
            sender = stored.envelope_sender if sender is None else sender
            recipient = recipient or stored.envelope_recipient
            if account is None and source.startswith("imap:"):
                account = source.removeprefix("imap:")
        elif not raw or not raw.strip():
            raise AdminError("paste a message, or give a stored message's number", field="raw")
        parsed = parse_message(raw)
        sender = parsed.from_addr if sender is None else sender
        recipient = recipient or next(iter(parsed.to), "")
        if not recipient:
            raise AdminError("the message has no To address: give the envelope recipient", field="recipient")
        account = account or ""
        if account and message_id is None:
            source = f"imap:{account}"
        snapshot = directory.load(s)
        if department and snapshot.department(department) is None:
            raise AdminError(f'unknown department "{department}"', field="department")
        delivery = Delivery(raw, sender, recipient, source=source, department=department or None, account=account)
        ctx = chain.delivery_context(s, snapshot, delivery, parsed, ticket_prefix=ticket_prefix, settings=settings)
        savepoint = s.begin_nested()
        try:
            with s.no_autoflush:
                decision = chain.decide(ctx)
        finally:
            savepoint.rollback()
        rows = store.rules(s)
        facts = chain.facts(ctx)
        hits = ctx.verdict.hits if ctx.verdict else []  # None: an earlier step decided (a mail loop)
        tried = [Tried(Listed(row.id, row.position, rule), hit_text(rule) in hits,
                       bool(RuleSet([dataclasses.replace(rule, scope="global")]).evaluate(facts, department=None).hits))
                 for row, rule in zip(rows, snapshot.rules.rules)]
        return Trial(tried, ctx.verdict, decision, list(ctx.events), ctx.department.name if ctx.department else None,
                     bool(ctx.challenge and ctx.challenge.send), sender, recipient, account, parsed.subject,
                     parsed.from_addr, message_id)

    return await db.run(run)
