"""``ballast``: the operator's CLI (CONTRACT.md, "The CLI")."""

from __future__ import annotations

import sys

import click

from infra.cli import alerts, challenges, journal, ledger, markets, ops, producers, treasury
from infra.logs import configure_logging


@click.group()
@click.version_option(package_name="ballast")
def cli() -> None:
    """Ballast: the treasury back office.  Every command honours BALLAST_* settings."""
    configure_logging(level="WARNING")


for module in (ops, ledger, alerts, challenges, markets, treasury, journal, producers):
    module.register(cli)


@cli.command()
def scheduler() -> None:
    """Run the scheduler (periodic firings, lease-locked in Redis)."""
    from schedules.runner import run_forever

    configure_logging()
    run_forever()


@cli.command()
@click.option("--json", "as_json", is_flag=True, help="Print the report as one JSON document.")
def demo(as_json: bool) -> None:
    """Run the end-to-end demo through real workers and print what happened."""
    from infra.demo.runner import run_demo

    code = run_demo(as_json=as_json)
    raise SystemExit(code)


def main() -> None:
    """Entry point: friendly one-line errors when a service is down."""
    try:
        # Commands exit through fail()/SystemExit; return values are not exit codes.
        cli.main(standalone_mode=False)
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
    except Exception as exc:  # a service is down, or a bug: say it in one line
        from infra.services import unreachable

        down = unreachable()
        if down:
            for line in down:
                click.echo(line, err=True)
        else:
            click.echo(f"error: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}",
                       err=True)
        sys.exit(1)


if __name__ == "__main__":
    main()
