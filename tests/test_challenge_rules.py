"""The pure checks behind a challenge: suppression, Authentication-Results, rate caps, the mail itself."""

from __future__ import annotations

import email
import email.policy
from datetime import datetime, timezone

import pytest

from ingest import mailer
from ingest.challenges import (
    ChallengeSettings,
    aligned,
    authentication,
    over_cap,
    robot_address,
    suppression,
)
from ingest.parse import parse_message
from storage.challenge_store import RecentChallenges
from tests.mail import message

OURS = {"support@xyzhosting.com"}
BOB = "bob@newcomer.example"


def suppressed(raw: bytes, envelope_sender: str = BOB, source: str = "lmtp", tags=()) -> str | None:
    return suppression(parse_message(raw), envelope_sender=envelope_sender, source=source,
                       is_own=lambda a: a.lower() in OURS, tags=tags)


def bounce_of_a_challenge() -> bytes:
    challenge = mailer.build(sample_mail(), mailer.new_mail_id("xyzhosting.com"), mailer.environment("ingest"))
    return (
        b"From: Mail Delivery System <mailer-daemon@mx.newcomer.example>\r\nTo: support@xyzhosting.com\r\n"
        b"Subject: Undelivered Mail Returned to Sender\r\nMessage-ID: <b1@mx.newcomer.example>\r\n"
        b"MIME-Version: 1.0\r\nContent-Type: multipart/report; report-type=delivery-status; boundary=\"B\"\r\n\r\n"
        b"--B\r\nContent-Type: text/plain\r\n\r\nUser unknown.\r\n"
        b"--B\r\nContent-Type: message/rfc822\r\n\r\n" + challenge + b"\r\n--B--\r\n"
    )


def sample_mail(**changes) -> mailer.ChallengeMail:
    values = dict(department="Support", from_addr="support@xyzhosting.com", to_addr=BOB,
                  link="https://help.example/confirm/abc", expires_at=datetime(2030, 1, 8, tzinfo=timezone.utc),
                  days=7, contact="help@xyzhosting.com", subject_prefix="Please confirm:",
                  in_reply_to="first@newcomer.example", references=("older@newcomer.example",))
    return mailer.ChallengeMail(**(values | changes))


def test_an_ordinary_first_mail_may_be_challenged():
    assert suppressed(message(frm=BOB)) is None


@pytest.mark.parametrize("raw, envelope_sender, source, expected", [
    (message(frm=BOB), "", "lmtp", "null sender"),
    (message(frm=BOB, Return_Path="<>"), "", "imap:box", "null sender"),
    (message(frm="MAILER-DAEMON@mx.newcomer.example"), "bounces@x.example", "lmtp", "automatic address"),
    (message(frm="postmaster@newcomer.example"), BOB, "lmtp", "automatic address"),
    (message(frm="noreply@shop.example"), "noreply@shop.example", "lmtp", "automatic address"),
    (message(frm="do-not-reply@shop.example"), BOB, "lmtp", "automatic address"),
    (message(frm=BOB), "bounces+123-bob=newcomer.example@list.example", "lmtp", "automatic address"),
    (message(frm=BOB, Auto_Submitted="auto-generated"), BOB, "lmtp", "Auto-Submitted: auto-generated"),
    (message(frm=BOB, Auto_Submitted="auto-replied; owner-email=x"), BOB, "lmtp", "Auto-Submitted: auto-replied"),
    (message(frm=BOB, Precedence="bulk"), BOB, "lmtp", "Precedence: bulk"),
    (message(frm=BOB, Precedence="list"), BOB, "lmtp", "Precedence: list"),
    (message(frm=BOB, Precedence="junk"), BOB, "lmtp", "Precedence: junk"),
    (message(frm=BOB, List_Unsubscribe="<mailto:u@list.example>"), BOB, "lmtp", "List-Unsubscribe"),
    (message(frm=BOB, List_Id="<news.list.example>"), BOB, "lmtp", "List-Id"),
    (message(frm=BOB, X_Loop="bob@newcomer.example"), BOB, "lmtp", "X-Loop"),
    (message(frm=BOB, X_Auto_Response_Suppress="All"), BOB, "lmtp", "X-Auto-Response-Suppress"),
    (message(frm=BOB, X_Auto_Response_Suppress="DR, OOF, AutoReply"), BOB, "lmtp", "X-Auto-Response-Suppress"),
    (message(frm="Support <support@xyzhosting.com>"), BOB, "lmtp", "our own address"),
    (message(frm=BOB), "support@xyzhosting.com", "lmtp", "our own address"),
    (message(frm=BOB, In_Reply_To="<ticketmail-challenge.ab12@xyzhosting.com>"), BOB, "lmtp", "our own challenges"),
    (message(frm=BOB, X_Ticketmail_Challenge="confirmation request"), BOB, "lmtp", "our own challenges"),
    (bounce_of_a_challenge(), BOB, "imap:box", "our own challenges"),
    (message(frm="bob <bob@@newcomer.example>"), "", "imap:box", "cannot be mailed"),
])
def test_never_challenged(raw, envelope_sender, source, expected):
    assert expected in (suppressed(raw, envelope_sender, source) or "no suppression")


