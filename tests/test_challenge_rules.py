"""The pure checks behind a challenge: suppression, Authentication-Results, rate caps, the mail itself."""

from __future__ import annotations

import email
import email.policy
from datetime import datetime, timezone

import pytest

from ingest import chain, mailer
from ingest.challenges import (
    ChallengeSettings,
    aligned,
    authentication,
    cap_domain,
    domain_of,
    mailbox,
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
    parsed = parse_message(raw)
    return suppression(parsed, address=chain.sender_address(parsed, envelope_sender), envelope_sender=envelope_sender,
                       source=source, is_own=lambda a: a.lower() in OURS, tags=tags)


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
    (message(frm=BOB), "", "lmtp", "null envelope sender"),
    (message(frm=BOB, Return_Path="<>"), "", "imap:box", "null envelope sender"),
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


def test_a_forged_trusted_header_below_the_real_one_cannot_turn_a_fail_into_a_pass():
    real, forged = f"{MX}; dmarc=fail header.from=newcomer.example", f"{MX}; dmarc=pass header.from=newcomer.example"
    assert verdict(real, forged).status == "fail"
    assert verdict("MX.XYZHOSTING.COM 1; dmarc=fail").status == "fail"  # authserv-id is case-insensitive


def test_trusted_headers_that_disagree_fail():
    # Today's topmost-wins read these as pass: a second header of our MTA's id saying otherwise is a sign
    # that one of them is forged (or the MTA is confused), so neither is believed.
    dmarc = verdict(f"{MX}; dmarc=pass header.from=newcomer.example", f"{MX}; dmarc=fail header.from=newcomer.example")
    spf = verdict(f"{MX}; spf=pass smtp.mailfrom=bob@newcomer.example",
                  f"{MX}; spf=fail smtp.mailfrom=bob@newcomer.example")
    assert (dmarc.status, spf.status) == ("fail", "fail")
    assert "disagree on dmarc" in dmarc.detail and "disagree on spf" in spf.detail


def test_one_mta_may_write_a_header_per_filter():
    # OpenDKIM and OpenDMARC behind one Postfix each add their own header with the same id.
    assert verdict(f"{MX}; dkim=pass header.d=newcomer.example",
                   f"{MX}; dmarc=pass header.from=newcomer.example").status == "pass"
    assert verdict(f"{MX}; spf=pass smtp.mailfrom=bob@newcomer.example",
                   f"{MX}; dmarc=fail header.from=newcomer.example").status == "fail"


@pytest.mark.parametrize("header", [
    f"{MX}; ;;; = =",
    # The MTA copied a hostile "x(y"@bank.example into a comment: the parser gives up.
    f'{MX}; spf=fail (sender "x(y"@bank.example) smtp.mailfrom=bank.example; dmarc=fail header.from=bank.example',
    # ... or, unquoted, silently reads the rest as a comment and loses the dmarc=fail.
    f"{MX}; spf=pass smtp.mailfrom=x(y@bank.example; dmarc=fail header.from=bank.example",
    # A result inside a value: the parser sees one result, the text states two.
    f"{MX}; dkim=pass header.d=bank.example;dmarc=fail header.from=bank.example header.b=spf=pass",
])
def test_a_trusted_header_that_cannot_be_read_for_certain_fails_closed(header):
    result = verdict(header, domain="bank.example")
    assert result.status == "fail" and "unreadable" in result.detail


def test_what_comments_and_quotes_say_is_not_a_result():
    quoted = f'{MX}; spf=pass smtp.mailfrom="x(y"@bank.example; dmarc=pass header.from=bank.example'
    # Gmail's ARC result repeats the other results inside a comment.
    arc = (f"{MX}; arc=pass (i=1 spf=pass spfdomain=bank.example dkim=pass dkdomain=bank.example dmarc=pass "
           "fromdomain=bank.example); dkim=pass header.i=@bank.example header.s=s1 header.b=abc; "
           "spf=pass (mx: domain of bob@bank.example designates 192.0.2.1 as permitted sender) "
           "smtp.mailfrom=bob@bank.example; dmarc=pass (p=REJECT sp=REJECT dis=NONE) header.from=bank.example")
    assert verdict(quoted, domain="bank.example").status == "pass"
    assert verdict(arc, domain="bank.example").status == "pass"


def test_dmarc_counts_only_for_the_from_address_ticketmail_uses():
    # Python reads this From as victim@bank.example; the MTA judged evil.example.
    parsed = parse_message(message(frm="victim@bank.example <attacker@evil.example>"))
    result = verdict(f"{MX}; dmarc=pass header.from=evil.example", domain=domain_of(parsed.from_addr))
    assert parsed.from_addr == "victim@bank.example"
    assert result.status == "fail" and "DMARC judged evil.example" in result.detail
    assert verdict(f"{MX}; dmarc=pass", domain="bank.example").status == "none"  # for whom? not for us


@pytest.mark.parametrize("results, from_domain, status", [
    ("dkim=pass header.d=evil.co.uk", "co.uk", "none"),  # a public suffix is nobody's organisation
    ("dkim=pass header.d=co.uk", "bank.co.uk", "none"),
    ("spf=pass smtp.mailfrom=bounce@evil.co.uk", "co.uk", "none"),
    ("dkim=pass header.d=evil.co.uk", "bank.co.uk", "none"),
    ("dkim=pass header.d=mail.bank.co.uk", "bank.co.uk", "pass"),
    ("dkim=pass header.d=mail.bank.example", "news.bank.example", "pass"),  # relaxed: one organisation
    ("spf=pass smtp.mailfrom=bounce@mail.bank.example", "news.bank.example", "pass"),
    ("dkim=pass header.d=evil.github.io", "victim.github.io", "none"),  # private suffixes count too
    ("dkim=pass header.i=@bank.example", "bank.example", "none"),  # the signing domain is header.d
])
def test_alignment_uses_the_public_suffix_list(results, from_domain, status):
    assert verdict(f"{MX}; {results}", domain=from_domain).status == status


def test_alignment_is_relaxed_but_not_loose():
    assert aligned("newcomer.example", "mail.newcomer.example") and aligned("NEWCOMER.example.", "newcomer.example")
    assert not aligned("comer.example", "newcomer.example") and not aligned("", "newcomer.example")
    assert not aligned("evil.co.uk", "co.uk") and not aligned("co.uk", "co.uk")


@pytest.mark.parametrize("address, separators, box", [
    ("Victim+1@Bank.Example", "+", "victim@bank.example"),
    ("victim+a+b@bank.example", "+", "victim@bank.example"),
    ("victim-news@bank.example", "+", "victim-news@bank.example"),
    ("victim-news@bank.example", "+-", "victim@bank.example"),
    ("victim+1@bank.example", "", "victim+1@bank.example"),
    ("+1@bank.example", "+", "+1@bank.example"),  # nothing left before the tag: kept whole
])
def test_a_mailbox_is_an_address_without_case_or_tag(address, separators, box):
    assert mailbox(address, separators) == box


def test_the_per_domain_cap_counts_the_registrable_domain():
    assert cap_domain("a@mail.bank.example") == cap_domain("b@news.bank.example") == "bank.example"
    assert cap_domain("a@evil.co.uk") == "evil.co.uk" and cap_domain("a@co.uk") == "co.uk"


def test_rate_caps():
    s = ChallengeSettings(per_sender_daily=3, per_domain_hourly=20, unauthenticated_hourly=30, total_hourly=200)
    assert over_cap(RecentChallenges(2, 19, 199, 29), s, authenticated=False) is None
    assert "per_sender_daily = 3" in over_cap(RecentChallenges(3, 0, 0), s, authenticated=True)
    assert "per_domain_hourly = 20" in over_cap(RecentChallenges(0, 20, 0), s, authenticated=True)
    assert "total_hourly = 200" in over_cap(RecentChallenges(0, 0, 200), s, authenticated=True)


def test_unauthenticated_senders_have_a_smaller_budget_of_their_own():
    s = ChallengeSettings(unauthenticated_hourly=30, total_hourly=200)
    flood = RecentChallenges(0, 0, 30, unauthenticated_hour=30)
    assert "unauthenticated_hourly = 30" in over_cap(flood, s, authenticated=False)
    assert over_cap(flood, s, authenticated=True) is None  # a flood of forged senders leaves the rest
    assert "total_hourly = 200" in over_cap(RecentChallenges(0, 0, 200, 0), s, authenticated=False)


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
