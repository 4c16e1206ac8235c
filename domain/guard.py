"""The balance guard's rules (SPEC §4), pure: tiers, limits, risk score, balance alerts,
analytics.

Everything here takes and returns values in minor units; the SPEC's tables are in major
units and are converted per currency with ``domain.money.major_to_minor``.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from fractions import Fraction
from math import isqrt
from typing import Any, Iterable, Mapping, Sequence, TypeVar

from domain.errors import InvalidCommand
from domain.money import format_minor, major_to_minor
from domain.wallet import BalanceRefused, WalletChange

T = TypeVar("T")

TIERS: tuple[str, ...] = ("bronze", "silver", "gold", "platinum", "diamond")
DEFAULT_TIER = "bronze"

#: tier -> (min balance, max balance, daily limit, weekly limit), in major units.
TIER_TABLE: dict[str, tuple[int, int, int, int]] = {
    "bronze": (-10_000, 1_000_000, 50_000, 200_000),
    "silver": (-10_000, 1_000_000, 100_000, 500_000),
    "gold": (-15_000, 1_500_000, 150_000, 750_000),
    "platinum": (-25_000, 2_500_000, 250_000, 1_000_000),
    "diamond": (-50_000, 5_000_000, 500_000, 2_000_000),
}
WARNING_THRESHOLD = 1_000  # major units: balance below it raises balance_warning
CRITICAL_THRESHOLD = 100  # major units: balance below it raises balance_critical

#: The trailing windows of the change limits.  A change exactly one window old is out.
DAILY_WINDOW = timedelta(hours=24)
WEEKLY_WINDOW = timedelta(days=7)

#: Rules that refuse a change because of the trailing windows (they raise limit_exceeded).
LIMIT_RULES: dict[str, timedelta] = {"daily_limit": DAILY_WINDOW, "weekly_limit": WEEKLY_WINDOW}

#: Balance alert kinds and their severity.
ALERT_SEVERITY: dict[str, str] = {
    "balance_warning": "warning",
    "balance_critical": "critical",
    "limit_exceeded": "warning",
    "significant_drop": "warning",
}
#: A significant drop stays an open alert this long after the last one (unless the balance
#: recovers to where it was before the drop).
SIGNIFICANT_DROP_WINDOW = timedelta(hours=24)


@dataclass(frozen=True, slots=True)
class Limits:
    """What one tier allows in one currency, in minor units.

    Parameters:
      tier, currency: whose limits these are.
      min_balance: lowest balance a user-initiated change may leave (negative: a credit line).
      max_balance: highest balance a user-initiated change may leave.
      daily, weekly: largest sum of |user-initiated changes| over the trailing 24 h / 7 d.
      warning, critical: balance thresholds of the balance alerts.
    """

    tier: str
    currency: str
    min_balance: int
    max_balance: int
    daily: int
    weekly: int
    warning: int
    critical: int

    def __post_init__(self) -> None:
        if self.min_balance > self.max_balance:
            raise InvalidCommand(f"min balance {self.min_balance} above max {self.max_balance}")
        if self.daily < 0 or self.weekly < 0:
            raise InvalidCommand("change limits cannot be negative")
        if self.critical > self.warning:
            raise InvalidCommand(f"critical threshold {self.critical} above warning {self.warning}")


def default_limits(tier: str, currency: str) -> Limits:
    """The SPEC §4 table for ``tier``, converted to ``currency``'s minor units."""
    if tier not in TIER_TABLE:
        raise InvalidCommand(f"unknown tier {tier!r}")
    lo, hi, daily, weekly = (major_to_minor(v, currency) for v in TIER_TABLE[tier])
    return Limits(
        tier, currency, lo, hi, daily, weekly,
        major_to_minor(WARNING_THRESHOLD, currency), major_to_minor(CRITICAL_THRESHOLD, currency),
    )


@dataclass(frozen=True, slots=True)
class Usage:
    """Sum of |user-initiated changes| of one wallet already in its trailing windows."""

    daily: int = 0
    weekly: int = 0

    def plus(self, size: int) -> "Usage":
        return Usage(self.daily + size, self.weekly + size)


