"""The user's processing rules: import, validate, export and evaluate.

The rules file format is fixed in DESIGN.md ("Rules file"). Pure: no I/O; the CLI reads the file and
the pipeline builds the `Facts` and records the `Verdict.hits` in the message's event log.

Regexes are trusted input from the helpdesk's own administrators: a pathological pattern (e.g.
nested quantifiers like ``(a+)+$``) can make one evaluation slow, so review imported regexes as code.
"""

from __future__ import annotations

import dataclasses
import json
import re
import tomllib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, NoReturn

import tomli_w

FIELDS = ("from", "to", "cc", "subject", "body", "recipient", "sender", "account")
HEADER_FIELD = "header:"
OPERATORS = ("contains", "equals", "starts_with", "ends_with", "regex")
ACTIONS = ("assign", "priority", "tag", "delete", "trust", "stop")
PRIORITIES = ("low", "normal", "high", "urgent")
MATCHES = ("all", "any")
SCOPE_KINDS = ("department", "account")

# The key that carries `Action.value` in the file; actions not listed here take no value.
_VALUE_KEY = {"assign": "department", "priority": "priority", "tag": "tag"}
_RULE_KEYS = ("name", "conditions", "actions", "match", "scope")
_CONDITION_KEYS = ("field", "op", "value", "negate", "case")
# RFC 5322 field name: printable US-ASCII except the colon.
_HEADER_NAME = re.compile(r"[!-9;-~]+")
# Lone surrogates cannot be written as UTF-8 nor as a TOML escape, so they could never be exported.
_SURROGATE = re.compile(r"[\ud800-\udfff]")


class RuleError(ValueError):
    """Rules that cannot be imported; `problems` holds one line per wrong rule, `str()` joins them."""

    def __init__(self, *problems: str):
        super().__init__("; ".join(problems))
        self.problems = list(problems)


@dataclass(frozen=True)
class Condition:
    """One test of one message field; see DESIGN.md for the fields and operators."""

    field: str
    op: str
    value: str
    negate: bool = False
    case: bool = False


@dataclass(frozen=True)
class Action:
    """One thing a matching rule does; `value` is the department, priority or tag, else None."""

    action: str
    value: str | None = None


@dataclass(frozen=True)
class Rule:
    """A named rule: when its conditions hold (all or any) within its scope, its actions apply."""

    name: str
    conditions: tuple[Condition, ...]
    actions: tuple[Action, ...]
    match: str = "all"
    scope: str = "global"


# --- import and validation -------------------------------------------------------------------


class _Invalid(Exception):
    """One problem found while validating; re-raised with more context on the way out."""


def _fail(problem: str) -> NoReturn:
    raise _Invalid(problem)


def _quote(text: str) -> str:
    """Quote `text` for a message or log line: one line, quotes and control characters escaped."""
    return json.dumps(text, ensure_ascii=False).encode("utf-8", "backslashreplace").decode("utf-8")


def _type_name(value: Any) -> str:
    """The TOML word for the type of `value`, so messages speak the file's language."""
    names = {bool: "boolean", int: "integer", float: "float", str: "string", list: "array",
             dict: "table", type(None): "null"}
    return names.get(type(value), type(value).__name__)


def _check_keys(table: dict, required: tuple[str, ...], allowed: tuple[str, ...]) -> None:
    """Refuse unknown keys (first: a typo also shows up as a missing key) and missing ones."""
    for key in table:
        if key not in allowed:
            _fail(f"unknown key {_quote(str(key))} (expected {', '.join(allowed)})")
    for key in required:
        if key not in table:
            _fail(f"missing key {_quote(key)}")


def _get(table: dict, key: str, kind: type, default: Any = None) -> Any:
    """`table[key]` (or `default`) if it has exactly type `kind` (a bool is not an integer)."""
    value = table.get(key, default)
    if type(value) is not kind:
        _fail(f"{_quote(key)} must be {_type_name(kind())}, not {_type_name(value)}")
    if kind is str and _SURROGATE.search(value):
        _fail(f"{_quote(key)} contains a lone surrogate")
    return value


def _check_field(name: str) -> None:
    """Refuse a field the engine cannot look at."""
    if name in FIELDS:
        return
    if name.startswith(HEADER_FIELD) and _HEADER_NAME.fullmatch(name[len(HEADER_FIELD):]):
        return
    _fail(f"unknown field {_quote(name)} (expected one of {', '.join(FIELDS)}, header:<Name>)")


def _check_scope(scope: str) -> None:
    """Refuse a scope other than global, department:NAME or account:NAME."""
    kind, colon, name = scope.partition(":")
    if scope == "global" or (colon and kind in SCOPE_KINDS and name.strip()):
        return
    _fail(f"bad scope {_quote(scope)} (expected global, department:NAME or account:NAME)")


