"""The ``molt`` command."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from datetime import UTC, datetime

import redis

from bot import groups
from pipeline import audit, logs, metrics, store
from pipeline.config import SANDBOX_AUTO, SANDBOX_BWRAP, Settings, config_file, load_settings
from pipeline.exceptions import ConfigError, StoreError
from pipeline.intake import control
from pipeline.requests import authorisation
from pipeline.requests.states import RequestState as S
from pipeline.requests.states import template_for
from pipeline.requests.store import Origin
from pipeline.sandbox import confinement
from pipeline.update import backups, recovery, repair


def _settings() -> Settings:
    """The settings, and metrics pointed at the data directory before anything records
    one (every process, and what it starts, writes its samples there)."""
    try:
        settings = load_settings()
        groups.check(settings)
    except ConfigError as exc:
        sys.exit(f"molt: {exc}")
    metrics.prepare(settings.data_dir)
    return settings


def _target(args: argparse.Namespace, *, whole: bool = False) -> Settings:
    """The settings of the target ``--target`` names; in a fleet one must be named, unless
    ``whole`` (a view of every target) is what the command shows without one."""
    settings = _settings()
    name = getattr(args, "target", None) or ""
    if not settings.fleet or (whole and not name):
        return settings
    known = ", ".join(settings.target_names())
    if not name:
        sys.exit(f"molt: {args.command} needs --target <name>: one of {known}")
    if name not in settings.target_names():
        sys.exit(f"molt: no target {name!r}: known are {known}")
    return settings.for_target(name)


def cmd_run(args: argparse.Namespace, *, console: bool | None = None) -> int:
    from pipeline.update import bootguard

    settings = _settings()
    if console is None:
        console = not settings.chat_enabled and sys.stdin.isatty()
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    logs.configure(
        settings.log_level,
        settings.secrets(),
        settings.data_dir / "molt.log" if console else None,
        settings.log_format,
    )
    # The boot guard runs before the bot's code is imported: a release can fail at import,
    # and code that was tampered with must not run before it is checked.
    refused = sandbox_refused(settings)
    if refused:
        print(f"molt: refusing to start: {refused}", file=sys.stderr)
        return 2
    boot = bootguard.begin(settings)
    if not boot.ok:
        print(f"molt: refusing to start: {boot.reason}", file=sys.stderr)
        return bootguard.REFUSED_EXIT
    try:
        from bot.app import Bot
        from bot.spawner import spawner

        # The code is let in and imported: the bot's own processes are forked from here.
        spawner.start(main)
        code = Bot(settings, console=console).run()
    except BaseException as exc:
        boot.ended_by(exc)
        raise
    boot.stopped()
    if settings.redis_url is None:  # the last Molt process stops the embedded Redis
        store.leave(settings.data_dir)
    return code


def cmd_http(args: argparse.Namespace) -> int:
    from bot.server import serve

    settings = _settings()
    logs.configure(settings.log_level, settings.secrets(), fmt=settings.log_format)
    return serve(settings)


def cmd_worker(args: argparse.Namespace) -> int:
    from pipeline.update.worker import run_worker

    settings = _settings()
    logs.configure(settings.log_level, settings.secrets(), fmt=settings.log_format)
    targets = None if args.all else args.target
    unknown = sorted(set(targets or ()) - set(settings.target_names()))
    if unknown:
        known = ", ".join(settings.target_names())
        sys.exit(f"molt: no target {unknown[0]!r}: known are {known}")
    if settings.metrics_port:
        metrics.serve(settings.http_host, settings.metrics_port)
    # In a fleet a worker of the target recovers its updates; the bot has no checkout.
    conn = store.connect(settings)
    # A worker asks no platform: a group counts as the bot last kept its answer.
    authorisation.ask_groups_with(groups.Groups(settings, conn, resolvers={}))
    tend = (lambda view: recovery.recover_abandoned(view, conn)) if settings.fleet else None
    run_worker(settings, burst=args.burst, targets=targets, tend=tend)
    return 0


def _print(template: str, **context: object) -> None:
    from bot.rendering import as_text, render

    print(as_text(render(template, {"request_id": "", **context}).plain()))


def _rollout(args: argparse.Namespace, count: int = 1) -> bool:
    """``--target`` naming a rollout: its newest runs and their steps, as chat shows them."""
    name = getattr(args, "target", None) or ""
    settings = _settings()
    if name not in settings.rollout_names():
        return False
    from pipeline.update import rollouts

    shown = rollouts.listing(store.connect(settings), name, count)
    _print("rollouts", rollout=name, rollouts=shown, verb=args.command)
    return True


def cmd_status(args: argparse.Namespace) -> int:
    if _rollout(args):
        return 0
    settings = _target(args, whole=True)
    if settings.fleet and not args.target:
        from pipeline.update import rollouts

        conn = store.connect(settings)
        under_way = rollouts.under_way(settings, conn)
        _print("fleet", **control.fleet(settings, conn), rollouts=under_way)
        return 0
    _print("status", **control.status(settings, store.connect(settings)))
    return 0


def cmd_queue(args: argparse.Namespace) -> int:
    if _rollout(args):
        return 0
    settings = _target(args)
    _print("queue", requests=control.waiting(settings, store.connect(settings)))
    return 0


def cmd_incidents(args: argparse.Namespace) -> int:
    from pipeline.incidents import book as incidents

    settings = _settings()
    _print("incidents", **incidents.listing(settings, store.connect(settings), args.count))
    return 0


def cmd_incidents_replay(args: argparse.Namespace) -> int:
    """Each kept diagnosis made again with today's model, prompts and code; read-only."""
    from pipeline.incidents import replay

    try:
        since = replay.since_seconds(args.since)
    except ValueError as exc:
        sys.exit(f"molt: --since: {exc}")
    settings = _target(args, whole=True)
    logs.configure(settings.log_level, settings.secrets(), fmt=settings.log_format)  # stderr
    conn = store.connect(settings)
    whole = settings.fleet and not args.target
    views = [settings.for_target(n) for n in settings.target_names()] if whole else [settings]
    for view in views:
        if whole:
            print(f"target {view.target_name}:")
        print(replay.table(replay.replay(view, conn, since)))
    return 0


