"""The real-world corpus (../shared/corpus/realworld, read in place) and what Zammad extracts from it.

`differences` compares what ticketmail extracted from one message with Zammad's expectations
(zammad-expected.json), where the comparison means something: Zammad's own conventions are taken
out first (each named where it is), so what remains is a real difference.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
from pathlib import Path

from ingest.parse import _html_to_text, _Warnings

def _root() -> Path:
    """../shared/corpus/realworld beside the project; for a clone made elsewhere (CI clones the
    checkout), beside the checkout it was cloned from; TICKETMAIL_REALWORLD_CORPUS overrides both."""
    if os.environ.get("TICKETMAIL_REALWORLD_CORPUS"):
        return Path(os.environ["TICKETMAIL_REALWORLD_CORPUS"])
    project = Path(__file__).resolve().parents[1]
    beside = [project.parent]
    origin = subprocess.run(["git", "-C", str(project), "remote", "get-url", "origin"], capture_output=True, text=True)
    if origin.returncode == 0 and Path(origin.stdout.strip()).is_dir():  # a clone of a local checkout
        beside.append(Path(origin.stdout.strip()).resolve().parent)
    found = [folder / "shared" / "corpus" / "realworld" for folder in beside]
    return next((path for path in found if path.is_dir()), found[0])


ROOT = _root()
GENERATED_NAME = re.compile(r"part-\d+\.\w+")  # ticketmail's name for a part the sender did not name
NO_BODY = "no visible content"  # Zammad's placeholder for an empty body


def messages() -> list[tuple[str, bytes]]:
    """(name relative to ROOT, message as an MTA sends it: CRLF line ends) of every corpus mail."""
    found = []
    for path in sorted(ROOT.rglob("*")):
        if path.is_file() and path.suffix not in (".yml", ".json", ".md"):
            raw = re.sub(rb"\r?\n", b"\r\n", path.read_bytes())
            found.append((path.relative_to(ROOT).as_posix(), raw if raw.endswith(b"\r\n") else raw + b"\r\n"))
    return found


def expectations() -> dict[str, dict]:
    return json.loads((ROOT / "zammad-expected.json").read_text(encoding="utf-8"))


def _words(text: str | None) -> list[str]:
    return (text or "").split()


def _as_text(markup: str) -> list[str]:
    return _words(_html_to_text(markup, _Warnings()))


def differences(expected: dict, message) -> dict[str, str]:
    """{field: what differs} between Zammad's expectation and `message` (a ParsedMessage or a stored
    Message with its attachments: subject, from_addr, from_name, text, html, attachments)."""
    found = {}
    if "subject" in expected and _words(expected["subject"]) != _words(message.subject):
        found["subject"] = f"Zammad {expected['subject']!r}, ticketmail {message.subject!r}"
    if "from_email" in expected and (expected["from_email"] or "").lower() != message.from_addr:
        found["from"] = f"Zammad {expected['from_email']!r}, ticketmail {message.from_addr!r}"
    if "from_display_name" in expected and _words(expected["from_display_name"]) != _words(message.from_name):
        found["name"] = f"Zammad {expected['from_display_name']!r}, ticketmail {message.from_name!r}"
    if "body" in expected:
        body = "" if expected["body"] == NO_BODY else expected["body"] or ""
        # Zammad's body is HTML when the message has an HTML version (ticketmail shows the text/plain
        # one, and keeps the HTML one as `html`), and often HTML without a content_type saying so.
        theirs = (_words(body), _as_text(body))
        if not ({*map(tuple, theirs)} & {tuple(_words(message.text)), tuple(_as_text(message.html))}):
            found["body"] = f"Zammad {body[:60]!r}, ticketmail {message.text[:60]!r}"
    if "attachments" in expected:
        ours = {a.sha256: a.filename for a in message.attachments}
        # Zammad keeps the HTML body as an attachment too (zammad_body_copy); ticketmail as `html`.
        theirs = [a for a in expected["attachments"] if not a.get("zammad_body_copy")]
        missing = [a["filename"] for a in theirs if not {a.get("sha256"), a.get("sha256_crlf")} & ours.keys()]
        renamed = [(a["filename"], ours[h]) for a in theirs for h in (a.get("sha256_crlf"), a.get("sha256"))
                   if h in ours and ours[h] != a["filename"] and not GENERATED_NAME.fullmatch(ours[h])][:1]
        if missing or renamed:
            found["attachments"] = f"missing {missing}, renamed {renamed}"
    return found
