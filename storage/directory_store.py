"""Departments' addresses and customers as the admin lists and checks them (store.py has what the
pipeline needs as well). Plain functions of a Session."""

from __future__ import annotations

from sqlalchemy import select

from storage.models import Customer, DepartmentAddress


def taken_addresses(session, addresses: list[str]) -> list[str]:
    """Which of `addresses` already belong to a department."""
    return list(session.scalars(select(DepartmentAddress.address).where(DepartmentAddress.address.in_(addresses))))


def customers(session) -> list[Customer]:
    return list(session.scalars(select(Customer).order_by(Customer.email)))
