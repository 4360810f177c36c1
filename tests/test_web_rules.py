"""The panel's processing rules over real HTTP: list per scope, create, edit, delete, reorder, try."""

from __future__ import annotations

import html
import json
import re

import aiohttp
import pytest
from sqlalchemy import func, select

from ingest.delivery import Delivery
from storage.models import AuditEntry, Base
from tests.panel_helpers import csrf_of, form_token, panel, sign_in  # noqa: F401 - panel is a fixture
from ticketmail.admin import rules
from ticketmail.admin.errors import AdminError
from web.keys import DB
from web.panel import PANEL

HOSTILE = '<script>alert(1)</script>"><img src=x onerror=alert(1)>'
MAIL = (b"From: Carol <carol@customer.example>\r\nTo: support@xyzhosting.com\r\nSubject: [URGENT] server down\r\n"
        b"Message-ID: <try-1@customer.example>\r\n\r\nIt is down.\r\n")


def rule_form(token: str, name: str, *, scope="global", match="all", conditions=(), actions=()) -> dict:
    """The fields the rule form posts: its rows as given, then blank rows as the page offers them."""
    data = {"csrf": token, "name": name, "scope": scope, "match": match}
    rows = list(conditions) + [("", "contains", "")] * 3
    for i, (field, op, value, *flags) in enumerate(rows):
        data |= {f"cond-{i}-field": field, f"cond-{i}-op": op, f"cond-{i}-value": value}
        data |= {f"cond-{i}-{flag}": "on" for flag in flags}
    for i, (action, value) in enumerate(list(actions) + [("", "")] * 3):
        data |= {f"act-{i}-action": action, f"act-{i}-value": value}
    return data


URGENT = dict(conditions=[("subject", "contains", "[URGENT]")], actions=[("priority", "urgent"), ("tag", "vip")])


async def signed_in(panel, cli):
    assert (await cli("department", "add", "Support", "--address", "support@xyzhosting.com",
                      "--unknown-sender", "accept"))[0] == 0
    assert (await cli("department", "add", "Sales", "--address", "sales@xyzhosting.com"))[0] == 0
    async with await sign_in(panel) as response:
        assert response.status == 303


async def page(panel, path: str) -> str:
    async with panel.get(path) as response:
        assert response.status == 200, path
        return await response.text()


async def post(panel, path: str, data: dict):
    return await panel.post(path, data=data, allow_redirects=False)


async def exported(cli) -> str:
    code, out, _ = await cli("rules", "export")
    assert code == 0
    return out


async def audit_actions(panel) -> list[tuple[str, str, str]]:
    rows = await panel.app[DB].run(lambda s: list(s.scalars(select(AuditEntry).order_by(AuditEntry.id))))
    return [(r.actor, r.action, r.subject) for r in rows if r.action.startswith("rules.")]


async def rule_ids(panel) -> dict[str, int]:
    return {item.rule.name: item.id for item in await rules.listed(panel.app[DB])}


async def create(panel, name: str, **rule) -> None:
    token = await form_token(panel, "/admin/rules/new")
    async with await post(panel, "/admin/rules/new", rule_form(token, name, **rule)) as response:
        assert response.status == 303 and response.headers["Location"] == "../rules", await response.text()


async def table_counts(db) -> dict[str, int]:
    def count(s):
        return {t.name: s.scalar(select(func.count()).select_from(t)) for t in Base.metadata.sorted_tables}

    return await db.run(count)


# --- create, edit, list --------------------------------------------------------------------------