def validate(change: WalletChange, before: int, limits: Limits, used: Usage) -> None:
    """Refuse a user-initiated change that breaks a rule; system changes always pass.

    Rules, in order: ``min_balance`` (a debit may not leave the balance below the
    minimum), ``max_balance`` (a credit may not leave it above the maximum),
    ``daily_limit`` and ``weekly_limit`` (|this change| plus what the trailing window
    already holds may not exceed the limit).  Exactly at a limit passes.
    """
    if not change.user_initiated:
        return
    after = before + change.amount
    size = abs(change.amount)
    cur = change.currency
    what = f"{change.kind} of {format_minor(size, cur)} refused by {{rule}} ({limits.tier})"
    if change.amount < 0 and after < limits.min_balance:
        short = limits.min_balance - after
        raise _refused(
            change, "min_balance", short, limits.min_balance,
            f"{what.format(rule='min_balance')}: balance {format_minor(before, cur)} would become "
            f"{format_minor(after, cur)}, below the minimum {format_minor(limits.min_balance, cur)}; "
            f"short by {short}",
        )
    if change.amount > 0 and after > limits.max_balance:
        over = after - limits.max_balance
        raise _refused(
            change, "max_balance", over, limits.max_balance,
            f"{what.format(rule='max_balance')}: balance would become {format_minor(after, cur)}, "
            f"above the maximum {format_minor(limits.max_balance, cur)}; over by {over}",
        )
    for rule, limit, already, window in (
        ("daily_limit", limits.daily, used.daily, "24 h"),
        ("weekly_limit", limits.weekly, used.weekly, "7 d"),
    ):
        if already + size > limit:
            over = already + size - limit
            raise _refused(
                change, rule, over, limit,
                f"{what.format(rule=rule)}: {format_minor(limit, cur)} per trailing {window}, "
                f"{format_minor(already, cur)} already used; over by {over}",
            )


def _refused(change: WalletChange, rule: str, by: int, limit: int, message: str) -> BalanceRefused:
    return BalanceRefused(message, rule=rule, exceeded_by=by, limit=limit, change=change)


#: SPEC §4's risk score, its terms (``risk_score``; the SQL twin binds the same values):
#: (share of the balance before a change must exceed, points).
RISK_LARGE = (Fraction(1, 2), 20)
RISK_VERY_LARGE = (Fraction(4, 5), 30)  # added to RISK_LARGE's
RISK_NEGATIVE = 25  # the new balance is negative
RISK_TIER: Mapping[str, int] = {"bronze": 10, "diamond": -10}


def _exceeds(size: int, base: int, share: Fraction) -> bool:
    return size * share.denominator > base * share.numerator


def risk_score(before: int, amount: int, tier: str) -> int:
    """SPEC §4's risk score of one change, 0–100.

    +20 if |Δ| > 50% of the balance before, +30 more if > 80%; +25 if the new balance
    is negative; +10 bronze, −10 diamond.  "The balance" is its magnitude, so any change
    to an empty or overdrawn wallet counts as large.
    """
    size, base = abs(amount), abs(before)
    score = 0
    if _exceeds(size, base, RISK_LARGE[0]):
        score += RISK_LARGE[1]
        if _exceeds(size, base, RISK_VERY_LARGE[0]):
            score += RISK_VERY_LARGE[1]
    if before + amount < 0:
        score += RISK_NEGATIVE
    score += RISK_TIER.get(tier, 0)
    return max(0, min(100, score))


def balance_level(balance: int, limits: Limits) -> str | None:
    """``balance_critical`` below critical, ``balance_warning`` below warning, else None."""
    if balance < limits.critical:
        return "balance_critical"
    if balance < limits.warning:
        return "balance_warning"
    return None


def is_significant_drop(before: int, after: int) -> bool:
    """A drop of more than half of a positive balance (never a division: no zero trap)."""
    return before > 0 and 2 * (before - after) > before


@dataclass(frozen=True, slots=True)
class AlertDecision:
    """What a wallet's change means for its balance alerts: kinds to open, kinds to clear."""

    raise_kinds: tuple[str, ...]
    resolve_kinds: tuple[str, ...]


