"""Departments: the addresses each owns and what it does with mail from unknown senders.

Every change bumps the directory's revision counter (store.bump_revision), which is how the running
pipeline, in this process or another, learns that its snapshot of departments is out of date.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace

from ingest.rules import rule_to_data, rules_from_data
from storage import directory_store, rule_store, store
from storage.models import Department, DepartmentAddress
from ticketmail.admin import audit
from ticketmail.admin.addresses import address
from ticketmail.admin.errors import AdminError

UNKNOWN_SENDER = ("challenge", "accept", "reject", "hold")
_SEPARATORS = re.compile(r"[\s,;]+")


def split_addresses(text: str) -> list[str]:
    """Addresses as typed in a form: one a line or separated by commas.

    >>> split_addresses("a@x.org, b@x.org\\n*@y.org")
    ['a@x.org', 'b@x.org', '*@y.org']
    """
    return [a for a in _SEPARATORS.split(text) if a]


def _name(name: str) -> str:
    name = name.strip()
    if not name:
        raise AdminError("a department needs a name", field="name")
    if len(name) > 200 or any(c < " " for c in name):
        raise AdminError("a department's name is one line of at most 200 characters", field="name")
    return name


def _policy(unknown_sender: str) -> str:
    if unknown_sender not in UNKNOWN_SENDER:
        raise AdminError(f"unknown sender policy {unknown_sender!r}: one of {', '.join(UNKNOWN_SENDER)}",
                         field="unknown_sender")
    return unknown_sender


def _addresses(addresses: list[str]) -> list[str]:
    """Checked and lowercased, duplicates dropped, in the order given; at least one."""
    owned = []
    for a in addresses:
        checked = address(a, catch_all=True, field="addresses")
        if checked not in owned:
            owned.append(checked)
    if not owned:
        raise AdminError("a department needs at least one address", field="addresses")
    return owned


def _check_free(s, owned: list[str], department_id: int | None) -> None:
    for taken, (owner_id, owner) in directory_store.address_owners(s, owned).items():
        if owner_id != department_id:
            raise AdminError(f"address {taken} already belongs to department {owner}", field="addresses")


async def add(db, name: str, addresses: list[str], unknown_sender: str = "challenge", *, by: str) -> Department:
    """A new department owning `addresses` (`*@domain` for a whole domain)."""
    name, unknown_sender = _name(name), _policy(unknown_sender)
    owned = _addresses(addresses)

    def create(s):
        if existing := store.department_by_name(s, name):
            raise AdminError(f"department {existing.name!r} already exists", field="name")
        _check_free(s, owned, None)
        department = Department(name=name, unknown_sender=unknown_sender,
                                addresses=[DepartmentAddress(address=a) for a in owned])
        s.add(department)
        store.bump_revision(s)
        audit.record(s, by, "department.add", name, f"addresses {', '.join(owned)}; unknown senders: {unknown_sender}")
        return department

    return await db.run(create, write=True)


async def list_all(db) -> list[Department]:
    """Every department with its addresses, by name."""
    return await db.run(store.departments)


@dataclass(frozen=True)
class Listed:
    department: Department
    open_tickets: int


async def listing(db) -> list[Listed]:
    """Every department with its addresses and its number of open tickets, by name (the panel's list)."""

    def read(s):
        counts = directory_store.open_tickets(s)
        return [Listed(d, counts.get(d.id, 0)) for d in store.departments(s)]

    return await db.run(read)


def _department(s, name: str) -> Department:
    department = store.department_by_name(s, name)
    if department is None:
        raise AdminError(f"no department {name!r}")
    return department


def _renamed(rule, name: str, new_name: str):
    """`rule` with department `name` (any case) called `new_name` where it names it: its scope, or an assign."""
    def department(value: str | None) -> str | None:
        return new_name if value is not None and value.strip().casefold() == name.strip().casefold() else value

    kind, _, scoped = rule.scope.partition(":")
    return replace(rule, scope=f"department:{department(scoped)}" if kind == "department" else rule.scope,
                   actions=tuple(replace(a, value=department(a.value)) if a.action == "assign" else a
                                 for a in rule.actions))


def _rules_naming(s, name: str) -> list[str]:
    """The processing rules that name department `name`: scoped to it, or assigning to it."""
    rules = rules_from_data([row.definition for row in store.rules(s)])
    return [rule.name for rule in rules if _renamed(rule, name, f"not {name}") != rule]


def _rules_follow(s, old_name: str, new_name: str, by: str) -> list[str]:
    """Rename the department in the rules that name it, each change audited; their names."""
    followed = []
    for row in store.rules(s):
        [rule] = rules_from_data([row.definition])
        if (renamed := _renamed(rule, old_name, new_name)) != rule:
            rule_store.change_rule(s, row, rule.name, rule_to_data(renamed))
            audit.record(s, by, "rules.update", rule.name, f"department {old_name} renamed {new_name}")
            followed.append(rule.name)
    return followed


async def get(db, name: str) -> tuple[Department, list[str]]:
    """The department called `name` (any case) and its addresses in order."""

    def read(s):
        department = _department(s, name)
        return department, directory_store.department_addresses(s, department)

    return await db.run(read)


@dataclass(frozen=True)
class Edited:
    name: str  # as saved
    changes: list[str]  # what changed, in words; empty if nothing did
    rules: list[str]  # renamed: the rules that named the old name, and now name the new one


async def edit(db, name: str, *, new_name: str, addresses: list[str], unknown_sender: str, by: str) -> Edited:
    """Rename the department, replace its addresses (in the order given) and set its policy."""
    new_name, unknown_sender = _name(new_name), _policy(unknown_sender)
    owned = _addresses(addresses)

    def change(s):
        department = _department(s, name)
        old_name, old_addresses = department.name, directory_store.department_addresses(s, department)
        changes, rules = [], []
        if new_name != old_name:
            other = store.department_by_name(s, new_name)
            if other is not None and other.id != department.id:
                raise AdminError(f"department {other.name!r} already exists", field="name")
            department.name = new_name
            changes.append(f"renamed from {old_name}")
        if owned != old_addresses:
            _check_free(s, owned, department.id)
            directory_store.replace_addresses(s, department, owned)
            changes.append(f"addresses {', '.join(owned)}")
        if unknown_sender != department.unknown_sender:
            department.unknown_sender = unknown_sender
            changes.append(f"unknown senders: {unknown_sender}")
        if changes:
            store.bump_revision(s)
            audit.record(s, by, "department.edit", old_name, "; ".join(changes))
        if department.name != old_name:
            rules = _rules_follow(s, old_name, department.name, by)
        return Edited(department.name, changes, rules)

    return await db.run(change, write=True)


async def remove(db, name: str, *, by: str) -> str:
    """Delete a department nothing refers to (tickets, stored mail, IMAP accounts, rules); returns its name."""

    def delete(s):
        department = _department(s, name)
        users = [f"{n} {kind}{'s' if n != 1 else ''}"
                 for kind, n in directory_store.department_users(s, department).items()]
        if rules := _rules_naming(s, department.name):
            users.append(f"{len(rules)} rule{'s' if len(rules) != 1 else ''} ({', '.join(rules)})")
        if users:
            what = ", ".join(users[:-1]) + " and " + users[-1] if len(users) > 1 else users[0]
            raise AdminError(f"department {department.name} is still in use by {what}, so it cannot be removed; "
                             "change its addresses or policy instead")
        directory_store.delete_department(s, department)
        store.bump_revision(s)
        audit.record(s, by, "department.remove", department.name)
        return department.name

    return await db.run(delete, write=True)
