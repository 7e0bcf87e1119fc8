"""``python -m uplink.receiver.console users ...``: the console's users, in the platform's database."""

from __future__ import annotations

import sys

import click

from uplink.receiver.console import auth
from uplink.receiver.store import ReceiverStore, StoreError

DB_HELP = ("The platform's database, as the receiver's --db: a SQLite file or postgresql://user@host:port/name "
           "(default: $RECEIVER_DB, else receiver.db).")


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def main() -> None:
    """The command centre's console (served by python -m uplink.receiver at /console/)."""


@main.group()
def users() -> None:
    """Who may log in to the console, and with which role (viewer, dispatcher, admin)."""


def _open(db: str) -> ReceiverStore:
    try:
        return ReceiverStore(db)
    except (StoreError, OSError) as error:
        raise click.ClickException(str(error)) from None


def _password(from_stdin: bool) -> str:
    if from_stdin:
        text = sys.stdin.readline()
        return text[:-1] if text.endswith("\n") else text
    return click.prompt("Password", hide_input=True, confirmation_prompt=True)


def _db_option(fn):
    return click.option("--db", "db", envvar="RECEIVER_DB", default="receiver.db", show_default=True,
                        metavar="FILE|URL", help=DB_HELP)(fn)


def _stdin_option(fn):
    return click.option("--password-stdin", is_flag=True,
                        help="Read the password from the first line of standard input instead of asking.")(fn)


@users.command("add")
@click.argument("name")
@click.option("--role", type=click.Choice(auth.ROLES), required=True,
              help="viewer: reads everything; dispatcher: also decides on orders; admin: also rule files and users.")
@_stdin_option
@_db_option
def add(name: str, role: str, password_stdin: bool, db: str) -> None:
    """Add user NAME with a role; the password is asked for (or read with --password-stdin)."""
    store = _open(db)
    try:
        auth.add_user(store, name, _password(password_stdin), role)
    except auth.UserError as error:
        raise click.ClickException(str(error)) from None
    finally:
        store.close()
    click.echo(f"added {name} ({role})")


@users.command("list")
@_db_option
def list_(db: str) -> None:
    """Every user with their role, when they were added and their open sessions."""
    store = _open(db)
    try:
        found = auth.list_users(store)
    finally:
        store.close()
    if not found:
        click.echo("no users yet: python -m uplink.receiver.console users add NAME --role admin")
        return
    import datetime as dt

    width = max(len(u["name"]) for u in found)
    for u in found:
        created = dt.datetime.fromtimestamp(u["created_at"], dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
        flags = " disabled" if u["disabled"] else ""
        click.echo(f"{u['name']:<{width}}  {u['role']:<10}  added {created}  sessions {u['sessions']}{flags}")


@users.command("remove")
@click.argument("name")
@_db_option
def remove(name: str, db: str) -> None:
    """Remove user NAME; their sessions end at once."""
    store = _open(db)
    try:
        auth.remove_user(store, name)
    except auth.UserError as error:
        raise click.ClickException(str(error)) from None
    finally:
        store.close()
    click.echo(f"removed {name}")


@users.command("passwd")
@click.argument("name")
@_stdin_option
@_db_option
def passwd(name: str, password_stdin: bool, db: str) -> None:
    """Set a new password for NAME; their sessions end (they log in again)."""
    store = _open(db)
    try:
        auth.set_password(store, name, _password(password_stdin))
    except auth.UserError as error:
        raise click.ClickException(str(error)) from None
    finally:
        store.close()
    click.echo(f"new password set for {name}")


if __name__ == "__main__":
    main()
