"""The `ticketmail` command line. Errors are one line on stderr and a non-zero exit."""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import sys
from importlib.metadata import version

from sqlalchemy.exc import DBAPIError, OperationalError

from bridge.accounts import BridgeKeyError
from storage.database import Database, SchemaOutdated, describe, upgrade_async
from storage.files import sqlite_path
from ticketmail import commands, imap_commands
from ticketmail import config as configuration
from ticketmail.admin import tickets as ticket_admin
from ticketmail.admin.departments import UNKNOWN_SENDER
from ticketmail.admin.errors import AdminError
from ticketmail.terminal import fail


class UsageError(Exception):
    pass


class Parser(argparse.ArgumentParser):
    def error(self, message):
        raise UsageError(f"{message} (see `{self.prog} --help`)")


def build_parser() -> argparse.ArgumentParser:
    p = Parser(prog="ticketmail", description="Email-to-ticket gateway.")
    p.add_argument("--config", help="TOML configuration file (default: $TICKETMAIL_CONFIG)")
    p.add_argument("--version", action="version", version=f"ticketmail {version('ticketmail')}")
    sub = p.add_subparsers(dest="command", required=True, parser_class=Parser)

    serve = sub.add_parser("serve", help="run LMTP, the web app and the IMAP bridge")
    serve.add_argument("--upgrade", action="store_true", help="migrate the database schema first")

    db = sub.add_parser("db", help="database schema").add_subparsers(dest="action", required=True)
    db.add_parser("upgrade", help="migrate the schema to the current version")

    dept = sub.add_parser("department", help="departments").add_subparsers(dest="action", required=True)
    add = dept.add_parser("add", help="add a department")
    add.add_argument("name")
    add.add_argument("--address", action="append", required=True, help="an address it owns; *@domain for all")
    add.add_argument("--unknown-sender", choices=UNKNOWN_SENDER, default="challenge")
    _json(dept.add_parser("list", help="list departments"))
    edit = dept.add_parser("edit", help="rename a department, replace its addresses or change its policy")
    edit.add_argument("name")
    edit.add_argument("--rename", metavar="NEW", help="its new name (the rules naming it follow)")
    edit.add_argument("--address", action="append", help="replaces all its addresses (repeat for several)")
    edit.add_argument("--unknown-sender", choices=UNKNOWN_SENDER)
    dept.add_parser("remove", help="remove a department nothing refers to").add_argument("name")

    cust = sub.add_parser("customer", help="customers").add_subparsers(dest="action", required=True)
    add = cust.add_parser("add", help="add a known customer")
    add.add_argument("email")
    add.add_argument("--name", default="")
    _json(cust.add_parser("list", help="list customers")).add_argument(
        "--search", metavar="TEXT", help="only those whose address or name contains TEXT (any case)")
    cust.add_parser("remove", help="remove a customer").add_argument("email")
    rename = cust.add_parser("rename", help="set a customer's name")
    rename.add_argument("email")
    rename.add_argument("name")
    cust.add_parser("verify", help="mark a customer verified (their held mail is released)").add_argument("email")

    rules = sub.add_parser("rules", help="processing rules").add_subparsers(dest="action", required=True)
    rules.add_parser("import", help="replace all rules with those of a TOML file").add_argument("file")
    rules.add_parser("export", help="print the rules as TOML")
    _json(rules.add_parser("list", help="list the rules"))
    rules.add_parser("delete", help="delete one rule").add_argument("name")
    move = rules.add_parser("move", help="move a rule before or after its neighbour of the same scope")
    move.add_argument("name")
    move.add_argument("direction", choices=("up", "down"))

    tickets = sub.add_parser("tickets", help="tickets").add_subparsers(dest="action", required=True)
    listing = _json(tickets.add_parser("list", help="list tickets, most recently updated first"))
    listing.add_argument("--status", choices=ticket_admin.STATUSES)
    listing.add_argument("--department", metavar="NAME")
    listing.add_argument("--customer", metavar="ADDR", help="the customer's address")
    listing.add_argument("--tag", metavar="T")
    listing.add_argument("--search", metavar="WORDS", help="tickets with a message having every word")
    listing.add_argument("--limit", type=_positive, metavar="N", help="at most N tickets (default: all)")
    change = tickets.add_parser("set", help="set a ticket's status, priority or tags")
    change.add_argument("number", type=int)
    change.add_argument("--status", choices=ticket_admin.STATUSES)
    change.add_argument("--priority", choices=ticket_admin.PRIORITIES)
    change.add_argument("--tags", metavar='"A, B"', help='replaces all its tags ("" for none)')
    show = _json(tickets.add_parser("show", help="show a ticket and its messages"))
    show.add_argument("number", type=int)

    held = sub.add_parser("held", help="held messages").add_subparsers(dest="action", required=True)
    _json(held.add_parser("list", help="list held messages"))
    held.add_parser("release", help="make a held message a ticket").add_argument("id", type=int)
    purge = held.add_parser("purge", help="purge held and deleted mail past the retention period")
    purge.add_argument("--days", type=int, help="retention in days (default: [challenge] held_days)")
    discard = held.add_parser("discard", help="drop a held message (kept until purge); --block its sender too")
    discard.add_argument("id", type=int)
    discard.add_argument("--block", action="store_true", help="delete the sender's future mail on arrival")
    held.add_parser("block", help="delete a sender's mail on arrival from now on").add_argument("email")
    held.add_parser("unblock", help="accept mail from a blocked sender again").add_argument("email")
    _json(held.add_parser("failed", help="list messages whose processing failed (stored as they arrived)"))
    held.add_parser("retry", help="process a failed message again").add_argument("id", type=int)
    _imap_parser(sub)
    _admin_parser(sub)
    return p


