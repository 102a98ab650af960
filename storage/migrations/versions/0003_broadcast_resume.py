"""broadcast resume: when a paused broadcast was last resumed

A broadcast that paused itself on too many failures can be resumed by an operator. From then
on the failure rule judges only the messages handed to a provider after ``resumed_at``, so
the failures that caused the pause (already looked at) do not pause it again at once.

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
    with op.batch_alter_table('broadcasts', schema=None) as batch_op:
        batch_op.add_column(sa.Column('resumed_at', sa.Float(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('broadcasts', schema=None) as batch_op:
        batch_op.drop_column('resumed_at')
