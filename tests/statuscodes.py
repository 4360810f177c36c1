"""LMTP reply codes by name (RFC 5321 4.2, RFC 2033), so a test says which answer it expects.

Where a test checks the exact line the server sends, it imports that line from ingest/lmtp.py instead.
"""

from __future__ import annotations

READY = 220  # the greeting
CLOSING = 221  # goodbye after QUIT
OK = 250  # command accepted; after DATA: delivered (a ticket, held, ignored...)
START_DATA = 354  # send the message
UNAVAILABLE = 421  # shutting down, too many sessions, idle too long: the session is closed
TEMPFAIL = 451  # storage failed: the MTA retries
BUSY = 452  # too much mail in flight: the MTA retries
SYNTAX = 500  # command line too long or unknown
REFUSED = 550  # no such mailbox, or a sender the department refuses
TOO_BIG = 552  # over max_message_bytes

# Enhanced status codes (RFC 3463) the tests look for in a reply's text.
DELIVERED = b"2.0.0"
NO_MAILBOX = b"5.1.1"
NOT_AUTHORIZED = b"5.7.1"
STORAGE_FAILURE = b"4.3.0"

NOOP_OK = "250 OK"  # aiosmtpd's reply to NOOP
