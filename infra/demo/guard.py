"""Demo chapter: the balance guard and the alerts through real workers."""

from __future__ import annotations

from infra import ledger, rabbit
from infra.demo.context import DemoContext


def balance(ctx: DemoContext, code: str) -> int | None:
    with ctx.engine.connect() as conn:
        return ledger.balances(conn, [code]).get(code)


def run(ctx: DemoContext) -> None:
    ctx.chapter("guard", "Balance guard: a daily limit refuses a withdrawal, alerts raised, "
                         "acknowledged, a tier upgrade, the balance report")
    carol = ctx.id("carol")
    wallet = f"user:{carol}:NGN"
    ctx.send("deposit", request_id=ctx.id("dep-carol"), user_id=carol, currency="NGN",
             amount=4_500_000, reference="salary")
    ctx.wait_until(lambda: balance(ctx, wallet) == 4_500_000, "carol's deposit")
    ctx.say("carol (bronze: ₦50,000.00 of changes per trailing 24 h) deposited ₦45,000.00")

    wd = ctx.id("wd-carol")
    ctx.send("withdraw", request_id=wd, user_id=carol, currency="NGN", amount=1_000_000,
             reference="rent")

    def refused():
        return next((d.summary() for d in rabbit.list_dead_letters("ballast.wallets")
                     if d.summary()["request_id"] == wd), None)

    letter = ctx.wait_until(refused, "the refused withdrawal")
    ctx.say(f"her ₦10,000.00 withdrawal was refused, nothing changed: {letter['reason']}",
            balance=balance(ctx, wallet))

    def limit_alert():
        return next((a for a in ctx.cli("alerts", "--open", "--user", carol)
                     if a["kind"] == "limit_exceeded"), None)

    alert = ctx.wait_until(limit_alert, "the limit_exceeded alert")
    ctx.say(f"alert {alert['alert_id']} raised ({alert['severity']}): {alert['subject']}")
    acked = ctx.cli("alerts", "ack", str(alert["alert_id"]), "--by", "ops-oncall")
    ctx.say(f"ops-oncall acknowledged it at {acked['acknowledged_at']} (status {acked['status']})")

    ctx.send("set_tier", request_id=ctx.id("tier-carol"), user_id=carol, tier="gold")
    ctx.wait_until(lambda: ctx.cli("wallet", "show", carol)["tier"] == "gold", "carol's tier")
    rabbit.replay("ballast.wallets", {letter["message_id"]})
    ctx.wait_until(lambda: balance(ctx, wallet) == 3_500_000, "the replayed withdrawal")
    ctx.say("upgraded to gold (₦150,000.00 a day), the refused withdrawal was replayed: balance ₦35,000.00")

    ctx.send("withdraw", request_id=ctx.id("wd-carol-2"), user_id=carol, currency="NGN",
             amount=3_450_000, reference="car")
    ctx.wait_until(lambda: balance(ctx, wallet) == 50_000, "carol's second withdrawal")

    def balance_alerts():
        kinds = {a["kind"] for a in ctx.cli("alerts", "--open", "--user", carol)}
        return kinds if {"balance_warning", "significant_drop"} <= kinds else None

    kinds = ctx.wait_until(balance_alerts, "balance alerts")
    ctx.say(f"a ₦34,500.00 withdrawal left ₦500.00: open alerts {sorted(kinds)}")

    sweep = f"schedule:alert_sweep:demo-{ctx.tag}"
    ctx.send("evaluate_alerts", request_id=sweep)

    def dlq_alert():
        return [a for a in ctx.cli("alerts", "--open", "--kind", "dead_letters")]

    found = ctx.wait_until(dlq_alert, "the dead-letter alert", timeout=30)
    ctx.say("the alert sweep saw the dead letters: " + "; ".join(a["subject"] for a in found))

    report = ctx.cli("wallet", "show", carol)
    ctx.show("wallet show " + carol, {k: report[k] for k in ("tier", "balances", "alerts", "limits")})
    ctx.show("analytics --user " + carol, ctx.cli("analytics", "--user", carol, "--period", "daily"))
