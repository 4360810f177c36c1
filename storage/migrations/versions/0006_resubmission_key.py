"""Resubmissions: the same Message-ID, department and body again is the same message

Revision ID: 0006
Revises: 0005

Messages stored before this have no key: a resubmission of one of them is stored as a message of its own.
"""
from alembic import op
import sqlalchemy as sa


revision = '0006'
down_revision = '0005'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column('messages', sa.Column('resubmission_key', sa.String(length=64), nullable=True))
    op.create_index('ix_messages_resubmission_key', 'messages', ['resubmission_key'], unique=True)


def downgrade() -> None:
    op.drop_index('ix_messages_resubmission_key', table_name='messages')
    with op.batch_alter_table('messages') as batch:
        batch.drop_column('resubmission_key')
