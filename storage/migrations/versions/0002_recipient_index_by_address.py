"""recipient index keyed by address first

A STOPALL cancels a person's queued messages in every campaign: with the campaign first in
the index it could not be used for that and scanned the whole outbox inside the opt-out's
transaction. Address first serves both the one-campaign and the every-campaign cancel.

Revision ID: 0002
Revises: 0001
"""

from alembic import op


revision = '0002'
down_revision = '0001'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.drop_index('ix_messages_recipient', table_name='messages')
    op.create_index('ix_messages_recipient', 'messages',
                    ['channel', 'address_hash', 'campaign', 'status'], unique=False)


def downgrade() -> None:
    op.drop_index('ix_messages_recipient', table_name='messages')
    op.create_index('ix_messages_recipient', 'messages',
                    ['campaign', 'channel', 'address_hash', 'status'], unique=False)
