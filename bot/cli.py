"""The ``molt`` command."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from datetime import UTC, datetime

from pipeline import audit, control, logs, store
from pipeline.config import Settings, load_settings
from pipeline.exceptions import ConfigError, StoreError


def _settings() -> Settings:
    try:
        return load_settings()
    except ConfigError as exc:
        sys.exit(f"molt: {exc}")


def cmd_run(args: argparse.Namespace, *, console: bool | None = None) -> int:
    from bot.app import Bot

    settings = _settings()
    chat_configured = settings.slack_enabled or bool(settings.discord_token)
    if console is None:
        console = not chat_configured and sys.stdin.isatty()
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    logs.configure(
        settings.log_level, settings.secrets(), settings.data_dir / "molt.log" if console else None
    )
    return Bot(settings, console=console).run()


def cmd_http(args: argparse.Namespace) -> int:
    from bot.server import serve

    settings = _settings()
    logs.configure(settings.log_level, settings.secrets())
    return serve(settings)


def cmd_worker(args: argparse.Namespace) -> int:
    from pipeline.workers import run_worker

    settings = _settings()
    logs.configure(settings.log_level, settings.secrets())
    run_worker(settings, burst=args.burst)
    return 0


def _print(template: str, **context: object) -> None:
    from bot.rendering import render

    print(render(template, {"request_id": "", **context}).plain())


def cmd_status(args: argparse.Namespace) -> int:
    settings = _settings()
    _print("status", **control.status(settings, store.connect(settings)))
    return 0


def cmd_queue(args: argparse.Namespace) -> int:
    settings = _settings()
    _print("queue", requests=control.waiting(settings, store.connect(settings)))
    return 0


def cmd_history(args: argparse.Namespace) -> int:
    settings = _settings()
    conn = store.connect(settings)
    if not args.request:
        _print("history", requests=control.history(conn, args.count))
        return 0
    from pipeline.requests import RequestStore

    request = RequestStore(conn).find(args.request)
    if request is None:
        print(f"molt: no request or update {args.request!r}", file=sys.stderr)
        return 1
    print(f"{request.id} {request.codename or ''} — {request.state.value}: {request.message}")
    for entry in audit.entries(conn, request.id):
        at = datetime.fromtimestamp(entry["at"], UTC).strftime("%Y-%m-%d %H:%M:%S")
        detail = entry["detail"].get("message") or entry["detail"].get("reason") or ""
        print(f"  #{entry['seq']} {at} {entry['actor']:<24} {entry['action']:<16} {detail}")
    return 0


def cmd_audit_verify(args: argparse.Namespace) -> int:
    settings = _settings()
    check = audit.verify(store.connect(settings))
    if check.ok:
        print(f"audit chain intact: {check.checked} entries")
        return 0
    print(f"audit chain broken at entry #{check.broken_at}: {check.reason}", file=sys.stderr)
    return 1


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="molt", description="Change running software from chat, safely."
    )
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="the bot: chat front ends, HTTP server, notifier, workers")
    run.add_argument(
        "--console",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="open the console chat (default: no chat platform set and a terminal attached)",
    )
    run.set_defaults(func=lambda a: cmd_run(a, console=a.console))
    sub.add_parser(
        "console", help="the bot with the console chat (reads piped stdin too)"
    ).set_defaults(func=lambda a: cmd_run(a, console=True))
    sub.add_parser("http", help="the HTTP server alone (molt run starts it)").set_defaults(
        func=cmd_http
    )
    worker = sub.add_parser("worker", help="an RQ worker for updates")
    worker.add_argument("--burst", action="store_true", help="exit when the queue is empty")
    worker.set_defaults(func=cmd_worker)
    sub.add_parser("status", help="what runs, what waits, which version").set_defaults(
        func=cmd_status
    )
    sub.add_parser("queue", help="approved requests waiting their turn").set_defaults(
        func=cmd_queue
    )
    history = sub.add_parser("history", help="recent requests, or one request's audit trail")
    history.add_argument("request", nargs="?", help="request id or update codename")
    history.add_argument("-n", "--count", type=int, default=10)
    history.set_defaults(func=cmd_history)
    audit_cmd = sub.add_parser("audit", help="the audit trail")
    audit_sub = audit_cmd.add_subparsers(dest="audit_command", required=True)
    audit_sub.add_parser("verify", help="check the hash chain").set_defaults(func=cmd_audit_verify)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except StoreError as exc:
        print(f"molt: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
