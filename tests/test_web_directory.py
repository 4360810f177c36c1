"""The panel's departments and customers (and blocked senders) over real HTTP on loopback: every change
through ticketmail/admin/departments.py and customers.py, seen in the database, in what the CLI lists and in
the audit log; mail delivered over LMTP shows that the running pipeline sees each change."""

from __future__ import annotations

import html
import json
import re

import pytest
from sqlalchemy import select

from storage.models import Challenge, Customer, Department, Message
from tests.conftest import deliver
from tests.mail import message
from tests.panel_helpers import form_token, panel, sign_in  # noqa: F401 - panel is a fixture
from tests.test_web_confirm import assert_protected
from ticketmail.admin import audit
from web.keys import DB

SUPPORT, SALES, BILLING = "support@xyzhosting.com", "sales@xyzhosting.com", "billing@xyzhosting.com"
BOB, MALLORY = "bob@customer.example", "mallory@spam.example"
HOSTILE = "<script>alert(1)</script>"
HOSTILE_ATTR = '"><img src=x onerror=alert(1)>'


@pytest.fixture
async def directory(cli):
    """Departments Support (challenges unknown senders) and Sales (accepts them), one verified customer."""
    for argv in (("department", "add", "Support", "--address", SUPPORT),
                 ("department", "add", "Sales", "--address", SALES, "--unknown-sender", "accept"),
                 ("customer", "add", "carol@customer.example", "--name", "Carol")):
        code, _, err = await cli(*argv)
        assert code == 0, err


async def signed_in(client) -> None:
    async with await sign_in(client) as response:
        assert response.status == 303


async def page(client, path: str) -> str:
    async with client.get(path) as response:
        assert response.status == 200, path
        assert_protected(response.headers)
        return await response.text()


async def post(client, path: str, data: dict, token_from: str, status: int = 303):
    """POST a form with the CSRF token of page `token_from`; returns (Location or None, page text)."""
    token = await form_token(client, token_from)
    async with client.post(path, data=data | {"csrf": token}, allow_redirects=False) as response:
        text = await response.text()
        assert response.status == status, text
        return response.headers.get("Location"), text


async def listed(cli, what: str) -> list[dict]:
    code, out, err = await cli(what, "list", "--json")
    assert code == 0, err
    return json.loads(out)


async def departments(cli) -> dict[str, tuple[list[str], str]]:
    return {d["name"]: (d["addresses"], d["unknown_sender"]) for d in await listed(cli, "department")}


async def customers(cli) -> dict[str, tuple[str, bool, str]]:
    return {c["email"]: (c["name"], c["verified"], c["added_by"]) for c in await listed(cli, "customer")}


async def actions(client) -> list[tuple[str, str, str, str]]:
    """The audit log oldest first, without the CLI's entries of the fixture."""
    return [(e.actor, e.action, e.subject, e.detail) for e in reversed(await audit.recent(client.app[DB]))
            if e.actor.startswith("admin ")]


async def id_of(client, kind, **where) -> int:
    column, value = next(iter(where.items()))
    return await client.app[DB].run(lambda s: s.scalar(select(kind.id).where(getattr(kind, column) == value)))


def beside(page: str, field: str) -> str:
    """The paragraph of the form that holds `field`'s label, input and error."""
    part = page[page.index(f'<label for="{field}">'):]
    return part[:part.index("</p>")]


def notices(text: str) -> list[str]:
    return [html.unescape(n) for n in re.findall(r'<p role="(?:status|alert)">(.*?)</p>', text)]


