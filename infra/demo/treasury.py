"""Demo chapter: a drained buffer refilled through the simulated provider, failing over;
a freeze drill; reconciliation."""

from __future__ import annotations

import time

from domain.money import format_minor
from infra import ledger
from infra.demo.context import DemoContext
from infra.treasury import store

USDC_BUF = "buffer:system_buffer_usdc"
START = {"system_buffer_usdc": ("USDC", 50_000 * 10**6),
         "system_buffer_fiat": ("USD", 150_000 * 100),
         "broker_operational": ("USD", 250_000 * 100)}


def balance(ctx: DemoContext, code: str) -> int:
    with ctx.engine.connect() as conn:
        return ledger.balances(conn, [code]).get(code, 0)


def _settle_leftovers(ctx: DemoContext) -> None:
    """Jobs an earlier run left in flight: poll them, and cancel what will not finish."""
    for _ in range(4):
        if not ctx.cli("conversions", "--active"):
            return
        ctx.cli("conversions", "poll")
        time.sleep(0.5)
    for job in ctx.cli("conversions", "--active"):
        ctx.cli("conversions", "cancel", str(job["job_id"]), "--by", "demo", "--reason",
                "left over by an earlier demo run", "--force", "--yes")


def _set_balances(ctx: DemoContext) -> None:
    """Upstream services report flows until every buffer sits at its demo start."""
    for account_type, (cur, wanted) in START.items():
        delta = wanted - balance(ctx, f"buffer:{account_type}")
        if delta:
            ctx.send("record_buffer_flow", request_id=ctx.id(f"start-{account_type}"),
                     account_type=account_type, amount=delta, reference="demo: starting level")
    for account_type, (_, wanted) in START.items():
        ctx.wait_until(lambda a=account_type, w=wanted: balance(ctx, f"buffer:{a}") == w,
                       f"{account_type} at its starting level")


def run(ctx: DemoContext) -> None:
    ctx.chapter("treasury", "Treasury engine: a drained buffer refilled, a provider failing over")
    flaky, steady = ctx.id("demo-flaky"), ctx.id("demo-steady")
    for p in ctx.cli("providers"):
        if p["name"].startswith("demo-") and p["status"] == "active":
            ctx.cli("providers", "pause", p["name"], "--by", "demo-operator")  # earlier demo runs' providers
    # It refuses orders while its health endpoint answers: the scheduler's probes (which keep
    # a provider whose health endpoint is down out of selection) let it be tried.
    ctx.cli("providers", "add", flaky, "--by", "demo-operator", "--type", "simulated", "--priority", "1",
            "--fail-mode", "reject")
    ctx.cli("providers", "add", steady, "--by", "demo-operator", "--type", "simulated", "--priority", "2", "--rate",
            "0.9995", "--fee-bps", "10", "--latency-polls", "2")
    ctx.say(f"providers: {flaky} (priority 1, refusing every order) and {steady} "
            "(priority 2, rate 0.9995, fee 10 bps, done after 2 polls)")
    _settle_leftovers(ctx)
    _set_balances(ctx)

    ctx.send("record_buffer_flow", request_id=ctx.id("payouts"), account_type="system_buffer_usdc",
             amount=-45_000 * 10**6, reference="on-chain payouts")
    ctx.wait_until(lambda: balance(ctx, USDC_BUF) == 5_000 * 10**6, "the USDC buffer to drain")
    usdc_row = next(r for r in ctx.cli("buffers") if r["account_type"] == "system_buffer_usdc")
    ctx.say(f"on-chain payouts drained system_buffer_usdc to "
            f"{format_minor(usdc_row['balance'], 'USDC')}: {usdc_row['status']}")

    first = ctx.cli("buffers", "rebalance", "--by", "demo-operator")["jobs_created"]
    second = ctx.cli("buffers", "rebalance", "--by", "demo-operator")["jobs_created"]
    # newest first; it may be finished already (its own polls start 2 s after submission)
    job = next(j for j in ctx.cli("conversions", "--limit", "20") if j["direction"] == "USD->USDC")
    ctx.say(f"settlement cycle: {first} job created (job {job['job_id']}: "
            f"{format_minor(job['source_amount'], 'USD')} USD->USDC, 3 batches up to target); "
            f"a second cycle while it is in flight created {second}")

    ctx.wait_until(lambda: ctx.cli("conversions", "show", str(job["job_id"]))["status"]
                   != "pending", "the submission")
    shown = ctx.cli("conversions", "show", str(job["job_id"]))
    tried = ", ".join(f"{a['provider']} {a['status']}" for a in shown["attempt_log"])
    ctx.say(f"submission: {tried} — each attempt with its own idempotency key")

    def finished():
        ctx.cli("conversions", "poll")
        return ctx.cli("conversions", "show", str(job["job_id"]))["status"] in (
            "completed", "failed", "cancelled")

    ctx.wait_until(finished, "the conversion to finish", timeout=90)
    shown = ctx.cli("conversions", "show", str(job["job_id"]))
    ctx.say(f"job {job['job_id']} {shown['status']}: "
            f"{format_minor(shown['destination_amount'] or 0, 'USDC')} arrived, fee "
            f"{format_minor(shown['fee_amount'] or 0, 'USDC')}; system_buffer_usdc now "
            f"{format_minor(balance(ctx, USDC_BUF), 'USDC')}")
    ctx.say(f"transit after the job: {balance(ctx, 'transit:USD')} USD, "
            f"{balance(ctx, 'transit:USDC')} USDC (minor units)")
    ctx.show("buffers", ctx.cli("buffers"))
    ctx.show("providers", [p for p in ctx.cli("providers") if p["name"] in (flaky, steady)])
    ctx.show(f"conversions show {job['job_id']}", shown)
    if shown["status"] != "completed":
        raise RuntimeError(f"job {job['job_id']} ended {shown['status']}: {shown['failure_reason']}")
    _freeze_drill(ctx)
    _reconcile(ctx)


