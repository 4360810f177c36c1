"""The admin's side of held mail: `held release` closes the sender's challenge, `held discard [--block]`,
`held unblock`."""

from __future__ import annotations

from tests.challenge_helpers import BOB, as_json, desk  # noqa: F401 - desk is a fixture
from tests.mail import message


async def link_status(desk, link) -> int:
    async with desk.http.get(link) as response:
        return response.status


async def test_release_by_admin_closes_the_senders_pending_challenge(desk, cli):
    await desk.deliver(message(frm=BOB, subject="one"))
    await desk.deliver(message(frm=BOB, subject="two"))
    mail = await desk.challenge()
    first = (await as_json(cli, "held", "list"))[0]
    code, out, err = await cli("held", "release", str(first["id"]))
    assert code == 0, err
    assert out.startswith(f"message {first['id']} released as ticket #1")
    assert "pending challenge closed" in out and "1 more" in out
    assert await link_status(desk, mail.link) == 410  # the sender is a customer now: nothing to confirm
    [still] = await as_json(cli, "held", "list")
    assert still["subject"] == "two"
    code, _, err = await cli("held", "release", str(first["id"]))
    assert code == 1 and "is not held" in err and err.count("\n") == 1


async def test_discard_drops_the_message_and_block_stops_the_sender(desk, cli):
    await desk.deliver(message(frm=BOB, subject="spam 1"))
    mail = await desk.challenge()
    [held] = await as_json(cli, "held", "list")
    code, out, err = await cli("held", "discard", str(held["id"]), "--block")
    assert code == 0, err
    assert out.strip() == f"message {held['id']} discarded; {BOB} blocked"
    assert await as_json(cli, "held", "list") == []
    assert await link_status(desk, mail.link) == 410

    outcome = await desk.deliver(message(frm=BOB, subject="spam 2"))
    assert outcome.status == "deleted" and "is blocked" in outcome.reason
    await desk.outbox.run_once()
    assert len(desk.sink.received) == 1 and await as_json(cli, "held", "list") == []

    code, out, _ = await cli("held", "unblock", BOB.upper())
    assert code == 0 and out.strip() == f"{BOB} unblocked"
    assert (await desk.deliver(message(frm=BOB, subject="real question"))).status == "held"
    await desk.challenge(2)  # a new challenge: the blocked one stays closed
    code, _, err = await cli("held", "unblock", BOB)
    assert code == 1 and "is not blocked" in err


async def test_discard_without_block_keeps_challenging(desk, cli):
    await desk.deliver(message(frm=BOB, subject="one"))
    mail = await desk.challenge()
    [held] = await as_json(cli, "held", "list")
    code, out, _ = await cli("held", "discard", str(held["id"]))
    assert code == 0 and out.strip() == f"message {held['id']} discarded"
    assert await link_status(desk, mail.link) == 200  # the challenge stays open for later mail
    code, _, err = await cli("held", "discard", "999")
    assert code == 1 and "no message 999" in err


async def test_a_challenge_closed_before_it_went_out_is_never_sent(desk, cli):
    await desk.outbox.stop()  # the mail is still in the outbox when the admin acts
    await desk.deliver(message(frm=BOB, subject="spam"))
    [held] = await as_json(cli, "held", "list")
    assert (await cli("held", "discard", str(held["id"]), "--block"))[0] == 0
    assert await desk.outbox.run_once() == 0
    swept = await desk.sweeper.run_once()
    assert swept.given_up == 1 and desk.sink.received == []