async def test_every_route_needs_a_session_and_get_changes_nothing(panel, cli, directory):
    support = await id_of(panel, Department, name="Support")
    carol = await id_of(panel, Customer, email="carol@customer.example")
    pages = ["/admin/departments", "/admin/departments/add", f"/admin/departments/{support}/edit",
             f"/admin/departments/{support}/remove", "/admin/customers", "/admin/customers?q=carol",
             "/admin/customers/add", f"/admin/customers/{carol}/edit", f"/admin/customers/{carol}/remove"]
    posts = ["/admin/departments/add", f"/admin/departments/{support}/edit", f"/admin/departments/{support}/remove",
             "/admin/customers/add", f"/admin/customers/{carol}/edit", f"/admin/customers/{carol}/verify",
             f"/admin/customers/{carol}/remove", "/admin/customers/block", "/admin/customers/unblock"]
    data = {"name": "X", "addresses": "x@xyzhosting.com", "unknown_sender": "reject", "email": "x@customer.example"}
    before = (await departments(cli), await customers(cli))
    for path in pages:
        async with panel.get(path, allow_redirects=False) as response:
            assert response.status == 303 and "sign-in" in response.headers["Location"], path
    token = await form_token(panel, "/admin/sign-in")
    for path in posts:  # a valid CSRF pair is not a session
        async with panel.post(path, data=data | {"csrf": token}, allow_redirects=False) as response:
            assert response.status == 303 and "sign-in" in response.headers["Location"], path
    await signed_in(panel)
    for path in pages:
        assert "<h1>" in await page(panel, path)
    query = "&".join(f"{k}={v}" for k, v in data.items())
    for path in posts:  # a GET of a POST route, even with a form's fields, changes nothing
        async with panel.get(f"{path}?{query}", allow_redirects=False) as response:
            assert response.status in (200, 405), path
    assert (await departments(cli), await customers(cli)) == before
    assert await actions(panel) == []
    async with panel.get("/admin/departments/999/edit") as response:
        assert response.status == 404 and "There is no department 999." in await response.text()
    async with panel.get("/admin/customers/nobody/edit") as response:
        assert response.status == 404


async def test_csrf_is_checked_on_every_post(panel, cli, directory):
    await signed_in(panel)
    support = await id_of(panel, Department, name="Support")
    carol = await id_of(panel, Customer, email="carol@customer.example")
    posts = ["/admin/departments/add", f"/admin/departments/{support}/edit", f"/admin/departments/{support}/remove",
             "/admin/customers/add", f"/admin/customers/{carol}/edit", f"/admin/customers/{carol}/verify",
             f"/admin/customers/{carol}/remove", "/admin/customers/block", "/admin/customers/unblock"]
    data = {"name": "X", "addresses": "x@xyzhosting.com", "unknown_sender": "reject", "email": "x@customer.example"}
    before = (await departments(cli), await customers(cli))
    token = await form_token(panel, "/admin/departments")
    for path in posts:
        for extra, headers in (({}, {}), ({"csrf": "x" * 32}, {}),
                               ({"csrf": token}, {"Origin": "https://evil.example"})):
            async with panel.post(path, data=data | extra, headers=headers, allow_redirects=False) as response:
                assert response.status == 403, (path, extra, headers)
                assert "The form could not be checked" in await response.text()
    assert (await departments(cli), await customers(cli)) == before
    assert await actions(panel) == []


async def test_add_edit_and_remove_a_department(panel, cli, directory):
    await signed_in(panel)
    form = await page(panel, "/admin/departments/add")
    assert '<option value="challenge" selected>' in form
    location, _ = await post(panel, "/admin/departments/add",
                             {"name": "Billing", "addresses": f"{BILLING}, Invoices@XYZhosting.com\n*@billing.example",
                              "unknown_sender": "hold"}, "/admin/departments/add")
    assert location == "../departments"
    assert (await departments(cli))["Billing"] == (
        [BILLING, "invoices@xyzhosting.com", "*@billing.example"], "hold")
    listing = await page(panel, "/admin/departments")
    assert "Department Billing added (billing@xyzhosting.com, invoices@xyzhosting.com, *@billing.example; " \
           "unknown senders: hold)." in notices(listing)
    assert "Department Billing added" not in await page(panel, "/admin/departments")  # shown once

    billing = await id_of(panel, Department, name="Billing")
    form = await page(panel, f"/admin/departments/{billing}/edit")
    assert f">{BILLING}\ninvoices@xyzhosting.com\n*@billing.example</textarea>" in form
    assert '<option value="hold" selected>' in form
    location, _ = await post(panel, f"/admin/departments/{billing}/edit",
                             {"name": "Accounts", "addresses": f"invoices@xyzhosting.com\n{BILLING}",
                              "unknown_sender": "reject"}, f"/admin/departments/{billing}/edit")
    assert location == "../../departments"
    after = await departments(cli)
    assert "Billing" not in after and after["Accounts"] == (["invoices@xyzhosting.com", BILLING], "reject")
    assert ("Department Accounts saved: renamed from Billing; addresses invoices@xyzhosting.com, "
            "billing@xyzhosting.com; unknown senders: reject.") in notices(await page(panel, "/admin/departments"))
    await post(panel, f"/admin/departments/{billing}/edit", {"name": "Accounts", "addresses": after["Accounts"][0][0]
               + "," + BILLING, "unknown_sender": "reject"}, f"/admin/departments/{billing}/edit")
    assert "Department Accounts: nothing changed." in notices(await page(panel, "/admin/departments"))

    confirm = await page(panel, f"/admin/departments/{billing}/remove")
    assert "Remove department Accounts?" in confirm and 'method="post"' in confirm
    assert "Accounts" in await departments(cli)  # asking changed nothing
    await post(panel, f"/admin/departments/{billing}/remove", {}, f"/admin/departments/{billing}/remove")
    assert "Accounts" not in await departments(cli)
    assert await actions(panel) == [
        ("admin alice", "department.add", "Billing",
         "addresses billing@xyzhosting.com, invoices@xyzhosting.com, *@billing.example; unknown senders: hold"),
        ("admin alice", "department.edit", "Billing",
         "renamed from Billing; addresses invoices@xyzhosting.com, billing@xyzhosting.com; unknown senders: reject"),
        ("admin alice", "department.remove", "Accounts", ""),
    ]


