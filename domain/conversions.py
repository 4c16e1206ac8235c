"""Conversions between USD and USDC: directions, amounts, and the job's state machine.

Pure rules (SPEC §3).  Rates are integers: ``rate_ppm`` is how many major
units of the destination one major unit of the source buys, times 10^6
(0.9990 -> 999_000).  No float anywhere.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal, InvalidOperation

from domain.errors import InvalidCommand, Refused
from domain.lifecycle import Lifecycle
from domain.money import CURRENCIES

Direction = str  # "USD->USDC" or "USDC->USD"

#: Direction -> (source currency, destination currency).
DIRECTIONS: dict[Direction, tuple[str, str]] = {
    "USD->USDC": ("USD", "USDC"),
    "USDC->USD": ("USDC", "USD"),
}

#: Currencies worth one US dollar each (sizing and provider limits are at par).
DOLLAR_CURRENCIES = ("USD", "USDC")

PPM = 1_000_000
BPS = 10_000

#: A submission error falls back to the next provider at most this many times.
MAX_RETRIES = 3
#: A job still with its provider after this long is stale (alert, keep polling).
STALE_AFTER = timedelta(minutes=30)
#: Per-job polling after submission: the first poll after this, doubling, capped.
POLL_FIRST_DELAY_MS = 2_000  # ms
POLL_MAX_DELAY_MS = 30_000  # ms
#: Conversion failure rate over the last day above this raises an alert (5 %).
FAILURE_RATE_LIMIT_BPS = 500
#: …of the conversions finished in this trailing window.
FAILURE_RATE_WINDOW = timedelta(days=1)


def direction_between(source_currency: str, destination_currency: str) -> Direction:
    direction = f"{source_currency}->{destination_currency}"
    if direction not in DIRECTIONS:
        raise InvalidCommand(f"no conversion from {source_currency} to {destination_currency}")
    return direction


def at_par(amount: int, from_cur: str, to_cur: str, *, round_up: bool) -> int:
    """``amount`` of one dollar currency in minor units of another, one for one.

    Going to fewer decimals loses a fraction of a minor unit: ``round_up``
    says whether the caller pays it (True: ask for enough) or keeps it.
    """
    if from_cur not in DOLLAR_CURRENCIES or to_cur not in DOLLAR_CURRENCIES:
        raise InvalidCommand(f"{from_cur} and {to_cur} are not both dollar currencies")
    shift = CURRENCIES[to_cur] - CURRENCIES[from_cur]
    if shift >= 0:
        return amount * 10**shift
    q, r = divmod(amount, 10**-shift)
    return q + (1 if round_up and r else 0)


def par_value(amount: int, currency: str) -> int:
    """What ``amount`` is worth in USD cents at par, rounded up (a limit is never beaten
    by rounding)."""
    return at_par(amount, currency, "USD", round_up=True)


def parse_rate(text: str) -> int:
    """A decimal rate such as ``"0.9990"`` as ppm; more than 6 decimals is refused."""
    try:
        value = Decimal(str(text).strip())
    except InvalidOperation:
        raise InvalidCommand(f"rate {text!r} is not a decimal number") from None
    ppm = value * PPM
    if not value.is_finite() or ppm != ppm.to_integral_value() or ppm <= 0:
        raise InvalidCommand(f"rate {text!r} must be positive with at most 6 decimals")
    return int(ppm)


def format_rate(rate_ppm: int) -> str:
    whole, frac = divmod(rate_ppm, PPM)
    return f"{whole}.{frac:06d}"


@dataclass(frozen=True, slots=True)
class Quote:
    """What a conversion yields.

    Parameters:
      gross: destination minor units at the rate, before the fee.
      fee: the provider's fee, destination minor units.
      net: what arrives in the destination buffer (gross - fee).
    """

    gross: int
    fee: int
    net: int


def quote(source_amount: int, direction: Direction, rate_ppm: int, fee_bps: int) -> Quote:
    """Convert at ``rate_ppm`` and take ``fee_bps`` of the result.

    Rounding: the fraction of a minor unit lost at the rate, and the fraction
    of the fee, both go to the provider (gross rounds down, fee rounds up).
    """
    if source_amount <= 0 or rate_ppm <= 0 or not 0 <= fee_bps < BPS:
        raise InvalidCommand("quote needs a positive amount and rate, and a fee below 100%")
    src, dst = DIRECTIONS[direction]
    num = source_amount * rate_ppm * 10 ** CURRENCIES[dst]
    gross = num // (PPM * 10 ** CURRENCIES[src])
    fee = -(-gross * fee_bps // BPS)
    return Quote(gross, fee, gross - fee)


# --- the job's state machine -----------------------------------------------------------

PENDING = "pending"
SUBMITTED = "provider_submitted"
PROCESSING = "provider_processing"
COMPLETED = "completed"
FAILED = "failed"
CANCELLED = "cancelled"

ACTIVE = (PENDING, SUBMITTED, PROCESSING)
#: Active and in the provider's hands: never resubmitted, only polled.
WITH_PROVIDER = (SUBMITTED, PROCESSING)
TERMINAL = (COMPLETED, FAILED, CANCELLED)

TRANSITIONS: dict[str, frozenset[str]] = {
    PENDING: frozenset({SUBMITTED, FAILED, CANCELLED}),
    SUBMITTED: frozenset({PROCESSING, COMPLETED, FAILED, CANCELLED}),
    PROCESSING: frozenset({COMPLETED, FAILED, CANCELLED}),
    COMPLETED: frozenset(),
    FAILED: frozenset(),
    CANCELLED: frozenset(),
}

#: What a provider can say about an order.
NOT_FOUND = "not_found"
REPORT_STATES = (NOT_FOUND, "processing", COMPLETED, FAILED)


#: The job's lifecycle (domain.lifecycle), the one mechanism every entity's status uses.
JOB = Lifecycle("conversion job", PENDING, TRANSITIONS)


def transition(current: str, new: str) -> str:
    """``new`` when the state machine allows ``current -> new``; Refused otherwise."""
    return JOB.check(current, new)


def after_report(current: str, reported: str) -> str | None:
    """The job's next status given the provider's report, None when nothing changes.

    Only a job in the provider's hands follows reports; ``not_found`` never
    moves a job (the provider lost it: an operator must look, we do not resubmit).
    """
    if reported not in REPORT_STATES:
        raise InvalidCommand(f"unknown provider state {reported!r}")
    if current not in WITH_PROVIDER or reported == NOT_FOUND:
        return None
    if reported == "processing":
        return PROCESSING if current == SUBMITTED else None
    return transition(current, reported)


def ledger_transactions_of(status: str, transit_moved: bool) -> tuple[int, int, int]:
    """How many (transit, conversion, return) ledger transactions a job in ``status`` has:
    a completed job its transit and its conversion; a failed or cancelled one its transit
    and the return of it, if the source ever moved; an active one its transit, if moved."""
    moved = 1 if transit_moved else 0
    if status == COMPLETED:
        return 1, 1, 0
    if status in (FAILED, CANCELLED):
        return moved, 0, moved
    if status in ACTIVE:
        return moved, 0, 0
    raise InvalidCommand(f"unknown job status {status!r}")


def retries_left(attempts_made: int) -> bool:
    """May the job try (another) provider after ``attempts_made`` attempts?"""
    return attempts_made <= MAX_RETRIES


def poll_delay_ms(poll_no: int) -> int:
    """How long after the previous one the job's ``poll_no``-th own poll comes (0-based):
    2 s, 4 s, 8 s, ... capped at 30 s."""
    if poll_no < 0:
        raise InvalidCommand("poll number must be >= 0")
    return min(POLL_MAX_DELAY_MS, POLL_FIRST_DELAY_MS << min(poll_no, 30))


def is_stale(since: datetime, now: datetime, after: timedelta = STALE_AFTER) -> bool:
    return now - since >= after


def failure_rate_exceeded(completed: int, failed: int,
                          limit_bps: int = FAILURE_RATE_LIMIT_BPS) -> bool:
    """Did more than ``limit_bps`` of the finished jobs fail?"""
    finished = completed + failed
    return finished > 0 and failed * BPS > limit_bps * finished
