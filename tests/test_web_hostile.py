"""One hostile message through every state a message can be in (ticket, held, rejected, failed) and every
panel page that shows it: subject, sender name, attachment name and HTML body carry markup and script, and
every page shows them as text, never as markup."""

from __future__ import annotations

import re
from email.message import EmailMessage

from tests.conftest import deliver
from tests.panel_helpers import form_token, panel, sign_in  # noqa: F401 - panel is a fixture
from tests.test_writer_failed import poison

SCRIPT = "<script>alert('subject')</script>"
NAME = '"><img src=x onerror=alert(1)>'
FILE = "<svg onload=alert(2)>.html"
HTML = "<p>Hi</p><script>alert(3)</script><img src=x onerror=alert(4)><a href=\"javascript:alert(5)\">x</a>"
MARKUP = ("<script", "<img src=x", "<svg onload", "javascript:alert", "onerror=alert(4)")  # alive, were any there


def hostile(to: str, sender: str, marker: str = "") -> bytes:
    m = EmailMessage()
    m["From"] = f"{NAME} <{sender}>"
    m["To"] = to
    m["Subject"] = f"{marker}{SCRIPT}"
    m["Message-ID"] = f"<{marker or 'plain'}.{to}@evil.example>"
    m.set_content("plain text <b>too</b>")
    m.add_alternative(HTML, subtype="html")
    m.add_attachment(b"<html><script>alert(6)</script></html>", maintype="text", subtype="html", filename=FILE)
    return m.as_bytes().replace(b"\n", b"\r\n")


def alive(page: str) -> list[str]:
    """The hostile markup left live on a page (outside what it escaped)."""
    return [m for m in MARKUP if m in page]


async def test_a_hostile_message_is_inert_on_every_page_in_every_state(panel, cli, lmtp, monkeypatch):
    for name, address, policy in (("Support", "support@xyzhosting.com", "accept"),
                                  ("Sales", "sales@xyzhosting.com", "hold"),
                                  ("Billing", "billing@xyzhosting.com", "reject")):
        assert (await cli("department", "add", name, "--address", address, "--unknown-sender", policy))[0] == 0
    # Each from a sender of its own: accepted once, a sender is a customer, and their mail makes tickets.
    for n, address in enumerate(("support@xyzhosting.com", "sales@xyzhosting.com", "billing@xyzhosting.com")):
        await deliver(lmtp.port, f"mallory{n}@evil.example", address, hostile(address, f"mallory{n}@evil.example"))
    poison(monkeypatch, RuntimeError(f"failed on {SCRIPT}"), marker="POISON")
    await deliver(lmtp.port, "mallory@evil.example", "support@xyzhosting.com",
                  hostile("support@xyzhosting.com", "mallory@evil.example", marker="POISON"))

    async with await sign_in(panel) as response:
        assert response.status == 303
    pages = ["/admin/tickets", "/admin/tickets/1", "/admin/tickets?q=alert", "/admin/held", "/admin/held/rejected",
             "/admin/held/failed", "/admin/customers", "/admin/audit", "/admin/rules/try?message=1"]
    seen = {}
    for path in pages:
        async with panel.get(path) as response:
            assert response.status == 200, path
            seen[path] = await response.text()
            assert alive(seen[path]) == [], (path, alive(seen[path]))
    for path in ("/admin/tickets", "/admin/tickets/1", "/admin/held", "/admin/held/rejected", "/admin/held/failed"):
        assert "&lt;script&gt;alert(&#39;subject&#39;)&lt;/script&gt;" in seen[path], path  # shown, as text
    assert ">svg onload=alert(2).html</a>" in seen["/admin/tickets/1"]  # as stored: the parser drops <>
    assert "Hi" in seen["/admin/tickets/1"]  # the sanitised HTML is shown
    held_id = re.search(r'action="held/(\d+)/release"', seen["/admin/held"]).group(1)
    async with panel.get(f"/admin/held/{held_id}/discard-and-block") as response:  # the page that asks first
        assert alive(await response.text()) == []
    token = await form_token(panel, "/admin/rules/try")
    async with panel.post("/admin/rules/try", data={"csrf": token, "message": held_id}) as response:
        tried = await response.text()
        assert response.status == 200 and alive(tried) == [] and "&lt;script&gt;" in tried
