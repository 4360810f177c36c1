"""The `ticketmail` command line. Errors are one line on stderr and a non-zero exit."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from datetime import timedelta
from pathlib import Path

from ticketmail import config as configuration


class UsageError(Exception):
    pass


class Parser(argparse.ArgumentParser):
    def error(self, message):
        raise UsageError(f"{message} (see `{self.prog} --help`)")


def build_parser() -> argparse.ArgumentParser:
    p = Parser(prog="ticketmail", description="Email-to-ticket gateway.")
    p.add_argument("--config", help="TOML configuration file (default: $TICKETMAIL_CONFIG)")
    sub = p.add_subparsers(dest="command", required=True, parser_class=Parser)

    serve = sub.add_parser("serve", help="run LMTP, the web app and the IMAP bridge")
    serve.add_argument("--upgrade", action="store_true", help="migrate the database schema first")

    db = sub.add_parser("db", help="database schema").add_subparsers(dest="action", required=True)
    db.add_parser("upgrade", help="migrate the schema to the current version")

    dept = sub.add_parser("department", help="departments").add_subparsers(dest="action", required=True)
    add = dept.add_parser("add", help="add a department")
    add.add_argument("name")
    add.add_argument("--address", action="append", required=True, help="an address it owns; *@domain for all")
    add.add_argument("--unknown-sender", choices=["challenge", "accept", "reject", "hold"], default="challenge")
    _json(dept.add_parser("list", help="list departments"))

    cust = sub.add_parser("customer", help="customers").add_subparsers(dest="action", required=True)
    add = cust.add_parser("add", help="add a known customer")
    add.add_argument("email")
    add.add_argument("--name", default="")
    _json(cust.add_parser("list", help="list customers"))
    cust.add_parser("remove", help="remove a customer").add_argument("email")

    rules = sub.add_parser("rules", help="processing rules").add_subparsers(dest="action", required=True)
    rules.add_parser("import", help="replace all rules with those of a TOML file").add_argument("file")
    rules.add_parser("export", help="print the rules as TOML")
    _json(rules.add_parser("list", help="list the rules"))

    tickets = sub.add_parser("tickets", help="tickets").add_subparsers(dest="action", required=True)
    _json(tickets.add_parser("list", help="list tickets"))
    show = _json(tickets.add_parser("show", help="show a ticket and its messages"))
    show.add_argument("number", type=int)

    held = sub.add_parser("held", help="held messages").add_subparsers(dest="action", required=True)
    _json(held.add_parser("list", help="list held messages"))
    held.add_parser("release", help="make a held message a ticket").add_argument("id", type=int)
    purge = held.add_parser("purge", help="purge held and deleted mail past the retention period")
    purge.add_argument("--days", type=int, help="retention in days (default: [challenge] held_days)")
    return p


def _json(parser):
    parser.add_argument("--json", action="store_true", help="print one JSON document")
    return parser


def main(argv: list[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
        config = configuration.load(args.config)
        return asyncio.run(run(args, config)) or 0
    except (UsageError, configuration.ConfigError) as e:
        print(f"ticketmail: {e}", file=sys.stderr)
        return 2
    except CommandError as e:
        print(f"ticketmail: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


class CommandError(Exception):
    pass


async def run(args, config) -> int | None:
    from storage.database import Database, SchemaOutdated, upgrade_async

    if args.command == "db":
        await _guard(upgrade_async(config.database_url))
        print("database schema is up to date")
        return 0
    if args.command == "serve":
        from ticketmail.serve import serve

        if args.upgrade:
            await _guard(upgrade_async(config.database_url))
        return await _guard(serve(config))

    from ticketmail import commands

    db = Database(config.database_url)
    try:
        await _guard(db.check_schema())
        handler = getattr(commands, f"{args.command}_{args.action}")
        return await _guard(handler(db, config, args))
    except SchemaOutdated as e:
        raise CommandError(str(e)) from None
    finally:
        await db.dispose()


async def _guard(coro):
    """Turn expected failures (bad input, unreachable database) into one-line errors."""
    from sqlalchemy.exc import DBAPIError, OperationalError

    from ingest.release import ReleaseError
    from ingest.rules import RuleError
    from storage.database import SchemaOutdated

    try:
        return await coro
    except (RuleError, ReleaseError, SchemaOutdated) as e:
        raise CommandError(str(e)) from None
    except (OperationalError, DBAPIError, OSError) as e:
        reason = str(getattr(e, "orig", e) or e).splitlines()[0]
        raise CommandError(f"database or network error: {reason}") from None


def emit(data, as_json: bool, lines) -> None:
    """Print `data` as JSON, or the human form given by `lines`."""
    if as_json:
        json.dump(data, sys.stdout, indent=2, default=str, ensure_ascii=False)
        print()
    else:
        for line in lines:
            print(line)


if __name__ == "__main__":
    sys.exit(main())
