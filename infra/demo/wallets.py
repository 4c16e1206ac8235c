"""Demo chapter: the wallets slice through real workers."""

from __future__ import annotations

from infra import ledger, rabbit
from infra.demo.context import DemoContext


def balance(ctx: DemoContext, code: str) -> int | None:
    with ctx.engine.connect() as conn:
        return ledger.balances(conn, [code]).get(code)


def run(ctx: DemoContext) -> None:
    ctx.chapter("wallets", "Wallets: deposits, a resend, a refused withdrawal, bad input, a replay")
    alice, bob = ctx.id("alice"), ctx.id("bob")
    rid = ctx.id("dep-alice")
    for user, request_id, amount in ((alice, rid, 250_000), (bob, ctx.id("dep-bob"), 40_000)):
        ctx.send("deposit", request_id=request_id, user_id=user, currency="NGN",
                 amount=amount, reference="bank transfer")
    ctx.send("deposit", request_id=rid, user_id=alice, currency="NGN", amount=250_000,
             reference="bank transfer")  # the upstream app resends the same request
    ctx.wait_until(lambda: balance(ctx, f"user:{bob}:NGN") == 40_000, "bob's deposit")
    ctx.wait_until(lambda: balance(ctx, f"user:{alice}:NGN") == 250_000, "alice's deposit")
    ctx.say(f"alice deposited ₦2,500.00 twice with one request id: balance {balance(ctx, f'user:{alice}:NGN')} (once)")

    ctx.send("fund_treasury", request_id=ctx.id("fund-ngn"), currency="NGN", amount=50_000_000,
             reference="seed capital", performed_by="cfo")
    ctx.send("withdraw", request_id=ctx.id("wd-alice"), user_id=alice, currency="NGN", amount=100_000,
             reference="to bank")
    ctx.wait_until(lambda: balance(ctx, f"user:{alice}:NGN") == 150_000, "alice's withdrawal")
    ctx.say("alice withdrew ₦1,000.00: balance 150000")

    wd = ctx.id("wd-bob")
    # Beyond the bronze credit line (a wallet may go down to -$10,000.00): refused.
    ctx.send("withdraw", request_id=wd, user_id=bob, currency="USD", amount=1_099_000, reference="to bank")
    bad = ctx.id("bad")
    ctx.send_raw("deposit", request_id=bad, user_id=bob, currency="NGN", amount=12.5, reference="x",
                 colour="blue")

    def letters():
        found = {d.summary()["request_id"]: d.summary() for d in rabbit.list_dead_letters("ballast.wallets")}
        return found if wd in found and bad in found else None

    found = ctx.wait_until(letters, "dead letters")
    ctx.say(f"bob's USD withdrawal was refused: {found[wd]['reason']}")
    ctx.say(f"a malformed deposit went to the dead letters: {found[bad]['reason']}")

    ctx.send("deposit", request_id=ctx.id("dep-bob-usd"), user_id=bob, currency="USD", amount=1_120_000,
             reference="card")
    ctx.wait_until(lambda: balance(ctx, f"user:{bob}:USD") == 1_120_000, "bob's USD deposit")
    replayed = rabbit.replay("ballast.wallets", {found[wd]["message_id"]})
    ctx.wait_until(lambda: balance(ctx, f"user:{bob}:USD") == 21_000, "replayed withdrawal")
    ctx.say(f"after bob deposited $11,200.00 the refused withdrawal was replayed ({replayed}): balance $210.00")
    ctx.show("wallet show " + bob, ctx.cli("wallet", "show", bob))
    ctx.show("treasury:NGN", ctx.cli("ledger", "balance", "treasury:NGN"))
