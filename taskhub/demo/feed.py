"""A feed of realistic synthetic check-in tweets, published to MQTT at a chosen rate and count."""

from __future__ import annotations

import itertools
import json
import random
import signal
import string
import threading
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Protocol

import paho.mqtt.client as mqtt
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from taskhub.demo.venues import venue_for_code
from taskhub.mqtt import connect_arguments, new_client, reason_text
from taskhub.settings import MqttSettings

DEFAULT_TOPIC = "checkins/{city}/tweets"
MAX_UNACKED = 1000
DEFAULT_ZIPF = 1.1
"""With a fixed set of venues, the venue of popularity rank r is drawn with weight 1/r^1.1."""
_CODE_LENGTH = 7
_USERS = ("ana", "bo", "chen", "dita", "emeka", "farah", "gus", "hana", "ivo", "jun", "kemal")
_PHRASES = ("I'm at", "Lunch at", "Finally at", "Back at", "Coffee break @", "Meeting at")
_CODE_CHARS = string.ascii_letters + string.digits
STOP_CHECK_SECONDS = 0.1
"""Longest a paced feed sleeps before it looks whether it was told to stop."""


class StopSignals:
    """SIGTERM or SIGINT, once `install`ed: the feed sends nothing more, waits for the broker's
    acks of what it sent, and returns (honcho's stop, Ctrl-C). Killed instead, it would leave
    QoS 1 messages unacknowledged, and its count unsaid."""

    def __init__(self) -> None:
        self.received: int | None = None

    def install(self) -> StopSignals:
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, self._receive)
        return self

    def _receive(self, signum: int, frame: object) -> None:
        # Only a flag: the feed looks at it between messages, never in the middle of a publish.
        self.received = signum


class Publishable(Protocol):
    """Anything with a topic and payload bytes: a feed message, or a test's hand-made one."""

    @property
    def topic(self) -> str: ...

    @property
    def payload(self) -> bytes: ...


@dataclass(frozen=True, slots=True)
class FeedMessage:
    topic: str
    tweet: dict[str, Any]

    @property
    def payload(self) -> bytes:
        return json.dumps(self.tweet, ensure_ascii=False).encode()


def checkin_tweets(
    count: int,
    *,
    id_base: int,
    topic: str = DEFAULT_TOPIC,
    seed: int | None = None,
    venues: int = 0,
    zipf: float = DEFAULT_ZIPF,
) -> Iterator[FeedMessage]:
    """`count` synthetic check-in tweets (0: endless), ids `id_base`, `id_base + 1`, ...

    With `venues` N > 0 each check-in is at one of N venues, drawn with Zipf popularity (the
    venue of rank r with weight 1/r^zipf), as real check-ins crowd into a few places; 0: every
    check-in is at a venue of its own.
    """
    if venues < 0 or zipf < 0:
        raise ValueError(f"venues and zipf must not be negative (got {venues}, {zipf:g})")
    rng = random.Random(seed)
    popular = _venue_codes(rng, venues) if venues else []
    ranks = list(itertools.accumulate(rank**-zipf for rank in range(1, venues + 1)))
    sequence = 0
    while count == 0 or sequence < count:
        if popular:
            code = rng.choices(popular, cum_weights=ranks)[0]
        else:
            code = "".join(rng.choices(_CODE_CHARS, k=_CODE_LENGTH))
        venue = venue_for_code(code)
        user = rng.choice(_USERS) + str(rng.randint(1, 999))
        text = f"{rng.choice(_PHRASES)} {venue.name} ({venue.city}) http://4sq.com/{code}"
        tweet = {
            "id": str(id_base + sequence),
            "text": text,
            "user": {"screen_name": user},
            "created_at": datetime.now(UTC).isoformat(),
            "lang": "en",
            "seq": sequence,
        }
        yield FeedMessage(topic.format(city=venue.city_key), tweet)
        sequence += 1


def _venue_codes(rng: random.Random, venues: int) -> list[str]:
    """`venues` distinct short codes, most popular first; the same code is always the same venue."""
    codes: dict[str, None] = {}
    while len(codes) < venues:
        codes["".join(rng.choices(_CODE_CHARS, k=_CODE_LENGTH))] = None
    return list(codes)


def publish(
    settings: MqttSettings,
    messages: Iterable[Publishable],
    *,
    rate: float,
    total: int,
    qos: int = 1,
    show_progress: bool = True,
    stop: StopSignals | None = None,
) -> int:
    """Publish `messages` at `rate` per second (0: as fast as the broker takes them), or until
    `stop` receives a signal.

    Returns how many the broker acknowledged; waits for every QoS 1 ack before returning.
    """
    client = new_client(settings, f"taskhub-feed-{random.getrandbits(32):08x}", persistent=False)
    client.max_inflight_messages_set(MAX_UNACKED)
    connected = threading.Event()

    def on_connect(
        client: mqtt.Client, userdata: Any, flags: Any, reason: Any, properties: Any
    ) -> None:
        if not reason.is_failure:
            connected.set()

    client.on_connect = on_connect
    client.connect_async(**connect_arguments(settings, persistent=False))
    client.loop_start()
    try:
        if not connected.wait(timeout=settings.keepalive):
            raise SystemExit(
                f"taskhub feed: cannot connect to MQTT at {settings.host}:{settings.port}"
            )
        return _publish_paced(
            client, messages, rate=rate, total=total, qos=qos, show=show_progress, stop=stop
        )
    finally:
        client.disconnect()
        client.loop_stop()


def _publish_paced(
    client: mqtt.Client,
    messages: Iterable[Publishable],
    *,
    rate: float,
    total: int,
    qos: int,
    show: bool,
    stop: StopSignals | None = None,
) -> int:
    pending: list[mqtt.MQTTMessageInfo] = []
    acknowledged = 0
    started = time.monotonic()
    columns = (TextColumn("feed"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, disable=not show) as progress:
        bar = progress.add_task("publish", total=total or None)
        for sent, message in enumerate(messages, start=1):
            if rate:
                _sleep_until(started + sent / rate, stop)
            if stop is not None and stop.received is not None:
                break
            info = client.publish(message.topic, message.payload, qos=qos)
            if info.rc != mqtt.MQTT_ERR_SUCCESS:
                raise SystemExit(f"taskhub feed: publish failed: {reason_text(info.rc)}")
            pending.append(info)
            if len(pending) >= MAX_UNACKED:
                acknowledged += _wait_all(pending)
            progress.update(bar, completed=sent)
        acknowledged += _wait_all(pending)
    return acknowledged


def _sleep_until(when: float, stop: StopSignals | None) -> None:
    """Sleep until `when` (time.monotonic()), or until `stop` receives a signal."""
    while (delay := when - time.monotonic()) > 0:
        if stop is not None and stop.received is not None:
            return
        time.sleep(min(delay, STOP_CHECK_SECONDS))


def _wait_all(pending: list[mqtt.MQTTMessageInfo], timeout: float = 60.0) -> int:
    """Wait for the broker to ack every message in `pending`; empty it and return how many."""
    deadline = time.monotonic() + timeout
    for info in pending:
        info.wait_for_publish(timeout=max(0.0, deadline - time.monotonic()))
        if not info.is_published():
            raise SystemExit("taskhub feed: the broker did not acknowledge a message within 60s")
    count = len(pending)
    pending.clear()
    return count
