"""``ballast``: the operator's CLI (CONTRACT.md, "The CLI")."""

from __future__ import annotations

import sys

import click

from infra.cli.output import format_option, settings_or_exit

# Before the commands' modules: some read settings when imported, and a bad value must be
# one line, not a traceback.
settings_or_exit()

from infra.cli import (  # noqa: E402
    alerts, challenges, journal, ledger, markets, ops, producers, treasury,
)
from infra.cli.output import emit, fail, json_option  # noqa: E402
from infra.logs import configure_logging  # noqa: E402
from infra.services import describe, unreachable  # noqa: E402
from infra.settings import get_settings  # noqa: E402
from infra.web import cli as web_cli  # noqa: E402
from schedules.runner import run_forever  # noqa: E402


#: Libraries that log their own account of a failure the CLI reports in one line.
QUIET_LOGGERS = ("pika", "sqlalchemy", "alembic", "urllib3", "httpx", "httpcore", "redis",
                 "dramatiq")


def quiet_libraries() -> None:
    """The CLI says what went wrong in one line: the libraries' own lines are noise there."""
    import logging

    for name in QUIET_LOGGERS:
        logging.getLogger(name).setLevel(logging.CRITICAL + 1)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="ballast")
@format_option
def cli() -> None:
    """Ballast: the treasury back office.  Every command honours BALLAST_* settings.

    Output: tables for people on a terminal, tab-separated when piped, one JSON document
    with --json (or --format json); --format plain|tsv|json on ballast or on any command.
    Shell completion: eval "$(_BALLAST_COMPLETE=bash_source ballast)" (zsh_source,
    fish_source) — see the README.
    """
    configure_logging(level="WARNING")
    quiet_libraries()


for module in (ops, ledger, alerts, challenges, markets, treasury, journal, producers):
    module.register(cli)
web_cli.register(cli)  # the operations console (infra/web)


@cli.command()
def scheduler() -> None:
    """Run the scheduler (periodic firings, lease-locked in Redis)."""
    configure_logging()
    run_forever()


@cli.command()
@click.option("--database", default="ballast_demo", show_default=True,
              help="The demo's own database (on BALLAST_DATABASE_URL's server), recreated each run.")
@click.option("--vhost", default="ballast_demo", show_default=True,
              help="The demo's own RabbitMQ vhost (on BALLAST_BROKER_URL's server).")
@click.option("--redis-db", default=15, show_default=True, type=click.IntRange(0, 15),
              help="The demo's own Redis db (on BALLAST_REDIS_URL's server).")
@click.option("--clean", is_flag=True, help="Drop the demo's database and vhost, run nothing.")
@click.option("--check", "check_only", is_flag=True,
              help="Only say whether the demo may run there (exit 2 when it may not).")
@json_option
def demo(database: str, vhost: str, redis_db: int, clean: bool, check_only: bool,
         as_json: bool) -> None:
    """Run the end-to-end demo through real workers on its own database, vhost and Redis db.

    It never touches BALLAST_DATABASE_URL's database: it refuses a database that is not
    empty unless it is a demo database.
    """
    # Lazy for the CLI's start-up (tests/test_imports.py, CLI_LAZY): the demo needs alembic.
    from infra.demo import target as demo_target
    from infra.demo.runner import run_demo

    settings = get_settings()
    where = demo_target.target_for(settings, database, vhost, redis_db)
    try:
        if check_only:
            state = demo_target.check(where, settings)
            emit({"database": where.database, "vhost": where.vhost, "state": state}, as_json,
                 lambda d: click.echo(f"the demo may run on database {d['database']} ({state}), "
                                      f"vhost {d['vhost']}"))
            return
        if clean:
            demo_target.clean(where, settings)
            emit({"dropped": where.database, "vhost": where.vhost}, as_json,
                 lambda d: click.echo(f"dropped the demo database {d['dropped']} and vhost {d['vhost']}"))
            return
        code = run_demo(where, as_json=as_json)
    except demo_target.DemoRefused as exc:
        fail(f"refused: {exc}", 2)
    raise SystemExit(code)


def main() -> None:
    """Entry point: friendly one-line errors when a service is down."""
    try:
        # Commands exit through fail()/SystemExit; return values are not exit codes.
        # prog_name: `python -m infra.cli.main` and bin/ballast complete as `ballast` too.
        cli.main(prog_name="ballast", standalone_mode=False)
    except SystemExit:
        raise
    except click.exceptions.NoArgsIsHelpError as exc:  # a bare group: its help
        exc.show()
        sys.exit(exc.exit_code)
    except click.ClickException as exc:  # bad usage: one line, not click's usage block
        click.echo(f"error: {exc.format_message()}", err=True)
        sys.exit(exc.exit_code)
    except click.Abort:
        sys.exit(1)
    except KeyboardInterrupt:
        click.echo("interrupted", err=True)
        sys.exit(130)
    except Exception as exc:  # a service is down or refused, or a bug: say it in one line
        quiet_libraries()
        refused = describe(exc)
        down = unreachable() if refused is None else []
        if refused:
            click.echo(f"error: {refused}", err=True)
        elif down:
            click.echo(down[0] if len(down) == 1 else "; ".join(down), err=True)
        else:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
            click.echo(f"error: {type(exc).__name__}: {first}", err=True)
        sys.exit(1)


if __name__ == "__main__":
    main()
