"""Tests of ticket reference extraction: "[Ticket #N]" tags in subjects."""

import pytest
from hypothesis import given, settings, strategies as st

from ingest.threading import find_ticket_number

FAST = settings(max_examples=80, deadline=None)


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
    assert find_ticket_number(f"{chain}[{prefix} #{number}] {subject}", prefix) == number
