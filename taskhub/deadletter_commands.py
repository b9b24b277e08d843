"""`taskhub deadletter list | show | replay | purge`: see what was refused, fix it, take it back."""

from __future__ import annotations

import argparse
import json
import re
from datetime import UTC, datetime, timedelta
from itertools import islice

import redis
from rich.console import Console
from rich.panel import Panel
from rich.syntax import Syntax
from rich.table import Table
from rich.text import Text

from taskhub.deadletters import (
    DeadLetter,
    DeadLetterStream,
    LetterFilter,
    Reason,
    deadletter_stream,
)
from taskhub.fitted_table import Field, FittedTable
from taskhub.settings import Settings
from taskhub.terminal import json_view, safe_text, visible

_RELATIVE = re.compile(r"^(\d+(?:\.\d+)?)([smhd])$")
_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days"}
_LAYOUT_WHITESPACE = re.compile(r"[ \t\r\n]+")

PREVIEW_CHARS = 60
"""A payload's preview in `deadletter list`; `show` has all of it."""
DETAIL_CHARS = 160
"""A letter's detail in `deadletter list`."""
LIST_FIELDS = (
    Field("id", key=True),
    Field("received (UTC)", key=True),
    Field("reason", key=True),
    Field("topic / task", fold=True),
    Field("detail", fold=True),
    Field("payload", fold=True),
)
REPLAY_FIELDS = (
    Field("id", key=True),
    Field("outcome", key=True),
    Field("task / reason", key=True),
    Field("detail", fold=True),
)


def moment(text: str) -> datetime:
    """An ISO time (UTC if no zone) or an age such as `30m`, `2h`, `7d`."""
    relative = _RELATIVE.match(text)
    if relative:
        amount, unit = float(relative.group(1)), _UNITS[relative.group(2)]
        return datetime.now(UTC) - timedelta(**{unit: amount})
    try:
        parsed = datetime.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is neither an ISO time (2026-11-22T10:00) nor an age (30m, 2h, 7d)"
        ) from None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def reason(text: str) -> Reason:
    try:
        return Reason(text)
    except ValueError:
        known = ", ".join(item.value for item in Reason)
        raise argparse.ArgumentTypeError(f"{text!r} is not a reason; one of: {known}") from None