def _admin_parser(sub) -> None:
    admin = sub.add_parser("admin", help="who may sign in to the web panel").add_subparsers(dest="action",
                                                                                            required=True)
    admin.add_parser("add", help="add an admin (asks the password twice; or one line on stdin)").add_argument("user")
    _json(admin.add_parser("list", help="list the admins (never their password hashes)"))
    admin.add_parser("passwd", help="set an admin's password (ends their sessions)").add_argument("user")
    admin.add_parser("remove", help="remove an admin (ends their sessions)").add_argument("user")


def _imap_parser(sub) -> None:
    imap = sub.add_parser("imap", help="remote IMAP accounts").add_subparsers(dest="action", required=True)
    add = imap.add_parser("add", help="add an account (asks the password twice, then tests the account)")
    add.add_argument("name", help="letters, digits, . _ -; used in source imap:NAME and scope account:NAME")
    add.add_argument("--email", required=True, help="the account's address (its mail's envelope recipient)")
    add.add_argument("--server", required=True, help="IMAP server host name")
    add.add_argument("--port", type=int, help="default 993 (tls) or 143 (starttls, none)")
    add.add_argument("--security", choices=["tls", "starttls", "none"], default="tls")
    add.add_argument("--user", help="login name (default: the email address)")
    add.add_argument("--folder", default="INBOX")
    add.add_argument("--after", default="seen", help="after import: seen | move:FOLDER | delete (default seen)")
    add.add_argument("--department", help="default: the department that owns the email address")
    add.add_argument("--poll-seconds", type=int, default=60, help="poll interval when the server has no IDLE")
    add.add_argument("--ca-file", default="", help="trust only this CA (PEM) for the server's certificate")
    add.add_argument("--insecure-skip-verify", action="store_true", help="do not verify the TLS certificate")
    add.add_argument("--password-stdin", action="store_true", help="read the password from standard input")
    add.add_argument("--no-test", action="store_true", help="save without connecting first")
    _json(imap.add_parser("list", help="list accounts and their sync status (never passwords)"))
    _json(imap.add_parser("test", help="connect, log in and open the folder")).add_argument("name")
    _imap_edit_parser(imap)
    imap.add_parser("remove", help="remove an account (its imported mail stays)").add_argument("name")
    imap.add_parser("enable", help="sync the account again").add_argument("name")
    imap.add_parser("disable", help="stop syncing the account").add_argument("name")


def _imap_edit_parser(imap) -> None:
    edit = imap.add_parser("edit", help="change an account's settings (those not given stay), then test it")
    edit.add_argument("name")
    edit.add_argument("--name", dest="new_name", metavar="NEW", help="rename the account")
    edit.add_argument("--email")
    edit.add_argument("--server")
    edit.add_argument("--port", type=int, help="kept, unless --security changes and it was the old default")
    edit.add_argument("--security", choices=["tls", "starttls", "none"])
    edit.add_argument("--user", help='login name ("" for the email address)')
    edit.add_argument("--folder")
    edit.add_argument("--after", help="seen | move:FOLDER | delete")
    edit.add_argument("--department", help='"" for the department that owns the email address')
    edit.add_argument("--poll-seconds", type=int)
    edit.add_argument("--ca-file", help='trust only this CA (PEM); "" for the system\'s CAs')
    edit.add_argument("--verify-tls", action=argparse.BooleanOptionalAction, help="verify the TLS certificate")
    password = edit.add_mutually_exclusive_group()
    password.add_argument("--password", action="store_true", help="ask a new password (twice)")
    password.add_argument("--password-stdin", action="store_true", help="read a new password from standard input")
    edit.add_argument("--no-test", action="store_true", help="save without connecting first")


