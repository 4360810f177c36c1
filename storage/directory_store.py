"""Departments' addresses and customers as the admin lists and checks them (store.py has what the
pipeline needs as well). Plain functions of a Session."""

from __future__ import annotations

from sqlalchemy import delete, func, or_, select

from storage.models import (
    BlockedSender,
    Customer,
    Department,
    DepartmentAddress,
    ImapAccount,
    Message,
    Ticket,
)


def address_owners(session, addresses: list[str]) -> dict[str, tuple[int, str]]:
    """The department (id, name) owning each of `addresses` that one owns."""
    rows = session.execute(
        select(DepartmentAddress.address, Department.id, Department.name)
        .join(Department, Department.id == DepartmentAddress.department_id)
        .where(DepartmentAddress.address.in_(addresses))
    )
    return {address: (id_, name) for address, id_, name in rows}


def open_tickets(session) -> dict[int, int]:
    """How many open tickets each department has (one grouped count)."""
    rows = session.execute(
        select(Ticket.department_id, func.count()).where(Ticket.status == "open", Ticket.department_id.is_not(None))
        .group_by(Ticket.department_id)
    )
    return dict(rows.all())


def department_addresses(session, department: Department) -> list[str]:
    """The department's addresses in their order (challenges come from the first)."""
    return list(session.scalars(select(DepartmentAddress.address)
                                .where(DepartmentAddress.department_id == department.id).order_by(DepartmentAddress.id)))


def replace_addresses(session, department: Department, addresses: list[str]) -> None:
    """Give `department` exactly `addresses`, in that order (challenges come from the first). The old rows
    go first, in their own flush, so an address kept but moved in the order does not collide with itself."""
    session.execute(delete(DepartmentAddress).where(DepartmentAddress.department_id == department.id))
    session.flush()
    session.add_all(DepartmentAddress(department_id=department.id, address=a) for a in addresses)


def department_users(session, department: Department) -> dict[str, int]:
    """What still refers to `department` (ticket, stored message, IMAP account), with how many."""
    counts = {
        "ticket": select(func.count()).select_from(Ticket).where(Ticket.department_id == department.id),
        "stored message": select(func.count()).select_from(Message).where(Message.department_id == department.id),
        "IMAP account": select(func.count()).select_from(ImapAccount)
        .where(ImapAccount.department_id == department.id),
    }
    return {what: n for what, query in counts.items() if (n := session.scalar(query))}


def delete_department(session, department: Department) -> None:
    """Delete it and its addresses (bulk: its address collection is never loaded implicitly)."""
    session.execute(delete(DepartmentAddress).where(DepartmentAddress.department_id == department.id))
    session.execute(delete(Department).where(Department.id == department.id))


def customers(session, text: str = "") -> list[Customer]:
    """Customers by address; `text` keeps those whose address or name contains it (any case)."""
    query = select(Customer).order_by(Customer.email)
    if text:
        needle = text.lower()
        query = query.where(or_(func.lower(Customer.email).contains(needle, autoescape=True),
                                func.lower(Customer.name).contains(needle, autoescape=True)))
    return list(session.scalars(query))


def customer_tickets(session, customer: Customer) -> int:
    return session.scalar(select(func.count()).select_from(Ticket).where(Ticket.customer_id == customer.id)) or 0


def blocked_senders(session) -> list[BlockedSender]:
    return list(session.scalars(select(BlockedSender).order_by(BlockedSender.address)))