def add_parser(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    deadletter = commands.add_parser("deadletter", help="inspect, replay and purge dead letters")
    actions = deadletter.add_subparsers(dest="action", required=True)

    def filters(parser: argparse.ArgumentParser) -> None:
        parser.add_argument("ids", nargs="*", metavar="ID", help="letter ids (from list)")
        parser.add_argument("--reason", type=reason, action="append", help="repeatable")
        parser.add_argument("--route", help="route name, queue or task name")
        parser.add_argument("--since", type=moment, help="ISO time or age (30m, 2h, 7d)")
        parser.add_argument("--until", type=moment, help="ISO time or age")

    listing = actions.add_parser("list", help="the newest letters, as a table")
    filters(listing)
    listing.add_argument("--limit", type=int, default=50, help="most rows (default 50)")
    listing.add_argument("--json", action="store_true", help="one JSON object per line")

    show = actions.add_parser("show", help="one letter, whole")
    show.add_argument("id")

    replay = actions.add_parser("replay", help="judge letters again and enqueue what passes")
    filters(replay)
    replay.add_argument("--all", action="store_true", help="replay every letter")
    replay.add_argument("--dry-run", action="store_true", help="say what would happen only")

    purge = actions.add_parser("purge", help="delete letters for good")
    filters(purge)
    purge.add_argument("--all", action="store_true", help="purge every letter")
    purge.add_argument("--yes", action="store_true", help="do not ask for confirmation")


def _filter_of(args: argparse.Namespace) -> LetterFilter:
    return LetterFilter(
        reasons=frozenset(args.reason or ()),
        route=args.route,
        since=args.since,
        until=args.until,
        ids=frozenset(args.ids),
    )


def run(settings: Settings, args: argparse.Namespace) -> int:
    console = Console()
    stream = deadletter_stream()
    try:
        if args.action == "list":
            return _list(console, stream, _filter_of(args), args.limit, args.json)
        if args.action == "show":
            return _show(console, stream, args.id)
        which = _filter_of(args)
        if which.empty and not args.all:
            raise SystemExit(
                f"taskhub: deadletter {args.action}: name letter ids or a filter, or pass --all"
            )
        if args.action == "replay":
            return _replay(console, settings, stream, which, args.dry_run)
        return _purge(console, stream, which, args.yes)
    except redis.RedisError as error:
        unreachable = f"taskhub: dead-letter stream unreachable: {visible(str(error))}"
        raise SystemExit(unreachable) from None


def _one_line(text: str) -> str:
    """`text` for a cell: layout whitespace made single spaces, every other control escaped."""
    return visible(_LAYOUT_WHITESPACE.sub(" ", text).strip())


def _cut(text: str, width: int) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"


def _preview(letter: DeadLetter) -> str:
    if letter.task is not None:
        text = f"{letter.task.name}({json.dumps(letter.task.args)[1:-1]})"
    else:
        text = letter.payload.decode("utf-8", "replace")
    return _cut(_one_line(text), PREVIEW_CHARS)  # cut once escaped: the width holds


def _list(
    console: Console, stream: DeadLetterStream, which: LetterFilter, limit: int, as_json: bool
) -> int:
    letters = list(islice(stream.scan(which), limit))
    if as_json:
        for letter in letters:
            print(json.dumps({"id": letter.id, **letter.to_fields()}))
        return 0
    table = FittedTable(f"dead letters in {stream.key} (newest first)", LIST_FIELDS)
    for letter in letters:
        table.add_row(
            letter.id,
            letter.received_at.astimezone(UTC).strftime("%m-%d %H:%M:%S"),
            letter.reason.value,
            _one_line(letter.topic or (letter.task.name if letter.task else "")),
            _cut(_one_line(letter.detail), DETAIL_CHARS),
            _preview(letter),
        )
    console.print(table)
    console.print(f"{len(letters)} shown of {len(stream)} stored")
    return 0


def _show(console: Console, stream: DeadLetterStream, entry_id: str) -> int:
    letter = stream.get(entry_id)
    if letter is None:
        raise SystemExit(f"taskhub: no dead letter {visible(entry_id)} in {stream.key}")
    table = Table.grid(padding=(0, 2))
    table.add_column(style="bold")
    table.add_column(overflow="fold")
    rows = [
        ("id", letter.id),
        ("kind", letter.kind.value),
        ("reason", letter.reason.value),
        ("detail", letter.detail),
        ("route", letter.route or ""),
        ("received", letter.received_at.isoformat()),
        ("replayable", "yes" if letter.replayable else "no"),
    ]
    if letter.topic:
        rows.append(("topic", letter.topic))
    if letter.task is not None:
        rows += [
            ("task", letter.task.name),
            ("task id", letter.task.task_id),
            ("queue", letter.task.queue),
            ("retries", str(letter.task.retries)),
            ("exception", letter.task.exception),
        ]
    for name, value in rows:
        table.add_row(name, safe_text(value, keep_lines=name == "detail"))
    console.print(Panel(table, title=Text(f"dead letter {letter.id}")))
    if letter.properties:
        console.print(Panel(Syntax(json_view(letter.properties), "json"), title="properties"))
    if letter.task is not None:
        call = {"args": letter.task.args, "kwargs": letter.task.kwargs}
        console.print(Panel(Syntax(json_view(call), "json"), title="arguments"))
    if letter.payload:
        console.print(
            Panel(_payload_view(letter.payload), title=f"payload ({len(letter.payload)} bytes)")
        )
    if letter.task is not None and letter.task.traceback:
        traceback = safe_text(letter.task.traceback.rstrip(), keep_lines=True)
        console.print(Panel(traceback, title="traceback"))
    return 0


def _payload_view(payload: bytes) -> Syntax | Text:
    try:
        return Syntax(json_view(json.loads(payload)), "json")
    except (ValueError, RecursionError):
        pass
    try:
        return safe_text(payload.decode("utf-8"), keep_lines=True)
    except UnicodeDecodeError:
        return Text(f"(not UTF-8; {len(payload)} bytes) {payload[:400].hex(' ')}")


def _replay(
    console: Console,
    settings: Settings,
    stream: DeadLetterStream,
    which: LetterFilter,
    dry_run: bool,
) -> int:
    from taskhub.celery import checked_routes
    from taskhub.deadletter_replay import Replayer

    replayer = Replayer.for_routes(stream, checked_routes(settings), settings)
    report = replayer.replay(stream.scan(which, newest_first=False), dry_run=dry_run)
    table = FittedTable("replay (dry run: nothing changed)" if dry_run else "replay", REPLAY_FIELDS)
    for letter, call in report.replayed:
        table.add_row(letter.id, "enqueued", call.task, f"task id {call.task_id} on {call.queue}")
    for letter, still, detail in report.refused:
        table.add_row(letter.id, "still refused", still.value, _one_line(detail))
    for letter, why in report.skipped:
        table.add_row(letter.id, "skipped", letter.reason.value, why)
    console.print(table)
    verb = "would enqueue" if dry_run else "enqueued"
    console.print(
        f"replay: {verb}={len(report.replayed)} still_refused={len(report.refused)} "
        f"skipped={len(report.skipped)}"
    )
    return 0


def _purge(console: Console, stream: DeadLetterStream, which: LetterFilter, yes: bool) -> int:
    ids = [letter.id for letter in stream.scan(which)]
    if not ids:
        console.print("purge: nothing matches")
        return 0
    if not yes and not console.input(
        f"delete {len(ids)} dead letters for good? [y/N] "
    ).lower().startswith("y"):
        console.print("purge: nothing deleted")
        return 1
    deleted = sum(stream.delete(ids[i : i + 1000]) for i in range(0, len(ids), 1000))
    console.print(f"purge: deleted={deleted}")
    return 0
