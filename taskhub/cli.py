"""The `taskhub` command: routes, settings, dead letters, and the demo's stand-in and feed."""

from __future__ import annotations

import argparse
import logging
import sys
import time
from collections.abc import Sequence

from rich.console import Console
from rich.table import Table

from taskhub import deadletter_commands
from taskhub.settings import Settings, redact_url, settings_or_exit


def _routes(settings: Settings) -> int:
    from taskhub.celery import checked_routes

    routes = checked_routes(settings)
    table = Table("topic pattern", "task", "queue", "payload", "qos", "key", title="routes")
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
    console.print(f"the bridge subscribes: {filters}; unmatched topics there are dead letters")
    return 0


def _config(settings: Settings) -> int:
    document = settings.model_dump(mode="json")
    for field in ("broker_url", "result_backend", "store_url"):
        value = getattr(settings, field)
        document[field] = None if value is None else redact_url(value.get_secret_value())
    Console().print_json(data=document)
    return 0


def _standin(settings: Settings, args: argparse.Namespace) -> int:
    from taskhub.demo.standin import serve

    overrides = {
        key: value
        for key, value in (
            ("port", args.port),
            ("latency_ms", args.latency_ms),
            ("error_rate", args.error_rate),
        )
        if value is not None
    }
    serve(settings.standin.model_copy(update=overrides))
    return 0


def _feed(settings: Settings, args: argparse.Namespace) -> int:
    from taskhub.demo.feed import DEFAULT_TOPIC, checkin_tweets, publish

    id_base = args.id_base if args.id_base is not None else int(time.time() * 1000) * 100_000
    topic = settings.topic_prefix + (args.topic or DEFAULT_TOPIC)
    acked = publish(
        settings.mqtt,
        checkin_tweets(args.count, id_base=id_base, topic=topic, seed=args.seed),
        rate=args.rate,
        total=args.count,
        qos=args.qos,
        show_progress=not args.quiet,
    )
    print(f"feed: published={acked} first_id={id_base}", file=sys.stderr)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="taskhub", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("routes", help="show the route table as the bridge will subscribe it")
    commands.add_parser("config", help="show the settings in force (secrets redacted)")

    standin = commands.add_parser("standin", help="serve the local short-link and venue stand-in")
    standin.add_argument("--port", type=int, help="default: TASKHUB_STANDIN__PORT")
    standin.add_argument("--latency-ms", type=float, help="mean latency per request")
    standin.add_argument("--error-rate", type=float, help="share of requests answered 503")

    feed = commands.add_parser("feed", help="publish synthetic check-in tweets to MQTT")
    feed.add_argument("--rate", type=float, default=10.0, help="messages per second; 0: unpaced")
    feed.add_argument("--count", type=int, default=100, help="messages to send; 0: endless")
    feed.add_argument("--qos", type=int, choices=(0, 1, 2), default=1)
    feed.add_argument("--topic", help="topic template with {city}; default checkins/{city}/tweets")
    feed.add_argument("--id-base", type=int, help="first tweet id (default: from the clock)")
    feed.add_argument("--seed", type=int, help="random seed, for a repeatable feed")
    feed.add_argument("--quiet", action="store_true", help="no progress bar")

    deadletter_commands.add_parser(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    settings = settings_or_exit()
    if args.command == "routes":
        return _routes(settings)
    if args.command == "config":
        return _config(settings)
    if args.command == "standin":
        return _standin(settings, args)
    if args.command == "deadletter":
        return deadletter_commands.run(settings, args)
    return _feed(settings, args)


if __name__ == "__main__":
    sys.exit(main())