async def test_a_department_that_tickets_or_rules_refer_to_is_not_removed(panel, cli, directory, lmtp, tmp_path):
    await signed_in(panel)
    replies = await deliver(lmtp.port, BOB, SALES, message(frm=BOB, to=SALES))
    assert replies[0][0] == 250
    sales = await id_of(panel, Department, name="Sales")
    await post(panel, f"/admin/departments/{sales}/remove", {}, f"/admin/departments/{sales}/remove")
    assert ("Not removed: department Sales is still in use by 1 ticket and 1 stored message, so it cannot be removed; "
            "change its addresses or policy instead.") in notices(await page(panel, "/admin/departments"))
    assert "Sales" in await departments(cli)

    rules = tmp_path / "rules.toml"
    rules.write_text('[[rule]]\nname = "to-support"\nconditions = [{ field = "subject", op = "contains", '
                     'value = "help" }]\nactions = [{ action = "assign", department = "Support" }]\n')
    code, _, err = await cli("rules", "import", str(rules))
    assert code == 0, err
    support = await id_of(panel, Department, name="Support")
    await post(panel, f"/admin/departments/{support}/remove", {}, f"/admin/departments/{support}/remove")
    assert ("Not removed: department Support is still in use by 1 rule (to-support), so it cannot be removed; "
            "change its addresses or policy instead.") in notices(await page(panel, "/admin/departments"))
    await post(panel, f"/admin/departments/{support}/edit",
               {"name": "Helpdesk", "addresses": SUPPORT, "unknown_sender": "challenge"},
               f"/admin/departments/{support}/edit")
    assert ("The rules that named Support now name Helpdesk: to-support."
            in notices(await page(panel, "/admin/departments")))
    assert [(a, subject, detail) for _, a, subject, detail in await actions(panel)] == [
        ("department.edit", "Support", "renamed from Support"),
        ("rules.update", "to-support", "department Support renamed Helpdesk")]
    code, out, err = await cli("rules", "export")
    assert code == 0, err
    assert 'department = "Helpdesk"' in out and "Support" not in out
    listing = await page(panel, "/admin/departments")
    assert re.search(r"<td>Sales</td>\s*<td>sales@xyzhosting.com</td>\s*<td>accept<br>.*?</td>\s*<td>1</td>",
                     listing), listing  # its open ticket counted


async def test_department_errors_are_shown_beside_their_field_and_change_nothing(panel, cli, directory):
    await signed_in(panel)
    support = await id_of(panel, Department, name="Support")
    before = await departments(cli)
    good = {"name": "Billing", "addresses": BILLING, "unknown_sender": "challenge"}
    cases = {
        "name": [({"name": "sales"}, "department &#39;Sales&#39; already exists"),
                 ({"name": "  "}, "a department needs a name")],
        "addresses": [({"addresses": "not-an-address"}, "&#39;not-an-address&#39; is not an email address"),
                      ({"addresses": "b" * 250 + "@xyzhosting.com"},  # no mailbox; over 320, PostgreSQL refused it
                       f"&#39;{'b' * 40}&#39;... is longer than any email address (254 octets)"),
                      ({"addresses": f"{BILLING}, {SALES}"}, "address sales@xyzhosting.com already belongs to "
                                                             "department Sales"),
                      ({"addresses": " , "}, "a department needs at least one address")],
        "unknown_sender": [({"unknown_sender": "bounce"}, "unknown sender policy &#39;bounce&#39;: one of "
                                                          "challenge, accept, reject, hold")],
    }
    for path in ("/admin/departments/add", f"/admin/departments/{support}/edit"):
        for field, tries in cases.items():
            for change, text in tries:
                if path.endswith("edit") and change == {"name": "  "}:
                    change = {"name": "Sales"}
                    text = "department &#39;Sales&#39; already exists"
                _, shown = await post(panel, path, good | change, path, status=400)
                assert text in beside(shown, field), (path, field, change)
                assert f'id="{field}-error"' in shown and 'aria-invalid="true"' in beside(shown, field)
                assert html.escape(change[field].strip(), quote=False) in shown  # what was typed stays in the form
    assert await departments(cli) == before
    assert await actions(panel) == []


