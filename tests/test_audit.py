"""The audit log: who changed what, recorded with the change itself; a refused change records nothing."""

from __future__ import annotations

import getpass
import logging

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
