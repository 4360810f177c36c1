"""Tests of the processing rules engine: import, validation, export and evaluation."""

import re

import pytest
from hypothesis import given, settings, strategies as st

from ingest.rules import (
    Action,
    Condition,
    Facts,
    Rule,
    RuleError,
    RuleSet,
    explain,
    parse_rules,
    rule_to_data,
    rules_from_data,
    rules_to_toml,
)

SEED = """
[[rule]]
name = "support-by-address"
conditions = [{ field = "to", op = "contains", value = "support@xyzhosting.com" }]
actions = [{ action = "assign", department = "Support" }]

[[rule]]
name = "drop-tagged-spam"
conditions = [{ field = "subject", op = "contains", value = "[Spam]" }]
actions = [{ action = "delete" }]
"""


def rule(*conditions, actions=(Action("tag", "hit"),), name="r", match="all", scope="global"):
    return Rule(name, tuple(conditions), tuple(actions), match, scope)


def evaluate(rules, facts, department=None):
    return RuleSet(list(rules)).evaluate(facts, department=department)


def matches(condition, facts):
    """Whether a single-condition rule matches `facts`."""
    return bool(evaluate([rule(condition)], facts).hits)


# --- the seed examples from DESIGN.md ------------------------------------------------------------


def test_seed_assigns_support_when_to_is_support_address():
    facts = Facts(to=[("Support", "support@xyzhosting.com")], subject="Server down")
    verdict = evaluate(parse_rules(SEED), facts)
    assert verdict.department == "Support"
    assert not verdict.delete
    assert verdict.hits == [
        'rule "support-by-address" matched: to contains "support@xyzhosting.com" -> assign "Support"'
    ]


def test_seed_deletes_when_subject_includes_spam_tag():
    facts = Facts(to=[("", "sales@xyzhosting.com")], subject="[SPAM] cheap pills")
    verdict = evaluate(parse_rules(SEED), facts, department="Sales")
    assert verdict.delete
    assert verdict.department == "Sales"
    assert verdict.hits == ['rule "drop-tagged-spam" matched: subject contains "[Spam]" -> delete']


def test_seed_leaves_other_mail_alone():
    verdict = evaluate(parse_rules(SEED), Facts(to=[("", "info@example.org")], subject="Hi"))
    assert (verdict.department, verdict.delete, verdict.hits) == (None, False, [])


# --- fields and operators ----------------------------------------------------------------------------


TO_SUPPORT = Facts(to=[("Support", "support@xyzhosting.com")])


@pytest.mark.parametrize(
    "op, value, expected",
    [
        ("equals", "support@xyzhosting.com", True),  # the bare address
        ("equals", "Support <support@xyzhosting.com>", True),  # the display form
        ("equals", "support", False),
        ("contains", "XYZHOSTING", True),
        ("starts_with", "support <", True),
        ("starts_with", "xyz", False),
        ("ends_with", "@xyzhosting.com", True),
        ("ends_with", ".com>", True),
        ("regex", r"^support@\w+\.com$", True),
        ("regex", r"^sales@", False),
    ],
)
def test_operators_on_address_field(op, value, expected):
    assert matches(Condition("to", op, value), TO_SUPPORT) is expected


def test_address_without_display_name_is_bracketed():
    facts = Facts(from_=[("", "a@example.org")])
    assert matches(Condition("from", "equals", "<a@example.org>"), facts)
    assert matches(Condition("from", "equals", "a@example.org"), facts)


def test_address_field_matches_any_address():
    facts = Facts(cc=[("A", "a@example.org"), ("B", "b@example.org")])
    assert matches(Condition("cc", "equals", "b@example.org"), facts)
    assert not matches(Condition("to", "equals", "b@example.org"), facts)


