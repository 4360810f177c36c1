"""Held mail keeps its rules verdict, so that its release sets the priority and tags the rules chose

Revision ID: 0005
Revises: 0004

Messages held before this have none: they are released as before, without the rules' priority and tags.
"""
from alembic import op
import sqlalchemy as sa


revision = '0005'
down_revision = '0004'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column('messages', sa.Column('verdict', sa.JSON(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('messages') as batch:
        batch.drop_column('verdict')
