"""Processing rules: the whole list is replaced at once (all or nothing) and read back in order."""

from __future__ import annotations

from pathlib import Path

from ingest.rules import Rule, RuleError, parse_rules, rule_to_data, rules_from_data, rules_to_toml
from storage import store
from ticketmail.admin import audit
from ticketmail.admin.errors import AdminError


async def replace(db, text: str, *, by: str) -> list[Rule]:
    """Replace every rule with those of a rules file's TOML `text`; nothing changes if any is wrong."""
    try:
        rules = parse_rules(text)
    except RuleError as e:
        raise AdminError(str(e)) from None

    def store_rules(s):
        for rule in rules:
            for action in rule.actions:
                if action.action == "assign" and not store.department_by_name(s, action.value):
                    raise AdminError(f'rule "{rule.name}": assigns unknown department "{action.value}"')
        store.replace_rules(s, [(r.name, rule_to_data(r)) for r in rules])
        audit.record(s, by, "rules.replace", f"{len(rules)} rules", ", ".join(r.name for r in rules))

    await db.run(store_rules, write=True)
    return rules


async def import_file(db, path: str, *, by: str) -> list[Rule]:
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise AdminError(f"cannot read {path}: {e}") from None
    return await replace(db, text, by=by)


async def list_all(db) -> list[Rule]:
    try:
        return rules_from_data([r.definition for r in await db.run(store.rules)])
    except RuleError as e:
        raise AdminError(str(e)) from None


async def export(db) -> str:
    """The rules as a rules file that `replace` reads back to the same rules."""
    return rules_to_toml(await list_all(db))
