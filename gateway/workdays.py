"""Working days on the Chinese public-holiday and adjusted-workday calendar (chinesecalendar).

The library covers the years the State Council has announced. Beyond that, weekends are the only
days off: the deadline is then provisional (``covered`` says so), and the deadline watch
recomputes it once a newer calendar covering that year is installed.
"""

from __future__ import annotations

import bisect
import datetime as dt
from collections.abc import Callable
from functools import lru_cache

import chinese_calendar


@lru_cache(maxsize=4096)
def is_workday(day: dt.date) -> tuple[bool, bool]:
    """(is it a working day, does the calendar cover that year)."""
    try:
        return bool(chinese_calendar.is_workday(day)), True
    except NotImplementedError:
        return day.weekday() < 5, False


# Working days are counted with per-year running totals (built once per year and calendar), so
# a count or a step of any length costs a few look-ups: the console reads thousands of deadlines
# per page. Days before _EPOCH are walked one by one, as before. Counts are only compared with
# each other, so the epoch is five years back, not 2000: every process builds the totals at
# start-up (warm), and 27 years of them, day by day through chinesecalendar, were 0.3-0.5 s of
# it (seconds at CI's load, where tests wait for a process to answer)
_EPOCH = dt.date.today().year - 5
Calendar = Callable[[dt.date], tuple[bool, bool]]


@lru_cache(maxsize=256)
def _year(year: int, calendar: Calendar) -> tuple[tuple[int, ...], bool]:
    """Working days from 1 January up to and including each day of ``year`` (by day of the
    year, from 0), and whether the calendar covers the year."""
    day, n, covered, totals = dt.date(year, 1, 1), 0, True, []
    while day.year == year:
        work, known = calendar(day)
        n += work
        covered = covered and known
        totals.append(n)
        day += dt.timedelta(days=1)
    return tuple(totals), covered


@lru_cache(maxsize=256)
def _before(year: int, calendar: Calendar) -> int:
    """Working days from _EPOCH up to the end of the year before ``year``."""
    return 0 if year <= _EPOCH else _before(year - 1, calendar) + _year(year - 1, calendar)[0][-1]


@lru_cache(maxsize=256)
def _january(year: int) -> int:
    return dt.date(year, 1, 1).toordinal()


def _count(day: dt.date, calendar: Calendar) -> int:
    """Working days from _EPOCH up to and including ``day``."""
    totals, _covered = _year(day.year, calendar)
    return _before(day.year, calendar) + totals[day.toordinal() - _january(day.year)]


def add_workdays(start: dt.date, days: int) -> tuple[dt.date, bool]:
    """The date ``days`` working days after ``start`` (start itself does not count), and
    whether the calendar covered every day counted."""
    if days <= 0:
        return start, True
    calendar = is_workday  # looked up now: tests install other calendars
    if start.year < _EPOCH:
        return _walk(start, days)
    target = _count(start, calendar) + days
    year = start.year
    while _before(year + 1, calendar) < target:
        year += 1
    totals, _covered = _year(year, calendar)
    index = bisect.bisect_left(totals, target - _before(year, calendar))
    end = dt.date(year, 1, 1) + dt.timedelta(days=index)
    first = (start + dt.timedelta(days=1)).year
    return end, all(_year(y, calendar)[1] for y in range(first, year + 1))


def warm(today: dt.date) -> None:
    """Build the running totals intake and the deadline clocks read (from _EPOCH to the year
    after ``today``'s) now, at start-up: built on first use, day by day through chinesecalendar,
    they cost ~0.3-0.5 s of CPU inside the first request that counted a deadline."""
    if today.year >= _EPOCH:
        _before(today.year + 2, is_workday)


def _walk(start: dt.date, days: int) -> tuple[dt.date, bool]:
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
    if end <= start:
        return 0
    if start.year >= _EPOCH:
        calendar = is_workday
        return _count(end, calendar) - _count(start, calendar)
    n, day = 0, start
    while day < end:
        day += dt.timedelta(days=1)
        n += is_workday(day)[0]
    return n