def cmd_freezes(args: argparse.Namespace) -> int:
    from pipeline.intake import freezes

    _print("freezes", **freezes.listing(_target(args, whole=True)))
    return 0


def cmd_history(args: argparse.Namespace) -> int:
    if not args.request and _rollout(args, args.count):
        return 0
    settings = _target(args, whole=bool(args.request))
    conn = store.connect(settings)
    if not args.request:
        flaky = control.flaky_tests(settings, conn)
        shown = control.history(conn, args.count, settings)
        _print("history", requests=shown, flaky=flaky)
        return 0
    from pipeline.requests.store import RequestStore

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


def _operator(settings: Settings, conn: redis.Redis, command: str) -> Origin | None:
    """The console's principal, if it may operate Molt; a refusal is audited and printed."""
    origin = Origin("console", settings.console_user, "console", settings.console_user)
    allowed = authorisation.may_operate(settings, origin)
    if allowed:
        return origin
    audit.append(
        conn,
        actor=origin.principal,
        action="operator_refused",
        detail={"command": command, "reason": allowed.reason}
        | ({"target": settings.target_name} if settings.fleet else {}),
    )
    listed = f"operators of {settings.target_name}" if settings.fleet else "MOLT_OPERATORS"
    print(
        f"molt: {origin.principal} may not {command}: {allowed.reason} ({listed}); "
        "set MOLT_CONSOLE_USER to act as another console user",
        file=sys.stderr,
    )
    return None


def cmd_control(args: argparse.Namespace) -> int:
    """pause, resume, stop: the same as in chat, as the console's operator."""
    settings = _target(args)
    conn = store.connect(settings)
    origin = _operator(settings, conn, args.command)
    if origin is None:
        return 1
    act = {"pause": control.pause, "resume": control.resume, "stop": control.stop}[args.command]
    message = act(settings, conn, origin.principal)
    _print("status", **control.status(settings, conn), message=message)
    return 0


def cmd_review(args: argparse.Namespace) -> int:
    settings = _target(args)
    conn = store.connect(settings)
    if _operator(settings, conn, "review") is None:
        return 1
    _print("review", requests=control.pending(settings, conn), autonomy=settings.autonomy)
    return 0


def cmd_rollback(args: argparse.Namespace) -> int:
    """Plan the return to the release before an update; it is approved like any plan."""
    settings = _target(args)
    conn = store.connect(settings)
    origin = _operator(settings, conn, "rollback")
    if origin is None:
        return 1
    asked = control.rollback(settings, conn, origin, args.codename or "")
    planned = asked.request
    if planned is None:
        print(f"molt: {asked.reason}", file=sys.stderr)
        return 1
    shown = {"autonomy": settings.autonomy, "expires_in": settings.plan_ttl}
    _print(template_for(planned.state) or "failure", **planned.context(), **shown)
    if planned.state is S.PLAN_READY:
        print(f"\nApprove it in chat, or in the console: press approve {planned.id}")
    return 0 if planned.state in (S.PLAN_READY, S.APPROVED, S.QUEUED) else 1


