"""Durations as admins write them: `30d`, `6w`, `10y`, `12h`, or ISO 8601 `P10Y`, `P1Y6M`, `PT12H`.

Years and months are calendar units (10y from 2016-02-29 is 2026-02-28), so a retention of ten years
means what a regulation means by it, not 3,650 days.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime, timedelta

from dateutil.relativedelta import relativedelta

_SHORT = re.compile(r"^\s*(\d{1,6})\s*([smhdwy]|mo)\s*$")
_ISO = re.compile(
    r"^P(?!$)(?:(?P<years>\d+)Y)?(?:(?P<months>\d+)M)?(?:(?P<weeks>\d+)W)?(?:(?P<days>\d+)D)?"
    r"(?:T(?=\d)(?:(?P<hours>\d+)H)?(?:(?P<minutes>\d+)M)?(?:(?P<seconds>\d+)S)?)?$"
)
_SHORT_UNITS = {
    "s": "seconds",
    "m": "minutes",
    "h": "hours",
    "d": "days",
    "w": "weeks",
    "mo": "months",
    "y": "years",
}
_MAX_YEARS = 200  # a longer retention is a typo, and dates past year 9999 do not exist


class DurationError(ValueError):
    """Text that is not a duration; the message says how to write one."""


@dataclass(frozen=True)
class Duration:
    """A calendar-aware length of time."""

    years: int = 0
    months: int = 0
    weeks: int = 0
    days: int = 0
    hours: int = 0
    minutes: int = 0
    seconds: int = 0

    def _delta(self) -> relativedelta:
        return relativedelta(
            years=self.years,
            months=self.months,
            weeks=self.weeks,
            days=self.days,
            hours=self.hours,
            minutes=self.minutes,
            seconds=self.seconds,
        )

    def subtract_from(self, moment: datetime) -> datetime:
        """The moment this long before `moment` (calendar arithmetic)."""
        result: datetime = moment - self._delta()
        return result

    def add_to(self, moment: datetime) -> datetime:
        """The moment this long after `moment` (calendar arithmetic)."""
        result: datetime = moment + self._delta()
        return result

    def approx_seconds(self) -> float:
        """Length in seconds with 365.25-day years and 30.44-day months, for sizing and sorting."""
        days = self.years * 365.25 + self.months * 30.44 + self.weeks * 7 + self.days
        return (
            days * 86400
            + timedelta(
                hours=self.hours, minutes=self.minutes, seconds=self.seconds
            ).total_seconds()
        )

    def is_zero(self) -> bool:
        """True when every unit is zero."""
        return self.approx_seconds() == 0

    def __str__(self) -> str:
        date = "".join(
            f"{v}{u}"
            for v, u in (
                (self.years, "Y"),
                (self.months, "M"),
                (self.weeks, "W"),
                (self.days, "D"),
            )
            if v
        )
        time = "".join(
            f"{v}{u}" for v, u in ((self.hours, "H"), (self.minutes, "M"), (self.seconds, "S")) if v
        )
        return "P" + date + ("T" + time if time else "") if (date or time) else "PT0S"


def parse_duration(text: str) -> Duration:
    """Parse `30d`, `6w`, `10y`, `3mo`, `12h`, `90m`, `30s` or an ISO 8601 duration."""
    if not isinstance(text, str):
        raise DurationError(f"{text!r} is not a duration (use 10y or P10Y)")
    short = _SHORT.match(text)
    if short:
        duration = Duration(**{_SHORT_UNITS[short.group(2)]: int(short.group(1))})
    else:
        iso = _ISO.match(text.strip().upper())
        if not iso:
            raise DurationError(f'"{text}" is not a duration (use 10y or P10Y)')
        duration = Duration(**{k: int(v) for k, v in iso.groupdict().items() if v is not None})
    if duration.approx_seconds() > _MAX_YEARS * 366 * 86400:
        raise DurationError(f'"{text}" is longer than {_MAX_YEARS} years')
    return duration
