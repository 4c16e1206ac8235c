"""``ballast demo``: start real workers and the scheduler, run every chapter, report.

Everything runs on the demo's own database, vhost and Redis db (``infra/demo/target.py``):
this process and every process it starts see only the demo's ``BALLAST_*`` URLs.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import click

from infra import rabbit
from infra.cli.output import progress
from infra.auth import Keyring, ensure_ballast_key
from infra.broker import build_broker, declare_topology
from infra.db.engine import dispose_engines, get_engine
from infra.db.migrate import upgrade
from infra.demo import challenges, guard, journal, markets, treasury, wallets
from infra.demo.context import DemoContext
from infra.demo.target import DemoTarget, prepare
from infra.settings import broker_urls, get_settings

CHAPTERS = [wallets, guard, challenges, markets, treasury, journal]
ROOT = Path(__file__).resolve().parents[2]


def _start(args: list[str], log: Path) -> subprocess.Popen:
    env = dict(os.environ, BALLAST_METRICS_PORT=os.environ.get("BALLAST_METRICS_PORT", "0"))
    return subprocess.Popen(args, cwd=ROOT, env=env, stdout=open(log, "ab"), stderr=subprocess.STDOUT,
                            start_new_session=True)


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)


def enter(target: DemoTarget) -> None:
    """Point this process (and so every process it starts) at the demo's target only."""
    os.environ.update(target.environ())
    get_settings.cache_clear()
    dispose_engines()


def _safe(url: str) -> str:
    """``url`` (one or a comma-separated list) with every password masked."""
    from urllib.parse import urlparse

    out = []
    for one in broker_urls(url) or [url]:
        u = urlparse(one)
        out.append(one.replace(f":{u.password}@", ":***@") if u.password else one)
    return ",".join(out)


def run_demo(target: DemoTarget, as_json: bool = False, scheduler: bool = True) -> int:
    """Prepare ``target`` (refusing what is not the demo's: DemoRefused), run every chapter
    (with the scheduler firing, unless ``scheduler`` is False)."""
    prepare(target, get_settings())
    enter(target)
    upgrade()
    logdir = ROOT / ".ballast"
    logdir.mkdir(exist_ok=True)
    # Signatures are required in the demo too: Ballast's own key (made once, owner-only,
    # unless BALLAST_SIGNING_KEY(_FILE) names one) for the workers and the scheduler, and
    # a producer per upstream app and per operator for what the demo sends.
    ballast = ensure_ballast_key(get_engine(), str(logdir / "ballast-signing.key"), by="ballast demo")
    if not (os.environ.get("BALLAST_SIGNING_KEY") or os.environ.get("BALLAST_SIGNING_KEY_FILE")):
        os.environ["BALLAST_SIGNING_KEY_FILE"] = str(logdir / "ballast-signing.key")
        get_settings.cache_clear()
    keyring = Keyring(get_engine(), "demo", ballast, by="ballast demo")
    broker = build_broker()
    declare_topology(broker)
    worker = _start([sys.executable, "-m", "infra.worker", "actors", "--processes", "2", "--threads", "4"],
                    logdir / "demo-worker.log")
    sched = (_start([sys.executable, "-m", "infra.cli.main", "scheduler"], logdir / "demo-scheduler.log")
             if scheduler else None)
    ctx = DemoContext(get_engine(), broker, as_json, keyring)
    failures = 0
    try:
        deadline = time.monotonic() + 60
        while not all(r["consumers"] for r in rabbit.queue_stats() if r["queue"] == "ballast.wallets"):
            if worker.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the worker did not start; see {logdir / 'demo-worker.log'}")
            time.sleep(0.3)
        ctx.console.print(f"[bold]Ballast demo[/bold] run {ctx.tag} on database {target.database}, "
                          f"vhost {target.vhost}: workers up" + (", scheduler up" if sched else ""))
        # A bar with the chapters done and the time left, on a terminal only.
        with progress("demo", total=len(CHAPTERS)) as advance:
            for chapter in CHAPTERS:
                name = chapter.__name__.rsplit(".", 1)[-1]
                advance(0, what=f"demo: {name}")
                try:
                    chapter.run(ctx)
                except Exception as exc:
                    failures += 1
                    ctx.report.setdefault(name, {})["error"] = f"{type(exc).__name__}: {exc}"
                    ctx.console.print(f"[red]{name} failed: {type(exc).__name__}: {exc}[/red]")
                advance()
            advance(0, what="demo")
        check = ctx.cli("ledger", "check")
        ctx.report["ledger_check"] = check
        ctx.console.rule("[bold]Ledger")
        ctx.console.print(f"  ledger check: {'OK' if check['ok'] else 'NOT OK'} "
                          f"({check['transactions']} transactions, {check['entries']} entries)")
        queues = rabbit.queue_stats()
        ctx.report["queues"] = queues
        if not check["ok"]:
            failures += 1
    finally:
        if sched is not None:
            _stop(sched)
        _stop(worker)
        broker.close()
    ctx.report["ok"] = failures == 0
    if as_json:
        click.echo(json.dumps(ctx.report, default=str))
    else:
        ctx.console.rule()
        ctx.console.print("[green]demo finished: every chapter ran[/green]" if failures == 0
                          else f"[red]demo finished with {failures} failure(s)[/red]")
        ctx.console.print(f"  worker log: {logdir / 'demo-worker.log'}")
        ctx.console.print(f"  look around: BALLAST_DATABASE_URL={_safe(target.database_url)} "
                          f"BALLAST_BROKER_URL={_safe(target.broker_url)} ballast wallet show ...")
        ctx.console.print("  drop it: ballast demo --clean")
    return 0 if failures == 0 else 1
