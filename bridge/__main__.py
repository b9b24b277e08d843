"""`python -m bridge`: run one bridge replica until SIGTERM or SIGINT, then exit 0."""

from __future__ import annotations

import logging
import signal
import sys
from types import FrameType
from typing import TYPE_CHECKING

import redis

from bridge.backoff import Backoff
from bridge.backpressure import Backpressure
from bridge.delivery import Delivery
from bridge.loop import Bridge, client_id_taken
from bridge.metrics import BridgeCollector, bridge_registry, exposition
from bridge.publisher import CONNECT_TIMEOUT, SOCKET_TIMEOUT, RedisPublisher
from bridge.replicas import ClientIdTaken, Replica, ReplicaKeys
from bridge.replies import ReplyOutbox
from bridge.source import MqttSource
from bridge.spool import Spool, SpoolUnusable
from bridge.state import StateBeats
from bridge.sweeper import Sweeper
from taskhub.celery import app, checked_routes, freeze_startup_objects
from taskhub.deadletters import DeadLetterStream
from taskhub.intake import Intake
from taskhub.ledger import LedgerKeys
from taskhub.redaction import redact, redact_logs
from taskhub.response_topics import ResponseTopics
from taskhub.settings import MqttProtocol, Settings, settings_or_exit
from taskhub.task_messages import MessageBuilder
from taskhub.telemetry.probes import ProbeServer
from taskhub.telemetry.queues import QueueCollector
from taskhub.topics import TopicPattern
from taskhub.tracing import start as start_tracing

if TYPE_CHECKING:
    from opentelemetry.sdk.trace import TracerProvider

    from bridge.message_spans import MessageSpans
    from taskhub.routes import RouteTable

log = logging.getLogger("taskhub.bridge")


def build_bridge(settings: Settings, tracing: TracerProvider | None = None) -> Bridge:
    """A bridge wired from settings, tracing each message to `tracing` if given; raises
    SystemExit with one line if the routes are wrong."""
    routes = checked_routes(settings)
    topic = settings.bridge.deadletter_topic
    if topic is not None:
        for topic_filter, _ in routes.subscriptions(settings.mqtt.qos):
            if TopicPattern(topic_filter).matches(topic):
                raise SystemExit(
                    f"taskhub: bad configuration: TASKHUB_BRIDGE__DEADLETTER_TOPIC={topic} lies "
                    f"inside the bridge's subscription {topic_filter}: its letters would come back "
                    "as dead letters; choose a topic outside every route"
                )
    bridge_settings = settings.bridge
    ledger = LedgerKeys.for_prefix(settings.key_prefix)
    publisher = RedisPublisher(
        settings.broker_url.get_secret_value(),
        routes.queues,
        ledger,
        deadletter_maxlen=bridge_settings.deadletter_maxlen,
        outbox_maxlen=settings.replies.outbox_maxlen,
    )
    sweeper = Sweeper(
        publisher.redis,
        ledger,
        routes.queues,
        grace=settings.tasks.time_limit + settings.tasks.retry_backoff_max,
        letters=DeadLetterStream(
            publisher.redis, settings.key_prefix, bridge_settings.deadletter_maxlen
        ),
    )
    try:
        spool = Spool(
            bridge_settings.spool_path(settings.mqtt.client_id), bridge_settings.spool_max
        )
    except SpoolUnusable as error:
        raise SystemExit(
            f"taskhub: bad configuration: {error}; set TASKHUB_BRIDGE__SPOOL_DIR to a writable "
            "directory, or move a damaged spool file aside (`sqlite3 FILE .recover` saves what it "
            "holds)"
        ) from None
    delivery = Delivery(
        publisher,
        spool,
        Backpressure.for_bridge(bridge_settings),
        Backoff(bridge_settings.redis_retry_min_delay, bridge_settings.redis_retry_max_delay),
    )
    replica = Replica(
        publisher.redis,
        ReplicaKeys.for_replica(
            settings.key_prefix, settings.mqtt.client_id, settings.mqtt.share_group
        ),
        settings.mqtt.client_id,
    )
    source = MqttSource(settings.mqtt, routes, traced=tracing is not None)
    response_topics = ResponseTopics(settings.replies.allowed_topics, settings.topic_prefix)
    replies = None
    if settings.mqtt.protocol is MqttProtocol.V5:  # MQTT 3.1.1 carries no Response Topic
        replies = ReplyOutbox(
            publisher.redis, settings.key_prefix, settings.mqtt.client_id, source, response_topics
        )
    return Bridge(
        source,
        Intake(routes, bridge_settings.max_payload_bytes, response_topics),
        MessageBuilder.for_tasks(app, routes.task_queues),
        delivery,
        sweeper,
        replica,
        bridge_settings,
        settings.key_prefix,
        StateBeats(
            publisher.redis,
            settings.key_prefix,
            settings.mqtt.client_id,
            settings.telemetry.beat_interval,
        ),
        replies=replies,
        spans=message_spans(routes, tracing),
    )


def message_spans(routes: RouteTable, tracing: TracerProvider | None) -> MessageSpans | None:
    """The per-message spans while tracing is on; imported only then."""
    if tracing is None:
        return None
    from bridge.message_spans import MessageSpans

    return MessageSpans(routes, tracing)


def start_probes(settings: Settings, bridge: Bridge) -> ProbeServer | None:
    """The bridge's /metrics, /healthz and /readyz, unless TASKHUB_TELEMETRY__BRIDGE_PORT is 0."""
    port = settings.telemetry.bridge_port
    if port == 0:
        return None
    # A client of its own: the loop reaches Redis only through its writer (bridge/ports.py).
    client = redis.Redis.from_url(
        settings.broker_url.get_secret_value(),
        socket_timeout=SOCKET_TIMEOUT,
        socket_connect_timeout=CONNECT_TIMEOUT,
    )
    queues = QueueCollector(client, settings.key_prefix, bridge.intake.routes.queues)
    registry = bridge_registry(BridgeCollector(bridge.state, bridge.counts, bridge.batches), queues)
    return ProbeServer(
        settings.telemetry.address,
        port,
        metrics=exposition(registry),
        healthy=lambda: bridge.state().healthy(),
        ready=lambda: bridge.state().ready(),
    ).start()


def main() -> int:
    logging.basicConfig(
        level=logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    redact_logs()
    settings = settings_or_exit()
    tracing = start_tracing("taskhub-bridge", settings)
    bridge = build_bridge(settings, tracing)
    freeze_startup_objects()  # full collections would walk Celery's heap and stall the loop

    def stop(signum: int, frame: FrameType | None) -> None:
        log.info("%s: finishing the messages in hand, then stopping", signal.Signals(signum).name)
        bridge.request_stop()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    log.info(
        "bridge starting: %d routes -> redis %s, spool %s (%d waiting)",
        len(bridge.intake.routes),
        redact(settings.broker_url.get_secret_value()),
        bridge.delivery.spool.path,
        len(bridge.delivery.spool),
    )
    probes = start_probes(settings, bridge)  # first: a port already taken stops us at once
    try:
        try:
            bridge.replica.claim()
        except ClientIdTaken as taken:
            holder = client_id_taken(settings.mqtt.client_id, str(taken))
            raise SystemExit(f"taskhub: bad configuration: {holder}") from None
        return bridge.run()
    finally:
        if probes is not None:
            probes.stop()
        if tracing is not None:
            tracing.shutdown()  # exports the spans still batched


if __name__ == "__main__":
    sys.exit(main())