@pytest.mark.parametrize(
    "field, facts",
    [
        ("subject", Facts(subject="needle")),
        ("body", Facts(body="needle")),
        ("recipient", Facts(recipient="needle")),
        ("sender", Facts(sender="needle")),
        ("account", Facts(account="needle")),
        ("from", Facts(from_=[("", "needle")])),
        ("header:X-Thing", Facts(headers={"x-thing": ["other", "needle"]})),
    ],
)
def test_each_field_is_read_from_its_fact(field, facts):
    assert matches(Condition(field, "equals", "needle"), facts)
    assert not matches(Condition(field, "equals", "needle"), Facts())


def test_header_name_is_case_insensitive():
    facts = Facts(headers={"x-spam-flag": ["YES"]})
    assert matches(Condition("header:X-SPAM-Flag", "equals", "yes"), facts)


def test_negate_on_missing_header_is_true():
    assert matches(Condition("header:X-Spam-Flag", "equals", "YES", negate=True), Facts())
    assert not matches(Condition("header:X-Spam-Flag", "contains", "", negate=False), Facts())


def test_negate_on_address_field_means_no_address_matches():
    facts = Facts(to=[("", "a@x.org"), ("", "b@x.org")])
    assert not matches(Condition("to", "equals", "a@x.org", negate=True), facts)
    assert matches(Condition("to", "equals", "c@x.org", negate=True), facts)


def test_case_sensitive_condition():
    facts = Facts(subject="URGENT: disk full")
    assert matches(Condition("subject", "starts_with", "urgent"), facts)
    assert not matches(Condition("subject", "starts_with", "urgent", case=True), facts)
    assert matches(Condition("subject", "starts_with", "URGENT", case=True), facts)
    assert not matches(Condition("subject", "regex", "^urgent", case=True), facts)
    assert matches(Condition("subject", "regex", "^urgent"), facts)


def test_case_insensitive_uses_casefold():
    assert matches(Condition("subject", "contains", "STRASSE"), Facts(subject="Hauptstraße 1"))


# --- match, scope and actions ------------------------------------------------------------------------


def test_match_all_and_any():
    spam = Condition("subject", "contains", "spam")
    vip = Condition("from", "ends_with", "@vip.example")
    facts = Facts(subject="spam", from_=[("", "x@other.example")])
    assert not evaluate([rule(spam, vip)], facts).hits
    assert evaluate([rule(spam, vip, match="any")], facts).hits


def test_any_hit_text_says_or():
    r = rule(Condition("subject", "contains", "a"), Condition("body", "contains", "b", negate=True),
             match="any", actions=[Action("priority", "high")])
    assert explain(r) == 'subject contains "a" or body not contains "b" -> priority high'


def test_global_scope_always_applies():
    assert evaluate([rule(Condition("subject", "contains", ""))], Facts(), department=None).tags == ["hit"]


def test_department_scope_uses_current_department():
    tag_sales = rule(Condition("subject", "contains", ""), scope="department:sales", name="s")
    assert evaluate([tag_sales], Facts(), department="Sales").tags == ["hit"]
    assert evaluate([tag_sales], Facts(), department="Support").tags == []
    assert evaluate([tag_sales], Facts(), department=None).tags == []


def test_department_scope_sees_earlier_assign():
    assign = rule(Condition("subject", "contains", "order"), actions=[Action("assign", "Sales")], name="a")
    tag_sales = rule(Condition("subject", "contains", ""), scope="department:Sales", name="s")
    verdict = evaluate([assign, tag_sales], Facts(subject="new order"), department="Support")
    assert (verdict.department, verdict.tags) == ("Sales", ["hit"])
    assert verdict.hits[1] == 'rule "s" matched: [department "Sales"] subject contains "" -> tag "hit"'


def test_account_scope():
    r = rule(Condition("subject", "contains", ""), scope="account:inbox-eu")
    assert evaluate([r], Facts(account="inbox-eu")).tags == ["hit"]
    assert evaluate([r], Facts(account="inbox-us")).tags == []
    assert evaluate([r], Facts(account="")).tags == []  # LMTP mail has no account


def test_stop_ends_evaluation_after_the_rules_other_actions():
    always = Condition("subject", "contains", "")
    first = rule(always, actions=[Action("stop"), Action("tag", "a")], name="first")
    second = rule(always, actions=[Action("tag", "b")], name="second")
    verdict = evaluate([first, second], Facts())
    assert verdict.tags == ["a"]
    assert len(verdict.hits) == 1


