"""A real Postfix in front of ticketmail, configured as the README says (tests/postfix.py).

What the MTA operator sees: Postfix's own log lines (status=sent with ticketmail's reply, deferred while
ticketmail is down), its queue, and what it answers at SMTP time. Postfix plays the part here, not the
database: one database kind."""

from __future__ import annotations

import grp
import os
import stat

import pytest

from ingest.lmtp import Limits, LMTPListener
from tests.challenge_helpers import SmtpSink, as_json
from tests.conftest import listening, one_database
from tests.ports import free_port
from tests.mail import message
from tests.postfix import Postfix, unavailable

ALICE, SUPPORT, SALES = "alice@customer.example", "support@xyzhosting.com", "sales@xyzhosting.com"
pytestmark = one_database


@pytest.fixture
def postfixes():
    """Start private Postfix instances (`postfixes(lmtp=..., ...)`); all are stopped at the end."""
    why = unavailable()
    if why:
        if os.environ.get("CI") == "true":
            pytest.fail(f"Postfix is required under CI=true: {why}")
        pytest.skip(why)
    started = []

    def start(lmtp: str, **options) -> Postfix:
        instance = Postfix(lmtp, **options)
        started.append(instance)
        return instance.start()

    yield start
    for instance in started:
        instance.stop()


@pytest.fixture
async def helpdesk(cli):
    """Support takes mail from anyone (Alice is a customer); Sales rejects unknown senders."""
    for argv in (("department", "add", "Support", "--address", SUPPORT, "--unknown-sender", "accept"),
                 ("department", "add", "Sales", "--address", SALES, "--unknown-sender", "reject")):
        code, _, err = await cli(*argv)
        assert code == 0, err


async def test_delivered_over_tcp_postfix_logs_status_sent_with_the_ticket(postfixes, pipeline, helpdesk, cli):
    async with listening(pipeline) as lmtp:
        postfix = postfixes(f"inet:127.0.0.1:{lmtp.port}")
        assert await postfix.send(ALICE, [SUPPORT], message(frm=ALICE, to=SUPPORT, subject="Printer on fire")) == {}
        [sent] = await postfix.wait_log(r"to=<support@xyzhosting\.com>, relay=127\.0\.0\.1\[127\.0\.0\.1\]:\d+, "
                                        r".*status=sent \((.*)\)$")
    assert sent.group(1).startswith("250 2.0.0 ") and sent.group(1).endswith("(ticket #1)"), sent.group(0)
    [ticket] = await as_json(cli, "tickets", "list")
    assert (ticket["number"], ticket["subject"]) == (1, "Printer on fire")


async def test_ticketmail_down_is_deferred_and_a_flush_delivers_it_exactly_once(postfixes, pipeline, helpdesk, cli):
    port = free_port()
    postfix = postfixes(f"inet:127.0.0.1:{port}")
    await postfix.send(ALICE, [SUPPORT], message(frm=ALICE, to=SUPPORT, subject="While you were down"))
    await postfix.wait_log(r"to=<support@xyzhosting\.com>, .*status=deferred \(connect to 127\.0\.0\.1.*refused\)")
    assert "support@xyzhosting.com" in postfix.queue_listing()
    assert await as_json(cli, "tickets", "list") == []

    listener = LMTPListener(pipeline, host="127.0.0.1", port=port, limits=Limits())
    await listener.start()
    try:
        postfix.flush()
        await postfix.wait_log(r"to=<support@xyzhosting\.com>, .*status=sent \(250 ")
        postfix.flush()  # nothing left to send again
        assert "Mail queue is empty" in postfix.queue_listing()
    finally:
        await listener.stop(grace=5)
    assert [t["subject"] for t in await as_json(cli, "tickets", "list")] == ["While you were down"]


