"""tag bits: segments tested on the subscription row, broadcasts queued just ahead of sending

Each tag of a campaign gets a bit (``campaign_tags``) and each subscription keeps its tags
as those bits (``subscriptions.tag_bits``), in the audience index beside its status, so a
segment's count reads that index alone. Existing tags get their bits here, in name order.
``broadcasts.audience`` keeps the count a broadcast started from, since its messages are
now queued in batches while it sends.

Revision ID: 0007
Revises: 0006
"""

from alembic import op
import sqlalchemy as sa


revision = '0007'
down_revision = '0006'
branch_labels = None
depends_on = None

BITS = 63


def upgrade() -> None:
    op.create_table(
        'campaign_tags',
        sa.Column('campaign', sa.String(length=64), nullable=False),
        sa.Column('tag', sa.String(length=64), nullable=False),
        sa.Column('bit', sa.Integer(), nullable=True),
        sa.Column('created_at', sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint('campaign', 'tag', name=op.f('pk_campaign_tags')),
        sa.UniqueConstraint('campaign', 'bit', name='uq_campaign_tags_bit'),
    )
    with op.batch_alter_table('subscriptions', schema=None) as batch_op:
        batch_op.add_column(sa.Column('tag_bits', sa.BigInteger(), nullable=False,
                                      server_default='0'))
        batch_op.drop_index('ix_subscriptions_audience')
        batch_op.create_index('ix_subscriptions_audience',
                              ['campaign', 'channel', 'status', 'restricted', 'tag_bits'],
                              unique=False)
    with op.batch_alter_table('broadcasts', schema=None) as batch_op:
        batch_op.add_column(sa.Column('audience', sa.Integer(), nullable=True))

    conn = op.get_bind()
    tags = conn.execute(sa.text(
        "SELECT campaign, tag, min(created_at) FROM subscription_tags "
        "GROUP BY campaign, tag ORDER BY campaign, tag")).all()
    given: dict[str, int] = {}
    for campaign, tag, first in tags:
        bit = given.get(campaign, 0)
        given[campaign] = bit + 1
        conn.execute(sa.text(
            "INSERT INTO campaign_tags (campaign, tag, bit, created_at) "
            "VALUES (:campaign, :tag, :bit, :at)"),
            {"campaign": campaign, "tag": tag, "bit": bit if bit < BITS else None,
             "at": first})
        if bit < BITS:
            conn.execute(sa.text(
                "UPDATE subscriptions SET tag_bits = tag_bits | :value WHERE id IN "
                "(SELECT subscription_id FROM subscription_tags "
                "WHERE campaign = :campaign AND tag = :tag)"),
                {"value": 1 << bit, "campaign": campaign, "tag": tag})


def downgrade() -> None:
    with op.batch_alter_table('broadcasts', schema=None) as batch_op:
        batch_op.drop_column('audience')
    with op.batch_alter_table('subscriptions', schema=None) as batch_op:
        batch_op.drop_index('ix_subscriptions_audience')
        batch_op.create_index('ix_subscriptions_audience', ['campaign', 'channel', 'status'],
                              unique=False)
        batch_op.drop_column('tag_bits')
    op.drop_table('campaign_tags')