async def test_an_address_added_by_an_edit_reaches_the_department_over_lmtp(panel, cli, directory, lmtp):
    await signed_in(panel)
    # The pipeline has read the directory (a delivery to Sales) before the edit...
    assert (await deliver(lmtp.port, BOB, SALES, message(frm=BOB, to=SALES, subject="First")))[0][0] == 250
    assert (await deliver(lmtp.port, BOB, BILLING, message(frm=BOB, to=BILLING)))[0][0] == 550
    sales = await id_of(panel, Department, name="Sales")
    await post(panel, f"/admin/departments/{sales}/edit",
               {"name": "Sales", "addresses": f"{SALES}\n{BILLING}", "unknown_sender": "accept"},
               f"/admin/departments/{sales}/edit")
    # ...and sees the new address afterwards: the edit bumped the directory's revision.
    code, text = (await deliver(lmtp.port, BOB, BILLING, message(frm=BOB, to=BILLING, subject="Invoice 7")))[0]
    assert code == 250, text
    code, out, err = await cli("tickets", "list", "--json")
    tickets = {t["subject"]: t["department"] for t in json.loads(out)}
    assert tickets == {"First": "Sales", "Invoice 7": "Sales"}
    # Moving the address to another department moves its mail too.
    await post(panel, f"/admin/departments/{sales}/edit",
               {"name": "Sales", "addresses": SALES, "unknown_sender": "accept"}, f"/admin/departments/{sales}/edit")
    support = await id_of(panel, Department, name="Support")
    await post(panel, f"/admin/departments/{support}/edit",
               {"name": "Support", "addresses": f"{SUPPORT}\n{BILLING}", "unknown_sender": "accept"},
               f"/admin/departments/{support}/edit")
    assert (await deliver(lmtp.port, BOB, BILLING, message(frm=BOB, to=BILLING, subject="Invoice 8")))[0][0] == 250
    code, out, err = await cli("tickets", "list", "--json")
    assert {t["subject"]: t["department"] for t in json.loads(out)}["Invoice 8"] == "Support"


