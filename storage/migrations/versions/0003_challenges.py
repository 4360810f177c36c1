"""Challenge-response: challenges, outgoing mail

Revision ID: 0003
Revises: 
"""
from alembic import op
import sqlalchemy as sa


revision = '0003'
down_revision = ''
branch_labels = None
depends_on = None


def upgrade() -> None:
    pass


def downgrade() -> None:
    pass
