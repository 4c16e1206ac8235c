"""``ballast web``: serve the console; ``ballast web users``: who may log in;
``ballast web asyncapi``: the contract document."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from domain.errors import BallastError
from infra.cli.output import emit, fail, json_option, table
from infra.db.engine import get_engine
from infra.logs import configure_logging, get_logger
from infra.web import asyncapi as contract_document
from infra.web import operators
from infra.web.settings import get_web_settings


def register(cli: click.Group) -> None:
    cli.add_command(web)


@click.group("web", invoke_without_command=True)
@click.option("--host", default=None, help="Address to bind (default BALLAST_WEB_HOST, 127.0.0.1).")
@click.option("--port", default=None, type=click.IntRange(0, 65535),
              help="Port (default BALLAST_WEB_PORT, 8470).")
@click.option("--threads", default=4, show_default=True, type=click.IntRange(1, 64))
@click.pass_context
def web(ctx: click.Context, host: str | None, port: int | None, threads: int) -> None:
    """Serve the operations console (subcommands: users, asyncapi)."""
    if ctx.invoked_subcommand is not None:
        return
    # Lazy for the CLI's start-up: Flask and waitress only for the command that serves.
    import waitress

    from infra.web.app import create_app

    configure_logging()
    settings = get_web_settings()
    host = host or settings.host
    port = settings.port if port is None else port
    get_logger(__name__).info("web.serving", host=host, port=port)
    click.echo(f"ballast console on http://{host}:{port}/", err=True)
    waitress.serve(create_app(settings=settings), host=host, port=port, threads=threads,
                   ident="ballast")


@web.group("users", invoke_without_command=True)
@json_option
@click.pass_context
def users(ctx: click.Context, as_json: bool) -> None:
    """Operators of the console (lists them without a subcommand)."""
    if ctx.invoked_subcommand is None:
        with get_engine().connect() as conn:
            emit(operators.listing(conn), as_json, lambda d: table(d, title="operators"))


def _password(given: str | None, stdin: bool) -> str:
    if stdin:
        return sys.stdin.readline().rstrip("\n")
    if given is not None:
        return given
    return click.prompt("password", hide_input=True, confirmation_prompt=True)


@users.command("add")
@click.argument("name")
@click.option("--role", required=True, type=click.Choice(operators.ROLES))
@click.option("--password-stdin", is_flag=True, help="Read the password from standard input.")
@click.option("--generate", is_flag=True, help="Generate a password and print it once.")
@json_option
def users_add(name: str, role: str, password_stdin: bool, generate: bool, as_json: bool) -> None:
    """Add an operator; asks for a password (or reads --password-stdin, or --generate one)."""
    import secrets

    password = secrets.token_urlsafe(15) if generate else _password(None, password_stdin)
    try:
        with get_engine().begin() as conn:
            op = operators.add(conn, name, role, password)
            operators.audit(conn, None, "users.add", "ok", {"name": name, "role": role}, "cli")
    except BallastError as exc:
        fail(str(exc), 2)
    doc = {"name": op.name, "role": op.role, **({"password": password} if generate else {})}
    emit(doc, as_json, lambda d: click.echo(
        f"operator {d['name']} ({d['role']}) added" + (f"; password: {password}" if generate else "")))


@users.command("passwd")
@click.argument("name")
@click.option("--password-stdin", is_flag=True)
def users_passwd(name: str, password_stdin: bool) -> None:
    """Set an operator's password (ends their sessions)."""
    try:
        with get_engine().begin() as conn:
            operators.set_password(conn, name, _password(None, password_stdin))
            operators.audit(conn, None, "users.passwd", "ok", {"name": name}, "cli")
    except BallastError as exc:
        fail(str(exc), 2)
    click.echo(f"password of {name} changed")


@users.command("set")
@click.argument("name")
@click.option("--role", type=click.Choice(operators.ROLES))
@click.option("--disable/--enable", "disabled", default=None)
def users_set(name: str, role: str | None, disabled: bool | None) -> None:
    """Change an operator's role, or disable/enable them (a disabled one is logged out)."""
    try:
        with get_engine().begin() as conn:
            operators.set_role(conn, name, role, disabled)
            operators.audit(conn, None, "users.set", "ok",
                            {"name": name, "role": role, "disabled": disabled}, "cli")
    except BallastError as exc:
        fail(str(exc), 2)
    click.echo(f"operator {name} updated")


@web.command("asyncapi")
@click.option("--format", "fmt", type=click.Choice(["json", "yaml"]), default="json",
              show_default=True)
@click.option("--write", "path", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Write it to this file (docs/asyncapi.json) instead of printing it.")
def asyncapi(fmt: str, path: Path | None) -> None:
    """The message contract as an AsyncAPI 3 document, from the pydantic schemas."""
    doc = contract_document.document()
    text = contract_document.as_json(doc) if fmt == "json" else contract_document.as_yaml(doc)
    if path is None:
        click.echo(text, nl=False)
    else:
        path.write_text(text)
        click.echo(f"wrote {path}", err=True)