def test_rule_marked_spam_is_never_challenged():
    assert suppressed(message(frm=BOB), tags=("Spam",)) == "a rule tagged it spam"
    assert suppressed(message(frm=BOB), tags=("vip",)) is None


def test_x_auto_response_suppress_other_than_all_or_oof_does_not_suppress():
    assert suppressed(message(frm=BOB, X_Auto_Response_Suppress="DR, RN")) is None


@pytest.mark.parametrize("address, robot", [
    ("noreply@x.example", True), ("no-reply@x.example", True), ("no_reply@x.example", True),
    ("donotreply@x.example", True), ("info-noreply@x.example", True), ("mailer-daemon@x.example", True),
    ("bounce-77@x.example", True), ("norah@x.example", False), ("bouncer@x.example", False),
    ("replyto@x.example", False), ("bob@x.example", False), ("postmasters-friend@x.example", False),
])
def test_robot_addresses(address, robot):
    assert robot_address(address) is robot


MX = "mx.xyzhosting.com"


def verdict(*headers: str, trusted: str = MX, domain: str = "newcomer.example"):
    return authentication(list(headers), trusted, domain)


def test_only_the_configured_authserv_id_is_believed():
    forged = "mx.newcomer.example; dmarc=pass header.from=newcomer.example"
    assert verdict(forged).status == "none"
    assert verdict(f"{MX}; dmarc=pass header.from=newcomer.example", trusted="").status == "none"
    assert "no trusted_authserv_id" in verdict(forged, trusted="").detail


@pytest.mark.parametrize("results, status", [
    ("dmarc=fail (p=reject) header.from=newcomer.example", "fail"),
    ("spf=fail smtp.mailfrom=bob@newcomer.example; dkim=none", "fail"),
    ("spf=fail smtp.mailfrom=bob@newcomer.example; dkim=pass header.d=elsewhere.example", "fail"),
    ("spf=fail smtp.mailfrom=bob@newcomer.example; dkim=pass header.d=newcomer.example", "pass"),
    ("spf=fail smtp.mailfrom=bob@newcomer.example; dkim=pass header.d=mail.newcomer.example", "pass"),
    ("dmarc=pass header.from=newcomer.example", "pass"),
    ("spf=pass smtp.mailfrom=bob@newcomer.example", "pass"),
    ("spf=pass smtp.mailfrom=bounce@mailer.example", "none"),  # authenticates someone else's domain
    ("dkim=pass header.d=mailer.example", "none"),
    ("spf=softfail smtp.mailfrom=bob@newcomer.example", "none"),
    ("none", "none"),
])
def test_authentication_results(results, status):
    assert verdict(f"{MX}; {results}").status == status


def test_topmost_trusted_header_wins_over_a_forged_one_below_it():
    real, forged = f"{MX}; dmarc=fail header.from=newcomer.example", f"{MX}; dmarc=pass header.from=newcomer.example"
    assert verdict(real, forged).status == "fail"
    assert verdict("MX.XYZHOSTING.COM 1; dmarc=fail").status == "fail"  # authserv-id is case-insensitive


def test_unreadable_trusted_header_authenticates_nothing():
    result = verdict(f"{MX}; ;;; = =")
    assert result.status == "none" and "unreadable" in result.detail


