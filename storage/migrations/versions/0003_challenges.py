"""Challenge-response: challenges and outgoing mail

Revision ID: 0003
Revises: 0002
"""
from alembic import op
import sqlalchemy as sa


revision = '0003'
down_revision = '0002'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('challenges',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('token_hash', sa.String(length=64), nullable=False),
    sa.Column('sender', sa.String(length=320), nullable=False),
    sa.Column('domain', sa.String(length=255), nullable=False),
    sa.Column('department_id', sa.Integer(), nullable=False),
    sa.Column('state', sa.String(length=20), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('expires_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('used_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('closed_reason', sa.Text(), nullable=False),
    sa.Column('tickets', sa.JSON(), nullable=False),
    sa.Column('mail_id', sa.String(length=998), nullable=False),
    sa.ForeignKeyConstraint(['department_id'], ['departments.id'], ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('token_hash')
    )
    op.create_index('uq_challenges_open_sender', 'challenges', ['sender'], unique=True,
                    sqlite_where=sa.text("state = 'open'"), postgresql_where=sa.text("state = 'open'"))
    op.create_index('ix_challenges_sender_created', 'challenges', ['sender', 'created_at'], unique=False)
    op.create_index('ix_challenges_domain_created', 'challenges', ['domain', 'created_at'], unique=False)
    op.create_index('ix_challenges_created', 'challenges', ['created_at'], unique=False)

    op.create_table('challenge_waits',
    sa.Column('message_id', sa.Integer(), nullable=False),
    sa.Column('sender', sa.String(length=320), nullable=False),
    sa.Column('challenge_id', sa.Integer(), nullable=True),
    sa.ForeignKeyConstraint(['challenge_id'], ['challenges.id'], ondelete='SET NULL'),
    sa.ForeignKeyConstraint(['message_id'], ['messages.id'], ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('message_id')
    )
    op.create_index('ix_challenge_waits_sender', 'challenge_waits', ['sender'], unique=False)
    op.create_index('ix_challenge_waits_challenge_id', 'challenge_waits', ['challenge_id'], unique=False)

    op.create_table('outbox',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('challenge_id', sa.Integer(), nullable=True),
    sa.Column('held_message_id', sa.Integer(), nullable=True),
    sa.Column('mail_from', sa.String(length=320), nullable=False),
    sa.Column('rcpt_to', sa.String(length=320), nullable=False),
    sa.Column('mail_id', sa.String(length=998), nullable=False),
    sa.Column('content', sa.LargeBinary(), nullable=False),
    sa.Column('state', sa.String(length=20), nullable=False),
    sa.Column('attempts', sa.Integer(), nullable=False),
    sa.Column('next_attempt_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('expires_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('sent_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('last_error', sa.Text(), nullable=False),
    sa.ForeignKeyConstraint(['challenge_id'], ['challenges.id'], ondelete='SET NULL'),
    sa.ForeignKeyConstraint(['held_message_id'], ['messages.id'], ondelete='SET NULL'),
    sa.PrimaryKeyConstraint('id')
    )
    op.create_index('ix_outbox_challenge_id', 'outbox', ['challenge_id'], unique=False)
    op.create_index('ix_outbox_due', 'outbox', ['state', 'next_attempt_at'], unique=False)

    op.create_table('blocked_senders',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('address', sa.String(length=320), nullable=False),
    sa.Column('reason', sa.Text(), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('address')
    )


def downgrade() -> None:
    op.drop_table('blocked_senders')
    op.drop_index('ix_outbox_due', table_name='outbox')
    op.drop_index('ix_outbox_challenge_id', table_name='outbox')
    op.drop_table('outbox')
    op.drop_index('ix_challenge_waits_challenge_id', table_name='challenge_waits')
    op.drop_index('ix_challenge_waits_sender', table_name='challenge_waits')
    op.drop_table('challenge_waits')
    op.drop_index('ix_challenges_created', table_name='challenges')
    op.drop_index('ix_challenges_domain_created', table_name='challenges')
    op.drop_index('ix_challenges_sender_created', table_name='challenges')
    op.drop_index('uq_challenges_open_sender', table_name='challenges')
    op.drop_table('challenges')
