"""The command-line counterparts of panel actions: `held failed|retry`, `rules delete|move`; each an audit entry."""

from __future__ import annotations

import json

from ingest import tickets
from tests.conftest import deliver, one_database
from tests.mail import message
from tests.test_writer_failed import poison
from ticketmail.admin import audit

SUPPORT, ALICE = "support@xyzhosting.com", "alice@customer.example"
RULES = """
[[rule]]
name = "urgent"
conditions = [{ field = "subject", op = "contains", value = "urgent" }]
actions = [{ action = "priority", priority = "high" }]

[[rule]]
name = "spam"
conditions = [{ field = "subject", op = "contains", value = "[Spam]" }]
actions = [{ action = "delete" }]

[[rule]]
name = "vip"
conditions = [{ field = "from", op = "contains", value = "@vip.example" }]
actions = [{ action = "tag", tag = "vip" }]
"""


@one_database
async def test_a_failed_message_is_listed_and_retried_from_the_command_line(cli, lmtp, db, monkeypatch):
    assert (await cli("department", "add", "Support", "--address", SUPPORT, "--unknown-sender", "accept"))[0] == 0
    act = tickets.act
    poison(monkeypatch, RuntimeError("the disk of tags is full"))
    [(code, _)] = await deliver(lmtp.port, ALICE, SUPPORT, message(frm=ALICE, subject="POISON pill"))
    assert code == 250  # stored as it arrived, not refused for ever
    code, out, err = await cli("held", "failed", "--json")
    assert code == 0, err
    [listed] = json.loads(out)
    assert listed["subject"] == "POISON pill" and "RuntimeError: the disk of tags is full" in listed["error"]

    code, _, err = await cli("held", "retry", str(listed["id"]))  # the cause is still there
    assert (code, err.count("\n")) == (1, 1) and f"message {listed['id']} failed again: RuntimeError" in err
    monkeypatch.setattr(tickets, "act", act)
    code, out, err = await cli("held", "retry", str(listed["id"]))
    assert (code, out) == (0, f"message {listed['id']} processed again: ticket (ticket #1)\n"), err
    assert json.loads((await cli("held", "failed", "--json"))[1]) == []
    assert [(e.action, e.detail) for e in await audit.recent(db, limit=2)] == [
        ("failed.retry", "now ticket, ticket #1"),
        ("failed.retry", "failed again: RuntimeError: the disk of tags is full")]


@one_database
async def test_rules_are_deleted_and_moved_by_name(cli, db, tmp_path):
    path = tmp_path / "rules.toml"
    path.write_text(RULES)
    assert (await cli("rules", "import", str(path)))[0] == 0
    assert await cli("rules", "move", "VIP", "up") == (0, 'rule "vip" is now #2\n', "")
    code, _, err = await cli("rules", "move", "urgent", "up")
    assert code == 1 and err == 'ticketmail: rule "urgent" is already the first of scope global\n'
    assert await cli("rules", "delete", "spam") == (0, 'rule "spam" deleted\n', "")
    code, _, err = await cli("rules", "delete", "spam")
    assert code == 1 and err == 'ticketmail: there is no rule named "spam"\n'
    code, out, _ = await cli("rules", "list", "--json")
    assert [r["name"] for r in json.loads(out)] == ["urgent", "vip"]
    assert [e.action for e in await audit.recent(db, limit=2)] == ["rules.delete", "rules.move"]
