"""Text search over tickets' messages, and the index the ticket list pages by

Revision ID: 0010
Revises: 0009

The panel's ticket list searches each message's subject, sender (name and address) and text body, and
pages newest first by (updated_at, id) without OFFSET (storage/ticket_search.py).

SQLite: an FTS5 table `message_search` with the messages table as its external content (the text is not
stored twice), kept current by triggers on every insert, delete and change of the searched columns, so
every writer (the pipeline, a release, a purge) is covered without knowing of it. The triggers live on
`messages`: a later migration that rebuilds that table (a batch operation) must create them again.
PostgreSQL: an expression GIN index over to_tsvector('simple', ...) of the same columns, the body cut to
its first 100,000 characters (a tsvector is at most 1 MB: a longer body could make the insert fail).
The queries must use the very same expression to use the index (storage/ticket_search.py, PG_DOCUMENT).

Existing rows are indexed here (FTS5 'rebuild'; CREATE INDEX reads the table).
"""
from alembic import op


revision = '0010'
down_revision = '0009'
branch_labels = None
depends_on = None

COLUMNS = "subject, from_name, from_addr, text"
PG_DOCUMENT = ("to_tsvector('simple'::regconfig, subject || ' ' || from_name || ' ' || from_addr || ' ' "
               "|| left(\"text\", 100000))")

SQLITE_UP = [
    f"CREATE VIRTUAL TABLE message_search USING fts5({COLUMNS}, content='messages', content_rowid='id')",
    f"""CREATE TRIGGER message_search_insert AFTER INSERT ON messages BEGIN
        INSERT INTO message_search (rowid, {COLUMNS})
        VALUES (new.id, new.subject, new.from_name, new.from_addr, new.text);
    END""",
    # An external-content table forgets a row by being told exactly what it had indexed: the old values.
    f"""CREATE TRIGGER message_search_delete AFTER DELETE ON messages BEGIN
        INSERT INTO message_search (message_search, rowid, {COLUMNS})
        VALUES ('delete', old.id, old.subject, old.from_name, old.from_addr, old.text);
    END""",
    # Only when a searched column is set: the writer's blob updates and status changes cost nothing.
    f"""CREATE TRIGGER message_search_update AFTER UPDATE OF {COLUMNS} ON messages BEGIN
        INSERT INTO message_search (message_search, rowid, {COLUMNS})
        VALUES ('delete', old.id, old.subject, old.from_name, old.from_addr, old.text);
        INSERT INTO message_search (rowid, {COLUMNS})
        VALUES (new.id, new.subject, new.from_name, new.from_addr, new.text);
    END""",
    "INSERT INTO message_search (message_search) VALUES ('rebuild')",
]


def upgrade() -> None:
    if op.get_bind().dialect.name == 'sqlite':
        for statement in SQLITE_UP:
            op.execute(statement)
    else:
        op.execute(f"CREATE INDEX ix_messages_search ON messages USING gin (({PG_DOCUMENT}))")
    op.create_index('ix_tickets_updated', 'tickets', ['updated_at', 'id'])


def downgrade() -> None:
    op.drop_index('ix_tickets_updated', table_name='tickets')
    if op.get_bind().dialect.name == 'sqlite':
        for trigger in ('insert', 'delete', 'update'):
            op.execute(f"DROP TRIGGER message_search_{trigger}")
        op.execute("DROP TABLE message_search")
    else:
        op.execute("DROP INDEX ix_messages_search")
