"""The ``sitesearch`` command: ``serve``, ``crawl``, ``demo``, ``token``, ``db``."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

from pydantic import ValidationError


def _apply_common(args: argparse.Namespace) -> None:
    """Command-line options become ``SITESEARCH_*`` variables, read by the one settings object."""
    if getattr(args, "data_dir", None):
        os.environ["SITESEARCH_DATA_DIR"] = str(Path(args.data_dir).resolve())
    from indexer.config import get_settings

    get_settings.cache_clear()


def cmd_serve(args: argparse.Namespace) -> int:
    import uvicorn

    from indexer.config import get_settings
    from server.app import create_app

    settings = get_settings()
    host = args.host or settings.host
    port = args.port or settings.port
    print(f"sitesearch: serving on http://{host}:{port} (data in {settings.data_dir.resolve()})", flush=True)
    uvicorn.run(create_app(settings), host=host, port=port, log_level=args.log_level)
    return 0


def cmd_crawl(args: argparse.Namespace) -> int:
    from crawler.run import run_crawl

    return run_crawl(args.instance, args.job, log_level=args.log_level.upper())


def cmd_demo(args: argparse.Namespace) -> int:
    from server.demo import run_demo

    return run_demo(port=args.port, keep_running=not args.no_wait)


def cmd_token(args: argparse.Namespace) -> int:
    from indexer.config import get_settings
    from indexer.state import StateStore
    from server.auth import PERMISSIONS, mint_token

    perms = args.permission or list(PERMISSIONS)
    unknown = set(perms) - set(PERMISSIONS)
    if unknown:
        print(f"unknown permission(s): {', '.join(sorted(unknown))}; choose from {', '.join(PERMISSIONS)}", file=sys.stderr)
        return 2
    settings = get_settings()
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    state = StateStore(settings.resolved_database_url)
    secret, row = mint_token(state, args.name, perms, folder_prefix=args.folder)
    print(f"token {row['id']} ({args.name}; {', '.join(perms)}):\n{secret}")
    return 0


def cmd_db(args: argparse.Namespace) -> int:
    from indexer import migrations
    from indexer.config import get_settings
    from indexer.state import make_engine

    settings = get_settings()
    if settings.resolved_database_url.startswith("sqlite"):
        settings.data_dir.mkdir(parents=True, exist_ok=True)
    engine = make_engine(settings.resolved_database_url)
    where = engine.url.render_as_string(hide_password=True)
    try:
        head = migrations.head()
        if args.action == "upgrade":
            before = migrations.upgrade(engine)
            print(f"{where}: at {head} (head)" + ("" if before == head else f", upgraded from {before or 'no revision'}"))
        else:
            cur = migrations.current(engine)
            state = "up to date" if cur == head else "run `sitesearch db upgrade` (servers also upgrade on start)"
            print(f"{where}: revision {cur or 'none'} (head {head}: {state})")
    finally:
        engine.dispose()
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="sitesearch", description="Self-hosted AI search for your website.")
    parser.add_argument("--data-dir", help="state directory (default ./data, or SITESEARCH_DATA_DIR)")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("serve", help="run the HTTP API")
    p.add_argument("--host", default=None, help="bind address (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=None, help="port (default 8787)")
    p.add_argument("--data-dir", default=argparse.SUPPRESS, help="state directory")
    p.add_argument("--log-level", default="info")
    p.set_defaults(func=cmd_serve)

    p = sub.add_parser("crawl", help="run one sync job for an instance in this process")
    p.add_argument("instance")
    p.add_argument("--job", default=None, help="an existing queued job id to run")
    p.add_argument("--data-dir", default=argparse.SUPPRESS, help="state directory")
    p.add_argument("--log-level", default="info")
    p.set_defaults(func=cmd_crawl)

    p = sub.add_parser("demo", help="serve a bundled sample site, index it and print a search command")
    p.add_argument("--port", type=int, default=8787)
    p.add_argument("--data-dir", default=argparse.SUPPRESS, help="state directory")
    p.add_argument("--no-wait", action="store_true", help="exit once indexing is done (for CI)")
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("token", help="create an API token")
    p.add_argument("name")
    p.add_argument("--permission", action="append", help="AI Search:Read | AI Search:Edit | AI Search:Run (repeatable)")
    p.add_argument("--folder", default=None, help="restrict the token to folders starting with this prefix")
    p.add_argument("--data-dir", default=argparse.SUPPRESS, help="state directory")
    p.set_defaults(func=cmd_token)

    p = sub.add_parser("db", help="state database schema: show the revision or upgrade to the newest")
    p.add_argument("action", choices=["current", "upgrade"])
    p.add_argument("--data-dir", default=argparse.SUPPRESS, help="state directory")
    p.set_defaults(func=cmd_db)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)
    _apply_common(args)
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        return 130
    except ValidationError as exc:  # bad settings: one line per variable, not a traceback
        from indexer.config import settings_errors

        for line in settings_errors(exc):
            print(f"sitesearch: {line}", file=sys.stderr)
        return 2
    except ValueError as exc:  # other bad settings (e.g. an unsupported database URL)
        print(f"sitesearch: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
