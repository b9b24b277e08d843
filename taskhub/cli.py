"""The `taskhub` command: routes, settings, status, dead letters, requests, the demo's stand-in and
feed."""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
import time
from collections.abc import Callable, Sequence

from rich.console import Console
from rich.text import Text

from taskhub.fitted_table import Field, FittedTable
from taskhub.redaction import redact_document, redact_logs
from taskhub.settings import Settings, settings_or_exit
from taskhub.terminal import visible

ROUTE_FIELDS = (
    Field("topic pattern", key=True),
    Field("task"),
    Field("queue"),
    Field("payload"),
    Field("qos", number=True),
    Field("key"),
)


def _routes(settings: Settings) -> int:
    from taskhub.celery import checked_routes

    routes = checked_routes(settings)
    table = FittedTable("routes", ROUTE_FIELDS)
    for route in routes:
        table.add_row(
            route.pattern.text,
            route.task,
            route.queue,
            route.payload.__name__,
            str(route.qos if route.qos is not None else settings.mqtt.qos),
            route.key or "(topic+payload hash)",
        )
    console = Console()
    console.print(table)
    filters = ", ".join(f"{f} (QoS {q})" for f, q in routes.subscriptions(settings.mqtt.qos))
    console.print(
        Text(f"the bridge subscribes: {visible(filters)}; unmatched topics there are dead letters")
    )
    return 0


def _config(settings: Settings) -> int:
    document = settings.model_dump(mode="json")
    document["broker_url"] = settings.broker_url.get_secret_value()
    document["result_backend"] = settings.result_backend.get_secret_value()
    document["store_url"] = settings.store_redis_url  # the one in use, not null when unset
    Console().print_json(data=redact_document(document))
    if settings.store_url is None:
        print(
            "taskhub config: store_url is broker_url (TASKHUB_STORE_URL is not set)",
            file=sys.stderr,
        )
    return 0


def _standin(settings: Settings, args: argparse.Namespace) -> int:
    from pydantic import ValidationError

    from taskhub.demo.standin import serve
    from taskhub.settings import StandinSettings

    overrides = {
        name: value
        for name, value in vars(args).items()
        if name in StandinSettings.model_fields and value is not None
    }
    try:
        standin = StandinSettings.model_validate(settings.standin.model_dump() | overrides)
    except ValidationError as error:
        problems = [
            "".join(f"--{str(part).replace('_', '-')}: " for part in item["loc"])
            + str(item["msg"]).removeprefix("Value error, ")
            for item in error.errors()
        ]
        raise SystemExit(f"taskhub standin: {'; '.join(problems)}") from None
    try:
        serve(standin)
    except OSError as error:
        raise SystemExit(f"taskhub standin: {error.strerror or error}") from None
    return 0


def _feed(settings: Settings, args: argparse.Namespace) -> int:
    from taskhub.demo.feed import DEFAULT_TOPIC, DEFAULT_ZIPF, checkin_tweets, run_feed

    if args.rate < 0 or args.venues < 0 or (args.zipf is not None and args.zipf < 0):
        raise SystemExit("taskhub feed: --rate, --venues and --zipf must not be negative")
    id_base = args.id_base if args.id_base is not None else int(time.time() * 1000) * 100_000
    topic = settings.topic_prefix + (args.topic or DEFAULT_TOPIC)
    outcome = run_feed(
        settings.mqtt,
        checkin_tweets(
            args.count,
            id_base=id_base,
            topic=topic,
            seed=args.seed,
            venues=args.venues,
            zipf=DEFAULT_ZIPF if args.zipf is None else args.zipf,
        ),
        rate=args.rate,
        total=args.count,
        qos=args.qos,
        show_progress=not args.quiet,
        stop_on_signals=True,
    )
    print(
        f"feed: published={outcome.published} unacknowledged={outcome.unacknowledged} "
        f"first_id={id_base}",
        file=sys.stderr,
    )
    return 0


COMMAND_MODULES = {
    "deadletter": "taskhub.deadletter_commands",
    "status": "taskhub.status_command",
    "request": "taskhub.request_command",
}
"""Commands in modules of their own, each with `add_parser(commands)` and `run(settings, args)`.
Only the one named is imported to run it: `taskhub request` should not wait for Redis's client
and Celery to load (half a second) before it asks."""


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    """The whole command line, or with `only` the one command of COMMAND_MODULES that will run."""
    parser = argparse.ArgumentParser(prog="taskhub", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("routes", help="show the route table as the bridge will subscribe it")
    commands.add_parser("config", help="show the settings in force (secrets redacted)")

    standin = commands.add_parser("standin", help="serve the local short-link and venue stand-in")
    standin.add_argument("--port", type=int, help="short-link port; default TASKHUB_STANDIN__PORT")
    standin.add_argument(
        "--venue-port", type=int, help="venue API port; default TASKHUB_STANDIN__VENUE_PORT"
    )
    standin.add_argument("--latency-ms", type=float, help="mean latency per request")
    standin.add_argument("--error-rate", type=float, help="share of requests answered 503")
    standin.add_argument("--tail-rate", type=float, help="share of requests that take --tail-ms")
    standin.add_argument("--tail-ms", type=float, help="latency of the slow tail")
    standin.add_argument(
        "--rate-limit", type=float, help="venue API requests per second per client; 0: off"
    )

    feed = commands.add_parser("feed", help="publish synthetic check-in tweets to MQTT")
    feed.add_argument("--rate", type=float, default=10.0, help="messages per second; 0: unpaced")
    feed.add_argument("--count", type=int, default=100, help="messages to send; 0: endless")
    feed.add_argument("--qos", type=int, choices=(0, 1, 2), default=1)
    feed.add_argument("--topic", help="topic template with {city}; default checkins/{city}/tweets")
    feed.add_argument("--id-base", type=int, help="first tweet id (default: from the clock)")
    feed.add_argument("--seed", type=int, help="random seed, for a repeatable feed")
    feed.add_argument(
        "--venues", type=int, default=0, help="draw from this many venues; 0: each check-in new"
    )
    feed.add_argument(
        "--zipf", type=float, help="venue popularity: rank r drawn as 1/r^S (default 1.1)"
    )
    feed.add_argument("--quiet", action="store_true", help="no progress bar")

    for name, module in COMMAND_MODULES.items():
        if only in (None, name):
            importlib.import_module(module).add_parser(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    words = sys.argv[1:] if argv is None else list(argv)
    chosen = words[0] if words and words[0] in COMMAND_MODULES else None
    args = build_parser(chosen).parse_args(words)
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    redact_logs()
    settings = settings_or_exit()
    commands: dict[str, Callable[[Settings, argparse.Namespace], int]] = {
        "routes": lambda settings, _: _routes(settings),
        "config": lambda settings, _: _config(settings),
        "standin": _standin,
        "feed": _feed,
    }
    if args.command in COMMAND_MODULES:
        return int(importlib.import_module(COMMAND_MODULES[args.command]).run(settings, args))
    return commands[args.command](settings, args)


if __name__ == "__main__":
    sys.exit(main())
