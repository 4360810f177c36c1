"""Processing rules one at a time (the panel's rules section): add, change, delete, move.

Positions stay dense (0..n-1, the evaluation order) and every change bumps the revision counter, so the
pipeline's cached directory (ingest/directory.py) reads the rules again. `store.replace_rules` is the
whole-list import.
"""

from __future__ import annotations

from sqlalchemy import func, select

from storage.models import Rule
from storage.store import bump_revision, rules


def rule(session, rule_id: int) -> Rule | None:
    return session.get(Rule, rule_id)


def add_rule(session, name: str, definition: dict) -> Rule:
    """A new rule after all the others."""
    position = session.scalar(select(func.count()).select_from(Rule))
    row = Rule(position=position, name=name, definition=definition)
    session.add(row)
    bump_revision(session)
    session.flush()
    return row


def change_rule(session, row: Rule, name: str, definition: dict) -> None:
    row.name, row.definition = name, definition
    bump_revision(session)


def delete_rule(session, row: Rule) -> None:
    """Delete a rule and close the gap it leaves in the positions."""
    session.delete(row)
    session.flush()
    for position, other in enumerate(rules(session)):
        other.position = position
    bump_revision(session)


def swap_positions(session, a: Rule, b: Rule) -> None:
    a.position, b.position = b.position, a.position
    bump_revision(session)