def test_alignment_is_relaxed_but_not_loose():
    assert aligned("newcomer.example", "mail.newcomer.example") and aligned("NEWCOMER.example.", "newcomer.example")
    assert not aligned("comer.example", "newcomer.example") and not aligned("", "newcomer.example")


def test_rate_caps():
    s = ChallengeSettings(per_sender_daily=3, per_domain_hourly=20, total_hourly=200)
    assert over_cap(RecentChallenges(2, 19, 199), s) is None
    assert "per_sender_daily = 3" in over_cap(RecentChallenges(3, 0, 0), s)
    assert "per_domain_hourly = 20" in over_cap(RecentChallenges(0, 20, 0), s)
    assert "total_hourly = 200" in over_cap(RecentChallenges(0, 0, 200), s)


def test_challenge_mail_headers_and_text():
    mail_id = mailer.new_mail_id("xyzhosting.com")
    raw = mailer.build(sample_mail(), mail_id, mailer.environment("ingest"))
    m = email.message_from_bytes(raw, policy=email.policy.default)
    assert m["Message-ID"] == f"<{mail_id}>" and mailer.is_our_mail_id(mail_id)
    assert m["In-Reply-To"] == "<first@newcomer.example>"
    assert m["References"] == "<older@newcomer.example> <first@newcomer.example>"
    assert (m["Auto-Submitted"], m["Precedence"], m["X-Auto-Response-Suppress"]) == ("auto-replied", "bulk", "All")
    assert m[mailer.MARKER]
    assert m["Subject"] == "Please confirm: your message to Support"
    text = m.get_body(("plain",)).get_content()
    html = m.get_body(("html",)).get_content()
    for body in (text, html):
        assert "https://help.example/confirm/abc" in body and "08 January 2030" in body and "7 days" in body
        assert "only once" in body and "help@xyzhosting.com" in body
    assert b"\n" not in raw.replace(b"\r\n", b"") and raw.isascii()  # CRLF and 7-bit, for any relay


def test_ids_from_a_stranger_are_only_threaded_when_well_formed():
    raw = mailer.build(sample_mail(in_reply_to="evil>\r\nBcc: victim@x.example", references=("a b", "ok@x")),
                       mailer.new_mail_id("xyzhosting.com"), mailer.environment("ingest"))
    m = email.message_from_bytes(raw, policy=email.policy.default)
    assert m["In-Reply-To"] is None and m["Bcc"] is None and m["References"] == "<ok@x>"


def test_html_escapes_what_it_shows():
    raw = mailer.build(sample_mail(department="<b>Sales</b> & Co"), "x@y", mailer.environment("ingest"))
    html = email.message_from_bytes(raw, policy=email.policy.default).get_body(("html",)).get_content()
    assert "&lt;b&gt;Sales&lt;/b&gt; &amp; Co" in html and "<b>Sales</b>" not in html


def test_operator_templates_replace_the_builtin_ones(tmp_path):
    (tmp_path / "challenge.txt").write_text("Bitte bestätigen: {{ link }} (gilt {{ days }} Tage)\n")
    env = mailer.environment("ingest", str(tmp_path))
    m = email.message_from_bytes(mailer.build(sample_mail(), "x@y", env), policy=email.policy.default)
    text = m.get_body(("plain",)).get_content()
    assert text.strip() == "Bitte bestätigen: https://help.example/confirm/abc (gilt 7 Tage)"
    assert "only once" in m.get_body(("html",)).get_content()  # the HTML template was not replaced


def test_a_broken_operator_template_is_named_at_startup(tmp_path):
    (tmp_path / "challenge.html").write_text("{% if %}")
    with pytest.raises(ValueError, match="challenge.html"):
        mailer.check_templates(str(tmp_path))
    mailer.check_templates()


@pytest.mark.parametrize("address, ok", [
    (BOB, True), ("a.b+tag@sub.newcomer.example", True), ("bob@localhost", False), ("bob", False),
    ("bob@x.example\r\nBcc: v@x.example", False), ("bøb@newcomer.example", False), ("a@b@c.example", False),
    ("<bob@x.example>", False), ("", False),
])
def test_only_plain_addresses_are_mailed(address, ok):
    assert mailer.mailable(address) is ok
