"""initial schema

Revision ID: 0001
Revises:
Create Date: 2026-11-23 08:43:44.897151
"""

from alembic import op
import sqlalchemy as sa


revision = '0001'
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:

    op.create_table('audit_events',
    sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), autoincrement=True, nullable=False),
    sa.Column('campaign', sa.String(length=64), nullable=False),
    sa.Column('seq', sa.Integer(), nullable=False),
    sa.Column('at', sa.Float(), nullable=False),
    sa.Column('actor', sa.String(length=200), nullable=False),
    sa.Column('action', sa.String(length=64), nullable=False),
    sa.Column('subject', sa.String(length=200), nullable=False),
    sa.Column('detail', sa.Text(), nullable=False),
    sa.Column('prev_hash', sa.String(length=64), nullable=False),
    sa.Column('hash', sa.String(length=64), nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_audit_events')),
    sa.UniqueConstraint('campaign', 'seq', name='uq_audit_events_seq')
    )
    op.create_table('audit_heads',
    sa.Column('campaign', sa.String(length=64), nullable=False),
    sa.Column('seq', sa.Integer(), nullable=False),
    sa.Column('hash', sa.String(length=64), nullable=False),
    sa.PrimaryKeyConstraint('campaign', name=op.f('pk_audit_heads'))
    )
    op.create_table('broadcasts',
    sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), autoincrement=True, nullable=False),
    sa.Column('campaign', sa.String(length=64), nullable=False),
    sa.Column('channel', sa.String(length=16), nullable=False),
    sa.Column('text', sa.Text(), nullable=False),
    sa.Column('subject', sa.Text(), nullable=True),
    sa.Column('status', sa.String(length=16), nullable=False),
    sa.Column('cursor', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('upper', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('eligible', sa.Integer(), nullable=False),
    sa.Column('excluded', sa.Text(), nullable=False),
    sa.Column('created_by', sa.String(length=200), nullable=False),
    sa.Column('created_at', sa.Float(), nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_broadcasts'))
    )
    with op.batch_alter_table('broadcasts', schema=None) as batch_op:
        batch_op.create_index('ix_broadcasts_campaign', ['campaign'], unique=False)

    op.create_table('campaigns',
    sa.Column('slug', sa.String(length=64), nullable=False),
    sa.Column('name', sa.Text(), nullable=False),
    sa.Column('imprint', sa.Text(), nullable=False),
    sa.Column('consent_text', sa.Text(), nullable=False),
    sa.Column('consent_text_version', sa.String(length=16), nullable=False),
    sa.Column('updated_at', sa.Float(), nullable=False),
    sa.PrimaryKeyConstraint('slug', name=op.f('pk_campaigns'))
    )
    op.create_table('consent_events',
    sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), autoincrement=True, nullable=False),
    sa.Column('campaign', sa.String(length=64), nullable=False),
    sa.Column('channel', sa.String(length=16), nullable=False),
    sa.Column('address', sa.String(length=320), nullable=True),
    sa.Column('address_hash', sa.String(length=64), nullable=False),
    sa.Column('at', sa.Float(), nullable=False),
    sa.Column('event', sa.String(length=32), nullable=False),
    sa.Column('method', sa.String(length=32), nullable=True),
    sa.Column('source', sa.Text(), nullable=True),
    sa.Column('evidence', sa.Text(), nullable=True),
    sa.Column('consent_text_version', sa.String(length=16), nullable=True),
    sa.Column('actor', sa.String(length=200), nullable=False),
    sa.Column('link_id', sa.String(length=64), nullable=True),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_consent_events'))
    )
    with op.batch_alter_table('consent_events', schema=None) as batch_op:
        batch_op.create_index('ix_consent_events_subject', ['campaign', 'channel', 'address_hash'], unique=False)

    op.create_table('idempotency_keys',
    sa.Column('campaign', sa.String(length=64), nullable=False),
    sa.Column('key', sa.String(length=200), nullable=False),
    sa.Column('request_hash', sa.String(length=64), nullable=False),
    sa.Column('status_code', sa.Integer(), nullable=False),
    sa.Column('body', sa.Text(), nullable=False),
    sa.Column('created_at', sa.Float(), nullable=False),
    sa.PrimaryKeyConstraint('campaign', 'key', name=op.f('pk_idempotency_keys'))
    )
    op.create_table('inbound_messages',
    sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), autoincrement=True, nullable=False),
    sa.Column('campaign', sa.String(length=64), nullable=False),
    sa.Column('channel', sa.String(length=16), nullable=False),
    sa.Column('from_address', sa.String(length=320), nullable=True),
    sa.Column('address_hash', sa.String(length=64), nullable=False),
    sa.Column('text', sa.Text(), nullable=True),
    sa.Column('intent', sa.String(length=32), nullable=False),
    sa.Column('flag', sa.String(length=32), nullable=True),
    sa.Column('provider_event_id', sa.String(length=200), nullable=True),
    sa.Column('at', sa.Float(), nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_inbound_messages'))
    )
    with op.batch_alter_table('inbound_messages', schema=None) as batch_op:
        batch_op.create_index('ix_inbound_campaign', ['campaign', 'at'], unique=False)
        batch_op.create_index('ix_inbound_subject', ['campaign', 'channel', 'address_hash'], unique=False)

    op.create_table('links',
    sa.Column('id', sa.String(length=64), nullable=False),
    sa.Column('campaign', sa.String(length=64), nullable=False),
    sa.Column('channel', sa.String(length=16), nullable=False),
    sa.Column('name', sa.String(length=200), nullable=False),
    sa.Column('url', sa.Text(), nullable=False),
    sa.Column('telegram_chat_id', sa.String(length=32), nullable=True),
    sa.Column('expires_at', sa.Float(), nullable=True),
    sa.Column('member_limit', sa.Integer(), nullable=True),
    sa.Column('revoked_at', sa.Float(), nullable=True),
    sa.Column('joins', sa.Integer(), nullable=False),
    sa.Column('created_by', sa.String(length=200), nullable=False),
    sa.Column('created_at', sa.Float(), nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_links'))
    )
    with op.batch_alter_table('links', schema=None) as batch_op:
        batch_op.create_index('ix_links_campaign', ['campaign'], unique=False)

    op.create_table('messages',
    sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), autoincrement=True, nullable=False),
    sa.Column('campaign', sa.String(length=64), nullable=False),
    sa.Column('channel', sa.String(length=16), nullable=False),
    sa.Column('address', sa.String(length=320), nullable=True),
    sa.Column('address_hash', sa.String(length=64), nullable=False),
    sa.Column('kind', sa.String(length=16), nullable=False),
    sa.Column('text', sa.Text(), nullable=True),
    sa.Column('subject', sa.Text(), nullable=True),
    sa.Column('broadcast_id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=True),
    sa.Column('status', sa.String(length=16), nullable=False),
    sa.Column('reason', sa.String(length=64), nullable=True),
    sa.Column('attempts', sa.Integer(), nullable=False),
    sa.Column('provider_id', sa.String(length=128), nullable=True),
    sa.Column('created_by', sa.String(length=200), nullable=True),
    sa.Column('created_at', sa.Float(), nullable=False),
    sa.Column('not_before', sa.Float(), nullable=False),
    sa.Column('dispatched_at', sa.Float(), nullable=True),
    sa.Column('sent_at', sa.Float(), nullable=True),
    sa.Column('updated_at', sa.Float(), nullable=True),
    sa.Column('lease_owner', sa.String(length=64), nullable=True),
    sa.Column('lease_expires', sa.Float(), nullable=True),
    sa.Column('last_error', sa.Text(), nullable=True),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_messages'))
    )
    with op.batch_alter_table('messages', schema=None) as batch_op:
        batch_op.create_index('ix_messages_broadcast', ['broadcast_id', 'status'], unique=False)
        batch_op.create_index('ix_messages_due', ['campaign', 'channel', 'status', 'not_before'], unique=False)
        batch_op.create_index('ix_messages_provider', ['provider_id'], unique=False)
        batch_op.create_index('ix_messages_recipient', ['campaign', 'channel', 'address_hash', 'status'], unique=False)

    op.create_table('processed_events',
    sa.Column('campaign', sa.String(length=64), nullable=False),
    sa.Column('channel', sa.String(length=16), nullable=False),
    sa.Column('event_id', sa.String(length=200), nullable=False),
    sa.Column('at', sa.Float(), nullable=False),
    sa.PrimaryKeyConstraint('campaign', 'channel', 'event_id', name=op.f('pk_processed_events'))
    )
    op.create_table('rate_buckets',
    sa.Column('sender', sa.String(length=200), nullable=False),
    sa.Column('next_slot', sa.Float(), nullable=False),
    sa.PrimaryKeyConstraint('sender', name=op.f('pk_rate_buckets'))
    )
    op.create_table('subscriptions',
    sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), autoincrement=True, nullable=False),
    sa.Column('campaign', sa.String(length=64), nullable=False),
    sa.Column('channel', sa.String(length=16), nullable=False),
    sa.Column('address', sa.String(length=320), nullable=False),
    sa.Column('address_hash', sa.String(length=64), nullable=False),
    sa.Column('status', sa.String(length=16), nullable=False),
    sa.Column('restricted', sa.Boolean(), nullable=False),
    sa.Column('consented_at', sa.Float(), nullable=True),
    sa.Column('updated_at', sa.Float(), nullable=False),
    sa.Column('last_contact_at', sa.Float(), nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_subscriptions')),
    sa.UniqueConstraint('campaign', 'channel', 'address', name='uq_subscriptions_address')
    )
    with op.batch_alter_table('subscriptions', schema=None) as batch_op:
        batch_op.create_index('ix_subscriptions_audience', ['campaign', 'channel', 'status'], unique=False)
        batch_op.create_index('ix_subscriptions_hash', ['channel', 'address_hash'], unique=False)

    op.create_table('suppressions',
    sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), autoincrement=True, nullable=False),
    sa.Column('channel', sa.String(length=16), nullable=False),
    sa.Column('address_hash', sa.String(length=64), nullable=False),
    sa.Column('address', sa.String(length=320), nullable=True),
    sa.Column('reason', sa.String(length=64), nullable=False),
    sa.Column('campaign', sa.String(length=64), nullable=True),
    sa.Column('actor', sa.String(length=200), nullable=False),
    sa.Column('at', sa.Float(), nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_suppressions')),
    sa.UniqueConstraint('channel', 'address_hash', name='uq_suppressions_hash')
    )
    op.create_table('consent_texts',
    sa.Column('campaign', sa.String(length=64), nullable=False),
    sa.Column('version', sa.String(length=16), nullable=False),
    sa.Column('text', sa.Text(), nullable=False),
    sa.Column('first_used_at', sa.Float(), nullable=False),
    sa.ForeignKeyConstraint(['campaign'], ['campaigns.slug'], name=op.f('fk_consent_texts_campaign_campaigns')),
    sa.PrimaryKeyConstraint('campaign', 'version', name=op.f('pk_consent_texts'))
    )



