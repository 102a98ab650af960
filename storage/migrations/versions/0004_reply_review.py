"""reply review: why a reply was read as it was, and what a person decided about it

Each inbound reply keeps the classifier's ``rule`` beside its ``intent``, so an operator can
see why it was acted on or flagged. A flagged reply waits for a person: ``resolution``
(``opted_out`` or ``not_an_opt_out``), who decided (``resolved_by``), when (``resolved_at``)
and an optional note. The index serves the review queue and its /metrics gauges (flagged,
unresolved, per campaign, oldest first).

Revision ID: 0004
Revises: 0003
"""

from alembic import op
import sqlalchemy as sa


revision = '0004'
down_revision = '0003'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('inbound_messages', schema=None) as batch_op:
        batch_op.add_column(sa.Column('rule', sa.String(length=120), nullable=True))
        batch_op.add_column(sa.Column('resolution', sa.String(length=32), nullable=True))
        batch_op.add_column(sa.Column('resolved_by', sa.String(length=200), nullable=True))
        batch_op.add_column(sa.Column('resolved_at', sa.Float(), nullable=True))
        batch_op.add_column(sa.Column('resolution_note', sa.Text(), nullable=True))
        batch_op.create_index('ix_inbound_review', ['campaign', 'flag', 'resolution', 'at'],
                              unique=False)


def downgrade() -> None:
    with op.batch_alter_table('inbound_messages', schema=None) as batch_op:
        batch_op.drop_index('ix_inbound_review')
        batch_op.drop_column('resolution_note')
        batch_op.drop_column('resolved_at')
        batch_op.drop_column('resolved_by')
        batch_op.drop_column('resolution')
        batch_op.drop_column('rule')
