"""--deadline parsing (durations, local clock times, ISO datetimes) and short durations."""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta, timezone
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import pytest

from runner.manifest.durations import format_duration, parse_deadline

PLUS_ONE = timezone(timedelta(hours=1))
NOW = datetime(2026, 11, 21, 22, 0, 0, tzinfo=PLUS_ONE)


@pytest.mark.parametrize(
    ("text", "delta"),
    [
        ("6h", timedelta(hours=6)),
        ("90m", timedelta(minutes=90)),
        ("45s", timedelta(seconds=45)),
        ("1h30m", timedelta(hours=1, minutes=30)),
        ("2d", timedelta(days=2)),
        ("1d2h3m4s", timedelta(days=1, hours=2, minutes=3, seconds=4)),
        ("1H30M", timedelta(hours=1, minutes=30)),
        (" 6h ", timedelta(hours=6)),
    ],
)
def test_durations_count_from_now(text: str, delta: timedelta) -> None:
    deadline = parse_deadline(text, NOW)
    assert deadline == NOW + delta
    assert deadline.utcoffset() == timedelta(hours=1)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("23:30", datetime(2026, 11, 21, 23, 30, tzinfo=PLUS_ONE)),  # later today
        ("07:30", datetime(2026, 11, 22, 7, 30, tzinfo=PLUS_ONE)),  # passed: tomorrow
        ("7:30", datetime(2026, 11, 22, 7, 30, tzinfo=PLUS_ONE)),
        ("07:30:15", datetime(2026, 11, 22, 7, 30, 15, tzinfo=PLUS_ONE)),
        ("22:00", datetime(2026, 11, 22, 22, 0, tzinfo=PLUS_ONE)),  # exactly now: tomorrow
        ("22:00:01", datetime(2026, 11, 21, 22, 0, 1, tzinfo=PLUS_ONE)),
        ("00:00", datetime(2026, 11, 22, 0, 0, tzinfo=PLUS_ONE)),
    ],
)
def test_clock_time_is_the_next_occurrence_in_the_local_zone(text: str, expected: datetime) -> None:
    deadline = parse_deadline(text, NOW)
    assert deadline == expected
    assert deadline.utcoffset() == timedelta(hours=1)


def test_clock_time_uses_the_zone_of_now_not_utc() -> None:
    now = datetime(2026, 11, 21, 6, 0, tzinfo=timezone(timedelta(hours=-5)))  # 11:00 UTC
    # 07:30 at -05:00 is still ahead today, although 07:30 UTC has passed.
    assert parse_deadline("07:30", now) == datetime(
        2026, 11, 21, 7, 30, tzinfo=timezone(timedelta(hours=-5))
    )


@pytest.mark.parametrize(
    "text",
    ["2026-11-22T07:30:00+01:00", "2026-11-22T06:30:00Z", "2026-11-22T01:30:00-05:00"],
)
def test_iso_datetime_with_offset(text: str) -> None:
    deadline = parse_deadline(text, NOW)
    assert deadline == datetime(2026, 11, 22, 6, 30, tzinfo=UTC)
    assert deadline.utcoffset() == timedelta(hours=1)  # shown in the zone of now


@pytest.mark.parametrize(
    "text",
    [
        "",
        "   ",
        "0h",
        "0m0s",
        "-1h",
        "-90m",
        "1.5h",
        "6 hours",
        "6",
        "h",
        "1h30",
        "25:00",
        "24:00",
        "12:60",
        "12:30:60",
        "7:5",
        "07:30pm",
        "garbage",
        "2026-11-22T07:30:00",  # no offset
        "2026-11-22",  # a date, no time or offset
        "2026-11-20T07:30:00+01:00",  # in the past
        "99999999999d",  # beyond datetime
    ],
)
def test_rejected_forms_raise_one_line_naming_the_accepted_forms(text: str) -> None:
    with pytest.raises(ValueError) as info:
        parse_deadline(text, NOW)
    message = str(info.value)
    assert "\n" not in message
    assert repr(text) in message
    for form in ("6h", "1h30m", "07:30", "2026-11-22T07:30:00+01:00"):
        assert form in message


def test_naive_now_is_refused() -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        parse_deadline("6h", datetime(2026, 11, 21, 22, 0))  # noqa: DTZ001


def _new_york() -> ZoneInfo:
    try:
        return ZoneInfo("America/New_York")
    except ZoneInfoNotFoundError:  # pragma: no cover - no tz database on this machine
        pytest.skip("no tz database")


def test_duration_across_dst_is_real_elapsed_time() -> None:
    tz = _new_york()
    now = datetime(2026, 3, 7, 23, 0, tzinfo=tz)  # EST; clocks jump 02:00 -> 03:00 tonight
    deadline = parse_deadline("6h", now)
    assert deadline.astimezone(UTC) == now.astimezone(UTC) + timedelta(hours=6)
    assert (deadline.hour, deadline.utcoffset()) == (6, timedelta(hours=-4))


def test_clock_time_after_dst_change_uses_that_days_offset() -> None:
    tz = _new_york()
    now = datetime(2026, 3, 7, 23, 0, tzinfo=tz)
    deadline = parse_deadline("07:30", now)
    assert deadline.astimezone(UTC) == datetime(2026, 3, 8, 11, 30, tzinfo=UTC)  # 07:30 EDT


def test_clock_time_skipped_by_dst_lands_an_hour_later() -> None:
    tz = _new_york()
    now = datetime(2026, 3, 8, 0, 0, tzinfo=tz)
    deadline = parse_deadline("02:30", now)  # there is no 02:30 that night
    assert deadline.astimezone(UTC) == datetime(2026, 3, 8, 7, 30, tzinfo=UTC)
    assert (deadline.hour, deadline.minute) == (3, 30)


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (0, "0s"),
        (45, "45s"),
        (45.4, "45s"),
        (59.6, "1m00s"),
        (65, "1m05s"),
        (1605, "26m45s"),
        (3720, "1h02m"),
        (3600 * 23 + 59 * 60, "23h59m"),
        (2 * 86_400 + 3 * 3600, "2d03h"),
        (-5, "0s"),
        (math.nan, "?"),
        (math.inf, "?"),
    ],
)
def test_format_duration(seconds: float, text: str) -> None:
    assert format_duration(seconds) == text
