"""Tag names, segments and ``send_at`` are checked by pure functions: no database, no
network."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from consentgate.bot.broadcasts import SEND_AT_GRACE, parse_send_at
from consentgate.bot.errors import InvalidInput
from consentgate.bot.tags import MAX_TAG, MAX_TAGS, Segment, segment_of, tag_names

NOW = datetime(2026, 5, 6, 12, 0, tzinfo=UTC).timestamp()


def test_tag_names_are_trimmed_case_folded_deduplicated_and_sorted() -> None:
    assert tag_names([" Volunteer", "ward-north", "volunteer", "2026-canvass"]) == (
        "2026-canvass", "volunteer", "ward-north")
    assert tag_names(None) == ()
    assert tag_names([]) == ()


def test_a_csv_cell_is_split_on_semicolons() -> None:
    assert tag_names("volunteer; ward-north;;") == ("volunteer", "ward-north")
    assert tag_names("") == ()


@pytest.mark.parametrize("bad", [
    ["ward north"], ["ward_north"], ["-ward"], ["ward-"], ["ward--north"], ["wärd"],
    ["ward;north"], [""], ["x" * (MAX_TAG + 1)], [1], "ward north;volunteer",
    {"tag": "volunteer"}, [f"t{i}" for i in range(MAX_TAGS + 1)],
])
def test_anything_but_hyphenated_lower_case_words_is_refused(bad: object) -> None:
    with pytest.raises(InvalidInput) as caught:
        tag_names(bad, "add_tags")
    assert caught.value.code == "invalid_tag"
    assert "add_tags" in caught.value.detail


def test_a_segment_names_its_three_lists_and_empty_means_everyone() -> None:
    assert Segment().everyone
    segment = segment_of(["volunteer"], None, ["Do-Not-Canvass"])
    assert not segment.everyone
    assert segment.as_dict() == {"tags_any": ["volunteer"], "tags_all": [],
                                 "exclude_tags": ["do-not-canvass"]}
    with pytest.raises(InvalidInput) as caught:
        segment_of(None, "ward north", None)
    assert "tags_all" in caught.value.detail


def test_send_at_needs_an_offset_and_reads_it() -> None:
    assert parse_send_at("2026-05-07T07:00:00+01:00", NOW) == datetime(
        2026, 5, 7, 6, 0, tzinfo=UTC).timestamp()
    assert parse_send_at("2026-05-07T06:00:00Z", NOW) == datetime(
        2026, 5, 7, 6, 0, tzinfo=UTC).timestamp()
    assert parse_send_at(None, NOW) is None
    for bad in ("2026-05-07T07:00:00", "tomorrow at 7", 1778137200, "", "2026-13-01T00:00Z"):
        with pytest.raises(InvalidInput) as caught:
            parse_send_at(bad, NOW)
        assert caught.value.code == "invalid_send_at"


def test_send_at_just_past_goes_now_but_well_past_is_refused() -> None:
    just_past = datetime.fromtimestamp(NOW - SEND_AT_GRACE / 2, UTC).isoformat()
    assert parse_send_at(just_past, NOW) is None
    well_past = datetime.fromtimestamp(NOW - 3600, UTC).isoformat()
    with pytest.raises(InvalidInput) as caught:
        parse_send_at(well_past, NOW)
    assert "past" in caught.value.detail
