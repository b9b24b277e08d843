"""`taskhub request TOPIC JSON [--timeout S]`: send one MQTT 5 request and print its reply.

The reply's JSON goes to stdout, whatever its status, so a script can read an error document as
well as a result. Exit 0 for an OK reply; 1 for a FAILED or REFUSED one, with its error on
stderr in one line; 3 when no reply came (timeout) or the broker could not be used.
"""

from __future__ import annotations

import argparse
import json
import sys

from taskhub.arguments import positive_seconds
from taskhub.settings import Settings
from taskhub.terminal import json_view, visible

EXIT_ERROR_REPLY = 1
EXIT_NO_REPLY = 3


def add_parser(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    request = commands.add_parser(
        "request", help="send an MQTT 5 request to a route and print its reply (docs/requests.md)"
    )
    request.add_argument("topic", help="the route's topic, below TASKHUB_TOPIC_PREFIX")
    request.add_argument("payload", metavar="json", help="the request's payload, as JSON")
    request.add_argument(
        "--timeout",
        type=positive_seconds,
        default=5.0,
        help="seconds to wait for the reply (default 5)",
    )


def run(settings: Settings, args: argparse.Namespace) -> int:
    from taskhub.requests import RequestError, request

    try:
        payload = json.loads(args.payload)
    except ValueError as error:
        raise SystemExit(f"taskhub request: the payload is not JSON: {error}") from None
    try:
        response = request(args.topic, payload, args.timeout, settings=settings)
    except RequestError as error:
        print(f"taskhub request: {visible(str(error))}", file=sys.stderr)
        return EXIT_NO_REPLY
    print(json_view(response.document))
    if response.ok:
        return 0
    problem = response.error
    print(
        f"taskhub request: {response.status.value}: "
        + visible(f"{problem.get('reason', '?')}: {problem.get('detail', '')}"),
        file=sys.stderr,
    )
    return EXIT_ERROR_REPLY
