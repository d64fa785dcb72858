"""When rules run: `every 6h` (a fixed interval) or a five-field cron expression (`0 3 * * *`)."""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from croniter import CroniterError, croniter

from retentiond.duration import DurationError, parse_duration

_EVERY = re.compile(r"^\s*every\s+(\S+)\s*$", re.IGNORECASE)
_MIN_INTERVAL = timedelta(seconds=10)  # tighter loops would only hammer the databases


class ScheduleError(ValueError):
    """Text that is not a schedule."""


@dataclass(frozen=True)
class Schedule:
    """A parsed schedule; `text` is what the admin wrote."""

    text: str
    interval: timedelta | None  # set for `every ...`
    cron: str | None  # set for cron expressions

    def next_after(self, moment: datetime) -> datetime:
        """The first slot strictly after `moment` (aware datetimes; cron is evaluated in UTC)."""
        if self.interval is not None:
            # Slots are aligned to the epoch so that every daemon computes the same ones.
            epoch = datetime(1970, 1, 1, tzinfo=UTC)
            elapsed = moment - epoch
            slots = elapsed // self.interval + 1
            return epoch + slots * self.interval
        assert self.cron is not None
        nxt: datetime = croniter(self.cron, moment.astimezone(UTC)).get_next(datetime)
        return nxt


def parse_schedule(text: str) -> Schedule:
    """Parse `every 1h` or a five-field cron expression."""
    if not isinstance(text, str):
        raise ScheduleError(f'{text!r} is not a schedule (use "every 1h" or "0 3 * * *")')
    every = _EVERY.match(text)
    if every:
        try:
            duration = parse_duration(every.group(1))
        except DurationError as exc:
            raise ScheduleError(f'"{text}": {exc}') from None
        if duration.years or duration.months:
            raise ScheduleError(f'"{text}": use days or weeks for intervals, or a cron expression')
        interval = timedelta(seconds=duration.approx_seconds())
        if interval < _MIN_INTERVAL:
            raise ScheduleError(f'"{text}" is shorter than {int(_MIN_INTERVAL.total_seconds())}s')
        return Schedule(text=text, interval=interval, cron=None)
    fields = text.split()
    if len(fields) != 5 or not croniter.is_valid(text):
        raise ScheduleError(
            f'"{text}" is not a schedule (use "every 1h" or five cron fields like "0 3 * * *")'
        )
    schedule = Schedule(text=text, interval=None, cron=" ".join(fields))
    try:
        # Valid fields can still name no real date (`0 0 30 2 *`); the scheduler would fail later.
        schedule.next_after(datetime(2000, 1, 1, tzinfo=UTC))
    except CroniterError:
        raise ScheduleError(f'"{text}" never matches a real date') from None
    return schedule