async def test_an_unknown_recipient_is_refused_at_smtp_time_and_nothing_bounces(postfixes, pipeline, helpdesk, cli):
    """Recipient verification (README): Postfix probes ticketmail's RCPT before it accepts a recipient, so a
    client that is not trusted (here: 127.0.0.1 is outside mynetworks) is refused while still connected."""
    sink = await SmtpSink().start()
    try:
        async with listening(pipeline) as lmtp:
            postfix = postfixes(f"inet:127.0.0.1:{lmtp.port}", sink_port=sink.port, main=(
                "mynetworks = 192.0.2.1/32\n"
                "smtpd_recipient_restrictions = reject_unauth_destination, reject_unverified_recipient\n"
                "unverified_recipient_reject_code = 550\n"))
            refused = await postfix.send(ALICE, ["nobody@xyzhosting.com", SUPPORT],
                                         message(frm=ALICE, to=SUPPORT, subject="Hello"))
            code, text = refused["nobody@xyzhosting.com"]
            assert code == 550 and b"Recipient address rejected" in text and b"5.1.1" in text, text
            assert list(refused) == ["nobody@xyzhosting.com"]  # Support was verified and accepted
            await postfix.wait_log(r"to=<support@xyzhosting\.com>, relay=127\.0\.0\.1.*status=sent \(250 ")
            assert "Mail queue is empty" in postfix.queue_listing()  # no bounce waits to go out
        assert "nobody@xyzhosting.com" not in postfix.log().split("NOQUEUE: reject")[-1].split("\n", 1)[1]
        assert sink.received == []  # and none went out
    finally:
        await sink.stop()
    assert [t["subject"] for t in await as_json(cli, "tickets", "list")] == ["Hello"]


async def test_over_the_unix_socket_with_the_default_mode_and_group_postfix(postfixes, pipeline, helpdesk, cli):
    """As the README says: socket in Postfix's private/ folder, socket_group = "postfix", mode 0660."""
    postfix = postfixes("unix:private/ticketmail")
    path = postfix.queue / "private" / "ticketmail"
    listener = LMTPListener(pipeline, socket=str(path), socket_gid=grp.getgrnam("postfix").gr_gid, limits=Limits())
    await listener.start()
    try:
        info = path.stat()
        assert stat.S_ISSOCK(info.st_mode) and stat.S_IMODE(info.st_mode) == 0o660
        assert grp.getgrgid(info.st_gid).gr_name == "postfix"
        await postfix.send(ALICE, [SUPPORT], message(frm=ALICE, to=SUPPORT, subject="Over the socket"))
        [sent] = await postfix.wait_log(r"to=<support@xyzhosting\.com>, relay=.*private/ticketmail.*status=sent \((.*)\)$")
    finally:
        await listener.stop(grace=5)
    assert "Permission denied" not in postfix.log()
    assert sent.group(1).endswith("(ticket #1)")
    assert not path.exists()  # removed when ticketmail stops


async def test_a_rejecting_department_makes_postfix_bounce_with_ticketmails_text(postfixes, pipeline, helpdesk, cli):
    sink = await SmtpSink().start()
    try:
        async with listening(pipeline) as lmtp:
            postfix = postfixes(f"inet:127.0.0.1:{lmtp.port}", sink_port=sink.port)
            stranger = "stranger@elsewhere.example"
            await postfix.send(stranger, [SALES], message(frm=stranger, to=SALES, subject="Buy now"))
            [bounced] = await postfix.wait_log(r"to=<sales@xyzhosting\.com>, .*status=bounced \((.*)\)$")
            [bounce] = await sink.wait_for(1)
    finally:
        await sink.stop()
    assert "550 5.7.1 <sales@xyzhosting.com>" in bounced.group(1)
    assert bounce.rcpt_tos == [stranger] and bounce.mail_from == "<>"  # a bounce: the null sender
    text = bounce.content.decode(errors="replace")
    assert "550 5.7.1 <sales@xyzhosting.com>" in text and "unknown sender stranger@elsewhere.example rejected" in text


async def test_a_message_over_the_size_limit_is_refused_at_mail_from(postfixes, pipeline, helpdesk, cli):
    """ticketmail advertises its limit (EHLO SIZE); Postfix's lmtp client reads it and bounces the message
    without sending it (a client that sends SIZE= with MAIL FROM gets 552 there: tests/test_lmtp_limits.py)."""
    sink = await SmtpSink().start()
    try:
        async with listening(pipeline, max_message_bytes=20_000) as lmtp:
            postfix = postfixes(f"inet:127.0.0.1:{lmtp.port}", sink_port=sink.port)
            await postfix.send(ALICE, [SUPPORT], message(frm=ALICE, to=SUPPORT, subject="Big", body="x" * 40_000))
            [bounced] = await postfix.wait_log(r"to=<support@xyzhosting\.com>, .*dsn=5\.3\.4, status=bounced \((.*)\)$")
            await sink.wait_for(1)  # the bounce to Alice
    finally:
        await sink.stop()
    assert bounced.group(1).startswith("message size ") and "exceeds size limit 20000 of server 127.0.0.1" in bounced.group(1)
    assert await as_json(cli, "tickets", "list") == []