async def test_add_edit_verify_and_remove_a_customer(panel, cli, directory, lmtp):
    await signed_in(panel)
    location, _ = await post(panel, "/admin/customers/add", {"email": "Dave@Customer.example", "name": "Dave D"},
                             "/admin/customers/add")
    assert location == "../customers"
    assert (await customers(cli))["dave@customer.example"] == ("Dave D", True, "panel")
    listing = await page(panel, "/admin/customers")
    assert ("Customer dave@customer.example added (verified): their mail makes tickets without a challenge."
            in notices(listing))
    dave = await id_of(panel, Customer, email="dave@customer.example")
    assert 'value="Dave D"' in await page(panel, f"/admin/customers/{dave}/edit")
    await post(panel, f"/admin/customers/{dave}/edit", {"name": "David Dee"}, f"/admin/customers/{dave}/edit")
    assert (await customers(cli))["dave@customer.example"] == ("David Dee", True, "panel")

    # Sales accepts unknown senders: Bob becomes a customer, not verified, with a ticket.
    assert (await deliver(lmtp.port, BOB, SALES, message(frm=BOB, to=SALES)))[0][0] == 250
    assert (await customers(cli))[BOB] == ("", False, "accepted")
    bob = await id_of(panel, Customer, email=BOB)
    listing = await page(panel, "/admin/customers")
    assert f'action="customers/{bob}/verify"' in listing and f'action="customers/{dave}/verify"' not in listing
    await post(panel, f"/admin/customers/{bob}/verify", {}, "/admin/customers")
    assert (await customers(cli))[BOB] == ("", True, "accepted")
    assert f"Customer {BOB} verified." in notices(await page(panel, "/admin/customers"))

    confirm = await page(panel, f"/admin/customers/{dave}/remove")
    assert "Remove customer dave@customer.example?" in confirm and 'method="post"' in confirm
    assert "dave@customer.example" in await customers(cli)  # asking changed nothing
    await post(panel, f"/admin/customers/{dave}/remove", {}, f"/admin/customers/{dave}/remove")
    assert "dave@customer.example" not in await customers(cli)
    await post(panel, f"/admin/customers/{bob}/remove", {}, f"/admin/customers/{bob}/remove")
    assert (f"Not removed: customer {BOB} has 1 ticket and cannot be removed: a ticket keeps its customer."
            in notices(await page(panel, "/admin/customers")))
    assert BOB in await customers(cli)
    code, _, err = await cli("customer", "remove", BOB)  # the same refusal, not a database error
    assert code == 1 and f"customer {BOB} has 1 ticket and cannot be removed" in err
    assert await actions(panel) == [
        ("admin alice", "customer.add", "dave@customer.example", "Dave D"),
        ("admin alice", "customer.edit", "dave@customer.example", "name 'Dave D' -> 'David Dee'"),
        ("admin alice", "customer.verify", BOB, "was added by accepted"),
        ("admin alice", "customer.remove", "dave@customer.example", ""),
    ]


async def test_customer_errors_are_shown_beside_their_field_and_change_nothing(panel, cli, directory):
    await signed_in(panel)
    before = await customers(cli)
    for change, field, text in (({"email": "carol@"}, "email", "&#39;carol@&#39; is not an email address"),
                                ({"email": "Carol@customer.example"}, "email",
                                 "customer carol@customer.example already exists"),
                                ({"name": "two\nlines"}, "name", "a name is one line of at most 200 characters")):
        _, shown = await post(panel, "/admin/customers/add",
                              {"email": "erin@customer.example", "name": "Erin"} | change,
                              "/admin/customers/add", status=400)
        assert text in beside(shown, field), change
    carol = await id_of(panel, Customer, email="carol@customer.example")
    _, shown = await post(panel, f"/admin/customers/{carol}/edit", {"name": "x" * 201},
                          f"/admin/customers/{carol}/edit", status=400)
    assert "a name is one line of at most 200 characters" in beside(shown, "name")
    assert await customers(cli) == before
    assert await actions(panel) == []


async def test_the_customer_list_filters_by_address_or_name(panel, cli, directory):
    for email, name in (("dave@customer.example", "Dave"), ("erin@other.example", "Erin 100%")):
        code, _, err = await cli("customer", "add", email, "--name", name)
        assert code == 0, err
    await signed_in(panel)

    def shown(text: str) -> list[str]:
        return re.findall(r"<tr>\s*<td>([^<]+)</td>", text)

    assert shown(await page(panel, "/admin/customers")) == ["carol@customer.example", "dave@customer.example",
                                                            "erin@other.example"]
    assert shown(await page(panel, "/admin/customers?q=CUSTOMER.example")) == ["carol@customer.example",
                                                                                "dave@customer.example"]
    assert shown(await page(panel, "/admin/customers?q=erin")) == ["erin@other.example"]
    assert shown(await page(panel, "/admin/customers?q=dav")) == ["dave@customer.example"]
    assert shown(await page(panel, "/admin/customers?q=0%25")) == ["erin@other.example"]  # % is a character
    assert shown(await page(panel, "/admin/customers?q=%25e")) == []
    empty = await page(panel, "/admin/customers?q=nobody")
    assert "No customer's address or name contains “nobody”." in empty and 'value="nobody"' in empty


async def delivered(client, subject: str) -> Message:
    return await client.app[DB].run(lambda s: s.scalar(select(Message).where(Message.subject == subject)))