def balance_alerts(before: int, after: int, limits: Limits) -> AlertDecision:
    """Balance alerts of a wallet that went from ``before`` to ``after``.

    The level alerts are states: the one that holds is raised, the other is resolved.
    A significant drop is raised by the drop itself; it is resolved elsewhere (time,
    or the balance recovering).
    """
    level = balance_level(after, limits)
    raise_kinds = [level] if level else []
    resolve = [k for k in ("balance_warning", "balance_critical") if k != level]
    if is_significant_drop(before, after):
        raise_kinds.append("significant_drop")
    return AlertDecision(tuple(raise_kinds), tuple(resolve))


#: The balance-alert kinds whose open alerts a wallet change may refresh or resolve.
BALANCE_ALERT_KINDS: tuple[str, ...] = ("balance_warning", "balance_critical", "significant_drop",
                                        "limit_exceeded")
#: The alert kinds that clear by time: their ``data["clears_at"]`` (a window after the
#: refusal, a day after the drop).
EXPIRING_ALERT_KINDS: tuple[str, ...] = ("limit_exceeded", "significant_drop")


class LimitTable:
    """Every stored (tier, currency) row of the limits, falling back to SPEC §4's table."""

    def __init__(self, rows: dict[tuple[str, str], Limits]) -> None:
        self.rows = rows

    def get(self, tier: str, currency: str) -> Limits:
        found = self.rows.get((tier, currency))
        if found is None:
            found = self.rows[(tier, currency)] = default_limits(tier, currency)
        return found


#: One change paired with its wallet's balance before it.
Paired = Sequence[tuple[WalletChange, int]]


@dataclass(slots=True)
class GuardContext:
    """What the guard knows of some wallets once they are locked.

    Parameters:
      tiers: user -> stored tier (absent: ``DEFAULT_TIER``).
      table: the limits of (tier, currency).
      used: (user, currency) -> what the trailing windows hold (absent: nothing).
      open_alerts: dedupe key -> the ``balance_before`` of an open significant drop, None
        for an open alert of another kind (absent: no open alert).
    """

    tiers: dict[str, str]
    table: LimitTable
    used: dict[tuple[str, str], Usage]
    open_alerts: dict[str, int | None]

    def limits_of(self, user_id: str, currency: str) -> Limits:
        return self.table.get(self.tiers.get(user_id, DEFAULT_TIER), currency)


def check(changes: Paired, context: GuardContext) -> None:
    """Validate the user-initiated ones of ``changes``, in order: each one's window sums
    include the changes before it in the same batch.  Raises BalanceRefused for the
    first change that breaks a rule; system changes are never refused."""
    used = dict(context.used)
    for change, before in changes:
        if not change.user_initiated:
            continue
        key = (change.user_id, change.currency)
        already = used.get(key, Usage())
        validate(change, before, context.limits_of(change.user_id, change.currency), already)
        used[key] = already.plus(abs(change.amount))


def wallet_moves(changes: Paired) -> dict[tuple[str, str], tuple[int, int]]:
    """Each wallet's (balance before its first change, balance after its last)."""
    moves: dict[tuple[str, str], tuple[int, int]] = {}
    for c, before in changes:
        key = (c.user_id, c.currency)
        first = moves[key][0] if key in moves else before
        moves[key] = (first, before + c.amount)
    return moves


def alert_key(kind: str, user_id: str, currency: str) -> str:
    """One open balance alert per kind and wallet (a user has one wallet per currency)."""
    return f"{kind}:{user_id}:{currency}"


#: An alert to raise: (kind, severity, subject, dedupe_key, data).
AlertSpec = tuple[str, str, str, str, dict[str, Any]]


def balance_alert(kind: str, user: str, cur: str, before: int, after: int, limits: Limits,
                  txn_id: int | None, clears_at: str) -> AlertSpec:
    """The balance alert of ``kind`` for a wallet that went from ``before`` to ``after``."""
    if kind == "significant_drop":
        subject = (f"{user} {cur} balance dropped from {format_minor(before, cur)} "
                   f"to {format_minor(after, cur)}")
    else:
        threshold = limits.critical if kind == "balance_critical" else limits.warning
        subject = (f"{user} {cur} balance {format_minor(after, cur)} is below "
                   f"{format_minor(threshold, cur)}")
    data: dict[str, Any] = {"user_id": user, "currency": cur, "balance_before": before,
                            "balance": after, "tier": limits.tier, "transaction_id": txn_id,
                            "warning": limits.warning, "critical": limits.critical}
    if kind == "significant_drop":
        data["clears_at"] = clears_at
    return (kind, ALERT_SEVERITY[kind], subject, alert_key(kind, user, cur), data)


