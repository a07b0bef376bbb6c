"""`shop3d jobs`, `shop3d dead ...`, `shop3d webhooks ...`: the operator API's reads and actions, straight
against Redis (same functions, same atomic scripts), for a shell on a cluster node.

    shop3d jobs [--status S] [--limit N] [--json]
    shop3d dead list [--limit N] [--json] | show JOB_ID | requeue JOB_ID | requeue --all | purge [--yes]
    shop3d webhooks list [--limit N] [--json] | replay
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TypeVar

import redis.asyncio as aioredis

from pipeline.delivery.replay import replay_webhooks, undelivered_webhooks
from pipeline.delivery.webhooks import WebhookSender
from pipeline.jobs.keys import JOB_STATUSES
from pipeline.jobs.state import list_jobs
from pipeline.queue.admin import dead_letters, find_dead_letter, purge_dead_letters, requeue_all_dead, requeue_dead_job
from pipeline.queue.consumer import QueueConfig, connect
from pipeline.settings import Settings

T = TypeVar("T")
EXIT_OK, EXIT_NOT_FOUND, EXIT_USAGE = 0, 1, 2
JOB_COLUMNS = ("job_id", "status", "stage", "progress", "attempts", "quality", "updated_at")
DEAD_COLUMNS = ("job_id", "code", "attempts", "ts", "message")
WEBHOOK_COLUMNS = ("webhook_id", "job_id", "status", "recorded_at", "error")


def add_admin_commands(commands: Any) -> None:
    """Register `jobs`, `dead` and `webhooks` on the `shop3d` subparsers."""
    jobs = commands.add_parser("jobs", help="recent jobs from the job index, newest first")
    jobs.add_argument("--status", choices=JOB_STATUSES)
    _list_options(jobs)
    dead = commands.add_parser("dead", help="dead-lettered jobs: list, show, requeue, purge")
    dead_commands = dead.add_subparsers(dest="dead_command", required=True)
    _list_options(dead_commands.add_parser("list", help="the newest dead letters and why"))
    dead_commands.add_parser("show", help="one dead letter's info and job state as JSON").add_argument("job_id")
    requeue = dead_commands.add_parser("requeue", help="put a dead job back on the queue (attempts reset)")
    target = requeue.add_mutually_exclusive_group(required=True)
    target.add_argument("job_id", nargs="?")
    target.add_argument("--all", action="store_true", help="every dead letter, oldest first")
    purge = dead_commands.add_parser("purge", help="drop every dead letter (job states stay until they expire)")
    purge.add_argument("--yes", action="store_true", help="do not ask")
    webhooks = commands.add_parser("webhooks", help="undelivered webhooks: list, replay")
    webhook_commands = webhooks.add_subparsers(dest="webhooks_command", required=True)
    _list_options(webhook_commands.add_parser("list", help="webhooks whose delivery finally failed"))
    webhook_commands.add_parser("replay", help="send them again with their original webhook-id")


def _list_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--limit", type=int, default=50, help="at most this many rows (default 50)")
    parser.add_argument("--json", action="store_true", help="JSON instead of a table")


def run_admin_command(args: argparse.Namespace, settings: Settings) -> int:
    """Dispatch a parsed `jobs` / `dead` / `webhooks` command; returns the exit status."""
    if args.command == "jobs":
        return _print_rows(_with_redis(settings, lambda r: list_jobs(r, status=args.status, limit=args.limit)),
                           JOB_COLUMNS, as_json=args.json)
    if args.command == "webhooks":
        return _webhooks(args, settings)
    return _dead(args, settings)


def _dead(args: argparse.Namespace, settings: Settings) -> int:
    queue = settings.queue_name
    if args.dead_command == "list":
        letters = _with_redis(settings, lambda r: dead_letters(r, args.limit))
        rows = [_dead_row(letter.info or {}) for letter in letters]
        return _print_rows(rows, DEAD_COLUMNS, as_json=args.json, raw=[letter.info for letter in letters])
    if args.dead_command == "show":
        letter = _with_redis(settings, lambda r: find_dead_letter(r, args.job_id))
        if letter is None:
            return _not_dead(args.job_id)
        print(json.dumps({"info": letter.info, "message": letter.raw.decode("utf-8", "replace")}, indent=2))
        return EXIT_OK
    if args.dead_command == "purge":
        if not args.yes and sys.stdin.isatty() and input("drop every dead letter? [y/N] ").lower() != "y":
            return EXIT_USAGE
        print(f"purged {_with_redis(settings, purge_dead_letters)} dead letter(s)")
        return EXIT_OK
    if args.all:
        print(f"requeued {_with_redis(settings, lambda r: requeue_all_dead(r, queue, by='cli'))} job(s)")
        return EXIT_OK
    if not _with_redis(settings, lambda r: requeue_dead_job(r, queue, args.job_id, by="cli")):
        return _not_dead(args.job_id)
    print(f"requeued {args.job_id}")
    return EXIT_OK


def _webhooks(args: argparse.Namespace, settings: Settings) -> int:
    if args.webhooks_command == "list":
        kept = _with_redis(settings, lambda r: undelivered_webhooks(r, args.limit))
        return _print_rows([webhook.summary() for webhook in kept], WEBHOOK_COLUMNS, as_json=args.json)
    if settings.webhook_url is None:
        print("shop3d: no backend configured (BACKEND_URL): nothing to replay to", file=sys.stderr)
        return EXIT_USAGE
    sender = WebhookSender(settings.webhook_url, settings.webhook_secret, max_attempts=settings.webhook_max_attempts)
    outcome = _with_redis(settings, lambda r: replay_webhooks(r, sender))
    print(json.dumps(outcome.to_dict()))
    return EXIT_OK if outcome.failed == 0 else EXIT_NOT_FOUND


def _not_dead(job_id: str) -> int:
    print(f"shop3d: job {job_id!r} is not dead-lettered", file=sys.stderr)
    return EXIT_NOT_FOUND


def _dead_row(info: dict[str, Any]) -> dict[str, Any]:
    error = info.get("error") or {}
    return {**info, "code": error.get("code"), "message": error.get("message")}


def _with_redis(settings: Settings, action: Callable[[aioredis.Redis], Awaitable[T]]) -> T:
    async def run() -> T:
        redis = connect(settings.redis_url, QueueConfig())
        try:
            return await action(redis)
        finally:
            await redis.aclose()

    return asyncio.run(run())


def _print_rows(rows: Sequence[dict[str, Any]], columns: Sequence[str], *, as_json: bool,
                raw: Sequence[Any] | None = None) -> int:
    """A fixed-column table (long cells cut), or the full rows as JSON."""
    if as_json:
        print(json.dumps(list(raw if raw is not None else rows), indent=2, default=str))
        return EXIT_OK
    table = [[_cell(row.get(column)) for column in columns] for row in rows]
    widths = [max([len(column), *(len(line[i]) for line in table)]) for i, column in enumerate(columns)]
    for line in [list(columns), *table]:
        print("  ".join(cell.ljust(width) for cell, width in zip(line, widths, strict=True)).rstrip())
    return EXIT_OK


def _cell(value: Any, width: int = 60) -> str:
    text = "" if value is None else str(value)
    return text if len(text) <= width else text[: width - 1] + "…"
