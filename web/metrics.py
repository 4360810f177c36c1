"""`/metrics` in Prometheus format, on a listener of its own (`[metrics]`, off by default), never on the
public web port: the counts say how much mail arrives and from which IMAP accounts.

Counted in this process, where it sees each result: the pipeline reports every delivery's outcome and
every writer commit (ingest/pipeline.py; the writer process counts nothing); the LMTP listener's sessions
(open, refused) and the IMAP bridge's errors and reconnects are read from them at scrape time. What every process sharing the database should agree on (held mail,
challenges by state) is read from the database at scrape time. Everything lives in a registry of its
own, so each `Metrics` (each test) starts from zero.
"""

from __future__ import annotations

import logging

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily

from storage import health

log = logging.getLogger(__name__)

# The challenge steps of ingest/chain.py's CHAIN, by what their decision means for the challenge mail:
# sent (one went out), or why none did.
CHALLENGE_STEPS = {
    "challenge": "sent",
    "challenge_suppressed": "suppressed",  # automatic mail, robots, our own mail, spam
    "challenge_unauthenticated": "unauthenticated",
    "challenge_capped": "rate_cap",
    "challenge_joined": "joined",
    "challenge_without_address": "no_address",
}


class Metrics:
    def __init__(self):
        self.registry = r = CollectorRegistry()
        self.received = Counter("ticketmail_messages_received", "Deliveries by source and outcome",
                                ["source", "outcome"], registry=r)
        self.latency = Histogram("ticketmail_delivery_seconds", "From the pipeline's entry to the commit",
                                 ["source"], registry=r,
                                 buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30))
        self.group_size = Histogram("ticketmail_writer_group_size", "Deliveries committed together",
                                    registry=r, buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256))
        self.challenges_sent = Counter("ticketmail_challenges_sent", "Held messages whose sender was challenged (the mail "
                                       "queued; ticketmail_challenge_mails counts those sent)",
                                       registry=r)
        self.challenges_suppressed = Counter("ticketmail_challenges_suppressed",
                                             "Held messages that got no challenge mail, by reason",
                                             ["reason"], registry=r)
        self.lmtp_open = Gauge("ticketmail_lmtp_sessions_open", "LMTP connections open", registry=r)
        self._counted = _Counted()  # what the listener and the bridge count themselves
        r.register(self._counted)
        self.held = Gauge("ticketmail_held_messages", "Messages held (read from the database)", registry=r)
        self.challenges = Gauge("ticketmail_challenges", "Challenges by state (read from the database)",
                                ["state"], registry=r)
        self.challenge_mails = Gauge("ticketmail_challenge_mails", "Challenge mails by state: pending, sent, "
                                     "failed (read from the database)", ["state"], registry=r)
        self.database_up = Gauge("ticketmail_database_up", "1 if the database answered this scrape", registry=r)

    # --- what the pipeline reports (ingest/pipeline.py) ---

    def delivered(self, source: str, outcome: str, seconds: float, step: str) -> None:
        """One delivery: `step` is the CHAIN step that decided it ("" when none did now)."""
        source = "imap" if source.startswith("imap:") else source  # the account: in the log line
        self.received.labels(source, outcome).inc()
        self.latency.labels(source).observe(seconds)
        challenge = CHALLENGE_STEPS.get(step)
        if challenge == "sent":
            self.challenges_sent.inc()
        elif challenge:
            self.challenges_suppressed.labels(challenge).inc()

    def committed(self, size: int) -> None:
        self.group_size.observe(size)

    # --- the listeners ---

    def watch_lmtp(self, listener) -> None:
        """Open and refused sessions, read from the listener at scrape time (ingest/lmtp.LMTPListener)."""
        self.lmtp_open.set_function(lambda: len(listener.sessions))
        self._counted.lmtp = listener

    def watch_bridge(self, supervisor) -> None:
        """IMAP errors and reconnects per account, read from the bridge at scrape time (bridge/supervisor.py)."""
        self._counted.bridge = supervisor

    async def scrape(self, db) -> bytes:
        try:
            counts = await db.run(health.gauges)
        except Exception as e:  # noqa: BLE001 - the rest is still worth scraping
            log.warning("metrics: the database did not answer: %s", str(e).splitlines()[0] if str(e) else e)
            self.database_up.set(0)
        else:
            self.database_up.set(1)
            self.held.set(counts["held"])
            for gauge, states, by_state in ((self.challenges, CHALLENGE_STATES, counts["challenges"]),
                                            (self.challenge_mails, MAIL_STATES, counts["challenge_mails"])):
                for state in (*states, *(set(by_state) - set(states))):  # every state, 0 when none
                    gauge.labels(state).set(by_state.get(state, 0))
        return generate_latest(self.registry)


CHALLENGE_STATES = ("open", "confirmed", "expired", "closed")  # storage/models.Challenge.state
MAIL_STATES = ("pending", "sent", "failed")  # storage/models.Outbox.state


class _Counted:
    """A collector of the counts the LMTP listener and the IMAP supervisor keep, read at each scrape."""

    def __init__(self):
        self.lmtp = self.bridge = None

    def collect(self):
        if self.lmtp is not None:
            yield CounterMetricFamily("ticketmail_lmtp_sessions_refused",
                                      "LMTP connections refused at the greeting: max_sessions open already",
                                      value=self.lmtp.refused)
        if self.bridge is not None:
            reconnects, config_errors = self.bridge.reconnects, self.bridge.config_errors
            errors = CounterMetricFamily("ticketmail_imap_errors", "IMAP sync errors by account", labels=["account"])
            again = CounterMetricFamily("ticketmail_imap_reconnects", "IMAP reconnections by account",
                                        labels=["account"])
            for name in sorted(set(reconnects) | set(config_errors)):
                errors.add_metric([name], reconnects[name] + config_errors[name])
                again.add_metric([name], reconnects[name])
            yield errors
            yield again


METRICS = web.AppKey("metrics", Metrics)
DB = web.AppKey("metrics_db", object)


async def _metrics(request: web.Request) -> web.Response:
    body = await request.app[METRICS].scrape(request.app[DB])
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST, "Cache-Control": "no-store"})


def create_app(metrics: Metrics, db) -> web.Application:
    """The metrics listener's app: /metrics and nothing else."""
    app = web.Application()
    app[METRICS], app[DB] = metrics, db
    app.router.add_get("/metrics", _metrics)
    return app

