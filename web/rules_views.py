"""The panel's processing rules: listed per scope in order; create, edit, delete, reorder; try a rule.

Every change calls ticketmail/admin/rules.py, which checks a rule as `rules import` does; its AdminError
names the field at fault ("condition-2": the rule's second condition), which the form shows beside the
row it came from. Trying runs the decision chain on a pasted or stored message and writes nothing.
"""

from __future__ import annotations

import re

from aiohttp import web

from ingest.rules import ACTIONS, OPERATORS, Rule, value_key
from ingest.rules import FIELDS as RULE_FIELDS
from ticketmail.admin import departments, rules
from ticketmail.admin.errors import AdminError
from web.keys import DB, SITE
from web.panel import by, link, notify, render, shown_once

EMPTY_ROWS = 3  # blank condition and action rows the form offers below the rule's own
MAX_ROWS = 50
_NUMBER = re.compile(r"[0-9]{1,9}")


# --- the list ---------------------------------------------------------------------------------


def _groups(listed: list[rules.Listed]) -> list[tuple[str, list[rules.Listed]]]:
    """The rules per scope, each in evaluation order: global first, then departments, then accounts."""
    groups: dict[str, list[rules.Listed]] = {}
    for item in listed:
        groups.setdefault(item.rule.scope, []).append(item)
    order = sorted(groups, key=lambda scope: (scope != "global", not scope.startswith("department:"),
                                              scope.casefold()))
    return [(scope, groups[scope]) for scope in order]


async def rule_list(request: web.Request) -> web.Response:
    listed = await rules.listed(request.app[DB])
    return render(request, "rules.html", groups=_groups(listed), count=len(listed), notices=(await shown_once(request))[0])


# --- the form: a rule as form values, form values as a [[rule]] table ---------------------------


def _values_of(rule: Rule | None) -> dict:
    """The form's values for `rule` (None: a new rule), with blank rows to add conditions and actions."""
    conditions = [{"field": c.field, "op": c.op, "value": c.value, "negate": c.negate, "case": c.case}
                  for c in rule.conditions] if rule else []
    actions = [{"action": a.action, "value": a.value or ""} for a in rule.actions] if rule else []
    blank_condition = {"field": "", "op": "contains", "value": "", "negate": False, "case": False}
    return {"name": rule.name if rule else "", "scope": rule.scope if rule else "global",
            "match": rule.match if rule else "all", "conditions": conditions + [blank_condition] * EMPTY_ROWS,
            "actions": actions + [{"action": "", "value": ""}] * EMPTY_ROWS}


def _posted(form) -> dict:
    """The form's values as posted, every row kept (blank ones too: an error names its row by number)."""
    conditions, actions = [], []
    for i in range(MAX_ROWS):
        if f"cond-{i}-op" not in form:
            break
        conditions.append({"field": str(form.get(f"cond-{i}-field", "")).strip(), "op": str(form[f"cond-{i}-op"]),
                           "value": str(form.get(f"cond-{i}-value", "")),
                           "negate": form.get(f"cond-{i}-negate") == "on", "case": form.get(f"cond-{i}-case") == "on"})
    for i in range(MAX_ROWS):
        if f"act-{i}-action" not in form:
            break
        actions.append({"action": str(form[f"act-{i}-action"]), "value": str(form.get(f"act-{i}-value", "")).strip()})
    return {"name": str(form.get("name", "")).strip(), "scope": str(form.get("scope", "")).strip() or "global",
            "match": str(form.get("match", "all")), "conditions": conditions, "actions": actions}


def _blank_condition(c: dict) -> bool:
    return not c["field"] and not c["value"] and not c["negate"] and not c["case"]


def _blank_action(a: dict) -> bool:
    return not a["action"] and not a["value"]


class _Rows:
    """Which form row each condition and action of the table came from, to put an error beside it."""

    def __init__(self):
        self.conditions: list[int] = []
        self.actions: list[int] = []


