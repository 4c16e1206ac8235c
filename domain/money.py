"""Money: integers in minor units, currencies and their exponents."""

from __future__ import annotations

from typing import Literal

#: Currency -> number of decimal places of its minor unit.
CURRENCIES: dict[str, int] = {"NGN": 2, "USD": 2, "USDC": 6, "ISK": 2, "TOKEN": 0}

Currency = Literal["NGN", "USD", "USDC", "ISK", "TOKEN"]

#: Largest amount a single command may carry, in minor units (10^15).
MAX_AMOUNT = 10**15


def major_to_minor(major: int, currency: str) -> int:
    """Whole major units to minor units (tables in SPEC.md are in major units)."""
    return major * 10 ** CURRENCIES[currency]


def format_minor(amount: int, currency: str) -> str:
    """Human display of a minor-unit amount, exact (no float on the way)."""
    exp = CURRENCIES.get(currency, 0)
    sign = "-" if amount < 0 else ""
    whole, frac = divmod(abs(amount), 10**exp)
    text = f"{whole:,}"
    if exp:
        text += "." + str(frac).rjust(exp, "0")
    return f"{sign}{text} {currency}"