def cmd_recover(args: argparse.Namespace) -> int:
    """Return a broken installation to a state Molt can run from, and say what was done."""
    path = config_file()
    steps = [backups.restore_config(path, backups.data_dir_hint(path))]
    try:
        settings = load_settings()
    except ConfigError as exc:
        _report(steps)
        print(f"molt recover: the settings do not load, so it stops here: {exc}", file=sys.stderr)
        return 1
    if settings.fleet:  # on the host of the target named: its checkout, its requests
        settings = _target(args)
    conn = store.connect(settings)
    steps.extend(repair.recover(settings, conn, actor=f"console:{settings.console_user}"))
    _report(steps)
    broken = [step.name for step in steps if not step.ok]
    if broken:
        print(f"molt recover: could not fix everything ({', '.join(broken)}): see ✗ above")
        return 1
    print("molt recover: done")
    return 0


def _report(steps: list[repair.Step]) -> None:
    for step in steps:
        print(f"{'✓' if step.ok else '✗'} {step.name}")
        for line in step.lines:
            print(f"    {line}")


def cmd_release_verify(args: argparse.Namespace) -> int:
    """Check the target's checkout against its signed releases, as start-up does."""
    from pipeline.releases import verification

    settings = _settings()
    try:
        verdict = verification.verify_checkout(settings, store.connect(settings))
    except ConfigError as exc:
        print(f"molt: {exc}", file=sys.stderr)
        return 1
    if verdict.allowed:
        print(f"✓ {verdict.reason}")
        return 0
    print(f"✗ {verdict.reason}", file=sys.stderr)
    return 1


def cmd_release_rollback(args: argparse.Namespace) -> int:
    """An operator going back without Molt running: sign the return to the release before
    an update as a rollback release (moving the checkout there if it is elsewhere)."""
    from pipeline.update import release_rollback

    settings = _settings()
    conn = store.connect(settings)
    origin = _operator(settings, conn, "release rollback")
    if origin is None:
        return 1
    verdict = release_rollback.operator_rollback(settings, conn, args.codename, origin.principal)
    if not verdict.allowed:
        print(f"molt: {verdict.reason}", file=sys.stderr)
        return 1
    print(f"✓ {verdict.reason}. Start Molt (or restart it) to run it.")
    return 0


def cmd_ui_link(args: argparse.Namespace) -> int:
    """A link that opens the status page (or one of its pages) once, for an operator. The
    running Molt of this data directory says whether it serves the page, and where: this
    shell needs none of its MOLT_UI settings."""
    from bot.ui import LINK_SECONDS, new_link
    from pipeline.service import restart

    page = args.page or "/"
    if not page.startswith("/") or page.startswith(("//", "/\\")):
        print(
            f"molt: {page!r} is not a page of the status page (try /requests/<id>)", file=sys.stderr
        )
        return 1
    settings = _settings()
    conn = store.connect(settings)
    if _operator(settings, conn, "ui-link") is None:
        return 1
    info = restart.bot_info(conn)
    if info is None or not info.alive or not info.port:
        print("molt: Molt is not running, so there is no page to link to", file=sys.stderr)
        return 1
    if not info.ui:
        print(
            "molt: the running Molt does not serve the status page "
            "(start it with MOLT_UI=true and MOLT_UI_TOKEN)",
            file=sys.stderr,
        )
        return 1
    audit.append(conn, actor=f"console:{settings.console_user}", action="ui_link")
    print(new_link(conn, info.host, info.port, page))
    print(f"(opens the status page once, within {LINK_SECONDS // 60} minutes)")
    return 0


def cmd_audit_verify(args: argparse.Namespace) -> int:
    settings = _settings()
    check = audit.verify(store.connect(settings))
    if check.ok:
        print(f"audit chain intact: {check.checked} entries")
        return 0
    print(f"audit chain broken at entry #{check.broken_at}: {check.reason}", file=sys.stderr)
    return 1


def sandbox_refused(settings: Settings) -> str:
    """MOLT_SANDBOX=bwrap on a host that cannot make the sandbox: why, else ""."""
    found = confinement.support()
    if settings.sandbox == SANDBOX_BWRAP and not found.works:
        return f"MOLT_SANDBOX=bwrap, but {found.found}"
    return ""


def cmd_doctor(args: argparse.Namespace) -> int:
    """What this host offers Molt, as start-up finds it: the sandbox test commands run in."""
    settings = _settings()
    found = confinement.support()
    print(f"sandbox: {found.found}")
    print(f"  MOLT_SANDBOX={settings.sandbox}; process limit held by {found.processes}")
    for name in settings.target_names():
        target = settings.for_target(name)
        print(f"  {name}: {confinement.Confinement.of(target).describe()}")
        listed = ", ".join(target.test_env) or "none"
        print(f"    variables given to tests besides the allowlist: {listed}")
    refused = sandbox_refused(settings)
    if refused:
        print(f"molt would refuse to start: {refused}")
        return 1
    if settings.sandbox == SANDBOX_AUTO and not found.works:
        print("  change requests in words are refused until a sandbox can be made")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="molt", description="Change running software from chat, safely."
    )
    sub = parser.add_subparsers(dest="command", required=True)
    _process_commands(sub)
    _operator_commands(sub)
    _record_commands(sub)
    return parser


