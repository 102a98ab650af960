"""tags and schedules: audience segments and scheduled broadcasts

``subscription_tags`` holds each subscription's tags (its primary key answers "has this
subscription tag X", ``ix_subscription_tags_segment`` lists who has tag X in a campaign and
channel); links carry the tags their joiners get; broadcasts keep their segment, when they
are due (``send_at``) and when they really started (``started_at``), with an index the
scheduler polls, and the keyed hash their queueing has reached (``hash_cursor``: queueing
walks the audience in hash order, which is the order of the outbox's recipient index).

Revision ID: 0006
Revises: 0003
"""

from alembic import op
import sqlalchemy as sa


revision = '0006'
down_revision = '0005'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        'subscription_tags',
        sa.Column('subscription_id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'),
                  nullable=False),
        sa.Column('tag', sa.String(length=64), nullable=False),
        sa.Column('campaign', sa.String(length=64), nullable=False),
        sa.Column('channel', sa.String(length=16), nullable=False),
        sa.Column('created_at', sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint('subscription_id', 'tag', name=op.f('pk_subscription_tags')),
    )
    op.create_index('ix_subscription_tags_segment', 'subscription_tags',
                    ['campaign', 'channel', 'tag', 'subscription_id'], unique=False)
    with op.batch_alter_table('links', schema=None) as batch_op:
        batch_op.add_column(sa.Column('tags', sa.Text(), nullable=True))
    with op.batch_alter_table('broadcasts', schema=None) as batch_op:
        batch_op.add_column(sa.Column('segment', sa.Text(), nullable=True))
        batch_op.add_column(sa.Column('send_at', sa.Float(), nullable=True))
        batch_op.add_column(sa.Column('started_at', sa.Float(), nullable=True))
        batch_op.add_column(sa.Column('hash_cursor', sa.String(length=64), nullable=True))
        batch_op.create_index('ix_broadcasts_due', ['status', 'send_at'], unique=False)


def downgrade() -> None:
    with op.batch_alter_table('broadcasts', schema=None) as batch_op:
        batch_op.drop_index('ix_broadcasts_due')
        batch_op.drop_column('hash_cursor')
        batch_op.drop_column('started_at')
        batch_op.drop_column('send_at')
        batch_op.drop_column('segment')
    with op.batch_alter_table('links', schema=None) as batch_op:
        batch_op.drop_column('tags')
    op.drop_index('ix_subscription_tags_segment', table_name='subscription_tags')
    op.drop_table('subscription_tags')