def _freeze_drill(ctx: DemoContext) -> None:
    """The emergency override: frozen, a low buffer gets no job; thawed, it does."""
    with ctx.engine.connect() as conn:
        left = store.freeze_state(conn)
    if left:  # an earlier, interrupted demo run left conversions frozen
        ctx.cli("conversions", "thaw", "--by", "demo-operator")
    state = ctx.cli("conversions", "freeze", "--by", "demo-operator", "--reason",
                    "demo: provider incident drill")
    ctx.send("record_buffer_flow", request_id=ctx.id("broker-out"),
             account_type="broker_operational", amount=-210_000 * 100, reference="broker payouts")
    ctx.wait_until(lambda: balance(ctx, "buffer:broker_operational") == 40_000 * 100,
                   "broker_operational to drop below its min")
    frozen = ctx.cli("buffers", "rebalance", "--by", "demo-operator")["jobs_created"]
    thawed = ctx.cli("conversions", "thaw", "--by", "demo-operator")
    after = ctx.cli("buffers", "rebalance", "--by", "demo-operator")["jobs_created"]
    ctx.say(f"freeze by {state['by']} ({state['reason']}): broker_operational fell to 40,000.00 "
            f"USD, a cycle created {frozen} job(s); thawed by {thawed['by']}: the next cycle "
            f"created {after}")
    if frozen != 0:
        raise RuntimeError("a frozen cycle created a job")
    ctx.wait_until(lambda: not ctx.cli("conversions", "--active"),
                   "the broker's job to finish on its own polls", timeout=90)


def _reconcile(ctx: DemoContext) -> None:
    """The custodian stand-in reads the chain; the ledger, providers' books and jobs agree."""
    ctx.cli("treasury", "custody", "report", "system_buffer_usdc", "--balance",
            str(balance(ctx, USDC_BUF)), "--by", "demo-chain-reader")
    doc = ctx.cli("treasury", "reconcile")
    ctx.say(f"reconciliation: {'OK' if doc['ok'] else 'DIFFERENCES'} — custody, "
            f"{len(doc['providers_reporting'])} provider(s)' books, every job's ledger "
            "transactions, transit")
    ctx.show("treasury reconcile", doc)
    if not doc["ok"]:
        raise RuntimeError(f"reconciliation found differences: {doc['differences'][:3]}")
