"""Challenge budget: caps and joining count the mailbox; waits remember authentication and caps

Revision ID: 0004
Revises: 0003

Rows from before keep their address as their mailbox (tags are not cut off here: two open challenges of
`victim+1@` and `victim+2@` would collide in the unique index), count as unauthenticated, and are not
marked capped: upgrading sends no challenge for mail that was held before it.
"""
from alembic import op
import sqlalchemy as sa


revision = '0004'
down_revision = '0003'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column('challenges', sa.Column('mailbox', sa.String(length=320), nullable=False, server_default=''))
    op.add_column('challenges', sa.Column('authenticated', sa.Boolean(), nullable=False,
                                          server_default=sa.false()))
    op.execute("UPDATE challenges SET mailbox = sender")
    op.drop_index('uq_challenges_open_sender', table_name='challenges')
    op.drop_index('ix_challenges_sender_created', table_name='challenges')
    op.create_index('uq_challenges_open_mailbox', 'challenges', ['mailbox'], unique=True,
                    sqlite_where=sa.text("state = 'open'"), postgresql_where=sa.text("state = 'open'"))
    op.create_index('ix_challenges_mailbox_created', 'challenges', ['mailbox', 'created_at'], unique=False)

    op.add_column('challenge_waits', sa.Column('mailbox', sa.String(length=320), nullable=False,
                                               server_default=''))
    op.add_column('challenge_waits', sa.Column('authenticated', sa.Boolean(), nullable=False,
                                               server_default=sa.false()))
    op.add_column('challenge_waits', sa.Column('capped', sa.Boolean(), nullable=False, server_default=sa.false()))
    op.execute("UPDATE challenge_waits SET mailbox = sender")
    op.create_index('ix_challenge_waits_mailbox', 'challenge_waits', ['mailbox'], unique=False)
    op.create_index('ix_challenge_waits_capped', 'challenge_waits', ['capped'], unique=False)


def downgrade() -> None:
    op.drop_index('ix_challenge_waits_capped', table_name='challenge_waits')
    op.drop_index('ix_challenge_waits_mailbox', table_name='challenge_waits')
    with op.batch_alter_table('challenge_waits') as batch:
        batch.drop_column('capped')
        batch.drop_column('authenticated')
        batch.drop_column('mailbox')
    op.drop_index('ix_challenges_mailbox_created', table_name='challenges')
    op.drop_index('uq_challenges_open_mailbox', table_name='challenges')
    with op.batch_alter_table('challenges') as batch:
        batch.drop_column('authenticated')
        batch.drop_column('mailbox')
    op.create_index('ix_challenges_sender_created', 'challenges', ['sender', 'created_at'], unique=False)
    op.create_index('uq_challenges_open_sender', 'challenges', ['sender'], unique=True,
                    sqlite_where=sa.text("state = 'open'"), postgresql_where=sa.text("state = 'open'"))
