"""Departments: the addresses each owns and what it does with mail from unknown senders."""

from __future__ import annotations

from storage import directory_store, store
from storage.models import Department, DepartmentAddress
from ticketmail.admin import audit
from ticketmail.admin.addresses import address
from ticketmail.admin.errors import AdminError

UNKNOWN_SENDER = ("challenge", "accept", "reject", "hold")


async def add(db, name: str, addresses: list[str], unknown_sender: str = "challenge", *, by: str) -> Department:
    """A new department owning `addresses` (`*@domain` for a whole domain)."""
    if unknown_sender not in UNKNOWN_SENDER:
        raise AdminError(f"unknown sender policy {unknown_sender!r}: one of {', '.join(UNKNOWN_SENDER)}")
    owned = [address(a, catch_all=True) for a in addresses]

    def create(s):
        if store.department_by_name(s, name):
            raise AdminError(f"department {name!r} already exists")
        for taken in directory_store.taken_addresses(s, owned):
            raise AdminError(f"address {taken} already belongs to a department")
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