def _table(values: dict, rows: _Rows) -> dict:
    """The [[rule]] table of the posted values, as a rules file would hold it; blank rows left out."""
    conditions, actions = [], []
    for i, c in enumerate(values["conditions"]):
        if _blank_condition(c):
            continue
        rows.conditions.append(i)
        table = {"field": c["field"], "op": c["op"], "value": c["value"]}
        conditions.append(table | ({"negate": True} if c["negate"] else {}) | ({"case": True} if c["case"] else {}))
    for i, a in enumerate(values["actions"]):
        if _blank_action(a):
            continue
        rows.actions.append(i)
        if not a["action"]:
            raise AdminError("choose an action for this value", field=f"act-{i}")
        key = value_key(a["action"])
        if key is None and a["action"] in ACTIONS and a["value"]:
            raise AdminError(f"{a['action']} takes no value", field=f"act-{i}")
        actions.append({"action": a["action"]} | ({key: a["value"]} if key else {}))
    return {"name": values["name"], "match": values["match"], "scope": values["scope"],
            "conditions": conditions, "actions": actions}


def _field(error: AdminError, rows: _Rows) -> str:
    """The form field an AdminError of the admin layer sits beside ("form": above the form)."""
    kind, _, number = (error.field or "").partition("-")
    if kind in ("condition", "action") and number.isdigit():
        index = int(number) - 1
        listed = rows.conditions if kind == "condition" else rows.actions
        if index < len(listed):
            return f"{'cond' if kind == 'condition' else 'act'}-{listed[index]}"
    if error.field in ("name", "scope", "match", "conditions", "actions") or (error.field or "").startswith(
            ("cond-", "act-")):
        return error.field
    return "form"


async def _form(request: web.Request, values: dict, errors: dict, item: rules.Listed | None = None,
                status: int = 200) -> web.Response:
    listed = await departments.list_all(request.app[DB])
    return render(request, "rules_form.html", status=status, values=values, errors=errors,
                  item=item, departments=[d.name for d in listed], fields=RULE_FIELDS, operators=OPERATORS,
                  actions=ACTIONS)


async def _item(request: web.Request) -> rules.Listed:
    try:
        return await rules.get(request.app[DB], int(request.match_info["id"]))
    except AdminError:
        raise web.HTTPNotFound() from None


async def new_page(request: web.Request) -> web.Response:
    """A blank rule; ?scope=account:NAME (from an IMAP account's row) or department:NAME starts it there."""
    values = _values_of(None)
    values["scope"] = request.query.get("scope", "").strip()[:300] or values["scope"]
    return await _form(request, values, {})


async def edit_page(request: web.Request) -> web.Response:
    item = await _item(request)
    return await _form(request, _values_of(item.rule), {}, item)


async def _save(request: web.Request, item: rules.Listed | None) -> web.Response:
    values, rows = _posted(await request.post()), _Rows()
    try:
        table = _table(values, rows)
        if item is None:
            saved = await rules.create(request.app[DB], table, by=by(request))
        else:
            saved = await rules.update(request.app[DB], item.id, table, by=by(request))
    except AdminError as e:
        return await _form(request, values, {_field(e, rows): str(e)}, item, status=400)
    done = "added" if item is None else "saved"
    await notify(request, [f"Rule {saved.rule.name} {done} (#{saved.position + 1}): {saved.description}"])
    raise web.HTTPSeeOther(location=link(request, "rules"))


async def create(request: web.Request) -> web.Response:
    return await _save(request, None)


async def edit(request: web.Request) -> web.Response:
    return await _save(request, await _item(request))


# --- delete (asks first) and move ---------------------------------------------------------------


async def delete_page(request: web.Request) -> web.Response:
    return render(request, "rules_delete.html", item=await _item(request))


async def delete(request: web.Request) -> web.Response:
    item = await _item(request)
    name = await rules.delete(request.app[DB], item.id, by=by(request))
    await notify(request, [f"Rule {name} deleted."])
    raise web.HTTPSeeOther(location=link(request, "rules"))


async def move(request: web.Request) -> web.Response:
    item = await _item(request)
    direction = str((await request.post()).get("direction", ""))
    try:
        moved = await rules.move(request.app[DB], item.id, direction, by=by(request))
        await notify(request, [f"Rule {moved.rule.name} moved {direction}: now #{moved.position + 1}."])
    except AdminError as e:
        await notify(request, [f"Not moved: {e}."])
    raise web.HTTPSeeOther(location=link(request, "rules"))


# --- try: what the decision chain would do, nothing written ---------------------------------------

TRY_FIELDS = ("message", "sender", "recipient", "account", "department")