def test_delete_ends_evaluation():
    always = Condition("subject", "contains", "")
    first = rule(always, actions=[Action("delete")], name="first")
    second = rule(always, actions=[Action("assign", "Sales")], name="second")
    verdict = evaluate([first, second], Facts(), department="Support")
    assert verdict.delete and verdict.department == "Support"
    assert verdict.hits == ['rule "first" matched: subject contains "" -> delete']


def test_last_assign_wins_and_tags_dedup_and_priority_and_trust():
    always = Condition("subject", "contains", "")
    rules = [
        rule(always, actions=[Action("assign", "A"), Action("tag", "x"), Action("priority", "low")], name="1"),
        rule(always, actions=[Action("assign", "B"), Action("tag", "y"), Action("tag", "x")], name="2"),
        rule(always, actions=[Action("priority", "urgent"), Action("trust")], name="3"),
    ]
    verdict = evaluate(rules, Facts())
    assert verdict.department == "B"
    assert verdict.tags == ["x", "y"]
    assert verdict.priority == "urgent"
    assert verdict.trust
    assert len(verdict.hits) == 3


def test_ruleset_revalidates_hand_built_rules():
    with pytest.raises(RuleError, match='rule "bad": condition 1: unknown operator "like"'):
        RuleSet([rule(Condition("subject", "like", "x"), name="bad")])


# --- import errors -----------------------------------------------------------------------------------


def one_rule(condition='{ field = "subject", op = "contains", value = "x" }',
             action='{ action = "delete" }', extra="", name='"drop-spam"'):
    return f"[[rule]]\nname = {name}\n{extra}\nconditions = [{condition}]\nactions = [{action}]\n"


def import_error(text):
    with pytest.raises(RuleError) as caught:
        parse_rules(text)
    return str(caught.value)


@pytest.mark.parametrize(
    "text, message",
    [
        (one_rule(condition='{ field = "subject", op = "containz", value = "x" }'),
         'rule "drop-spam": condition 1: unknown operator "containz" '
         "(expected one of contains, equals, starts_with, ends_with, regex)"),
        (one_rule(condition='{ field = "subjct", op = "contains", value = "x" }'),
         'rule "drop-spam": condition 1: unknown field "subjct" (expected one of from, to, cc'),
        (one_rule(condition='{ field = "header:", op = "contains", value = "x" }'),
         'rule "drop-spam": condition 1: unknown field "header:"'),
        (one_rule(action='{ action = "destroy" }'),
         'rule "drop-spam": action 1: unknown action "destroy" (expected one of assign, priority, tag'),
        (one_rule(condition='{ field = "subject", op = "contains" }'),
         'rule "drop-spam": condition 1: missing key "value"'),
        (one_rule(condition='{ field = "subject", op = "contains", vaule = "x" }'),
         'rule "drop-spam": condition 1: unknown key "vaule"'),
        (one_rule(extra='colour = "red"'), 'rule "drop-spam": unknown key "colour"'),
        (one_rule(action='{ action = "assign" }'), 'rule "drop-spam": action 1: assign: missing key "department"'),
        (one_rule(action='{ action = "delete", tag = "x" }'), 'rule "drop-spam": action 1: delete: unknown key "tag"'),
        (one_rule(action='{ action = "tag", tag = "" }'), 'rule "drop-spam": action 1: tag: empty tag'),
        (one_rule(condition='{ field = "subject", op = "contains", value = 3 }'),
         'rule "drop-spam": condition 1: "value" must be string, not integer'),
        (one_rule(condition='{ field = "subject", op = "contains", value = "x", negate = "yes" }'),
         'rule "drop-spam": condition 1: "negate" must be boolean, not string'),
        (one_rule(action='{ action = "priority", priority = "critical" }'),
         'rule "drop-spam": action 1: bad priority "critical" (expected one of low, normal, high, urgent)'),
        (one_rule(condition='{ field = "subject", op = "regex", value = "([a-z" }'),
         'rule "drop-spam": condition 1: regex "([a-z" does not compile: unterminated character set'),
        (one_rule(extra='match = "some"'), 'rule "drop-spam": bad match "some" (expected all or any)'),
        (one_rule(extra='scope = "team:Sales"'), 'rule "drop-spam": bad scope "team:Sales"'),
        (one_rule(extra='scope = "department:"'), 'rule "drop-spam": bad scope "department:"'),
        (one_rule(name='""'), 'rule #1: empty name'),
        (one_rule(name="7"), 'rule #1: "name" must be string, not integer'),
        ("[[rule]]\nname = \"n\"\nconditions = []\nactions = [{ action = \"stop\" }]\n",
         'rule "n": no conditions'),
        (one_rule(action=""), 'rule "drop-spam": no actions'),
        ("[[rule]]\nconditions = []\n", 'rule #1: missing key "name"'),
        (one_rule() + one_rule(name='"Drop-Spam"'), 'rule "Drop-Spam": duplicate name (rules #1 and #2)'),
        ("[[rules]]\nname = \"x\"\n", 'rules file: unknown top-level key "rules"'),
        ("[rule]\nname = \"x\"\n", 'rules file: "rule" must be an array of tables'),
    ],
)
def test_import_error_names_rule_and_problem(text, message):
    assert message in import_error(text)


