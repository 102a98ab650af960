"""The database schema, as SQLAlchemy Core tables.

Times are stored as UNIX seconds (floats): the outbox compares them on its hottest path and
they mean the same on SQLite and PostgreSQL. Addresses sit beside their keyed hash
(``address_hash``) so that the suppression list, which keeps only hashes, can be joined in
set-based SQL, and so that an erased address leaves nothing but the hash behind.
"""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
)

__all__ = [
    "audit_events",
    "audit_heads",
    "broadcasts",
    "campaign_tags",
    "campaigns",
    "consent_events",
    "consent_texts",
    "console_sessions",
    "idempotency_keys",
    "inbound_messages",
    "links",
    "messages",
    "metadata",
    "processed_events",
    "rate_buckets",
    "subscription_tags",
    "subscriptions",
    "suppressions",
]

metadata = MetaData(
    naming_convention={
        "ix": "ix_%(column_0_label)s",
        "uq": "uq_%(table_name)s_%(column_0_name)s",
        "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
        "pk": "pk_%(table_name)s",
    }
)

Id = BigInteger().with_variant(Integer(), "sqlite")  # INTEGER PRIMARY KEY is SQLite's rowid

campaigns = Table(
    "campaigns",
    metadata,
    Column("slug", String(64), primary_key=True),
    Column("name", Text, nullable=False),
    Column("imprint", Text, nullable=False),
    Column("consent_text", Text, nullable=False),
    Column("consent_text_version", String(16), nullable=False),
    Column("updated_at", Float, nullable=False),
)

# Every consent text a campaign has shown, so evidence can name the exact words.
consent_texts = Table(
    "consent_texts",
    metadata,
    Column("campaign", String(64), ForeignKey("campaigns.slug"), primary_key=True),
    Column("version", String(16), primary_key=True),
    Column("text", Text, nullable=False),
    Column("first_used_at", Float, nullable=False),
)

# The gate's fast path: the current status of one address in one campaign and channel.
subscriptions = Table(
    "subscriptions",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("campaign", String(64), nullable=False),
    Column("channel", String(16), nullable=False),
    Column("address", String(320), nullable=False),
    Column("address_hash", String(64), nullable=False),
    Column("status", String(16), nullable=False),
    Column("restricted", Boolean, nullable=False, default=False),
    # When the status last became ``subscribed``. A suppression recorded after it wins; a
    # consent the recipient gave after a suppression (only they can) wins over it.
    Column("consented_at", Float, nullable=True),
    Column("updated_at", Float, nullable=False),
    Column("last_contact_at", Float, nullable=False),
    # The subscription's tags as bits (``campaign_tags.bit``), beside ``subscription_tags``
    # which stays the record: a segment is then a test on the row itself, so counting or
    # queueing most of a million-strong list reads no tag rows at all.
    Column("tag_bits", BigInteger, nullable=False, server_default="0"),
    UniqueConstraint("campaign", "channel", "address", name="uq_subscriptions_address"),
    # Covers the audience count: who is in a segment, by status, from the index alone.
    Index("ix_subscriptions_audience", "campaign", "channel", "status", "restricted",
          "tag_bits"),
    Index("ix_subscriptions_hash", "channel", "address_hash"),
)

# Tags of one subscription (campaign, channel, address): the audience segments. Keyed by the
# subscription so that erasure and retention find them with it; the campaign and channel are
# repeated so a segment is read from ``ix_subscription_tags_segment`` alone (who has tag X
# here), and the primary key answers "has this subscription tag X" inside set-based SQL.
subscription_tags = Table(
    "subscription_tags",
    metadata,
    Column("subscription_id", Id, primary_key=True),
    Column("tag", String(64), primary_key=True),
    Column("campaign", String(64), nullable=False),
    Column("channel", String(16), nullable=False),
    Column("created_at", Float, nullable=False),
    Index("ix_subscription_tags_segment", "campaign", "channel", "tag", "subscription_id"),
)

# The bit each tag of a campaign has in ``subscriptions.tag_bits``, given on the tag's first
# use. A campaign has 63 bits; a tag used after they are all taken has none (``bit`` NULL)
# and segments read it from ``subscription_tags`` instead (slower, never wrong).
campaign_tags = Table(
    "campaign_tags",
    metadata,
    Column("campaign", String(64), primary_key=True),
    Column("tag", String(64), primary_key=True),
    Column("bit", Integer, nullable=True),
    Column("created_at", Float, nullable=False),
    UniqueConstraint("campaign", "bit", name="uq_campaign_tags_bit"),
)