def _compile(condition: Condition) -> re.Pattern[str]:
    """The regex of a `regex` condition, compiled with the flags evaluation uses."""
    return re.compile(condition.value, 0 if condition.case else re.IGNORECASE)


def _condition(table: Any) -> Condition:
    """One validated condition from its table."""
    if not isinstance(table, dict):
        _fail(f"must be a table, not {_type_name(table)}")
    _check_keys(table, _CONDITION_KEYS[:3], _CONDITION_KEYS)
    condition = Condition(
        field=_get(table, "field", str),
        op=_get(table, "op", str),
        value=_get(table, "value", str),
        negate=_get(table, "negate", bool, False),
        case=_get(table, "case", bool, False),
    )
    _check_field(condition.field)
    if condition.op not in OPERATORS:
        _fail(f"unknown operator {_quote(condition.op)} (expected one of {', '.join(OPERATORS)})")
    if condition.op == "regex":
        try:
            _compile(condition)
        except re.error as error:
            _fail(f"regex {_quote(condition.value)} does not compile: {error}")
    return condition


def _action(table: Any) -> Action:
    """One validated action from its table."""
    if not isinstance(table, dict):
        _fail(f"must be a table, not {_type_name(table)}")
    if "action" not in table:
        _fail('missing key "action"')
    kind = _get(table, "action", str)
    if kind not in ACTIONS:
        _fail(f"unknown action {_quote(kind)} (expected one of {', '.join(ACTIONS)})")
    key = _VALUE_KEY.get(kind)
    keys = ("action", key) if key else ("action",)
    # Name the action: "unknown key" alone would not say why "department" is refused on a tag.
    try:
        _check_keys(table, keys, keys)
    except _Invalid as error:
        _fail(f"{kind}: {error}")
    if key is None:
        return Action(kind)
    value = _get(table, key, str)
    if kind == "priority" and value not in PRIORITIES:
        _fail(f"bad priority {_quote(value)} (expected one of {', '.join(PRIORITIES)})")
    if not value.strip():
        _fail(f"{kind}: empty {key}")
    return Action(kind, value)


def _each(items: list, what: str, parse: Callable[[Any], Any]) -> tuple:
    """Parse every item of a non-empty list, naming the item in a problem: 'condition 2: ...'."""
    if not items:
        _fail(f"no {what}s")
    parsed = []
    for number, item in enumerate(items, 1):
        try:
            parsed.append(parse(item))
        except _Invalid as error:
            raise _Invalid(f"{what} {number}: {error}") from None
    return tuple(parsed)


def _rule(table: Any, number: int) -> Rule:
    """One validated rule; problems are prefixed with the rule's name, or its position without one."""
    label = f"rule #{number}"
    if isinstance(table, dict) and isinstance(table.get("name"), str) and table["name"].strip():
        label = f"rule {_quote(table['name'])}"
    try:
        if not isinstance(table, dict):
            _fail(f"must be a table, not {_type_name(table)}")
        _check_keys(table, _RULE_KEYS[:3], _RULE_KEYS)
        name = _get(table, "name", str)
        if not name.strip():
            _fail("empty name")
        match = _get(table, "match", str, "all")
        if match not in MATCHES:
            _fail(f"bad match {_quote(match)} (expected all or any)")
        scope = _get(table, "scope", str, "global")
        _check_scope(scope)
        conditions = _each(_get(table, "conditions", list), "condition", _condition)
        actions = _each(_get(table, "actions", list), "action", _action)
    except _Invalid as error:
        raise _Invalid(f"{label}: {error}") from None
    return Rule(name, conditions, actions, match, scope)


def _duplicates(numbered: list[tuple[int, Rule]]) -> list[str]:
    """One problem per rule whose name repeats an earlier one (compared case-insensitively)."""
    first: dict[str, int] = {}
    problems = []
    for number, rule in numbered:
        key = rule.name.casefold()
        if key in first:
            problems.append(f"rule {_quote(rule.name)}: duplicate name (rules #{first[key]} and #{number})")
        else:
            first[key] = number
    return problems


def rules_from_data(data: list[dict]) -> list[Rule]:
    """Validated rules from loaded `[[rule]]` tables, in order; RuleError lists every wrong rule."""
    if not isinstance(data, list):
        raise RuleError(f"rules must be an array of tables, not {_type_name(data)}")
    numbered, problems = [], []
    for number, table in enumerate(data, 1):
        try:
            numbered.append((number, _rule(table, number)))
        except _Invalid as error:
            problems.append(str(error))
    problems += _duplicates(numbered)
    if problems:
        raise RuleError(*problems)
    return [rule for _, rule in numbered]