def alert_decisions(context: GuardContext, moves: Mapping[tuple[str, str], tuple[int, int]],
                    txn_id: int | None, now: datetime) -> tuple[list[AlertSpec], list[str]]:
    """The balance alerts to raise and the keys to resolve for wallets that moved
    (``(user, currency) -> (before, after)``).  ``context.open_alerts`` needs the open
    significant drops of the wallets that went up (their ``balance_before``): a drop is
    over once the wallet is back where it was before the drop."""
    clears_at = (now + SIGNIFICANT_DROP_WINDOW).isoformat()
    raised: list[AlertSpec] = []
    resolve: list[str] = []
    for (user, cur), (before, after) in moves.items():
        limits = context.limits_of(user, cur)
        decision = balance_alerts(before, after, limits)
        for kind in decision.raise_kinds:
            raised.append(balance_alert(kind, user, cur, before, after, limits, txn_id, clears_at))
        resolve += [alert_key(kind, user, cur) for kind in decision.resolve_kinds]
        drop = alert_key("significant_drop", user, cur)
        drop_before = context.open_alerts.get(drop)
        if after > before and drop_before is not None and after >= drop_before:
            resolve.append(drop)
    return raised, resolve


def refusal_alert(error: BalanceRefused, now: datetime) -> AlertSpec | None:
    """``limit_exceeded`` for a change refused by a trailing window; it clears when that
    window has rolled past the refusal.  None for the other rules."""
    window = LIMIT_RULES.get(error.rule)
    if window is None or error.change is None:
        return None
    c = error.change
    return ("limit_exceeded", ALERT_SEVERITY["limit_exceeded"],
            f"{c.user_id} {c.currency} {c.kind} refused by {error.rule}: over by "
            f"{format_minor(error.exceeded_by, c.currency)}",
            alert_key("limit_exceeded", c.user_id, c.currency),
            {**error.data(), "clears_at": (now + window).isoformat()})


# --- analytics -----------------------------------------------------------------------------

PERIODS: dict[str, timedelta | None] = {
    "daily": timedelta(days=1),
    "weekly": timedelta(days=7),
    "monthly": timedelta(days=30),
    "yearly": timedelta(days=365),
    "custom": None,
}
TREND_THRESHOLD = 100  # major units of net change before a trend is "up" or "down"
VOLATILITY_HIGH, VOLATILITY_MEDIUM = 10_000, 5_000  # major units
PERCENT_HIGH, PERCENT_MEDIUM = 50, 25  # percent of the starting balance


def period_bounds(period: str, now: datetime, start: datetime | None = None,
                  end: datetime | None = None) -> tuple[datetime, datetime]:
    """``[start, end)`` of a period: the trailing day/week/30 days/365 days up to ``now``,
    or ``custom`` with both ends given."""
    if period not in PERIODS:
        raise InvalidCommand(f"unknown period {period!r}; one of {', '.join(PERIODS)}")
    length = PERIODS[period]
    if length is None:
        if start is None or end is None:
            raise InvalidCommand("a custom period needs --start and --end")
    else:
        if start is not None:
            raise InvalidCommand(f"--start is only for a custom period, not {period}")
        end = end or now
        start = end - length
    if start.tzinfo is None or end.tzinfo is None:
        raise InvalidCommand("period bounds need a UTC offset")
    if end <= start:
        raise InvalidCommand(f"period end {end.isoformat()} is not after its start {start.isoformat()}")
    return start, end


@dataclass(frozen=True, slots=True)
class ChangeStats:
    """What a period's changes add up to (enough for the mean and the population std-dev).

    Parameters:
      count: number of changes.
      sum_abs: Σ|Δ|.
      sum_sq: Σ Δ².
      by_type: kind -> Σ Δ (signed).
    """

    count: int = 0
    sum_abs: int = 0
    sum_sq: int = 0
    by_type: Mapping[str, int] | None = None

    @classmethod
    def of(cls, changes: Iterable[tuple[str, int]]) -> "ChangeStats":
        count = sum_abs = sum_sq = 0
        by_type: dict[str, int] = {}
        for kind, amount in changes:
            count += 1
            sum_abs += abs(amount)
            sum_sq += amount * amount
            by_type[kind] = by_type.get(kind, 0) + amount
        return cls(count, sum_abs, sum_sq, by_type)