async def test_a_rule_created_in_the_panel_is_exported_listed_and_audited(panel, cli):
    await signed_in(panel, cli)
    form = await page(panel, "/admin/rules/new")
    assert "<h1>Create New Rule</h1>" in form and 'name="cond-2-field"' in form and 'name="act-2-action"' in form  # blank rows, no JavaScript
    await create(panel, "Urgent", **URGENT)
    await create(panel, "Sales leads", scope="department:Sales", match="any",
                 conditions=[("subject", "contains", "quote"), ("body", "regex", r"price\s+list", "case")],
                 actions=[("assign", "Support"), ("stop", "")])
    assert await exported(cli) == (
        '[[rule]]\nname = "Urgent"\nconditions = [\n    { field = "subject", op = "contains", value = "[URGENT]" },\n]\n'
        'actions = [\n    { action = "priority", priority = "urgent" },\n    { action = "tag", tag = "vip" },\n]\n\n'
        '[[rule]]\nname = "Sales leads"\nmatch = "any"\nscope = "department:Sales"\nconditions = [\n'
        '    { field = "subject", op = "contains", value = "quote" },\n'
        '    { field = "body", op = "regex", value = "price\\\\s+list", case = true },\n]\n'
        'actions = [\n    { action = "assign", department = "Support" },\n    { action = "stop" },\n]\n')
    listing = await page(panel, "/admin/rules")
    assert "Rule Sales leads added (#2)" in listing  # the notice, once
    assert "Rule Sales leads added" not in await page(panel, "/admin/rules")
    global_at, sales_at = listing.index("<h2>Global</h2>"), listing.index("<h2>Department Sales</h2>")
    assert global_at < listing.index("<td>Urgent</td>") < sales_at < listing.index("<td>Sales leads</td>")
    shown = html.unescape(listing)
    assert '<td>subject contains "[URGENT]" -> priority urgent, tag "vip"</td>' in shown
    assert ('<td>[department "Sales"] subject contains "quote" or body regex "price\\\\s+list" (case-sensitive) '
            '-> assign "Support", stop</td>') in shown
    assert await audit_actions(panel) == [("admin alice", "rules.create", "Urgent"),
                                          ("admin alice", "rules.create", "Sales leads")]
    log = html.unescape(await page(panel, "/admin/audit"))
    assert ('<td>admin alice</td><td>rules.create</td><td>Urgent</td><td>#1: subject contains "[URGENT]" -> '
            'priority urgent, tag "vip"</td>') in log


async def test_editing_a_rule_shows_its_rows_and_saves_it_in_place(panel, cli):
    await signed_in(panel, cli)
    await create(panel, "First", conditions=[("from", "ends_with", "@vip.example")], actions=[("trust", "")])
    await create(panel, "Urgent", **URGENT)
    ids = await rule_ids(panel)
    form = await page(panel, f"/admin/rules/{ids['Urgent']}/edit")
    assert "<h1>Edit Rule Urgent</h1>" in form
    assert 'name="cond-0-value" value="[URGENT]"' in form and 'name="cond-3-field" value=""' in form
    assert '<option value="priority" selected>' in form and 'name="act-1-value" value="vip"' in form
    token = csrf_of(form)
    changed = rule_form(token, "Very urgent", conditions=[("header:X-Priority", "equals", "1", "negate")],
                        actions=[("priority", "high")])
    async with await post(panel, f"/admin/rules/{ids['Urgent']}/edit", changed) as response:
        assert response.status == 303 and response.headers["Location"] == "../../rules"
    out = await exported(cli)
    assert out.index('name = "First"') < out.index('name = "Very urgent"') and "Urgent\"" not in out
    assert '{ field = "header:X-Priority", op = "equals", value = "1", negate = true }' in out
    assert ("admin alice", "rules.update", "Very urgent") in await audit_actions(panel)
    listing = await page(panel, "/admin/rules")
    assert 'header:X-Priority not equals "1" -> priority high' in html.unescape(listing)


# --- validation beside the field, nothing changed ------------------------------------------------


def error_beside(page_text: str, field: str) -> str:
    """The error shown for form field `field`: the one the field's aria-describedby names."""
    assert f'aria-describedby="{field}-error"' in page_text, field
    return html.unescape(re.search(rf'<strong id="{field}-error" class="field-error">(.*?)</strong>',
                                   page_text, re.S).group(1))


