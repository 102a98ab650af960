"""The consent rules as a specification: the gate's decision table, who may record a
consent, and quiet hours. Pure functions: no database, no network."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from hypothesis import given
from hypothesis import strategies as st

from consentgate.bot.consent import (
    Decision,
    Evidence,
    Reason,
    Status,
    SubscriberState,
    Target,
    check_new_consent,
    decide,
    next_send_time,
    source_is_denied,
    state_of,
)

ALL = frozenset({"sms", "email", "telegram"})


@pytest.mark.parametrize(("state", "expected"), [
    (SubscriberState(Status.SUBSCRIBED), Decision.allow()),
    (SubscriberState(Status.UNKNOWN), Decision.refuse(Reason.NO_CONSENT)),
    (SubscriberState(Status.PENDING), Decision.refuse(Reason.NO_CONSENT)),
    (SubscriberState(Status.OPTED_OUT), Decision.refuse(Reason.OPTED_OUT)),
    (SubscriberState(Status.SUPPRESSED), Decision.refuse(Reason.SUPPRESSED)),
    (SubscriberState(Status.SUBSCRIBED, suppressed=True), Decision.refuse(Reason.SUPPRESSED)),
    (SubscriberState(Status.OPTED_OUT, suppressed=True), Decision.refuse(Reason.SUPPRESSED)),
])
def test_decision_table_for_a_person(state: SubscriberState, expected: Decision) -> None:
    assert decide(state, Target("sms", "+447911123456"), ALL) == expected


def test_a_channel_the_campaign_lacks_is_refused_whatever_the_consent() -> None:
    d = decide(SubscriberState(Status.SUBSCRIBED), Target("email", "a@b.org"),
               frozenset({"sms"}))
    assert d == Decision.refuse(Reason.CHANNEL_DISABLED)


def test_group_posts_go_only_to_own_chats() -> None:
    own = frozenset({"-1001"})
    state = SubscriberState(Status.UNKNOWN)
    assert decide(state, Target("telegram", "-1001", group=True), ALL, own).allowed
    assert decide(state, Target("telegram", "-1002", group=True), ALL, own) == \
        Decision.refuse(Reason.DESTINATION_NOT_ALLOWED)


@given(status=st.sampled_from(list(Status)), suppressed=st.booleans(),
       channel=st.sampled_from(sorted(ALL)))
def test_only_a_subscribed_unsuppressed_person_is_ever_allowed(
        status: Status, suppressed: bool, channel: str) -> None:
    d = decide(SubscriberState(status, suppressed), Target(channel, "x"), ALL)
    assert d.allowed == (status is Status.SUBSCRIBED and not suppressed)
    assert d.allowed == (d.reason is None)
    if suppressed:
        assert d.reason is Reason.SUPPRESSED


def _ev(method: str = "paper_form", source: str = "street stall",
        evidence: str = "form 12") -> Evidence:
    return Evidence(method, source, evidence, "v1", "Jane")


@pytest.mark.parametrize(("ev", "code"), [
    (_ev(source=""), "missing_evidence"),
    (_ev(evidence="  "), "missing_evidence"),
    (_ev(source="Copied from the UNION MAILING LIST"), "denied_source"),
    (_ev(method="bought_list"), "invalid_method"),
    (_ev(), None),
])
def test_a_consent_needs_evidence_and_an_allowed_source(ev: Evidence, code: str | None) -> None:
    denied = ("union mailing list", "society group chat")
    assert check_new_consent(ev, SubscriberState(), denied, by_recipient=False) == code


@pytest.mark.parametrize(("state", "code"), [
    (SubscriberState(Status.OPTED_OUT), "opted_out"),
    (SubscriberState(Status.SUPPRESSED), "suppressed"),
    (SubscriberState(Status.SUBSCRIBED, suppressed=True), "suppressed"),
])
def test_only_the_recipient_can_undo_an_objection(state: SubscriberState, code: str) -> None:
    assert check_new_consent(_ev(), state, (), by_recipient=False) == code
    assert check_new_consent(_ev("keyword"), state, (), by_recipient=True) is None


def test_denied_sources_ignore_blank_entries() -> None:
    assert not source_is_denied("door knocking", ("", "  "))


LONDON_QUIET = ("21:00", "08:00")


@pytest.mark.parametrize(("utc", "resume"), [
    # 22:30 BST (21:30 UTC) in summer -> 08:00 BST next day (07:00 UTC)
    (datetime(2026, 6, 1, 21, 30, tzinfo=UTC), datetime(2026, 6, 2, 7, 0, tzinfo=UTC)),
    # 02:00 GMT in winter -> 08:00 GMT the same day
    (datetime(2026, 12, 1, 2, 0, tzinfo=UTC), datetime(2026, 12, 1, 8, 0, tzinfo=UTC)),
    # midday: no delay
    (datetime(2026, 12, 1, 12, 0, tzinfo=UTC), None),
])
def test_quiet_hours_delay_and_never_drop(utc: datetime, resume: datetime | None) -> None:
    assert next_send_time(utc, LONDON_QUIET, "Europe/London") == resume


@given(st.datetimes(min_value=datetime(2020, 1, 1), max_value=datetime(2030, 1, 1),
                    timezones=st.just(UTC)))
def test_quiet_hours_resume_is_later_and_outside_the_window(now: datetime) -> None:
    resume = next_send_time(now, LONDON_QUIET, "Europe/London")
    if resume is not None:
        assert resume > now
        assert next_send_time(resume, LONDON_QUIET, "Europe/London") is None


@pytest.mark.parametrize(("row", "suppressed_at", "last", "expected"), [
    (None, None, None, SubscriberState(Status.UNKNOWN)),
    (None, 5.0, None, SubscriberState(Status.UNKNOWN, suppressed=True)),
    (("subscribed", False, 10.0), 5.0, "subscribed", SubscriberState(Status.SUBSCRIBED)),
    (("subscribed", False, 10.0), 10.0, "subscribed",
     SubscriberState(Status.SUBSCRIBED, suppressed=True)),
    (("subscribed", True, 10.0), None, "subscribed", SubscriberState(Status.PENDING)),
    (("pending", False, None), None, "opted_out",
     SubscriberState(Status.PENDING, objected=True)),
    (("pending", False, None), None, None, SubscriberState(Status.PENDING)),
    (("opted_out", False, None), None, "opted_out", SubscriberState(Status.OPTED_OUT)),
])
def test_a_persons_state_from_their_rows(row: tuple[str, bool, float | None] | None,
                                         suppressed_at: float | None, last: str | None,
                                         expected: SubscriberState) -> None:
    status, restricted, consented_at = row or (None, False, None)
    assert state_of(status, restricted, consented_at, suppressed_at, last) == expected
