"""console sessions: who is signed in to the organiser console

A session is kept by the SHA-256 of its id (the id itself lives only in the operator's
cookie), with the campaign and operator it belongs to and when it was last used, so idle
sessions expire and signing out ends one at once.

Revision ID: 0005
Revises: 0003
"""

from alembic import op
import sqlalchemy as sa


revision = '0005'
down_revision = '0004'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        'console_sessions',
        sa.Column('id_hash', sa.String(length=64), nullable=False),
        sa.Column('campaign', sa.String(length=64), nullable=False),
        sa.Column('operator', sa.String(length=200), nullable=False),
        sa.Column('created_at', sa.Float(), nullable=False),
        sa.Column('last_seen_at', sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint('id_hash', name=op.f('pk_console_sessions')),
    )
    op.create_index('ix_console_sessions_last_seen', 'console_sessions', ['last_seen_at'],
                    unique=False)


def downgrade() -> None:
    op.drop_index('ix_console_sessions_last_seen', table_name='console_sessions')
    op.drop_table('console_sessions')