def _process_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """The processes Molt runs as: the bot, its HTTP server, a worker."""
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
    worker.add_argument(
        "--target", action="append", metavar="NAME", help="take this target's jobs (repeatable)"
    )
    worker.add_argument("--all", action="store_true", help="take every target's jobs (default)")
    worker.set_defaults(func=cmd_worker)


def _operator_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """What an operator asks at a shell, as in chat."""
    # In a fleet, each names its target (``--target api``); ``status`` without one shows all.
    targeted = argparse.ArgumentParser(add_help=False)
    targeted.add_argument(
        "--target", metavar="NAME", help="the fleet's target (or, to show, rollout) it is about"
    )
    sub.add_parser(
        "status", parents=[targeted], help="what runs, what waits, which version"
    ).set_defaults(func=cmd_status)
    sub.add_parser(
        "queue", parents=[targeted], help="approved requests waiting their turn"
    ).set_defaults(func=cmd_queue)
    history = sub.add_parser(
        "history", parents=[targeted], help="recent requests, or one request's audit trail"
    )
    history.add_argument("request", nargs="?", help="request id or update codename")
    history.add_argument("-n", "--count", type=int, default=10)
    history.set_defaults(func=cmd_history)
    incidents = sub.add_parser("incidents", help="open and recent incidents and their outcomes")
    incidents.add_argument("-n", "--count", type=int, default=20)
    incidents.set_defaults(func=cmd_incidents)
    replay = incidents.add_subparsers(dest="incidents_command").add_parser(
        "replay",
        parents=[targeted],
        help="diagnose the kept cases again with today's model, prompts and code (read-only)",
    )
    replay.add_argument("--since", default="30d", help="cases diagnosed within this (30d, 12h)")
    replay.set_defaults(func=cmd_incidents_replay)
    sub.add_parser(
        "freezes", parents=[targeted], help="the freeze windows, and which are in force"
    ).set_defaults(func=cmd_freezes)
    for name, what in (
        ("pause", "hold the start of new updates (requests still get plans)"),
        ("resume", "let queued updates start again"),
        ("stop", "emergency: roll back the running update at its next safe point, clear the queue"),
    ):
        sub.add_parser(
            name, parents=[targeted], help=f"{what}; as the console's operator"
        ).set_defaults(func=cmd_control)
    rollback = sub.add_parser(
        "rollback",
        parents=[targeted],
        help="plan returning to the release before an update (default: the last)",
    )
    rollback.add_argument("codename", nargs="?", help="the update's codename or request id")
    rollback.set_defaults(func=cmd_rollback)
    sub.add_parser(
        "review",
        parents=[targeted],
        help="plans waiting for approval, questions waiting for answers",
    ).set_defaults(func=cmd_review)
    ui_link = sub.add_parser("ui-link", help="a one-time link to the status page (MOLT_UI)")
    ui_link.add_argument("page", nargs="?", default="/", help="a page, such as /requests/<id>")
    ui_link.set_defaults(func=cmd_ui_link)
    sub.add_parser(
        "doctor", help="what this host offers Molt: the sandbox its test commands run in"
    ).set_defaults(func=cmd_doctor)
    sub.add_parser(
        "recover",
        parents=[targeted],
        help="return a broken installation to its last good state: checkout, requests, config",
    ).set_defaults(func=cmd_recover)


def _record_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """The audit trail and the signed releases."""
    audit_cmd = sub.add_parser("audit", help="the audit trail")
    audit_sub = audit_cmd.add_subparsers(dest="audit_command", required=True)
    audit_sub.add_parser("verify", help="check the hash chain").set_defaults(func=cmd_audit_verify)
    release_cmd = sub.add_parser("release", help="the signed releases of the target")
    release_sub = release_cmd.add_subparsers(dest="release_command", required=True)
    release_sub.add_parser(
        "verify", help="check the checkout against its signed release, as start-up does"
    ).set_defaults(func=cmd_release_verify)
    release_back = release_sub.add_parser(
        "rollback",
        help="allow going back to the release before an update, while Molt cannot start: "
        "signs an operator's rollback release",
    )
    release_back.add_argument("codename", help="the codename of the release to undo")
    release_back.set_defaults(func=cmd_release_rollback)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except StoreError as exc:
        print(f"molt: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
