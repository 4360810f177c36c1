"""Known customers: their mail makes tickets without a challenge. And blocked senders, whose mail is deleted
on arrival (the same list as `held discard --block`; `held unblock` lifts a block)."""

from __future__ import annotations

from dataclasses import dataclass

from storage import challenge_store, directory_store, store
from storage.models import BlockedSender, Customer, utcnow
from ticketmail.admin import audit
from ticketmail.admin.addresses import address
from ticketmail.admin.errors import AdminError


def _name(name: str) -> str:
    name = name.strip()
    if len(name) > 200 or any(c < " " for c in name):
        raise AdminError("a name is one line of at most 200 characters", field="name")
    return name


async def add(db, email: str, name: str = "", *, added_by: str, by: str) -> Customer:
    """A verified customer; `added_by` says where (the CLI, the web panel), `by` who (the audit log)."""
    email, name = address(email, field="email"), _name(name)

    def create(s):
        if store.customer_by_email(s, email):
            raise AdminError(f"customer {email} already exists", field="email")
        customer = Customer(email=email, name=name, verified=True, added_by=added_by)
        s.add(customer)
        audit.record(s, by, "customer.add", email, name)
        return customer

    return await db.run(create, write=True)


async def list_all(db) -> list[Customer]:
    """Every customer, by address."""
    return await db.run(directory_store.customers)


@dataclass(frozen=True)
class Directory:
    """What the panel's customers page shows."""

    customers: list[Customer]  # those the filter kept, by address
    blocked: set[str]  # every blocked address
    blocked_others: list[BlockedSender]  # blocked addresses that are not customers


async def directory(db, text: str = "") -> Directory:
    """Customers whose address or name contains `text` (all for ""), and the blocked senders."""

    def read(s):
        listed = directory_store.customers(s, text.strip())
        blocked = directory_store.blocked_senders(s)
        known = {c.email for c in directory_store.customers(s)}
        return Directory(listed, {b.address for b in blocked}, [b for b in blocked if b.address not in known])

    return await db.run(read)


def _customer(s, email: str) -> Customer:
    """The customer `email` names, as typed (spaces and case as `customer add` stores it)."""
    customer = store.customer_by_email(s, email.strip().lower())
    if customer is None:
        raise AdminError(f"no customer {email.strip()}")
    return customer


async def get(db, email: str) -> Customer:
    return await db.run(lambda s: _customer(s, email))


async def rename(db, email: str, name: str, *, by: str) -> bool:
    """Set the customer's name; False if it was already that."""
    name = _name(name)

    def change(s):
        customer = _customer(s, email)
        if customer.name == name:
            return False
        audit.record(s, by, "customer.edit", customer.email, f"name {customer.name!r} -> {name!r}")
        customer.name = name
        return True

    return await db.run(change, write=True)


async def verify(db, email: str, *, by: str) -> bool:
    """Mark a customer verified (one the accept policy or a trusting rule made); False if it already was.
    Their held mail is released by the sweeper, as after a confirmation."""

    def change(s):
        customer = _customer(s, email)
        if customer.verified:
            return False
        customer.verified = True
        audit.record(s, by, "customer.verify", customer.email, f"was added by {customer.added_by}")
        return True

    return await db.run(change, write=True)


async def remove(db, email: str, *, by: str) -> None:
    """Forget a customer that has no tickets (a ticket keeps its customer)."""

    def delete(s):
        customer = _customer(s, email)
        tickets = directory_store.customer_tickets(s, customer)
        if tickets:
            raise AdminError(f"customer {customer.email} has {tickets} ticket{'s' if tickets != 1 else ''} and "
                             "cannot be removed: a ticket keeps its customer")
        s.delete(customer)
        audit.record(s, by, "customer.remove", customer.email)

    await db.run(delete, write=True)


async def block(db, email: str, *, by: str) -> str:
    """Delete `email`'s mail on arrival from now on (as `held discard --block`), a customer's too, and close
    their open challenge; returns the address as stored."""
    email = address(email, field="email")

    def block_one(s):
        if not challenge_store.block(s, email, "blocked by admin (customers page)"):
            raise AdminError(f"{email} is already blocked", field="email")
        challenge_store.close_open(s, email, "sender blocked by admin", utcnow())
        audit.record(s, by, "sender.block", email)
        return email

    return await db.run(block_one, write=True)