async def test_bad_rules_are_refused_beside_their_field_and_change_nothing(panel, cli):
    await signed_in(panel, cli)
    await create(panel, "Urgent", **URGENT)
    before, audited = await exported(cli), await audit_actions(panel)
    token = await form_token(panel, "/admin/rules/new")
    cases = [
        (rule_form(token, "Route", conditions=[("to", "contains", "x")], actions=[("", ""), ("assign", "Nowhere")]),
         "act-1", 'unknown department "Nowhere"'),
        (rule_form(token, "Regex", conditions=[("subject", "contains", "a"), ("", "contains", ""),
                                               ("subject", "regex", "(unclosed")], actions=[("tag", "x")]),
         "cond-2", 'regex "(unclosed" does not compile'),
        (rule_form(token, "", **URGENT), "name", "empty name"),
        (rule_form(token, "urgent", **URGENT), "name", 'another rule is named "urgent"'),
        (rule_form(token, "Field", conditions=[("subjet", "contains", "a")], actions=[("tag", "x")]),
         "cond-0", 'unknown field "subjet"'),
        (rule_form(token, "Scope", scope="team:x", **URGENT), "scope", 'bad scope "team:x"'),
        (rule_form(token, "Nothing", actions=[("tag", "x")]), "conditions", "no conditions"),
        (rule_form(token, "Prio", conditions=[("to", "contains", "x")], actions=[("priority", "asap")]),
         "act-0", 'bad priority "asap"'),
    ]
    for data, field, message in cases:
        async with await post(panel, "/admin/rules/new", data) as response:
            text = await response.text()
            assert response.status == 400, field
            assert message in error_beside(text, field), (field, error_beside(text, field))
            assert f'value="{html.escape(data["name"])}"' in text  # the form keeps what was typed
    ids = await rule_ids(panel)
    edit = rule_form(token, "Urgent", conditions=[("subject", "regex", "[")], actions=[("tag", "x")])
    async with await post(panel, f"/admin/rules/{ids['Urgent']}/edit", edit) as response:
        assert response.status == 400 and "does not compile" in error_beside(await response.text(), "cond-0")
    assert await exported(cli) == before and await audit_actions(panel) == audited


async def test_a_duplicate_name_is_refused_on_edit_too(panel, cli):
    await signed_in(panel, cli)
    await create(panel, "Urgent", **URGENT)
    await create(panel, "Other", conditions=[("to", "contains", "x")], actions=[("tag", "y")])
    ids, before = await rule_ids(panel), await exported(cli)
    token = await form_token(panel, "/admin/rules/new")
    data = rule_form(token, "URGENT", conditions=[("to", "contains", "x")], actions=[("tag", "y")])
    async with await post(panel, f"/admin/rules/{ids['Other']}/edit", data) as response:
        assert response.status == 400
        assert error_beside(await response.text(), "name") == 'another rule is named "URGENT"'
    assert await exported(cli) == before


# --- delete asks first; move ----------------------------------------------------------------------


async def test_delete_asks_first_and_only_the_post_deletes(panel, cli):
    await signed_in(panel, cli)
    await create(panel, "Urgent", **URGENT)
    await create(panel, "Other", conditions=[("to", "contains", "x")], actions=[("tag", "y")])
    ids, before = await rule_ids(panel), await exported(cli)
    confirm = await page(panel, f"/admin/rules/{ids['Urgent']}/delete")
    assert "Delete rule Urgent?" in confirm and 'method="post"' in confirm
    assert await exported(cli) == before  # GET changed nothing
    async with await post(panel, f"/admin/rules/{ids['Urgent']}/delete", {"csrf": csrf_of(confirm)}) as response:
        assert response.status == 303 and response.headers["Location"] == "../../rules"
    assert 'name = "Urgent"' not in (out := await exported(cli)) and 'name = "Other"' in out
    listing = await page(panel, "/admin/rules")
    assert "Rule Urgent deleted." in listing and "<td>1</td>\n<td>Other</td>" in listing  # positions stay dense
    assert ("admin alice", "rules.delete", "Urgent") in await audit_actions(panel)
    async with panel.get(f"/admin/rules/{ids['Urgent']}/edit") as response:
        assert response.status == 404


