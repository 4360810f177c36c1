"""A cached snapshot of departments, their addresses and the compiled rules.

Read again (`Cache`) when the database's revision counter changes, so rules are compiled once, not
read per message, and several processes sharing PostgreSQL see each other's changes.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ingest.rules import RuleSet, rules_from_data
from storage import store


@dataclass(frozen=True)
class DepartmentInfo:
    id: int
    name: str
    unknown_sender: str


@dataclass
class Directory:
    revision: int = -1
    departments: dict[str, DepartmentInfo] = field(default_factory=dict)  # by lowercased name
    addresses: dict[str, DepartmentInfo] = field(default_factory=dict)  # exact addresses
    catchalls: dict[str, DepartmentInfo] = field(default_factory=dict)  # by domain, from *@domain
    rules: RuleSet = field(default_factory=lambda: RuleSet([]))

    def department_of(self, delivery) -> DepartmentInfo | None:
        """Where a delivery (ingest.delivery.Delivery) goes: its named department (an IMAP account's),
        else the one owning its recipient."""
        return self.department(delivery.department) or self.department_for(delivery.recipient)

    def department_for(self, address: str) -> DepartmentInfo | None:
        """The department that owns an envelope recipient: exact address first, then the domain's catch-all."""
        address = address.strip().lower()
        if address in self.addresses:
            return self.addresses[address]
        return self.catchalls.get(address.rpartition("@")[2])

    def department(self, name: str | None) -> DepartmentInfo | None:
        return self.departments.get(name.lower()) if name else None

    def is_own_address(self, address: str) -> bool:
        return address.lower() in self.addresses


def load(session) -> Directory:
    directory = Directory(revision=store.revision(session))
    for dept in store.departments(session):
        info = DepartmentInfo(dept.id, dept.name, dept.unknown_sender)
        directory.departments[dept.name.lower()] = info
        for a in dept.addresses:
            if a.address.startswith("*@"):
                directory.catchalls[a.address[2:]] = info
            else:
                directory.addresses[a.address] = info
    directory.rules = RuleSet(rules_from_data([r.definition for r in store.rules(session)]))
    return directory


class Cache:
    """The directory as of the database's revision counter. The pipeline (placing LMTP recipients)
    and its writer (deciding) each keep one and refresh it by this one rule."""

    def __init__(self) -> None:
        self.snapshot = Directory()

    def current(self, session) -> Directory:
        """The snapshot, read again first if departments or rules changed since (one query if not)."""
        if store.revision(session) != self.snapshot.revision:
            self.snapshot = load(session)
        return self.snapshot
