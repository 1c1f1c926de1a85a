"""Working days on the Chinese public-holiday and adjusted-workday calendar (chinesecalendar).

The library covers the years the State Council has announced. Beyond that, weekends are the only
days off: the deadline is then provisional (``covered`` says so), and the deadline watch
recomputes it once a newer calendar covering that year is installed.
"""

from __future__ import annotations

import datetime as dt
from functools import lru_cache

import chinese_calendar


@lru_cache(maxsize=4096)
def is_workday(day: dt.date) -> tuple[bool, bool]:
    """(is it a working day, does the calendar cover that year)."""
    try:
        return bool(chinese_calendar.is_workday(day)), True
    except NotImplementedError:
        return day.weekday() < 5, False


def add_workdays(start: dt.date, days: int) -> tuple[dt.date, bool]:
    """The date ``days`` working days after ``start`` (start itself does not count), and
    whether the calendar covered every day counted."""
    day, left, covered = start, days, True
    while left > 0:
        day += dt.timedelta(days=1)
        work, known = is_workday(day)
        covered = covered and known
        if work:
            left -= 1
    return day, covered


def workdays_between(start: dt.date, end: dt.date) -> int:
    """Working days after ``start`` up to and including ``end`` (0 if end <= start)."""
    n, day = 0, start
    while day < end:
        day += dt.timedelta(days=1)
        n += is_workday(day)[0]
    return n
