"""Migrations that move data: what was stored before is there after."""

from __future__ import annotations

import sqlite3


def test_sqlite_blobs_become_the_last_column_and_keep_their_bytes(tmp_path):
    """0007: SQLite keeps a zeroblob() out of memory only in a row's last column."""
    from alembic import command

    from storage.database import _alembic_config, upgrade

    url = f"sqlite+aiosqlite:///{tmp_path / 'old.db'}"
    command.upgrade(_alembic_config(url), "0006")
    raw, content = bytes(range(256)) * 3, b"\x00PDF\xff"
    with sqlite3.connect(tmp_path / "old.db") as old:
        old.execute("""INSERT INTO messages (id, dedup_key, status, from_addr, from_name, to_addrs, cc_addrs, subject,
                       text, html, raw, sha256, size, source, source_key, envelope_sender, envelope_recipient,
                       received_at) VALUES (1, 'k', 'ticket', 'a@example.com', '', '[]', '[]', 's', '', '', ?, 'h',
                       768, 'lmtp', '', '', '', '2026-01-01')""", (raw,))
        old.execute("""INSERT INTO attachments (id, message_id, filename, content_type, size, sha256, content, inline)
                       VALUES (1, 1, 'a.pdf', 'application/pdf', 5, 'h', ?, 0)""", (content,))
    upgrade(url)
    with sqlite3.connect(tmp_path / "old.db") as new:
        assert new.execute("SELECT raw FROM messages").fetchone() == (raw,)
        assert new.execute("SELECT content FROM attachments").fetchone() == (content,)
        for table, column in (("messages", "raw"), ("attachments", "content")):
            columns = new.execute(f"PRAGMA table_info({table})").fetchall()
            assert columns[-1][1:4] == (column, "BLOB", 1)  # name, type, NOT NULL