async def _try_form(request: web.Request, values: dict, errors: dict, trial=None, status: int = 200):
    db = request.app[DB]
    listed = await departments.list_all(db)
    chosen = values.get("rule", "")
    return render(request, "rules_try.html", status=status, values=values, errors=errors, trial=trial,
                  departments=[d.name for d in listed], chosen=int(chosen) if _NUMBER.fullmatch(chosen) else None,
                  count=len(await rules.listed(db)))


async def try_page(request: web.Request) -> web.Response:
    """?rule=ID: the rule whose "Try" was followed (it stands out in the result); ?message=ID: a stored
    message to try (other sections can link here)."""
    message = request.query.get("message", "")
    values = dict.fromkeys(("raw",) + TRY_FIELDS, "") | {"rule": request.query.get("rule", ""),
                                                         "message": message if _NUMBER.fullmatch(message) else ""}
    return await _try_form(request, values, {})


async def try_rules(request: web.Request) -> web.Response:
    """A POST because it reads a pasted message; it changes nothing, so it answers with the page itself."""
    form = await request.post()
    values = {k: str(form.get(k, "")).strip() for k in TRY_FIELDS + ("rule",)} | {"raw": str(form.get("raw", ""))}
    if values["message"] and not _NUMBER.fullmatch(values["message"]):
        return await _try_form(request, values, {"message": "A stored message is given by its number, e.g. 42."},
                               status=400)
    if values["message"] and values["raw"].strip():
        return await _try_form(request, values, {"message": "Paste a message or give a stored one, not both."},
                               status=400)
    try:
        trial = await rules.trial(
            request.app[DB], values["raw"].encode("utf-8", "surrogateescape"),
            message_id=int(values["message"]) if values["message"] else None,
            sender=values["sender"] or None, recipient=values["recipient"] or None,
            account=values["account"] or None, department=values["department"] or None,
            ticket_prefix=request.app[SITE].ticket_prefix, settings=request.app[SITE].challenge)
    except AdminError as e:
        field = e.field if e.field in TRY_FIELDS + ("raw",) else "form"
        return await _try_form(request, values, {field: str(e)}, status=400)
    return await _try_form(request, values, {}, trial)


# --- the whole list as a rules file, as `ticketmail rules export|import` ---


async def export(request: web.Request) -> web.Response:
    """The rules as the TOML file `rules import` reads back, as a download."""
    text = await rules.export(request.app[DB])
    return web.Response(text=text, content_type="text/plain", charset="utf-8",
                        headers={"Content-Disposition": 'attachment; filename="ticketmail-rules.toml"'})


async def import_page(request: web.Request, text: str = "", error: str = "", status: int = 200) -> web.Response:
    return render(request, "rules_import.html", status=status, text=text, error=error)


async def import_file(request: web.Request) -> web.Response:
    """Replace every rule with those of the posted file; nothing changes if any of them is wrong."""
    form = await request.post()
    upload = form.get("file")
    text = upload.file.read().decode("utf-8", "replace") if isinstance(upload, web.FileField) else ""
    text = text or str(form.get("text", ""))
    try:
        imported = await rules.replace(request.app[DB], text, by=by(request))
    except AdminError as e:
        return await import_page(request, text, str(e), status=400)
    await notify(request, [f"{len(imported)} rules imported; they replace the rules there were."])
    raise web.HTTPSeeOther(location=link(request, "rules"))


def add_routes(router: web.UrlDispatcher) -> None:
    router.add_get("/admin/rules", rule_list)
    router.add_get("/admin/rules/export", export)
    router.add_get("/admin/rules/import", import_page)
    router.add_post("/admin/rules/import", import_file)
    router.add_get("/admin/rules/new", new_page)
    router.add_post("/admin/rules/new", create)
    router.add_get("/admin/rules/try", try_page)
    router.add_post("/admin/rules/try", try_rules)
    router.add_get(r"/admin/rules/{id:\d+}/edit", edit_page)
    router.add_post(r"/admin/rules/{id:\d+}/edit", edit)
    router.add_get(r"/admin/rules/{id:\d+}/delete", delete_page)
    router.add_post(r"/admin/rules/{id:\d+}/delete", delete)
    router.add_post(r"/admin/rules/{id:\d+}/move", move)
