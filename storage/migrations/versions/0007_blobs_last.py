"""SQLite: the raw message and attachment contents become the last column of their tables

Revision ID: 0007
Revises: 0006

SQLite writes a zeroblob() without holding it in memory only when it is the row's last column; in the
middle it builds the whole record, so storing a 24 MiB message took twice its size in memory (the
writer fills large blobs after the insert through the blob API: storage/store.py, defer_large_blob).
Each column is added again at the end, filled, and the old one dropped (SQLite 3.35 or later). A column
added to these tables later must keep them last. PostgreSQL: nothing to do.
"""
from alembic import op
import sqlalchemy as sa


revision = '0007'
down_revision = '0006'
branch_labels = None
depends_on = None

BLOBS = (('messages', 'raw'), ('attachments', 'content'))


def _move_last(table: str, column: str) -> None:
    op.add_column(table, sa.Column(f'{column}_last', sa.LargeBinary(), nullable=False, server_default=sa.text("x''")))
    op.execute(f'UPDATE {table} SET {column}_last = {column}')
    op.execute(f'ALTER TABLE {table} DROP COLUMN {column}')
    op.execute(f'ALTER TABLE {table} RENAME COLUMN {column}_last TO {column}')


def upgrade() -> None:
    if op.get_bind().dialect.name == 'sqlite':
        for table, column in BLOBS:
            _move_last(table, column)


def downgrade() -> None:
    pass  # the order of columns means nothing to the schema