async def test_move_up_and_down_within_a_scope(panel, cli):
    await signed_in(panel, cli)
    for name in ("A", "B", "C"):
        await create(panel, name, conditions=[("to", "contains", name)], actions=[("tag", name)])
    ids = await rule_ids(panel)
    token = await form_token(panel, "/admin/rules")
    async with await post(panel, f"/admin/rules/{ids['C']}/move", {"csrf": token, "direction": "up"}) as response:
        assert response.status == 303 and response.headers["Location"] == "../../rules"
    assert re.findall(r'name = "(\w)"', await exported(cli)) == ["A", "C", "B"]
    assert "Rule C moved up: now #2." in await page(panel, "/admin/rules")
    async with await post(panel, f"/admin/rules/{ids['A']}/move", {"csrf": token, "direction": "down"}):
        pass
    assert re.findall(r'name = "(\w)"', await exported(cli)) == ["C", "A", "B"]
    async with await post(panel, f"/admin/rules/{ids['C']}/move", {"csrf": token, "direction": "up"}):
        pass  # already first: nothing changes, the list says why
    assert "Not moved: rule \"C\" is already the first of scope global." in html.unescape(
        await page(panel, "/admin/rules"))
    assert re.findall(r'name = "(\w)"', await exported(cli)) == ["C", "A", "B"]
    moves = [a for a in await audit_actions(panel) if a[1] == "rules.move"]
    assert moves == [("admin alice", "rules.move", "C"), ("admin alice", "rules.move", "A")]


# --- try --------------------------------------------------------------------------------------------


async def test_trying_a_pasted_message_shows_the_matching_rules_and_the_decision_and_writes_nothing(panel, cli):
    await signed_in(panel, cli)
    await create(panel, "Urgent", **URGENT)
    await create(panel, "Spam", conditions=[("subject", "contains", "viagra")], actions=[("delete", "")])
    ids = await rule_ids(panel)
    form = await page(panel, f"/admin/rules/try?rule={ids['Urgent']}")
    before = await table_counts(panel.app[DB])
    data = {"csrf": csrf_of(form), "raw": MAIL.decode(), "rule": str(ids["Urgent"])}
    async with await post(panel, "/admin/rules/try", data) as response:
        text = html.unescape(await response.text())
        assert response.status == 200
    assert "A new ticket would be created" in text
    assert "unknown sender carol@customer.example accepted (Support accepts unknown senders)" in text
    rows = dict(re.findall(r'<td>\d+</td>\n<td>(?:<strong>)?([^<]+)(?:</strong>)?</td>\n<td>[^\n]*</td>\n'
                           r'<td class="rule-result">(.*?)</td>', text, re.S))
    assert rows["Urgent"].startswith("<strong>matched</strong>") and rows["Spam"] == "no match"
    assert "<td><strong>Urgent</strong></td>" in text  # the rule whose "Try" was followed stands out
    assert 'rule: rule "Urgent" matched' in text and "Priority: urgent" in text and "Tags: vip" in text
    assert await table_counts(panel.app[DB]) == before

    spam = MAIL.replace(b"[URGENT] server down", b"cheap viagra")
    async with await post(panel, "/admin/rules/try", data | {"raw": spam.decode()}) as response:
        text = html.unescape(await response.text())
    assert "The message would be deleted" in text and "deleted by rule" in text
    assert await table_counts(panel.app[DB]) == before


async def test_trying_a_stored_message_uses_its_envelope_and_writes_nothing(panel, cli, pipeline):
    await signed_in(panel, cli)
    first = await pipeline.deliver(Delivery(MAIL, "carol@customer.example", "support@xyzhosting.com"))
    assert first.status == "ticket"
    stored_id = await panel.app[DB].run(lambda s: s.scalar(select(func.max(Base.metadata.tables["messages"].c.id))))
    await create(panel, "Urgent", **URGENT)
    before = await table_counts(panel.app[DB])
    form = await page(panel, f"/admin/rules/try?message={stored_id}")  # as another section links to it
    assert f'name="message" value="{stored_id}"' in form
    token = csrf_of(form)
    async with await post(panel, "/admin/rules/try", {"csrf": token, "message": str(stored_id)}) as response:
        text = html.unescape(await response.text())
        assert response.status == 200
    # Its sender was accepted as a customer when it arrived: now the chain knows her.
    assert "A new ticket would be created" in text and "known customer carol@customer.example" in text
    assert f"Stored message {stored_id}" in text and "envelope from carol@customer.example to support@xyzhosting.com" in text
    assert "<strong>matched</strong>" in text
    assert await table_counts(panel.app[DB]) == before
    async with await post(panel, "/admin/rules/try", {"csrf": token, "message": "999999"}) as response:
        assert response.status == 400
        assert error_beside(await response.text(), "message") == "there is no stored message 999999"
    async with await post(panel, "/admin/rules/try", {"csrf": token, "raw": " "}) as response:
        assert response.status == 400 and "paste a message" in error_beside(await response.text(), "raw")