def volatility(count: int, sum_abs: int, sum_sq: int) -> int:
    """Population std-dev of |changes|, floored to a whole minor unit (exact, no float)."""
    if count == 0:
        return 0
    # var = Σx²/n − (Σx/n)²  =  (nΣx² − (Σx)²) / n²   so   σ = √(nΣx² − (Σx)²) / n
    return isqrt(count * sum_sq - sum_abs * sum_abs) // count


def percent_change(start: int, net: int) -> Fraction | None:
    """Net change as a percent of the starting balance's magnitude; None from zero."""
    if start == 0:
        return None
    return Fraction(net * 100, abs(start))


def trend(net: int, currency: str) -> str:
    threshold = major_to_minor(TREND_THRESHOLD, currency)
    if net > threshold:
        return "up"
    if net < -threshold:
        return "down"
    return "flat"


def risk_level(vol: int, pct: Fraction | None, currency: str) -> str:
    """high: volatility > 10,000 major units or |%| > 50; medium: > 5,000 or > 25; else low."""
    magnitude = abs(pct) if pct is not None else Fraction(0)
    if vol > major_to_minor(VOLATILITY_HIGH, currency) or magnitude > PERCENT_HIGH:
        return "high"
    if vol > major_to_minor(VOLATILITY_MEDIUM, currency) or magnitude > PERCENT_MEDIUM:
        return "medium"
    return "low"


def analyze(currency: str, start_balance: int, end_balance: int, stats: ChangeStats) -> dict:
    """The analytics of one currency over one period (SPEC §4), amounts in minor units.

    ``change_percent`` is rounded to two decimals for people; ``change_bps`` is the same
    in whole basis points (truncated toward zero); both are null from a zero start.
    """
    net = end_balance - start_balance
    pct = percent_change(start_balance, net)
    vol = volatility(stats.count, stats.sum_abs, stats.sum_sq)
    return {
        "currency": currency,
        "start_balance": start_balance,
        "end_balance": end_balance,
        "net_change": net,
        "change_percent": None if pct is None else round(float(pct), 2),
        "change_bps": None if pct is None else int(pct * 100),
        "changes": stats.count,
        "totals_by_type": dict(sorted((stats.by_type or {}).items())),
        "volatility": vol,
        "trend": trend(net, currency),
        "risk_level": risk_level(vol, pct, currency),
    }


#: A change this risky or more counts as ``risky`` in an agent's analytics.
RISKY_SCORE = 50


def parse_cursor(cursor: str | None) -> int | None:
    """A page cursor (the last audit id seen, as text); InvalidCommand when it is not one."""
    if cursor is None:
        return None
    if not cursor.isdigit() or int(cursor) <= 0:
        raise InvalidCommand(f"not a page cursor: {cursor!r} (give the next_cursor of a page)")
    return int(cursor)


def page(rows: Sequence[T], limit: int, key) -> tuple[list[T], str | None]:
    """Keyset paging, newest first: ``rows`` holds up to ``limit + 1`` rows after the
    cursor; the page is the first ``limit`` and the next cursor is the last one's key
    when more remain (None on the last page)."""
    shown = list(rows[:limit])
    more = len(rows) > limit
    return shown, (str(key(shown[-1])) if more and shown else None)


def analyze_agent(currency: str, stats: ChangeStats, users: int, max_risk: int, risky: int) -> dict:
    """What one agent (the operator or upstream service that performed the changes) did
    in one currency over one period: no balances (an agent has none), its changes."""
    vol = volatility(stats.count, stats.sum_abs, stats.sum_sq)
    net = sum((stats.by_type or {}).values())
    return {
        "currency": currency,
        "changes": stats.count,
        "users": users,
        "net_change": net,
        "volume": stats.sum_abs,
        "totals_by_type": dict(sorted((stats.by_type or {}).items())),
        "volatility": vol,
        "trend": trend(net, currency),
        "max_risk_score": max_risk,
        "risky_changes": risky,
        "risk_level": risk_level(vol, None, currency),
    }
