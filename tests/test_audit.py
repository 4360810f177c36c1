"""The audit log: who changed what, recorded with the change itself; a refused change records nothing."""

from __future__ import annotations

import getpass
import logging
import re

from tests.panel_helpers import panel, sign_in  # noqa: F401 - panel is a fixture
from ticketmail.admin import audit, departments
from ticketmail.admin.errors import AdminError


async def test_cli_changes_are_recorded_with_the_os_user_and_logged(cli, db, tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="ticketmail.audit")
    assert (await cli("department", "add", "Support", "--address", "support@xyzhosting.com"))[0] == 0
    assert (await cli("customer", "add", "alice@customer.example", "--name", "Alice"))[0] == 0
    assert (await cli("department", "add", "Support", "--address", "other@xyzhosting.com"))[0] == 1  # refused
    rules = tmp_path / "rules.toml"
    rules.write_text('[[rule]]\nname = "urgent"\nconditions = [{field = "subject", op = "contains", value = "urgent"}]\n'
                     'actions = [{action = "priority", priority = "high"}]\n')
    assert (await cli("rules", "import", str(rules)))[0] == 0
    assert (await cli("customer", "remove", "alice@customer.example"))[0] == 0

    entries = await audit.recent(db)
    assert [(e.actor, e.action, e.subject) for e in reversed(entries)] == [
        (f"cli {getpass.getuser()}", "department.add", "Support"),
        (f"cli {getpass.getuser()}", "customer.add", "alice@customer.example"),
        (f"cli {getpass.getuser()}", "rules.replace", "1 rules"),
        (f"cli {getpass.getuser()}", "customer.remove", "alice@customer.example"),
    ]
    assert entries[-1].detail == "addresses support@xyzhosting.com; unknown senders: challenge"
    logged = [r.getMessage() for r in caplog.records if r.name == "ticketmail.audit"]
    assert logged[0] == ("admin change: department.add 'Support' ('addresses support@xyzhosting.com; unknown "
                         f"senders: challenge') by 'cli {getpass.getuser()}'")
    assert len(logged) == 4


async def test_a_refused_change_records_and_logs_nothing(db, caplog):
    caplog.set_level(logging.INFO, logger="ticketmail.audit")
    await departments.add(db, "Support", ["support@xyzhosting.com"], by="admin alice")
    try:
        await departments.add(db, "Sales", ["support@xyzhosting.com"], by="admin alice")  # the address is taken
    except AdminError:
        pass
    else:
        raise AssertionError("a taken address was accepted")
    assert [(e.actor, e.action, e.subject) for e in await audit.recent(db)] == [("admin alice", "department.add", "Support")]
    assert [r.getMessage().split(" by ")[0] for r in caplog.records if r.name == "ticketmail.audit"] == [
        "admin change: department.add 'Support' ('addresses support@xyzhosting.com; unknown senders: challenge')"]


async def test_pages_of_the_log_go_back_by_id(db):
    for n in range(5):
        await departments.add(db, f"D{n}", [f"d{n}@xyzhosting.com"], by="admin alice")
    first = await audit.recent(db, limit=2)
    assert [e.subject for e in first] == ["D4", "D3"]
    assert [e.subject for e in await audit.recent(db, limit=2, before=first[-1].id)] == ["D2", "D1"]


async def test_the_audit_page_lists_changes_newest_first_escaped_and_in_pages(panel, db, monkeypatch):
    from web import audit_views

    monkeypatch.setattr(audit_views, "PAGE", 2)
    async with panel.get("/admin/audit", allow_redirects=False) as response:
        assert response.status == 303 and "sign-in" in response.headers["Location"]
    async with await sign_in(panel) as response:
        assert response.status == 303
    async with panel.get("/admin/audit") as response:  # the fixture's admin, added by the test
        assert "<td>test</td><td>admin.add</td><td>alice</td>" in await response.text()
    await departments.add(db, "<script>alert(1)</script>", ["a@xyzhosting.com"], by="cli root")
    for n in range(2):
        await departments.add(db, f"D{n}", [f"d{n}@xyzhosting.com"], by="admin alice")
    async with panel.get("/admin/audit") as response:
        page = await response.text()
    assert "<script>alert(1)</script>" not in page
    assert page.index("<td>D1</td>") < page.index("<td>D0</td>")
    assert "&lt;script&gt;" not in page  # the third entry is on the next page
    older = re.search(r'href="(audit\?before=\d+)"', page).group(1)
    async with panel.get(f"/admin/{older}") as response:
        page = await response.text()
    assert "<td>&lt;script&gt;alert(1)&lt;/script&gt;</td>" in page and "<td>cli root</td>" in page
    assert "Older changes" not in page


async def test_setting_what_a_ticket_already_has_records_nothing(cli, db, lmtp):
    from tests.conftest import deliver
    from tests.mail import message
    from ticketmail.admin import tickets

    assert (await cli("department", "add", "Support", "--address", "support@xyzhosting.com",
                      "--unknown-sender", "accept"))[0] == 0
    await deliver(lmtp.port, "alice@customer.example", "support@xyzhosting.com", message())

    async def updated_at():
        return (await tickets.show(db, 1)).row.ticket.updated_at

    before, updated = len(await audit.recent(db)), await updated_at()
    assert await tickets.set_status(db, 1, "open", by="admin alice") == "open"
    assert await tickets.set_priority(db, 1, "normal", by="admin alice") == "normal"
    assert await tickets.set_tags(db, 1, [], by="admin alice") == []
    assert len(await audit.recent(db)) == before and await updated_at() == updated
    await tickets.set_status(db, 1, "closed", by="admin alice")
    assert [(e.action, e.detail) for e in await audit.recent(db, limit=1)] == [("ticket.status", "open -> closed")]
    assert await updated_at() > updated
