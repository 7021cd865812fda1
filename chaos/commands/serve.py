"""``chaos serve``: the operator; ``chaos token``: its bearer tokens.

``chaos serve --experiments DIR`` runs until SIGTERM or SIGINT (exit 130, after every running
run rolled back); ``--reindex`` rebuilds the run history from the run folders and exits.
Bad flags or files exit 3, a second operator on the same state directory exits 7.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path

from chaos.errors import ExitCode
from chaos.settings import Settings


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser(
        "serve",
        help="run experiments on their schedules; serve a dashboard, a JSON API and /metrics",
        description="The operator: fires each experiment's schedule, runs it with the same engine as `chaos run`, "
        "keeps the history, serves the dashboard, the API and Prometheus metrics (docs/operator.md).",
    )
    p.add_argument("--experiments", metavar="DIR", help="folder of experiment files (*.yaml), reloaded when they change")
    p.add_argument("--listen", metavar="HOST:PORT", help="where to serve (default 127.0.0.1:8080)")
    p.add_argument("--state-dir", metavar="DIR", help="history, leases, run folders (default CHAOS_STATE_DIR or /var/lib/chaos)")
    p.add_argument("--reports-dir", metavar="DIR", help="run folders (default STATE_DIR/runs)")
    p.add_argument("--database-url", metavar="URL",
                   help="state database, e.g. postgresql+asyncpg://... to share history and leases (default: SQLite in the state dir)")
    p.add_argument("--site", help="this operator's site (operators of one site sharing a database split the firings)")
    p.add_argument("--workers", type=int, help="runs at once (default 2)")
    p.add_argument("--tokens", metavar="FILE", help="bearer tokens file (`chaos token add`); without it the API is read-only")
    p.add_argument("--public-read", action="store_true", default=None,
                   help="with --tokens: anyone may read the dashboard and the API; acting still needs an operator token")
    p.add_argument("--tls-cert", metavar="FILE", help="serve HTTPS with this certificate (PEM) ...")
    p.add_argument("--tls-key", metavar="FILE", help="... and this private key")
    p.add_argument("--config", metavar="FILE", help="YAML file with webhooks, retention, freezes and any flag above")
    p.add_argument("--reindex", action="store_true", help="rebuild the run history from the run folders, then exit")
    p.set_defaults(handler=cmd_serve)

    t = sub.add_parser("token", help="bearer tokens of `chaos serve`: add, list, remove")
    t_sub = t.add_subparsers(dest="token_command", required=True)
    add = t_sub.add_parser("add", help="make a token; it is printed once, the file keeps its SHA-256 only")
    add.add_argument("name")
    add.add_argument("--role", choices=["viewer", "operator"], required=True)
    add.add_argument("--file", required=True, help="the tokens file (created when missing, mode 600)")
    add.set_defaults(handler=cmd_token_add)
    ls = t_sub.add_parser("list", help="names and roles (never tokens)")
    ls.add_argument("--file", required=True)
    ls.set_defaults(handler=cmd_token_list)
    rm = t_sub.add_parser("remove", help="revoke a token (a running operator notices within a request)")
    rm.add_argument("name")
    rm.add_argument("--file", required=True)
    rm.set_defaults(handler=cmd_token_remove)


def cmd_serve(args: argparse.Namespace, settings: Settings) -> int:
    from chaos.operator.clock import clock_from_environment
    from chaos.operator.config import load_config
    from chaos.operator.service import Operator

    flags = {
        "experiments": args.experiments, "listen": args.listen,
        "state_dir": args.state_dir or settings.state_dir, "reports_dir": args.reports_dir,
        "database_url": args.database_url or settings.database_url, "site": args.site, "workers": args.workers,
        "tokens": args.tokens, "public_read": args.public_read, "tls_cert": args.tls_cert, "tls_key": args.tls_key,
    }
    if args.reindex:
        return asyncio.run(_reindex(settings, flags))
    config = load_config(Path(args.config) if args.config else None, flags)
    operator = Operator(config, settings, clock_from_environment())
    return asyncio.run(operator.serve(on_listening=lambda url: print(f"chaos serve: listening on {url}", flush=True)))


async def _reindex(settings: Settings, flags: dict[str, object]) -> int:
    from chaos.state.store import Store

    state_dir = Path(str(flags["state_dir"]))
    runs_dir = Path(str(flags["reports_dir"])) if flags["reports_dir"] else state_dir / "runs"
    store = await Store.open(state_dir, str(flags["database_url"]) if flags["database_url"] else None,
                             site=str(flags["site"] or "default"))
    try:
        count = await store.reindex(runs_dir) if runs_dir.is_dir() else 0
    finally:
        await store.close()
    print(f"indexed {count} run folder(s) from {runs_dir}")
    return int(ExitCode.OK)


def cmd_token_add(args: argparse.Namespace, settings: Settings) -> int:
    from chaos.operator.auth import add_token

    token = add_token(Path(args.file), args.name, args.role)
    print(token, flush=True)  # alone on stdout, for scripts
    print(f"token for {args.name} ({args.role}) added to {args.file}; it is shown only this once", file=sys.stderr)
    return int(ExitCode.OK)


def cmd_token_list(args: argparse.Namespace, settings: Settings) -> int:
    from chaos.operator.auth import load_tokens

    for entry in load_tokens(Path(args.file)).tokens:
        print(f"{entry.name}\t{entry.role}")
    return int(ExitCode.OK)


def cmd_token_remove(args: argparse.Namespace, settings: Settings) -> int:
    from chaos.errors import Conflict
    from chaos.operator.auth import remove_token

    if not remove_token(Path(args.file), args.name):
        raise Conflict(f"{args.file}: no token named {args.name!r}")
    print(f"token {args.name} removed")
    return int(ExitCode.OK)