def downgrade() -> None:

    op.drop_table('consent_texts')
    op.drop_table('suppressions')
    with op.batch_alter_table('subscriptions', schema=None) as batch_op:
        batch_op.drop_index('ix_subscriptions_hash')
        batch_op.drop_index('ix_subscriptions_audience')

    op.drop_table('subscriptions')
    op.drop_table('rate_buckets')
    op.drop_table('processed_events')
    with op.batch_alter_table('messages', schema=None) as batch_op:
        batch_op.drop_index('ix_messages_recipient')
        batch_op.drop_index('ix_messages_provider')
        batch_op.drop_index('ix_messages_due')
        batch_op.drop_index('ix_messages_broadcast')

    op.drop_table('messages')
    with op.batch_alter_table('links', schema=None) as batch_op:
        batch_op.drop_index('ix_links_campaign')

    op.drop_table('links')
    with op.batch_alter_table('inbound_messages', schema=None) as batch_op:
        batch_op.drop_index('ix_inbound_subject')
        batch_op.drop_index('ix_inbound_campaign')

    op.drop_table('inbound_messages')
    op.drop_table('idempotency_keys')
    with op.batch_alter_table('consent_events', schema=None) as batch_op:
        batch_op.drop_index('ix_consent_events_subject')

    op.drop_table('consent_events')
    op.drop_table('campaigns')
    with op.batch_alter_table('broadcasts', schema=None) as batch_op:
        batch_op.drop_index('ix_broadcasts_campaign')

    op.drop_table('broadcasts')
    op.drop_table('audit_heads')
    op.drop_table('audit_events')

