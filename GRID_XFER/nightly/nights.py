"""Which nights a stream is working on, and when each one is due.

A night is named by the date in the observatory's time zone on which it
began: with a rollover hour of 12, everything from noon to the next noon is
that evening's night, so a night never changes name at midnight mid-exposure.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from zoneinfo import ZoneInfo

from GRID_XFER.nightly_config import StreamConfig


@dataclass(frozen=True)
class Night:
    stream: str
    date: dt.date
    name: str  # the token set
    directory: str  # under the stream's source
    end: float  # epoch seconds: the rollover that closes it
    deadline: float  # epoch seconds: finished by then, or an alert

    def is_over(self, now: float) -> bool:
        return now >= self.end


def night_date(stream: StreamConfig, now: float) -> dt.date:
    """The date of the night ``now`` belongs to."""
    local = dt.datetime.fromtimestamp(now, ZoneInfo(stream.timezone))
    day = local.date()
    return day - dt.timedelta(days=1) if local.hour < stream.rollover_hour else day


def night(stream: StreamConfig, date: dt.date) -> Night:
    tz = ZoneInfo(stream.timezone)
    end_local = dt.datetime.combine(
        date + dt.timedelta(days=1), dt.time(stream.rollover_hour), tzinfo=tz
    )
    end = end_local.timestamp()
    return Night(
        stream=stream.name,
        date=date,
        name=date.strftime(stream.night_format),
        directory=date.strftime(stream.directory_format),
        end=end,
        deadline=end + stream.deadline_hours * 3600,
    )


def window(stream: StreamConfig, now: float) -> list[Night]:
    """Tonight and the ``catch_up_nights`` before it, oldest first."""
    tonight = night_date(stream, now)
    return [
        night(stream, tonight - dt.timedelta(days=back))
        for back in range(stream.catch_up_nights, -1, -1)
    ]