async def test_blocking_deletes_the_senders_mail_on_arrival_until_unblocked(panel, cli, directory, lmtp):
    await signed_in(panel)
    assert (await deliver(lmtp.port, MALLORY, SUPPORT, message(frm=MALLORY, subject="Buy now")))[0][0] == 250
    assert (await delivered(panel, "Buy now")).status == "held"
    challenge = lambda s: s.scalar(select(Challenge.state).where(Challenge.sender == MALLORY))  # noqa: E731
    assert await panel.app[DB].run(challenge) == "open"

    await post(panel, "/admin/customers/block", {"email": " Mallory@Spam.example "}, "/admin/customers")
    listing = await page(panel, "/admin/customers")
    assert (f"{MALLORY} blocked: their mail is deleted on arrival, and their open challenge (if any) is closed."
            in notices(listing))
    blocked = listing[listing.index('<h2 id="blocked">'):]
    assert f"<td>{MALLORY}</td>" in blocked and f'name="email" value="{MALLORY}"' in blocked
    assert await panel.app[DB].run(challenge) == "closed"  # the link they were sent stops working

    assert (await deliver(lmtp.port, MALLORY, SUPPORT, message(frm=MALLORY, subject="Buy again")))[0][0] == 250
    assert (await delivered(panel, "Buy again")).status == "deleted"

    for email, text in ((MALLORY, f"{MALLORY} is already blocked"),
                        ("nobody", "&#39;nobody&#39; is not an email address")):
        _, shown = await post(panel, "/admin/customers/block", {"email": email}, "/admin/customers", status=400)
        assert text in beside(shown, "block-email"), email

    await post(panel, "/admin/customers/unblock", {"email": MALLORY}, "/admin/customers")
    listing = await page(panel, "/admin/customers")
    assert f"{MALLORY} unblocked: their mail is accepted again." in notices(listing)
    assert "No blocked senders." in listing
    assert (await deliver(lmtp.port, MALLORY, SALES, message(frm=MALLORY, to=SALES, subject="Hello")))[0][0] == 250
    assert (await delivered(panel, "Hello")).status == "ticket"
    await post(panel, "/admin/customers/unblock", {"email": MALLORY}, "/admin/customers")
    assert f"Not unblocked: {MALLORY} is not blocked." in notices(await page(panel, "/admin/customers"))
    assert [(a, s) for _, a, s, _ in await actions(panel)] == [("sender.block", MALLORY), ("sender.unblock", MALLORY)]


async def test_a_sender_blocked_by_held_discard_is_listed_and_a_blocked_customer_is_marked(panel, cli, directory, db):
    from storage import challenge_store

    await db.run(lambda s: challenge_store.block(s, "eve@spam.example", "ticketmail held discard 3 --block"),
                 write=True)
    await db.run(lambda s: challenge_store.block(s, "carol@customer.example", "before she was a customer"),
                 write=True)
    await signed_in(panel)
    listing = await page(panel, "/admin/customers")
    blocked = listing[listing.index('<h2 id="blocked">'):]
    assert "<td>eve@spam.example</td>" in blocked and "ticketmail held discard 3 --block" in blocked
    assert "carol@customer.example" not in blocked  # a customer: in the table above, marked
    assert re.search(r"<td>carol@customer.example</td>.*?<strong>blocked</strong>", listing, re.S)


async def test_hostile_names_are_shown_escaped(panel, cli, directory):
    await signed_in(panel)
    await post(panel, "/admin/departments/add", {"name": HOSTILE, "addresses": "evil@xyzhosting.com",
                                                 "unknown_sender": "challenge"}, "/admin/departments/add")
    await post(panel, "/admin/customers/add", {"email": "odd@customer.example", "name": HOSTILE_ATTR},
               "/admin/customers/add")
    evil = await id_of(panel, Department, name=HOSTILE)
    odd = await id_of(panel, Customer, email="odd@customer.example")
    for path in ("/admin/departments", f"/admin/departments/{evil}/edit", f"/admin/departments/{evil}/remove",
                 "/admin/customers", f"/admin/customers/{odd}/edit", f"/admin/customers/{odd}/remove",
                 f"/admin/customers?q={HOSTILE_ATTR}"):
        text = await page(panel, path)
        assert HOSTILE not in text and HOSTILE_ATTR not in text and "<img" not in text, path
        escaped = ("&lt;script&gt;alert(1)&lt;/script&gt;", "&#34;&gt;&lt;img src=x onerror=alert(1)&gt;")
        assert any(e in text for e in escaped), path
    _, shown = await post(panel, "/admin/departments/add", {"name": HOSTILE, "addresses": HOSTILE_ATTR,
                                                            "unknown_sender": HOSTILE}, "/admin/departments/add",
                          status=400)
    assert HOSTILE not in shown and HOSTILE_ATTR not in shown
