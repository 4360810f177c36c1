"""Known customers: their mail makes tickets without a challenge."""

from __future__ import annotations

from storage import directory_store, store
from storage.models import Customer
from ticketmail.admin import audit
from ticketmail.admin.addresses import address
from ticketmail.admin.errors import AdminError


async def add(db, email: str, name: str = "", *, added_by: str, by: str) -> Customer:
    """A verified customer; `added_by` says where (the CLI, the web panel), `by` who (the audit log)."""
    email = address(email)

    def create(s):
        if store.customer_by_email(s, email):
            raise AdminError(f"customer {email} already exists")
        customer = Customer(email=email, name=name, verified=True, added_by=added_by)
        s.add(customer)
        audit.record(s, by, "customer.add", email, name)
        return customer

    return await db.run(create, write=True)


async def list_all(db) -> list[Customer]:
    """Every customer, by address."""
    return await db.run(directory_store.customers)


async def remove(db, email: str, *, by: str) -> None:
    def delete(s):
        customer = store.customer_by_email(s, email)
        if customer is None:
            raise AdminError(f"no customer {email}")
        s.delete(customer)
        audit.record(s, by, "customer.remove", email)

    await db.run(delete, write=True)