def parse_rules(text: str) -> list[Rule]:
    """Validated rules from a rules file's TOML text, all or nothing; RuleError otherwise."""
    try:
        document = tomllib.loads(text)
    except tomllib.TOMLDecodeError as error:
        # tomllib's message already ends with "(at line N, column M)".
        raise RuleError(f"rules file: TOML syntax error: {error}") from None
    unknown = [key for key in document if key != "rule"]
    if unknown:
        raise RuleError(f"rules file: unknown top-level key {_quote(unknown[0])} (expected [[rule]] tables)")
    tables = document.get("rule", [])
    if not isinstance(tables, list):
        raise RuleError(f'rules file: "rule" must be an array of tables ([[rule]]), not {_type_name(tables)}')
    return rules_from_data(tables)


# --- export ----------------------------------------------------------------------------------


def value_key(action: str) -> str | None:
    """The key of an action's table that carries its value ("department" for assign); None if it takes none."""
    return _VALUE_KEY.get(action)


def rule_to_data(rule: Rule) -> dict:
    """The `[[rule]]` table of `rule`, defaults omitted; `rules_from_data` inverts it."""
    data: dict[str, Any] = {"name": rule.name}
    if rule.match != "all":
        data["match"] = rule.match
    if rule.scope != "global":
        data["scope"] = rule.scope
    data["conditions"] = [_condition_to_data(c) for c in rule.conditions]
    data["actions"] = [_action_to_data(a) for a in rule.actions]
    return data


def _condition_to_data(condition: Condition) -> dict:
    """The table of one condition, defaults omitted."""
    data: dict[str, Any] = {"field": condition.field, "op": condition.op, "value": condition.value}
    if condition.negate:
        data["negate"] = True
    if condition.case:
        data["case"] = True
    return data


def _action_to_data(action: Action) -> dict:
    """The table of one action."""
    key = _VALUE_KEY.get(action.action)
    return {"action": action.action, key: action.value} if key else {"action": action.action}


def rules_to_toml(rules: list[Rule]) -> str:
    """A rules file holding `rules` in order; `parse_rules` of it gives them back."""
    return tomli_w.dumps({"rule": [rule_to_data(rule) for rule in rules]}) if rules else ""


# --- explanation -----------------------------------------------------------------------------


def _explain_condition(condition: Condition) -> str:
    """'subject contains "[Spam]"', with 'not' and '(case-sensitive)' when they apply."""
    op = f"not {condition.op}" if condition.negate else condition.op
    case = " (case-sensitive)" if condition.case else ""
    return f"{condition.field} {op} {_quote(condition.value)}{case}"


def _explain_action(action: Action) -> str:
    """'assign "Support"', 'priority high', 'tag "vip"', 'delete', ..."""
    if action.action == "priority":
        return f"priority {action.value}"
    if action.value is None:
        return action.action
    return f"{action.action} {_quote(action.value)}"


def explain(rule: Rule) -> str:
    """One line saying what `rule` does: '[department "Sales"] subject contains "x" -> tag "y"'."""
    joiner = " and " if rule.match == "all" else " or "
    text = joiner.join(_explain_condition(c) for c in rule.conditions)
    text += " -> " + ", ".join(_explain_action(a) for a in rule.actions)
    if rule.scope != "global":
        kind, _, name = rule.scope.partition(":")
        text = f"[{kind} {_quote(name)}] {text}"
    return text


def hit_text(rule: Rule) -> str:
    """The event-log line for a rule that matched: 'rule "x" matched: <explain(rule)>'."""
    return f"rule {_quote(rule.name)} matched: {explain(rule)}"


# --- evaluation ------------------------------------------------------------------------------


@dataclass
class Facts:
    """What a rule can look at; built by the pipeline. Header names are lowercased keys."""

    from_: list[tuple[str, str]] = dataclasses.field(default_factory=list)  # (display name, addr)
    to: list[tuple[str, str]] = dataclasses.field(default_factory=list)
    cc: list[tuple[str, str]] = dataclasses.field(default_factory=list)
    subject: str = ""
    body: str = ""
    recipient: str = ""  # envelope recipient
    sender: str = ""  # envelope sender, "" for the null sender
    account: str = ""  # IMAP account name, "" for LMTP
    headers: dict[str, list[str]] = dataclasses.field(default_factory=dict)  # lowercased name -> values


@dataclass
class Verdict:
    """What the rules decided for one message, and which rules matched (for the event log)."""

    department: str | None  # last assign wins; starts as the department passed in
    priority: str | None
    tags: list[str]  # in order, no duplicates
    delete: bool
    trust: bool
    hits: list[str]  # one hit_text() per matched rule


