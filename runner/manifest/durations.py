"""The `--deadline` value, and short human durations for progress lines.

A deadline is one of:
  * a duration from now: `6h`, `90m`, `45s`, `1h30m`, `2d` (more than zero);
  * a local clock time: `07:30`, `7:30`, `07:30:15`, the next time the clock in the
    timezone of `now` shows it (tomorrow if it has passed today);
  * an ISO 8601 datetime with an offset: `2026-11-22T07:30:00+01:00` (in the future).
"""

from __future__ import annotations

import math
import re
from datetime import UTC, datetime, time, timedelta

ACCEPTED_FORMS = (
    "expected a duration (6h, 90m, 45s, 1h30m, 2d), a local clock time (07:30, 07:30:15) "
    "or an ISO 8601 datetime with offset (2026-11-22T07:30:00+01:00)"
)

_DURATION = re.compile(r"(?:(\d+)d)?(?:(\d+)h)?(?:(\d+)m)?(?:(\d+)s)?", re.IGNORECASE)
_CLOCK = re.compile(r"(\d{1,2}):(\d{2})(?::(\d{2}))?")


def _invalid(text: str, reason: str | None = None) -> ValueError:
    why = f"{reason}; " if reason else ""
    return ValueError(f"invalid deadline {text!r}: {why}{ACCEPTED_FORMS}")


def parse_deadline(text: str, now: datetime) -> datetime:
    """The moment `text` names, as an aware datetime in the timezone of `now`.

    `now` must be timezone-aware. Raises ValueError (one line, naming the accepted
    forms) for anything else: empty, zero, negative, `25:00`, a naive or past datetime.
    """
    if now.tzinfo is None or now.utcoffset() is None:
        raise ValueError("parse_deadline needs a timezone-aware `now`")
    tz = now.tzinfo
    value = text.strip()
    if not value:
        raise _invalid(text, "empty")

    duration = _DURATION.fullmatch(value)
    if duration and any(duration.groups()):
        days, hours, minutes, seconds = (int(part or 0) for part in duration.groups())
        try:
            delta = timedelta(days=days, hours=hours, minutes=minutes, seconds=seconds)
            # Real elapsed time: add in UTC, so a DST change in between does not shift it.
            deadline = (now.astimezone(UTC) + delta).astimezone(tz)
        except OverflowError:
            raise _invalid(text, "too far away") from None
        if delta <= timedelta(0):
            raise _invalid(text, "the duration must be more than zero")
        return deadline

    clock = _CLOCK.fullmatch(value)
    if clock:
        hour, minute, second = (int(part or 0) for part in clock.groups())
        if hour > 23 or minute > 59 or second > 59:
            raise _invalid(text, "no such time of day")
        wanted = time(hour, minute, second)
        today = now.astimezone(tz).date()
        # Build the naive local time and let the zone pick its offset: a time that a DST
        # gap skips comes out an hour later, an ambiguous one at its first occurrence.
        candidate = datetime.combine(today, wanted, tzinfo=tz).astimezone(UTC)
        if candidate <= now:
            tomorrow = today + timedelta(days=1)
            candidate = datetime.combine(tomorrow, wanted, tzinfo=tz).astimezone(UTC)
        return candidate.astimezone(tz)

    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        raise _invalid(text) from None
    if moment.tzinfo is None or moment.utcoffset() is None:
        raise _invalid(text, "an ISO datetime needs an offset such as +01:00 or Z")
    if moment <= now:
        raise _invalid(text, "that time has already passed")
    return moment.astimezone(tz)


def format_duration(seconds: float) -> str:
    """`45s`, `26m45s`, `1h02m`, `2d03h`: at most two units, rounded to whole seconds.

    Negative values read as `0s`; NaN and infinities as `?` (a progress line must not crash).
    """
    if not math.isfinite(seconds):
        return "?"
    total = max(0, round(seconds))
    days, rest = divmod(total, 86_400)
    hours, rest = divmod(rest, 3_600)
    minutes, secs = divmod(rest, 60)
    if days:
        return f"{days}d{hours:02d}h"
    if hours:
        return f"{hours}h{minutes:02d}m"
    if minutes:
        return f"{minutes}m{secs:02d}s"
    return f"{secs}s"