def test_toml_syntax_error_gives_line():
    assert "rules file: TOML syntax error" in import_error('[[rule]]\nname = "x"\nconditions = [\n')
    assert "line 2" in import_error('[[rule]]\nname = "x" "y"\n')


def test_every_wrong_rule_is_reported_and_nothing_imported():
    text = one_rule(name='"ok"') + one_rule(name='"bad1"', action='{ action = "x" }') + one_rule(
        name='"bad2"', condition='{ field = "to", op = "regex", value = "(" }')
    with pytest.raises(RuleError) as caught:
        parse_rules(text)
    problems = caught.value.problems
    assert len(problems) == 2
    assert problems[0].startswith('rule "bad1": ') and problems[1].startswith('rule "bad2": ')


def test_rules_from_data_refuses_non_list_and_non_table():
    with pytest.raises(RuleError, match="must be an array of tables, not table"):
        rules_from_data({"name": "x"})
    with pytest.raises(RuleError, match=r"rule #1: must be a table, not string"):
        rules_from_data(["x"])
    with pytest.raises(RuleError, match=r'rule "n": condition 1: must be a table, not string'):
        rules_from_data([{"name": "n", "conditions": ["x"], "actions": [{"action": "stop"}]}])


def test_empty_file_has_no_rules():
    assert parse_rules("") == []
    assert parse_rules("# nothing yet\n") == []


# --- export ------------------------------------------------------------------------------------------


def test_seed_round_trips_through_export():
    rules = parse_rules(SEED)
    assert parse_rules(rules_to_toml(rules)) == rules
    assert rules_from_data([rule_to_data(r) for r in rules]) == rules


def test_rule_to_data_omits_defaults():
    assert rule_to_data(parse_rules(SEED)[1]) == {
        "name": "drop-tagged-spam",
        "conditions": [{"field": "subject", "op": "contains", "value": "[Spam]"}],
        "actions": [{"action": "delete"}],
    }


def test_export_escapes_awkward_strings():
    awkward = 'quote " backslash \\ newline \n tab \t nul \x00 del \x7f é 😀'
    rules = [Rule(awkward, (Condition("header:X-A", "equals", awkward, True, True),),
                  (Action("tag", awkward), Action("stop")), "any", "department:" + awkward)]
    assert parse_rules(rules_to_toml(rules)) == rules


