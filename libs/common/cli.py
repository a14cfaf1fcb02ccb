"""`habla`: the management command (sites, operators, migrations).

Errors are one clear sentence on stderr with exit status 2; successful output goes to
stdout so scripts (the dev stack, tests) can read it.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Sequence
from typing import TextIO

import sqlalchemy as sa

from libs.common import db, partitions, sitedir, snippets
from libs.common.db import site_store
from libs.common.settings import Settings

Emit = Callable[[str], object]


class CommandError(Exception):
    pass


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="habla", description="Manage Habla sites and operators.")
    sub = parser.add_subparsers(dest="command", required=True)

    migrate = sub.add_parser("migrate", help="create or upgrade the MySQL schema")
    migrate.add_argument("--revision", default="head")

    site = sub.add_parser("site", help="sites").add_subparsers(dest="action", required=True)
    create = site.add_parser("create", help="create a site and print its id and snippets")
    create.add_argument("--name", required=True)
    create.add_argument("--owner", default="owner@habla.localhost", help="account email (created if missing)")
    create.add_argument("--transcript-email", action="append", default=[], dest="transcript_emails")
    create.add_argument("--domain", action="append", default=[], dest="domains", help="allowed host name (repeat)")
    create.add_argument("--id", dest="site_id", help="use this site id instead of a random one")
    create.add_argument("--json", action="store_true", help="print JSON")
    site.add_parser("list", help="list sites").add_argument("--json", action="store_true")
    show = site.add_parser("show", help="a site's settings and snippets")
    show.add_argument("site_id")
    move = site.add_parser("set-xmpp-domain", help="serve a site from the gateway of another XMPP component domain")
    move.add_argument("site_id")
    move.add_argument("domain", help="component domain, or 'default' for HABLA_XMPP_DEFAULT_COMPONENT_DOMAIN")

    operator = sub.add_parser("operator", help="operators").add_subparsers(dest="action", required=True)
    add = operator.add_parser("add", help="let an XMPP account answer a site's chats")
    add.add_argument("site_id")
    add.add_argument("jid")
    add.add_argument("--name", help="display name shown to visitors")
    remove = operator.add_parser("remove", help="remove an operator from a site")
    remove.add_argument("site_id")
    remove.add_argument("jid")
    operator.add_parser("list", help="a site's operators").add_argument("site_id")
    return parser


def run(argv: Sequence[str], settings: Settings, out: TextIO = sys.stdout) -> None:
    args = _parser().parse_args(argv)
    write = out.write
    if args.command == "migrate":
        db.migrate(settings, args.revision)
        write(f"database migrated to {args.revision}\n")
        return
    engine = db.engine(settings)
    try:
        with engine.begin() as conn:
            _dispatch(args, conn, settings, write)
    except (site_store.NotFound, site_store.Conflict, ValueError) as exc:
        raise CommandError(str(exc)) from exc
    except sa.exc.OperationalError as exc:
        raise CommandError(
            f"cannot use MySQL at {sa.make_url(settings.mysql_url).render_as_string(hide_password=True)}: "
            f"{exc.orig}. Is MariaDB running, and has `habla migrate` run?"
        ) from exc
    finally:
        engine.dispose()


def _dispatch(args: argparse.Namespace, conn: sa.Connection, settings: Settings, emit: Emit) -> None:
    if args.command == "site" and args.action == "create":
        account_id = site_store.account_for_email(conn, args.owner)
        site = site_store.create_site(
            conn,
            account_id,
            args.name,
            transcript_emails=args.transcript_emails,
            allowed_domains=[d.lower() for d in args.domains],
            site_id=args.site_id,
        )
        if args.json:
            emit(json.dumps({"site_id": site.id, "name": site.name}) + "\n")
        else:
            emit(f"created site {site.id} ({site.name})\n\n")
            _snippets(site.id, settings, emit)
    elif args.command == "site" and args.action == "list":
        found = site_store.list_sites(conn)
        if args.json:
            emit(json.dumps([{"site_id": s.id, "name": s.name} for s in found]) + "\n")
        for s in [] if args.json else found:
            emit(f"{s.id}  {s.name}\n")
    elif args.command == "site" and args.action == "show":
        site = site_store.get_site(conn, args.site_id)
        emit(
            f"site {site.id} ({site.name})\ntranscripts to: {', '.join(site.transcript_emails) or '-'}\n"
            f"allowed domains: {', '.join(site.allowed_domains) or 'any'}\n"
            f"XMPP: {_served_on(conn, site.id, settings)}; operators add {site.id}@"
            f"{partitions.site_domain(settings, site.id, site_store.xmpp_domain_of(conn, site.id))}\n\n"
        )
        _snippets(site.id, settings, emit)
    elif args.command == "site" and args.action == "set-xmpp-domain":
        domain = None if args.domain == "default" else args.domain
        site_store.set_xmpp_domain(conn, args.site_id, domain)
        shown = _served_on(conn, args.site_id, settings)
        conn.commit()
        # Gateways rebind at once on this notice (and every 60 s in any case).
        sitedir.invalidate_sync(settings, args.site_id)
        emit(f"site {args.site_id} is now served on {shown}\n")
    elif args.command == "operator" and args.action == "add":
        jid = site_store.add_operator(conn, args.site_id, args.jid, args.name)
        conn.commit()
        sitedir.invalidate_sync(settings, args.site_id)
        emit(f"{jid} now answers chats for site {args.site_id}\n")
    elif args.command == "operator" and args.action == "remove":
        site_store.remove_operator(conn, args.site_id, args.jid)
        conn.commit()
        sitedir.invalidate_sync(settings, args.site_id)
        emit(f"{args.jid} no longer answers chats for site {args.site_id}\n")
    elif args.command == "operator" and args.action == "list":
        site_store.get_site(conn, args.site_id)
        for jid, name in site_store.site_operators(conn, args.site_id):
            emit(f"{jid}  {name}\n")


def _served_on(conn: sa.Connection, site_id: str, settings: Settings) -> str:
    """The component domain serving the site, and why (its own, or its partition)."""
    explicit = site_store.xmpp_domain_of(conn, site_id)
    if explicit:
        return explicit
    p = partitions.count(settings)
    domain = partitions.site_domain(settings, site_id, None)
    if p == 1:
        return f"{domain} (default)"
    return f"{domain} (default, partition {partitions.partition_of(site_id, p)} of {p})"


def _snippets(site_id: str, settings: Settings, emit: Emit) -> None:
    emit("Paste before </body> on every page:\n")
    emit(snippets.embed_snippet(settings.public_url, site_id))
    emit("\nFor pages without JavaScript, the status image:\n")
    emit(snippets.status_image_html(settings.public_url, settings.status_public_url, site_id))


def main(argv: Sequence[str] | None = None) -> int:
    try:
        run(sys.argv[1:] if argv is None else argv, Settings.from_env())
    except CommandError as exc:
        print(f"habla: error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