def _address_forms(pairs: list[tuple[str, str]]) -> list[str]:
    """Each address both bare and as 'Name <addr>', so rules can be written either way."""
    forms = []
    for name, addr in pairs:
        forms += [addr, f"{name} <{addr}>" if name else f"<{addr}>"]
    return forms


def field_values(facts: Facts, name: str) -> list[str]:
    """The texts a condition on field `name` tests; it holds if any of them matches."""
    if name in ("from", "to", "cc"):
        return _address_forms(facts.from_ if name == "from" else getattr(facts, name))
    if name.startswith(HEADER_FIELD):
        return facts.headers.get(name[len(HEADER_FIELD):].lower(), [])
    return [getattr(facts, name)]


class _View:
    """One message's field values, each looked up and casefolded at most once per evaluation."""

    def __init__(self, facts: Facts):
        self._facts = facts
        self._cache: dict[tuple[str, bool], list[str]] = {}

    def values(self, name: str, folded: bool) -> list[str]:
        key = (name, folded)
        if key not in self._cache:
            self._cache[key] = (
                [text.casefold() for text in self.values(name, False)] if folded
                else field_values(self._facts, name)
            )
        return self._cache[key]


def _tester(condition: Condition) -> Callable[[str], bool]:
    """A test of one text; for case-insensitive non-regex operators the text must be casefolded."""
    if condition.op == "regex":
        pattern = _compile(condition)
        return lambda text: pattern.search(text) is not None
    needle = condition.value if condition.case else condition.value.casefold()
    return {
        "contains": lambda text: needle in text,
        "equals": lambda text: text == needle,
        "starts_with": lambda text: text.startswith(needle),
        "ends_with": lambda text: text.endswith(needle),
    }[condition.op]


@dataclass(frozen=True)
class _CompiledCondition:
    field: str
    test: Callable[[str], bool]
    folded: bool  # feed the test casefolded text
    negate: bool

    def holds(self, view: _View) -> bool:
        matched = any(self.test(text) for text in view.values(self.field, self.folded))
        return matched != self.negate


@dataclass(frozen=True)
class _CompiledRule:
    rule: Rule
    conditions: tuple[_CompiledCondition, ...]
    scope_kind: str  # "global", "department" or "account"
    scope_name: str  # casefolded
    hit: str

    def applies(self, department: str | None, account: str) -> bool:
        """Whether the rule's scope covers a message now in `department`, from `account`."""
        if self.scope_kind == "department":
            return department is not None and department.strip().casefold() == self.scope_name
        if self.scope_kind == "account":
            return account.strip().casefold() == self.scope_name
        return True

    def matches(self, view: _View) -> bool:
        combine = all if self.rule.match == "all" else any
        return combine(condition.holds(view) for condition in self.conditions)


def _compile_rule(rule: Rule) -> _CompiledRule:
    """Everything evaluation needs, computed once: testers, folded needles, scope, hit text."""
    conditions = tuple(
        _CompiledCondition(c.field, _tester(c), folded=not c.case and c.op != "regex", negate=c.negate)
        for c in rule.conditions
    )
    kind, _, name = rule.scope.partition(":")
    return _CompiledRule(rule, conditions, kind, name.strip().casefold(), hit_text(rule))


def _apply(actions: tuple[Action, ...], verdict: Verdict) -> bool:
    """Apply a matched rule's actions in order; True when the evaluation ends (delete or stop)."""
    end = False
    for action in actions:
        if action.action == "assign":
            verdict.department = action.value
        elif action.action == "priority":
            verdict.priority = action.value
        elif action.action == "tag":
            if action.value not in verdict.tags:
                verdict.tags.append(action.value)
        elif action.action == "delete":
            verdict.delete = end = True
        elif action.action == "trust":
            verdict.trust = True
        elif action.action == "stop":
            end = True
    return end


class RuleSet:
    """Validated, compiled rules, evaluated in order against one message at a time."""

    def __init__(self, rules: list[Rule]):
        # Re-validate: a Rule built by hand (not by parse_rules) must not fail mid-evaluation.
        self.rules = rules_from_data([rule_to_data(rule) for rule in rules])
        self._compiled = [_compile_rule(rule) for rule in self.rules]

    def evaluate(self, facts: Facts, *, department: str | None) -> Verdict:
        """Run the rules in order; a matched rule's actions all apply, then delete or stop ends it."""
        verdict = Verdict(department, priority=None, tags=[], delete=False, trust=False, hits=[])
        view = _View(facts)
        for rule in self._compiled:
            # Scope sees assigns made by earlier rules in this same evaluation.
            if not rule.applies(verdict.department, facts.account) or not rule.matches(view):
                continue
            verdict.hits.append(rule.hit)
            if _apply(rule.rule.actions, verdict):
                break
        return verdict
