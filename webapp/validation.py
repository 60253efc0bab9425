"""Server-side checks of the values an endpoint receives.

Every endpoint is reachable through the API with any JSON value, whatever its widget allows, so each
number is parsed and range-checked here: NaN, ±inf, out-of-range, fractional where an integer is
meant, and non-numbers (lists, dicts, text) all raise `UserError("error.bad_value")` naming the
setting, the value and the allowed range.
"""

from __future__ import annotations

import math
import re
from typing import Any

from webapp.i18n import UserError

_INTEGER_TEXT = re.compile(r"[+-]?\d{1,40}")
_SHOWN_CHARS = 40  # a huge value is echoed back shortened


def integer(name: str, value: Any, low: int, high: int) -> int:
    """`value` as an integer in `low..high` (a float such as 3.0 is accepted, 2.5 is not)."""
    number = _number(value)
    if isinstance(number, float):
        number = int(number) if math.isfinite(number) and number.is_integer() else None
    if number is None or not low <= number <= high:
        raise _bad(name, value, f"an integer in {low}..{high}")
    return number


def real(name: str, value: Any, low: float, high: float, *, open_low: bool = False) -> float:
    """`value` as a finite number in `[low, high]`, or `(low, high]` with `open_low`."""
    number = _number(value)
    if number is None or not math.isfinite(number):
        number = None
    elif not (low < number if open_low else low <= number) or number > high:
        number = None
    if number is None:
        bracket = "(" if open_low else "["
        raise _bad(name, value, f"a number in {bracket}{low:g}, {high:g}]")
    return float(number)


def boolean(name: str, value: Any) -> bool:
    """`value` as True or False: JSON's booleans only (not 0, 1 or text)."""
    if not isinstance(value, bool):
        raise _bad(name, value, "true or false")
    return value


def optional(value: Any) -> bool:
    """True when the user left the field empty (None or blank text)."""
    return value is None or (isinstance(value, str) and not value.strip())


def text(name: str, value: Any, max_chars: int, max_bytes: int | None = None) -> str:
    """`value` as text of at most `max_chars` characters and `max_bytes` bytes of UTF-8 (None is
    empty text); text that is not Unicode (a lone surrogate, which JSON can carry) is refused."""
    if value is None:
        return ""
    if not isinstance(value, str):
        raise _bad(name, value, "text")
    if len(value) > max_chars:
        raise UserError("error.text_field_too_long", name=name, chars=len(value), limit=max_chars)
    try:
        size = len(value.encode("utf-8"))
    except UnicodeEncodeError as err:
        raise UserError("error.text_not_unicode", name=name, position=err.start) from None
    if max_bytes is not None and size > max_bytes:
        raise UserError(
            "error.text_field_too_big", name=name, size=f"{size / 2**20:.1f}", limit=f"{max_bytes / 2**20:g}"
        )
    return value


def _number(value: Any) -> int | float | None:
    """An int or float from a JSON number or its text; None for anything else."""
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        return value
    if isinstance(value, str):
        stripped = value.strip()
        if _INTEGER_TEXT.fullmatch(stripped):
            return int(stripped)  # exact, however large
        try:
            return float(stripped)
        except ValueError:
            return None
    return None


def _bad(name: str, value: Any, rule: str) -> UserError:
    shown = value if isinstance(value, (int, float, str)) and len(str(value)) <= _SHOWN_CHARS else _short(value)
    return UserError("error.bad_value", name=name, value=shown, rule=rule)


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= _SHOWN_CHARS else text[: _SHOWN_CHARS - 1] + "…"
