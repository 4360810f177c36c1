"""The panel's departments and customers: list, add, edit, remove after asking; verify customers; block and
unblock senders. Each calls ticketmail/admin/departments.py or customers.py, as `ticketmail department ...`
and `ticketmail customer ...` do; an AdminError is shown beside its field, and what a POST did is a notice
on the page it redirects to.

Pages name a department or customer by its id, not its name or address: either may hold characters (a
slash, a space) that do not survive a URL path.
"""

from __future__ import annotations

import functools

from aiohttp import web

from storage.models import Customer, Department
from ticketmail.admin import customers, departments, held
from ticketmail.admin.departments import UNKNOWN_SENDER, split_addresses
from ticketmail.admin.errors import AdminError
from web.keys import DB
from web.panel import by, link, notify, place, render, row_id, shown_once

POLICIES = {
    "challenge": "Challenge: hold the mail and ask the sender to confirm",
    "accept": "Accept: make a ticket",
    "reject": "Reject: refuse the mail",
    "hold": "Hold: keep it for an admin to review",
}
assert set(POLICIES) == set(UNKNOWN_SENDER)


def _one(kind, what: str):
    """The view gets the row (a Department or Customer) its path's id names; an unknown id is a 404 page."""

    def wrap(view):
        @functools.wraps(view)
        async def one(request: web.Request) -> web.Response:
            raw = request.match_info["id"]
            number = row_id(raw)
            row = await request.app[DB].run(lambda s: s.get(kind, number)) if number is not None else None
            if row is None:
                return render(request, "panel_error.html", status=404, heading=f"No such {what}",
                              text=f"There is no {what} {raw}.")
            return await view(request, row)

        return one

    return wrap


# --- departments ---

DEPARTMENT_FIELDS = ("name", "addresses", "unknown_sender")


async def department_list(request: web.Request) -> web.Response:
    listed = await departments.listing(request.app[DB])
    notices, alerts = await shown_once(request)
    return render(request, "departments.html", departments=listed, policies=POLICIES, notices=notices, alerts=alerts)


def _department_values(form) -> dict:
    return {k: str(form.get(k, "")).strip() for k in DEPARTMENT_FIELDS}


def _department_form(request, values: dict, errors: dict, status: int = 200, editing: Department | None = None):
    return render(request, "departments_form.html", status=status, values=values, errors=errors,
                  policies=POLICIES, editing=editing)


async def department_add_page(request: web.Request) -> web.Response:
    return _department_form(request, {"name": "", "addresses": "", "unknown_sender": "challenge"}, {})


async def department_add(request: web.Request) -> web.Response:
    values = _department_values(await request.post())
    try:
        added = await departments.add(request.app[DB], values["name"], split_addresses(values["addresses"]),
                                      values["unknown_sender"], by=by(request))
    except AdminError as e:
        errors = {}
        place(errors, e, DEPARTMENT_FIELDS)
        return _department_form(request, values, errors, status=400)
    await notify(request, [f"Department {added.name} added ({', '.join(a.address for a in added.addresses)}; "
                            f"unknown senders: {added.unknown_sender})."])
    raise web.HTTPSeeOther(location=link(request, "departments"))


@_one(Department, "department")
async def department_edit_page(request: web.Request, department: Department) -> web.Response:
    _, addresses = await departments.get(request.app[DB], department.name)
    values = {"name": department.name, "addresses": "\n".join(addresses), "unknown_sender": department.unknown_sender}
    return _department_form(request, values, {}, editing=department)


@_one(Department, "department")
async def department_edit(request: web.Request, department: Department) -> web.Response:
    values = _department_values(await request.post())
    try:
        edited = await departments.edit(request.app[DB], department.name, new_name=values["name"],
                                        addresses=split_addresses(values["addresses"]),
                                        unknown_sender=values["unknown_sender"], by=by(request))
    except AdminError as e:
        errors = {}
        place(errors, e, DEPARTMENT_FIELDS)
        return _department_form(request, values, errors, status=400, editing=department)
    if not edited.changes:
        notices = [f"Department {edited.name}: nothing changed."]
    else:
        notices = [f"Department {edited.name} saved: {'; '.join(edited.changes)}."]
    if edited.rules:
        notices.append(f"The rules that named {department.name} now name {edited.name}: {', '.join(edited.rules)}.")
    await notify(request, notices)
    raise web.HTTPSeeOther(location=link(request, "departments"))


@_one(Department, "department")
async def department_remove_page(request: web.Request, department: Department) -> web.Response:
    """Asks first: the POST form that removes."""
    return render(request, "departments_remove.html", department=department)


@_one(Department, "department")
async def department_remove(request: web.Request, department: Department) -> web.Response:
    try:
        name = await departments.remove(request.app[DB], department.name, by=by(request))
    except AdminError as e:
        await notify(request, alerts=[f"Not removed: {e}."])
    else:
        await notify(request, [f"Department {name} removed; mail to its addresses is no longer accepted."])
    raise web.HTTPSeeOther(location=link(request, "departments"))


# --- customers and blocked senders ---

CUSTOMER_FIELDS = ("email", "name")


