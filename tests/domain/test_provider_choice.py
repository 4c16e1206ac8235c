"""Cost-aware provider selection, health probes and per-job poll backoff, pure."""

from __future__ import annotations

from hypothesis import given, strategies as st

from domain import conversions as conv
from domain.providers import ProviderView, choose, rank, why_not

names = st.lists(st.text("abcdefgh", min_size=1, max_size=3), min_size=1, max_size=8, unique=True)


@st.composite
def quoted_providers(draw):
    ns = draw(names)
    ps = [ProviderView(n, draw(st.integers(0, 4))) for n in ns]
    nets = {n: draw(st.integers(0, 10**12)) for n in ns}
    return ps, nets


@given(quoted_providers(), st.randoms())
def test_the_provider_delivering_the_most_wins_and_priority_breaks_ties(case, rnd):
    ps, nets = case
    shuffled = list(ps)
    rnd.shuffle(shuffled)
    ordered = choose(shuffled, nets)
    best = max(nets.values())
    first = ordered[0]
    assert nets[first.name] == best
    tied = [p for p in ps if nets[p.name] == best]
    assert first.priority == min(p.priority for p in tied)
    # a total order: nets never increase along it, and ties go by (priority, name)
    for a, b in zip(ordered, ordered[1:]):
        assert (-nets[a.name], a.priority, a.name) < (-nets[b.name], b.priority, b.name)
    assert ordered == choose(ps, nets)  # whatever order the providers came in
    assert sorted(p.name for p in ordered) == sorted(p.name for p in ps)


@given(quoted_providers(), st.data())
def test_without_every_quote_the_order_is_priority_alone(case, data):
    ps, nets = case
    missing = data.draw(st.sampled_from([p.name for p in ps]))
    nets = {**nets, missing: None}
    assert [p.name for p in choose(ps, nets)] == [p.name for p in sorted(ps, key=lambda p: (p.priority, p.name))]


def test_a_better_rate_beats_a_better_priority():
    cheap, dear = ProviderView("cheap", 5), ProviderView("dear", 1)
    q_cheap = conv.quote(10_000_00, "USD->USDC", 1_000_000, 5)
    q_dear = conv.quote(10_000_00, "USD->USDC", 999_000, 0)
    assert q_cheap.net > q_dear.net
    assert [p.name for p in choose([dear, cheap], {"cheap": q_cheap.net, "dear": q_dear.net})] == [
        "cheap", "dear"]


def test_a_provider_whose_probe_says_down_is_not_eligible_and_an_absent_probe_says_nothing():
    down = ProviderView("down", 1, probe_healthy=False)
    unknown = ProviderView("unknown", 2, probe_healthy=None)
    up = ProviderView("up", 3, probe_healthy=True)
    assert why_not(down, "USD->USDC", 100) == "down failed its health probe"
    assert not down.healthy and unknown.healthy and up.healthy
    assert [p.name for p in rank([down, unknown, up], "USD->USDC", 100)] == ["unknown", "up"]
    # a probe never rescues a provider its outcomes say is degraded
    assert not ProviderView("d", 1, successes=1, failures=9, probe_healthy=True).healthy


@given(st.integers(0, 10_000))
def test_poll_backoff_doubles_from_two_seconds_and_is_capped(n):
    d = conv.poll_delay_ms(n)
    assert conv.POLL_FIRST_DELAY_MS <= d <= conv.POLL_MAX_DELAY_MS
    assert d == min(conv.POLL_MAX_DELAY_MS, conv.POLL_FIRST_DELAY_MS * 2**n)
    assert conv.poll_delay_ms(n + 1) >= d


def test_poll_backoff_starts_2_4_8():
    assert [conv.poll_delay_ms(i) for i in range(6)] == [2_000, 4_000, 8_000, 16_000, 30_000, 30_000]


@given(st.sampled_from(conv.ACTIVE + conv.TERMINAL), st.booleans())
def test_a_job_s_ledger_transactions_follow_its_status(status, moved):
    transit, converted, returned = conv.ledger_transactions_of(status, moved)
    assert converted == (1 if status == conv.COMPLETED else 0)
    # money that left the source is either in transit, converted, or back: never two of them
    assert transit == (1 if moved or status == conv.COMPLETED else 0)
    assert returned == (1 if moved and status in (conv.FAILED, conv.CANCELLED) else 0)
    assert converted + returned <= transit
