"""Addresses, tokens, the audit chain and SMS composition: small rules the invariants lean
on."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from consentgate.bot.addresses import address_hash, mask, normalise_address
from consentgate.bot.audit import GENESIS, AuditRecord, first_broken, record_hash
from consentgate.bot.compose import says_how_to_opt_out
from consentgate.bot.errors import InvalidInput
from consentgate.bot.tokens import TokenError, Tokens, TokenSubject


@pytest.mark.parametrize(("channel", "raw", "expected"), [
    ("sms", "07911 123456", "+447911123456"),
    ("sms", "+44 7911 123456", "+447911123456"),
    ("sms", "(0)7911-123-456", "+447911123456"),
    ("email", " Jane.Doe@Example.ORG ", "jane.doe@example.org"),
    ("telegram", "123456789", "123456789"),
    ("telegram", "-1001234567890", "-1001234567890"),
])
def test_addresses_are_read_into_one_canonical_form(channel: str, raw: str,
                                                   expected: str) -> None:
    assert normalise_address(channel, raw, "GB") == expected


@pytest.mark.parametrize(("channel", "raw"), [
    ("sms", "not a number"), ("sms", "12"), ("sms", ""), ("sms", "+99 123"),
    ("email", "jane@"), ("email", "@example.org"), ("email", "a b@example.org"),
    ("telegram", "@janedoe"), ("telegram", "12a"), ("sms", None), ("sms", 447911123456),
])
def test_invalid_addresses_are_refused(channel: str, raw: object) -> None:
    with pytest.raises(InvalidInput) as caught:
        normalise_address(channel, raw, "GB")
    assert caught.value.code == "invalid_address"


def test_masking_keeps_no_contactable_address() -> None:
    assert mask("+447911123456") == "+44***56"
    assert mask("jane.doe@example.org") == "j***@example.org"


def test_address_hash_depends_on_the_secret_and_channel() -> None:
    a = address_hash("k" * 32, "sms", "+447911123456")
    assert a != address_hash("j" * 32, "sms", "+447911123456")
    assert a != address_hash("k" * 32, "email", "+447911123456")
    assert "447911123456" not in a


def test_tokens_round_trip_and_refuse_tampering() -> None:
    tokens = Tokens("s" * 40)
    subject = TokenSubject("jane-2026", "email", "ab" * 32)
    token = tokens.make("unsubscribe", subject)
    assert tokens.read("unsubscribe", token) == subject
    assert "example" not in token and "@" not in token
    with pytest.raises(TokenError):
        tokens.read("confirm", token)  # another purpose
    with pytest.raises(TokenError):
        tokens.read("unsubscribe", token[:-2] + ("A" if token[-2] != "A" else "B") + token[-1])
    with pytest.raises(TokenError):
        Tokens("t" * 40).read("unsubscribe", token)  # another gateway's secret


def test_a_token_verifies_only_as_issued_not_in_another_spelling_of_its_signature() -> None:
    """The last base64 character of a signature has two bits the decoder ignores."""
    tokens = Tokens("s" * 40)
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
    for n in range(20):
        token = tokens.make("unsubscribe", TokenSubject("jane-2026", "email", f"{n:064x}"))
        for other in alphabet.replace(token[-1], ""):
            with pytest.raises(TokenError):
                tokens.read("unsubscribe", token[:-1] + other)


def _chain(n: int) -> list[AuditRecord]:
    out, prev = [], GENESIS
    for seq in range(1, n + 1):
        h = record_hash(prev, seq, float(seq), "Jane", "consent.recorded", "sms#x", "{}")
        out.append(AuditRecord(seq, float(seq), "Jane", "consent.recorded", "sms#x", "{}",
                               prev, h))
        prev = h
    return out


def test_an_intact_audit_chain_verifies() -> None:
    assert first_broken(_chain(5)) is None


@pytest.mark.parametrize("victim", [1, 3, 5])
def test_an_altered_audit_record_is_found(victim: int) -> None:
    chain = _chain(5)
    r = chain[victim - 1]
    chain[victim - 1] = AuditRecord(r.seq, r.at, "Someone else", r.action, r.subject,
                                    r.detail, r.prev_hash, r.hash)
    assert first_broken(chain) == victim


def test_a_removed_audit_record_is_found() -> None:
    chain = _chain(5)
    del chain[2]
    assert first_broken(chain) == 4


@pytest.mark.parametrize(("text", "says"), [
    ("Vote Jane on Thursday. Reply STOP to opt out", True),
    ("Polls open 7am. Text STOP to 60060 to unsubscribe", True),
    ("Polls open at 7am. Reply stop to end these messages", True),
    ("Polls open at 7am", False),
    ("We must stop the bypass!", False),
])
def test_sms_opt_out_instruction_is_detected(text: str, says: bool) -> None:
    assert says_how_to_opt_out(text) is says


@given(st.text(max_size=200))
def test_opt_out_detection_never_raises(text: str) -> None:
    says_how_to_opt_out(text)
