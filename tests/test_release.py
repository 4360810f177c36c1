"""Released mail keeps what the rules decided: a rule's priority and tags on a held message (the event
log shows the hit) used to be lost on `held release` and on a confirmed challenge, because the release
rebuilt the context without the rules' verdict."""

from __future__ import annotations

from tests.challenge_helpers import BOB, as_json, desk  # noqa: F401 - desk is a fixture
from tests.mail import message
from tests.test_challenge_flow import press_confirm

RULES = """\
[[rule]]
name = "vip"
conditions = [{ field = "subject", op = "contains", value = "VIP" }]
actions = [{ action = "priority", priority = "urgent" }, { action = "tag", tag = "vip" }]
"""


async def held_vip_mail(desk, cli, tmp_path) -> dict:
    rules = tmp_path / "rules.toml"
    rules.write_text(RULES)
    code, _, err = await cli("rules", "import", str(rules))
    assert code == 0, err
    await desk.deliver(message(frm=BOB, subject="VIP: the server is down"))
    [held] = await as_json(cli, "held", "list")
    return held


async def test_held_release_keeps_the_priority_and_tags_the_rules_set(desk, cli, tmp_path):
    held = await held_vip_mail(desk, cli, tmp_path)
    code, _, err = await cli("held", "release", str(held["id"]))
    assert code == 0, err
    [ticket] = await as_json(cli, "tickets", "list")
    assert (ticket["priority"], ticket["tags"]) == ("urgent", ["vip"])


async def test_a_confirmed_challenge_keeps_the_priority_and_tags_the_rules_set(desk, cli, tmp_path):
    await held_vip_mail(desk, cli, tmp_path)
    mail = await desk.challenge()
    status, _, _ = await press_confirm(desk, mail.link)
    assert status == 303
    [ticket] = await as_json(cli, "tickets", "list")
    assert (ticket["priority"], ticket["tags"]) == ("urgent", ["vip"])
    shown = await as_json(cli, "tickets", "show", str(ticket["number"]))
    [hit] = [event["detail"] for event in shown["messages"][0]["events"] if event["kind"] == "rule"]
    assert "vip" in hit  # the event log says why, as for mail that was never held