# The append-only history that explains each subscription's status.
consent_events = Table(
    "consent_events",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("campaign", String(64), nullable=False),
    Column("channel", String(16), nullable=False),
    Column("address", String(320), nullable=True),  # None once erased / pseudonymised
    Column("address_hash", String(64), nullable=False),
    Column("at", Float, nullable=False),
    Column("event", String(32), nullable=False),  # subscribed|pending|opted_out|opted_in|...
    Column("method", String(32), nullable=True),
    Column("source", Text, nullable=True),
    Column("evidence", Text, nullable=True),
    Column("consent_text_version", String(16), nullable=True),
    Column("actor", String(200), nullable=False),
    Column("link_id", String(64), nullable=True),
    Index("ix_consent_events_subject", "campaign", "channel", "address_hash"),
)

# Blocks that hold for every campaign: STOPALL, erasure, blocked bot, hard bounce.
suppressions = Table(
    "suppressions",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("channel", String(16), nullable=False),
    Column("address_hash", String(64), nullable=False),
    Column("address", String(320), nullable=True),  # None once erased
    Column("reason", String(64), nullable=False),
    Column("campaign", String(64), nullable=True),  # where it was recorded
    Column("actor", String(200), nullable=False),
    Column("at", Float, nullable=False),
    UniqueConstraint("channel", "address_hash", name="uq_suppressions_hash"),
)

broadcasts = Table(
    "broadcasts",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("campaign", String(64), nullable=False),
    Column("channel", String(16), nullable=False),
    Column("text", Text, nullable=False),
    Column("subject", Text, nullable=True),
    Column("status", String(16), nullable=False),  # scheduled|enqueuing|queued|paused|cancelled
    # Enqueueing walks the audience in subscription-id ranges, one short transaction each;
    # ``cursor`` is the last id done, so a crash mid-way resumes instead of restarting.
    Column("cursor", Id, nullable=False, default=0),
    Column("upper", Id, nullable=False, default=0),
    Column("eligible", Integer, nullable=False, default=0),
    Column("excluded", Text, nullable=False, default="{}"),  # JSON {reason: count}
    Column("created_by", String(200), nullable=False),
    Column("created_at", Float, nullable=False),
    # When an operator last resumed it after a pause: from then on the failure rule judges
    # only messages handed to a provider since (the old failures were already looked at).
    Column("resumed_at", Float, nullable=True),
    # The audience segment (JSON {tags_any, tags_all, exclude_tags}); None is everyone.
    Column("segment", Text, nullable=True),
    # A scheduled broadcast waits (status ``scheduled``) until ``send_at``; ``started_at`` is
    # when its audience was resolved and queueing began, later than ``send_at`` if the
    # gateway was down at the time.
    Column("send_at", Float, nullable=True),
    Column("started_at", Float, nullable=True),
    # Queueing walks the audience in keyed-hash order (see bot.broadcasts.enqueue): the
    # last hash done.
    Column("hash_cursor", String(64), nullable=True),
    # How many the audience count found when queueing began. Queueing goes on in batches
    # just ahead of sending (see bot.broadcasts), so until it is done ``eligible`` (queued
    # so far) is less, and the rest show as queued from this figure.
    Column("audience", Integer, nullable=True),
    Index("ix_broadcasts_campaign", "campaign"),
    Index("ix_broadcasts_due", "status", "send_at"),
)

# The outbox and its history. Broadcast messages keep their text on the broadcast row.
messages = Table(
    "messages",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("campaign", String(64), nullable=False),
    Column("channel", String(16), nullable=False),
    Column("address", String(320), nullable=True),  # None once erased / pseudonymised
    Column("address_hash", String(64), nullable=False),
    Column("kind", String(16), nullable=False, default="campaign"),  # campaign|reply|confirm
    Column("text", Text, nullable=True),
    Column("subject", Text, nullable=True),
    Column("broadcast_id", Id, nullable=True),
    Column("status", String(16), nullable=False),
    Column("reason", String(64), nullable=True),
    Column("attempts", Integer, nullable=False, default=0),
    Column("provider_id", String(128), nullable=True),
    Column("created_by", String(200), nullable=True),
    Column("created_at", Float, nullable=False),
    Column("not_before", Float, nullable=False),
    Column("dispatched_at", Float, nullable=True),  # when the gate last admitted it
    Column("sent_at", Float, nullable=True),
    Column("updated_at", Float, nullable=True),
    Column("lease_owner", String(64), nullable=True),
    Column("lease_expires", Float, nullable=True),
    Column("last_error", Text, nullable=True),
    Index("ix_messages_due", "campaign", "channel", "status", "not_before"),
    Index("ix_messages_recipient", "channel", "address_hash", "campaign", "status"),
    Index("ix_messages_broadcast", "broadcast_id", "status"),
    Index("ix_messages_provider", "provider_id"),
)

