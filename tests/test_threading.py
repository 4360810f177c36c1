"""Tests of ticket reference extraction: reply prefixes, "[Ticket #N]" tags and Message-ID lists."""

import pytest
from hypothesis import given, settings, strategies as st

from ingest.threading import find_ticket_number, message_ids, strip_reply_prefixes, subject_with_reference

FAST = settings(max_examples=80, deadline=None)


# --- strip_reply_prefixes ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "subject",
    [
        "Re: Printer broken", "RE: Printer broken", "Fwd: Printer broken", "FW: Printer broken",
        "Fw: Printer broken", "AW: Printer broken", "WG: Printer broken", "SV: Printer broken",
        "VS: Printer broken", "Antw: Printer broken", "Re[2]: Printer broken", "Réf: Printer broken",
        "TR: Printer broken", "TR : Printer broken", "re:Printer broken", "Re(3): Printer broken",
        "Re^2: Printer broken", "回复：Printer broken", "  Re: AW:Fwd: RE[12]: Printer broken  ",
    ],
)
def test_reply_prefixes_are_stripped(subject):
    assert strip_reply_prefixes(subject) == "Printer broken"


@pytest.mark.parametrize(
    "subject", ["Refund: order 7", "Regarding: invoice", "Printer broken: Re: again", "Fwdx: y", "Re stuff"]
)
def test_words_that_merely_start_like_a_prefix_are_kept(subject):
    assert strip_reply_prefixes(subject) == subject


def test_subject_of_only_prefixes_is_empty():
    assert strip_reply_prefixes(" Re: Fwd:  ") == ""
    assert strip_reply_prefixes("") == ""


# --- find_ticket_number ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "subject, number",
    [
        ("[Ticket #42] Printer broken", 42),
        ("Re: [Ticket #42] Printer broken", 42),
        ("Printer broken [ticket #42]", 42),
        ("[ Ticket  # 42 ] Printer broken", 42),
        ("[Ticket#42]", 42),
        ("[TICKET #0042]", 42),
        ("[Ticket #7] was [Ticket #42]", 7),  # the first reference wins
        ("Printer broken", None),
        ("[Ticket #] x", None),
        ("[Ticket #4x2]", None),
        ("Ticket #42", None),
        ("[Ticket #" + "9" * 5000 + "]", None),  # garbage, not a 5000-digit int
        ("[Ticket #٤٢]", None),  # only ASCII digits
    ],
)
def test_find_ticket_number(subject, number):
    assert find_ticket_number(subject) == number


def test_prefix_is_literal_and_configurable():
    assert find_ticket_number("[Help.Desk #5]", prefix="Help.Desk") == 5
    assert find_ticket_number("[HelpxDesk #5]", prefix="Help.Desk") is None
    assert find_ticket_number("[Ticket #5]", prefix="Case") is None
    assert find_ticket_number("[case #5]", prefix="Case") == 5


# --- subject_with_reference --------------------------------------------------------------------------


def test_subject_with_reference():
    assert subject_with_reference("Printer broken", 42) == "[Ticket #42] Printer broken"
    assert subject_with_reference("", 42) == "[Ticket #42]"
    assert subject_with_reference("Printer broken", 42, prefix="Case") == "[Case #42] Printer broken"


def test_subject_with_reference_is_idempotent():
    once = subject_with_reference("Printer broken", 42)
    assert subject_with_reference(once, 42) == once
    assert subject_with_reference("Re: [ticket#42] Printer broken", 42) == "Re: [ticket#42] Printer broken"


def test_subject_with_reference_to_other_ticket_puts_new_one_first():
    subject = subject_with_reference("[Ticket #7] Printer broken", 42)
    assert subject == "[Ticket #42] [Ticket #7] Printer broken"
    assert find_ticket_number(subject) == 42


def test_negative_ticket_number_is_refused():
    with pytest.raises(ValueError):
        subject_with_reference("x", -1)


# --- message_ids -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "value, ids",
    [
        ("<a@example.org>", ["a@example.org"]),
        ("<a@x> <b@x>\r\n <a@x>", ["a@x", "b@x"]),
        ("<a@x>,<b@x>", ["a@x", "b@x"]),
        ('Your message of "Mon, 1 Jan" <a@x> (John)', ["a@x"]),
        ("<long.id@\r\n example.org>", ["long.id@example.org"]),  # folded inside the brackets
        ("<<a@x>>", ["a@x"]),
        ("<> < > garbage", []),
        ("a@x", ["a@x"]),  # brackets forgotten by the sender's client
        ("<a@x", ["a@x"]),
        ("", []),
        ("no ids here", []),
    ],
)
def test_message_ids(value, ids):
    assert message_ids(value) == ids


# --- properties --------------------------------------------------------------------------------------

prefix_forms = st.sampled_from([
    "Re:", "RE: ", "Fwd:", "FW:", "Fw: ", "AW:", "WG:", "SV:", "VS:", "Antw:", "Re[2]:", "Réf:",
    "TR :", "re :", " Re(3): ", "回复：", "Re^4:",
])
prefix_chains = st.lists(prefix_forms, max_size=4).map("".join)
subjects = st.text(max_size=30)
ticket_prefixes = st.sampled_from(["Ticket", "Case", "Help.Desk", "T#", "[x]"])


@FAST
@given(chain=prefix_chains, subject=subjects, number=st.integers(min_value=1, max_value=10**12),
       prefix=ticket_prefixes)
def test_reference_survives_any_reply_chain(chain, subject, number, prefix):
    if find_ticket_number(subject, prefix) is not None:
        subject = subject.replace("[", "(")
    assert find_ticket_number(chain + subject_with_reference(subject, number, prefix), prefix) == number


@FAST
@given(st.one_of(subjects, st.builds(lambda c, s: c + s, prefix_chains, subjects)))
def test_strip_reply_prefixes_is_idempotent(subject):
    once = strip_reply_prefixes(subject)
    assert strip_reply_prefixes(once) == once


@FAST
@given(chain=prefix_chains, subject=subjects)
def test_prefix_chain_is_fully_stripped(chain, subject):
    assert strip_reply_prefixes(chain + subject) == strip_reply_prefixes(subject)


ids = st.text(st.characters(blacklist_categories=("Cs", "Zs", "Zl", "Zp", "Cc"), blacklist_characters="<>"),
              min_size=1, max_size=12)
separators = st.sampled_from([" ", "\r\n ", ", ", "\t", ""])


@FAST
@given(st.lists(st.tuples(ids, separators), max_size=6))
def test_message_ids_round_trip(items):
    value = "".join(f"<{i}>{sep}" for i, sep in items)
    assert message_ids(value) == list(dict.fromkeys(i for i, _ in items))