# --- session, CSRF, escaping -------------------------------------------------------------------------


async def test_every_rules_page_needs_a_session_and_every_post_a_csrf_token(panel, cli):
    for path in ("/admin/rules", "/admin/rules/new", "/admin/rules/try", "/admin/rules/1/edit",
                 "/admin/rules/1/delete"):
        async with panel.get(path, allow_redirects=False) as response:
            assert response.status == 303 and "sign-in" in response.headers["Location"], path
    token = await form_token(panel, "/admin/sign-in")
    async with await post(panel, "/admin/rules/new", rule_form(token, "Urgent", **URGENT)) as response:
        assert response.status == 303 and "sign-in" in response.headers["Location"]
    await signed_in(panel, cli)
    await create(panel, "Urgent", **URGENT)
    ids, before = await rule_ids(panel), await exported(cli)
    rid = ids["Urgent"]
    for path, data in ((f"/admin/rules/{rid}/delete", {}), (f"/admin/rules/{rid}/move", {"direction": "down"}),
                       (f"/admin/rules/{rid}/edit", rule_form("x", "Changed", **URGENT)),
                       ("/admin/rules/new", rule_form("x", "New", **URGENT)), ("/admin/rules/try", {"raw": MAIL.decode()})):
        async with await post(panel, path, data | {"csrf": "forged"}) as response:
            assert response.status == 403, path
    assert await exported(cli) == before


async def test_hostile_rule_names_and_values_are_shown_escaped(panel, cli):
    await signed_in(panel, cli)
    await create(panel, HOSTILE, conditions=[("subject", "contains", HOSTILE)], actions=[("tag", HOSTILE)])
    rid = (await rule_ids(panel))[HOSTILE]
    token = await form_token(panel, "/admin/rules/try")
    pages = [await page(panel, path) for path in
             ("/admin/rules", f"/admin/rules/{rid}/edit", f"/admin/rules/{rid}/delete")]
    async with await post(panel, "/admin/rules/try", {"csrf": token, "raw": MAIL.decode() + HOSTILE}) as response:
        pages.append(await response.text())
    async with await post(panel, "/admin/rules/new", rule_form(token, HOSTILE, **URGENT)) as response:
        assert response.status == 400
        pages.append(await response.text())
    for text in pages:
        assert "<script>" not in text and "<img" not in text
        assert "&lt;script&gt;" in text


async def test_trying_shows_a_follow_up_a_challenge_and_a_loop_and_writes_nothing(panel, cli, pipeline):
    await signed_in(panel, cli)
    first = await pipeline.deliver(Delivery(MAIL, "carol@customer.example", "support@xyzhosting.com"))
    await create(panel, "Sales", conditions=[("subject", "contains", "quote")], actions=[("assign", "Sales")])
    before = await table_counts(panel.app[DB])
    token = await form_token(panel, "/admin/rules/try")
    reply = MAIL.replace(b"Message-ID: <try-1@", b"In-Reply-To: <try-1@customer.example>\r\nMessage-ID: <try-2@")
    quote = (b"From: Dave <dave@unknown.example>\r\nTo: support@xyzhosting.com\r\nSubject: a quote please\r\n"
             b"Message-ID: <try-3@unknown.example>\r\n\r\nHow much?\r\n")
    loop = MAIL.replace(b"From: Carol <carol@customer.example>", b"From: support@xyzhosting.com")
    expected = [
        (reply, ["The message would be added to a ticket", f"follow-up on ticket #{first.ticket} (In-Reply-To"]),
        # Assigned to Sales by the rule; Sales challenges unknown senders: nothing is mailed on a try.
        (quote, ["The message would be held, and a challenge mailed to the sender", "Department: Sales",
                 "Sales challenges unknown senders"]),
        (loop, ["The message would be ignored", "mail loop: From support@xyzhosting.com is one of our own",
                "The rules were not evaluated"]),
    ]
    for raw, shown in expected:
        async with await post(panel, "/admin/rules/try", {"csrf": token, "raw": raw.decode()}) as response:
            text = html.unescape(await response.text())
            assert response.status == 200
        for line in shown:
            assert line in text, line
    assert await table_counts(panel.app[DB]) == before