# Idempotency-Key answers, replayed verbatim.
idempotency_keys = Table(
    "idempotency_keys",
    metadata,
    Column("campaign", String(64), primary_key=True),
    Column("key", String(200), primary_key=True),
    Column("request_hash", String(64), nullable=False),
    Column("status_code", Integer, nullable=False),
    Column("body", Text, nullable=False),
    Column("created_at", Float, nullable=False),
)

# Provider retries (MessageSid, update_id, Message-ID) are applied once.
processed_events = Table(
    "processed_events",
    metadata,
    Column("campaign", String(64), primary_key=True),
    Column("channel", String(16), primary_key=True),
    Column("event_id", String(200), primary_key=True),
    Column("at", Float, nullable=False),
)

inbound_messages = Table(
    "inbound_messages",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("campaign", String(64), nullable=False),
    Column("channel", String(16), nullable=False),
    Column("from_address", String(320), nullable=True),  # None once erased
    Column("address_hash", String(64), nullable=False),
    Column("text", Text, nullable=True),
    Column("intent", String(32), nullable=False),
    Column("flag", String(32), nullable=True),  # possible_opt_out
    Column("provider_event_id", String(200), nullable=True),
    Column("at", Float, nullable=False),
    Column("rule", String(120), nullable=True),  # why the classifier read it so
    Column("resolution", String(32), nullable=True),  # opted_out | not_an_opt_out
    Column("resolved_by", String(200), nullable=True),
    Column("resolved_at", Float, nullable=True),
    Column("resolution_note", Text, nullable=True),
    Index("ix_inbound_campaign", "campaign", "at"),
    Index("ix_inbound_subject", "campaign", "channel", "address_hash"),
    Index("ix_inbound_review", "campaign", "flag", "resolution", "at"),
)

links = Table(
    "links",
    metadata,
    Column("id", String(64), primary_key=True),
    Column("campaign", String(64), nullable=False),
    Column("channel", String(16), nullable=False),
    Column("name", String(200), nullable=False),
    Column("url", Text, nullable=False),
    Column("telegram_chat_id", String(32), nullable=True),
    Column("expires_at", Float, nullable=True),
    Column("member_limit", Integer, nullable=True),
    Column("revoked_at", Float, nullable=True),
    Column("joins", Integer, nullable=False, default=0),
    Column("created_by", String(200), nullable=False),
    Column("created_at", Float, nullable=False),
    # Tags everyone who joins through the link gets (JSON list; None: none).
    Column("tags", Text, nullable=True),
    Index("ix_links_campaign", "campaign"),
)

audit_events = Table(
    "audit_events",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("campaign", String(64), nullable=False),
    Column("seq", Integer, nullable=False),
    Column("at", Float, nullable=False),
    Column("actor", String(200), nullable=False),
    Column("action", String(64), nullable=False),
    Column("subject", String(200), nullable=False),
    Column("detail", Text, nullable=False),
    Column("prev_hash", String(64), nullable=False),
    Column("hash", String(64), nullable=False),
    UniqueConstraint("campaign", "seq", name="uq_audit_events_seq"),
)

# One row per campaign holding the chain's head: appending locks it, so concurrent
# writers on PostgreSQL cannot fork the chain.
audit_heads = Table(
    "audit_heads",
    metadata,
    Column("campaign", String(64), primary_key=True),
    Column("seq", Integer, nullable=False),
    Column("hash", String(64), nullable=False),
)

# Per-sender send budgets shared by every worker (PostgreSQL scale-out).
rate_buckets = Table(
    "rate_buckets",
    metadata,
    Column("sender", String(200), primary_key=True),
    Column("next_slot", Float, nullable=False),
)

# Signed-in console users. Only the SHA-256 of the session id is stored, so a copy of the
# database cannot be used to take over a session.
console_sessions = Table(
    "console_sessions",
    metadata,
    Column("id_hash", String(64), primary_key=True),
    Column("campaign", String(64), nullable=False),
    Column("operator", String(200), nullable=False),
    Column("created_at", Float, nullable=False),
    Column("last_seen_at", Float, nullable=False),
    Index("ix_console_sessions_last_seen", "last_seen_at"),
)
