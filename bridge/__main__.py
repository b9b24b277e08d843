"""`python -m bridge`: run one bridge replica until SIGTERM or SIGINT, then exit 0."""

from __future__ import annotations

import logging
import signal
import sys
from types import FrameType

from bridge.intake import Intake
from bridge.messages import MessageBuilder
from bridge.publisher import RedisPublisher
from bridge.service import Bridge
from bridge.source import MqttSource
from taskhub.routes import RouteError, route_table
from taskhub.settings import redact_url, settings_or_exit

log = logging.getLogger("taskhub.bridge")


def main() -> int:
    logging.basicConfig(
        level=logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    settings = settings_or_exit()
    try:
        routes = route_table(settings.topic_prefix)
    except RouteError as error:
        raise SystemExit(f"taskhub: bad route table: {error}") from None
    builder = MessageBuilder(
        time_limits=(settings.tasks.time_limit, settings.tasks.soft_time_limit)
    )
    publisher = RedisPublisher(
        settings.broker_url.get_secret_value(), settings.key_prefix, builder=builder
    )
    bridge = Bridge(
        MqttSource(settings.mqtt, routes),
        Intake(routes, settings.bridge.max_payload_bytes),
        publisher,
        settings.bridge,
    )

    def stop(signum: int, frame: FrameType | None) -> None:
        log.info(
            "%s received: finishing the batch in hand, then stopping", signal.Signals(signum).name
        )
        bridge.request_stop()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    log.info(
        "bridge starting: %d routes -> redis %s",
        len(routes),
        redact_url(settings.broker_url.get_secret_value()),
    )
    bridge.run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