async def test_the_admin_functions_keep_positions_dense_and_find_rules_by_name(db):
    for name in ("A", "B", "C", "D"):
        await rules.create(db, {"name": name, "conditions": [{"field": "to", "op": "contains", "value": name}],
                                "actions": [{"action": "tag", "tag": name}]}, by="cli test")
    await rules.delete(db, (await rules.named(db, "b")).id, by="cli test")
    await rules.move(db, (await rules.named(db, "D")).id, "up", by="cli test")
    assert [(i.position, i.rule.name) for i in await rules.listed(db)] == [(0, "A"), (1, "D"), (2, "C")]
    with pytest.raises(AdminError, match='there is no rule named "B"'):
        await rules.named(db, "B")


async def test_the_whole_list_is_exported_and_imported_as_a_rules_file(panel, cli):
    """As `rules export` and `rules import`: the download reads back to the same rules; a wrong file,
    typed or uploaded, changes nothing and says why."""
    await signed_in(panel, cli)
    await create(panel, "Urgent", conditions=[("subject", "contains", "urgent")], actions=[("priority", "high")])
    await create(panel, "Sales mail", conditions=[("to", "contains", "sales@")], actions=[("assign", "Sales")])
    async with panel.get("/admin/rules/export") as response:
        assert response.status == 200 and response.headers["Content-Disposition"].startswith("attachment;")
        downloaded = await response.text()
    assert downloaded == await exported(cli)

    token = await form_token(panel, "/admin/rules/import")
    bad = downloaded.replace('department = "Sales"', 'department = "Nowhere"')
    async with await post(panel, "/admin/rules/import", {"csrf": token, "text": bad}) as response:
        text = await response.text()
        assert response.status == 400 and "assigns unknown department &#34;Nowhere&#34;" in text
    assert await exported(cli) == downloaded  # nothing changed

    reordered = downloaded.split("[[rule]]")
    swapped = "[[rule]]".join([reordered[0], reordered[2].rstrip("\n") + "\n\n", reordered[1].rstrip("\n") + "\n"])
    form = aiohttp.FormData({"csrf": token})
    form.add_field("file", swapped.encode(), filename="rules.toml", content_type="text/plain")
    async with panel.post("/admin/rules/import", data=form, allow_redirects=False) as response:
        assert response.status == 303, await response.text()
    code, out, _ = await cli("rules", "list", "--json")
    assert [r["name"] for r in json.loads(out)] == ["Sales mail", "Urgent"]
    assert (await audit_actions(panel))[-1] == ("admin alice", "rules.replace", "2 rules")


async def test_create_new_rule_from_an_imap_account_starts_in_its_scope(panel, cli):
    """The seed's "Create New Rule" for an account's processing rules: the account's row links to the form."""
    from bridge.accounts import Secret
    from ticketmail.admin import imap

    await signed_in(panel, cli)
    new = await imap.prepare(panel.app[DB], "support-inbox", email="support@xyzhosting.com", server="imap.example.net",
                             warn=[].append)
    await imap.add(panel.app[DB], panel.app[PANEL].bridge_config, new, Secret("pw"), check=False, by="test")
    accounts = await page(panel, "/admin/imap-accounts")
    link = html.unescape(re.search(r'<a href="([^"]*rules/new\?scope=[^"]*)">Create New Rule</a>', accounts).group(1))
    assert link == "rules/new?scope=account%3Asupport-inbox"
    form = await page(panel, f"/admin/{link}")
    assert 'name="scope" value="account:support-inbox"' in form