async def customer_list(request: web.Request, *, block_values: dict | None = None, block_errors: dict | None = None,
                        status: int = 200) -> web.Response:
    text = request.query.get("q", "").strip()
    found = await customers.directory(request.app[DB], text)
    notices, alerts = await shown_once(request)
    return render(request, "customers.html", status=status, found=found, q=text, notices=notices, alerts=alerts,
                  block_values=block_values or {"email": ""}, block_errors=block_errors or {})


def _customer_form(request, values: dict, errors: dict, status: int = 200, editing: Customer | None = None):
    return render(request, "customers_form.html", status=status, values=values, errors=errors, editing=editing)


async def customer_add_page(request: web.Request) -> web.Response:
    return _customer_form(request, {"email": "", "name": ""}, {})


async def customer_add(request: web.Request) -> web.Response:
    form = await request.post()
    values = {k: str(form.get(k, "")).strip() for k in CUSTOMER_FIELDS}
    try:
        added = await customers.add(request.app[DB], values["email"], values["name"], added_by="panel",
                                    by=by(request))
    except AdminError as e:
        errors = {}
        place(errors, e, CUSTOMER_FIELDS)
        return _customer_form(request, values, errors, status=400)
    await notify(request, [f"Customer {added.email} added (verified): their mail makes tickets without a challenge."])
    raise web.HTTPSeeOther(location=link(request, "customers"))


@_one(Customer, "customer")
async def customer_edit_page(request: web.Request, customer: Customer) -> web.Response:
    return _customer_form(request, {"email": customer.email, "name": customer.name}, {}, editing=customer)


@_one(Customer, "customer")
async def customer_edit(request: web.Request, customer: Customer) -> web.Response:
    name = str((await request.post()).get("name", "")).strip()
    try:
        changed = await customers.rename(request.app[DB], customer.email, name, by=by(request))
    except AdminError as e:
        errors = {}
        place(errors, e, ("name",))
        return _customer_form(request, {"email": customer.email, "name": name}, errors, status=400, editing=customer)
    await notify(request, [f"Customer {customer.email}: " + ("name saved." if changed else "nothing changed.")])
    raise web.HTTPSeeOther(location=link(request, "customers"))


@_one(Customer, "customer")
async def customer_verify(request: web.Request, customer: Customer) -> web.Response:
    changed = await customers.verify(request.app[DB], customer.email, by=by(request))
    await notify(request, [f"Customer {customer.email} " + ("verified." if changed else "was already verified.")])
    raise web.HTTPSeeOther(location=link(request, "customers"))


@_one(Customer, "customer")
async def customer_remove_page(request: web.Request, customer: Customer) -> web.Response:
    """Asks first: the POST form that removes."""
    return render(request, "customers_remove.html", customer=customer)


@_one(Customer, "customer")
async def customer_remove(request: web.Request, customer: Customer) -> web.Response:
    try:
        await customers.remove(request.app[DB], customer.email, by=by(request))
    except AdminError as e:
        await notify(request, alerts=[f"Not removed: {e}."])
    else:
        await notify(request, [f"Customer {customer.email} removed: their next mail is treated as from an "
                                "unknown sender."])
    raise web.HTTPSeeOther(location=link(request, "customers"))


async def sender_block(request: web.Request) -> web.Response:
    email = str((await request.post()).get("email", "")).strip()
    try:
        blocked = await customers.block(request.app[DB], email, by=by(request))
    except AdminError as e:
        errors = {}
        place(errors, e, ("email",))
        return await customer_list(request, block_values={"email": email}, block_errors=errors, status=400)
    await notify(request, [f"{blocked} blocked: their mail is deleted on arrival, and their open challenge "
                            "(if any) is closed."])
    raise web.HTTPSeeOther(location=link(request, "customers"))


async def sender_unblock(request: web.Request) -> web.Response:
    email = str((await request.post()).get("email", "")).strip()
    try:
        unblocked = await held.unblock(request.app[DB], email, by=by(request))
    except AdminError as e:
        await notify(request, alerts=[f"Not unblocked: {e}."])
    else:
        await notify(request, [f"{unblocked} unblocked: their mail is accepted again."])
    raise web.HTTPSeeOther(location=link(request, "customers"))


def add_routes(router: web.UrlDispatcher) -> None:
    router.add_get("/admin/departments", department_list)
    router.add_get("/admin/departments/add", department_add_page)
    router.add_post("/admin/departments/add", department_add)
    router.add_get("/admin/departments/{id}/edit", department_edit_page)
    router.add_post("/admin/departments/{id}/edit", department_edit)
    router.add_get("/admin/departments/{id}/remove", department_remove_page)
    router.add_post("/admin/departments/{id}/remove", department_remove)
    router.add_get("/admin/customers", customer_list)
    router.add_get("/admin/customers/add", customer_add_page)
    router.add_post("/admin/customers/add", customer_add)
    router.add_post("/admin/customers/block", sender_block)
    router.add_post("/admin/customers/unblock", sender_unblock)
    router.add_get("/admin/customers/{id}/edit", customer_edit_page)
    router.add_post("/admin/customers/{id}/edit", customer_edit)
    router.add_post("/admin/customers/{id}/verify", customer_verify)
    router.add_get("/admin/customers/{id}/remove", customer_remove_page)
    router.add_post("/admin/customers/{id}/remove", customer_remove)