async def test_cli_export_import_export_gives_the_same_text(cli, tmp_path):
    """`rules export` prints a file `rules import` takes back unchanged, awkward characters included."""
    awkward = 'say "hi" \\ C:\\temp\nsecond line\ttab \x00 \x7f Grüße 😀 \'\'\' """'
    rules = [Rule("quotes \"and\" \\ é", (Condition("header:X-Note", "equals", awkward, True, True),),
                  (Action("tag", awkward), Action("priority", "high"), Action("stop")), "any"),
             Rule("second", (Condition("subject", "regex", r"^\[Spam\]\s", case=True),), (Action("delete"),))]
    first = tmp_path / "first.toml"
    first.write_text(rules_to_toml(rules), encoding="utf-8")
    code, _, err = await cli("rules", "import", str(first))
    assert code == 0, err
    code, exported, err = await cli("rules", "export")
    assert code == 0, err
    assert parse_rules(exported) == rules
    again = tmp_path / "again.toml"
    again.write_text(exported, encoding="utf-8")
    code, _, err = await cli("rules", "import", str(again))
    assert code == 0, err
    code, exported_again, err = await cli("rules", "export")
    assert code == 0, err
    assert exported_again == exported


# --- properties --------------------------------------------------------------------------------------

FAST = settings(max_examples=60, deadline=None)
texts = st.text(max_size=12)


@FAST
@given(haystack=texts, needle=texts, negate=st.booleans())
def test_case_insensitive_operators_agree_with_casefold(haystack, needle, negate):
    h, n = haystack.casefold(), needle.casefold()
    expected = {"contains": n in h, "equals": h == n, "starts_with": h.startswith(n), "ends_with": h.endswith(n)}
    for op, value in expected.items():
        assert matches(Condition("subject", op, needle, negate=negate), Facts(subject=haystack)) is (value != negate)


@FAST
@given(haystack=texts, needle=texts)
def test_regex_of_escaped_text_matches_like_contains(haystack, needle):
    facts = Facts(body=haystack)
    assert matches(Condition("body", "regex", re.escape(needle), case=True), facts) is (needle in haystack)
    assert matches(Condition("body", "regex", re.escape(needle), case=True), facts) is matches(
        Condition("body", "contains", needle, case=True), facts)


# Everything a rule may hold, including the characters a naive TOML writer gets wrong.
any_text = st.text(st.characters(blacklist_categories=("Cs",)), max_size=10)
awkward_text = st.one_of(any_text, st.sampled_from(['"', "\\", "\n", "'''", '"""', "\\u0041", "ß", "#"]))
nonblank = awkward_text.filter(str.strip)
header_name = st.text(st.sampled_from("abcXYZ-_0.!~"), min_size=1, max_size=8)
fields = st.one_of(st.sampled_from(["from", "to", "cc", "subject", "body", "recipient", "sender", "account"]),
                   header_name.map(lambda name: "header:" + name))
conditions = st.builds(Condition, fields, st.sampled_from(["contains", "equals", "starts_with", "ends_with"]),
                       awkward_text, st.booleans(), st.booleans())
regex_conditions = st.builds(lambda field, text, case: Condition(field, "regex", re.escape(text), case=case),
                             fields, awkward_text, st.booleans())
actions = st.one_of(
    st.builds(Action, st.sampled_from(["assign", "tag"]), nonblank),
    st.builds(Action, st.just("priority"), st.sampled_from(["low", "normal", "high", "urgent"])),
    st.builds(Action, st.sampled_from(["delete", "trust", "stop"])),
)
scopes = st.one_of(st.just("global"),
                   st.builds(lambda kind, name: f"{kind}:{name}", st.sampled_from(["department", "account"]), nonblank))
rules_strategy = st.builds(
    lambda name, conds, acts, match, scope: Rule(name, tuple(conds), tuple(acts), match, scope),
    nonblank, st.lists(st.one_of(conditions, regex_conditions), min_size=1, max_size=3),
    st.lists(actions, min_size=1, max_size=3), st.sampled_from(["all", "any"]), scopes,
)
rule_lists = st.lists(rules_strategy, max_size=4, unique_by=lambda r: r.name.casefold())


@FAST
@given(rule_lists)
def test_export_import_round_trip(rules):
    assert parse_rules(rules_to_toml(rules)) == rules
    assert rules_from_data([rule_to_data(r) for r in rules]) == rules
