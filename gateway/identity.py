"""Checks of identity data at intake: resident ID numbers and phone numbers.

A resident ID number (``id_type = "resident_id"``, the default) must be a valid GB 11643 number:
18 characters, a known region, a real birth date and the right check digit (python-stdnum's
``cn.ric``). A phone number must be a mainland mobile number (11 digits, 13x-19x; ``+86`` may
precede it) or a landline with its area code (0 and 9-11 more digits; a hyphen may follow the
area code). Messages never repeat the number: it is personal data.
"""

from __future__ import annotations

import functools
import re

from stdnum.cn import ric
from stdnum.exceptions import InvalidComponent

RESIDENT_ID = "resident_id"
_MOBILE = re.compile(r"^(?:\+?86)?1[3-9]\d{9}$")
_LANDLINE = re.compile(r"^0\d{2,3}-?\d{7,8}$")


def check_resident_id(value: str) -> str:
    """The number, upper-cased (a final ``x`` is ``X``); ValueError saying what is wrong.

    The same checks as ``ric.validate``, in its order, with the region looked up once per
    region and birth year (neither names a person) instead of on every application."""
    number = ric.compact(value.strip())
    if len(number) != 18:
        raise ValueError("must be 18 long: 17 digits and a check digit (or X)")
    if not _DIGITS.fullmatch(number[:-1]):
        raise ValueError("must be 17 digits and a check digit (or X)")
    if number[-1] != ric.calc_check_digit(number):
        raise ValueError("the check digit does not match: the number was mistyped")
    try:
        year = ric.get_birth_date(number).year
    except InvalidComponent:
        year = 0
    if not year or not _known_place(number[:6], year):
        raise ValueError("the birth date or region in the number is not valid")
    return str(number)


_DIGITS = re.compile(r"[0-9]+")


@functools.lru_cache(maxsize=8192)
def _known_place(region: str, year: int) -> bool:
    """Whether ``region`` was a county in ``year`` (python-stdnum's table)."""
    try:
        ric.get_birth_place(f"{region}{year:04d}01010000")
    except (InvalidComponent, LookupError):
        # stdnum raises KeyError for a region known only at province level: still bad input
        return False
    return True


def check_phone(value: str) -> str:
    compact = value.replace(" ", "")
    if _MOBILE.match(compact) or _LANDLINE.match(compact):
        return compact
    raise ValueError(
        "not a mainland mobile number (11 digits starting 13-19) or a landline with its area "
        "code (such as 0571-88888888)"
    )