def _positive(text: str) -> int:
    try:
        number = int(text)
    except ValueError:
        number = 0
    if number < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number of at least 1")
    return number


def _json(parser):
    parser.add_argument("--json", action="store_true", help="print one JSON document")
    return parser


# Which function runs `ticketmail COMMAND ACTION`; each calls ticketmail/admin and prints the result.
COMMANDS = {
    ("department", "add"): commands.department_add,
    ("department", "list"): commands.department_list,
    ("department", "edit"): commands.department_edit,
    ("department", "remove"): commands.department_remove,
    ("customer", "add"): commands.customer_add,
    ("customer", "list"): commands.customer_list,
    ("customer", "remove"): commands.customer_remove,
    ("customer", "rename"): commands.customer_rename,
    ("customer", "verify"): commands.customer_verify,
    ("rules", "import"): commands.rules_import,
    ("rules", "export"): commands.rules_export,
    ("rules", "list"): commands.rules_list,
    ("rules", "delete"): commands.rules_delete,
    ("rules", "move"): commands.rules_move,
    ("tickets", "list"): commands.tickets_list,
    ("tickets", "show"): commands.tickets_show,
    ("tickets", "set"): commands.tickets_set,
    ("held", "list"): commands.held_list,
    ("held", "release"): commands.held_release,
    ("held", "purge"): commands.held_purge,
    ("held", "discard"): commands.held_discard,
    ("held", "block"): commands.held_block,
    ("held", "unblock"): commands.held_unblock,
    ("held", "failed"): commands.held_failed,
    ("held", "retry"): commands.held_retry,
    ("imap", "add"): imap_commands.imap_add,
    ("imap", "list"): imap_commands.imap_list,
    ("imap", "test"): imap_commands.imap_test,
    ("imap", "edit"): imap_commands.imap_edit,
    ("imap", "remove"): imap_commands.imap_remove,
    ("imap", "enable"): imap_commands.imap_enable,
    ("imap", "disable"): imap_commands.imap_disable,
    ("admin", "add"): commands.admin_add,
    ("admin", "list"): commands.admin_list,
    ("admin", "passwd"): commands.admin_passwd,
    ("admin", "remove"): commands.admin_remove,
}


def main(argv: list[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
        config = configuration.load(args.config)
        status = asyncio.run(run(args, config)) or 0
        sys.stdout.flush()  # here, where a closed pipe can still be answered quietly
        return status
    except (UsageError, configuration.ConfigError) as e:
        fail(str(e))
        return 2
    except AdminError as e:  # may quote stored mail or an IMAP server's words
        fail(str(e))
        return 1
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # as Unix tools do: quietly, with the status of SIGPIPE
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second error at exit's flush
        return 128 + signal.SIGPIPE


async def run(args, config) -> int | None:
    where = describe(config.database_url)
    if args.command == "db":
        before, head = await _guard(upgrade_async(config.database_url))
        if before is None:
            print(f"database {where}: schema {head} created")
        elif before != head:
            print(f"database {where}: upgraded from schema {before} to {head}")
        else:
            print(f"database {where}: schema {head}, already up to date")
        return 0
    if args.command == "serve":
        from ticketmail.serve import serve  # the LMTP server, the web app and the bridge: only to serve

        if args.upgrade:
            await _guard(upgrade_async(config.database_url))
        return await _guard(serve(config))

    path = sqlite_path(config.database_url)
    if path is not None and not path.exists():  # a command never creates the database: `db upgrade` does
        raise AdminError(f"database {where} does not exist: run `ticketmail db upgrade` first")
    db = Database(config.database_url)
    try:
        await _guard(db.check_schema())
        return await _guard(COMMANDS[args.command, args.action](db, config, args))
    finally:
        await db.dispose()


async def _guard(coro):
    """Turn expected failures (an old schema, a missing key, an unreachable database) into one-line errors."""
    try:
        return await coro
    except BrokenPipeError:
        raise  # the reader of our output went away (`| head`): main ends quietly
    except (SchemaOutdated, BridgeKeyError) as e:
        raise AdminError(str(e)) from None
    except (OperationalError, DBAPIError, OSError) as e:
        reason = str(getattr(e, "orig", e) or e).splitlines()[0]
        raise AdminError(f"database or network error: {reason}") from None


if __name__ == "__main__":
    sys.exit(main())
