"""A feed of realistic synthetic check-in tweets, published to MQTT at a chosen rate and count;
broker outages pause it, never end it."""

from __future__ import annotations

import itertools
import json
import random
import signal
import string
from collections.abc import Iterable, Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Protocol

import paho.mqtt.client as mqtt
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from taskhub.demo.broker_link import BrokerLink
from taskhub.demo.pacing import Pacer
from taskhub.demo.venues import venue_for_code
from taskhub.mqtt import connect_arguments, new_client
from taskhub.settings import MqttSettings

DEFAULT_TOPIC = "checkins/{city}/tweets"
MAX_UNACKED = 1000
"""Most messages awaiting the broker's acknowledgement: the feed waits past it, so a hung broker
holds at most this many, and they are the most a reconnect sends again at once."""
STOP_GRACE_SECONDS = 2.0
"""On SIGINT or SIGTERM, how long the feed still waits for acknowledgements on their way: well
inside the 5 s honcho gives a process before SIGKILL."""
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)
DEFAULT_ZIPF = 1.1
"""With a fixed set of venues, the venue of popularity rank r is drawn with weight 1/r^1.1."""
_CODE_LENGTH = 7
_USERS = ("ana", "bo", "chen", "dita", "emeka", "farah", "gus", "hana", "ivo", "jun", "kemal")
_PHRASES = ("I'm at", "Lunch at", "Finally at", "Back at", "Coffee break @", "Meeting at")
_CODE_CHARS = string.ascii_letters + string.digits


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


@dataclass(frozen=True, slots=True)
class FeedOutcome:
    published: int
    """Messages the broker acknowledged (QoS 0: messages handed over)."""
    unacknowledged: int
    """Messages sent that the broker had not acknowledged when the feed stopped (QoS 0: dropped
    while the broker was down)."""


def publish(
    settings: MqttSettings,
    messages: Iterable[Publishable],
    *,
    rate: float,
    total: int,
    qos: int = 1,
    show_progress: bool = True,
) -> int:
    """Publish `messages` at `rate` per second (0: as fast as the broker takes them).

    Returns how many the broker acknowledged: all of them, as it waits through outages.
    """
    outcome = run_feed(
        settings, messages, rate=rate, total=total, qos=qos, show_progress=show_progress
    )
    return outcome.published


def run_feed(  # noqa: PLR0913  (keyword-only knobs)
    settings: MqttSettings,
    messages: Iterable[Publishable],
    *,
    rate: float,
    total: int,
    qos: int = 1,
    show_progress: bool = True,
    stop_on_signals: bool = False,
) -> FeedOutcome:
    """Publish `messages` at `rate` per second (0: unpaced) until they run out or it is stopped.

    A broker outage never ends the feed: it waits for paho's reconnect (retrying as long as it
    takes, from the first connect on), reports the loss and the return on stderr, and the broker
    gets again what it had not acknowledged (broker_link.py), so with QoS 1 or 2 every message
    is acknowledged at least once before this returns. With `stop_on_signals`, SIGINT and SIGTERM
    stop the feed: it waits STOP_GRACE_SECONDS for the acknowledgements on their way and returns
    what it has, the rest counted as unacknowledged.
    """
    link = BrokerLink(f"{settings.host}:{settings.port}", qos=qos)
    client = new_client(settings, f"taskhub-feed-{random.getrandbits(32):08x}", persistent=False)
    client.max_inflight_messages_set(MAX_UNACKED)
    link.attach(client)
    with _stopped_by_signals(link) if stop_on_signals else nullcontext():
        client.connect_async(**connect_arguments(settings, persistent=False))
        client.loop_start()
        try:
            _publish_paced(client, link, messages, rate=rate, total=total, show=show_progress)
            if link.stopping:
                link.linger(STOP_GRACE_SECONDS)
        finally:
            link.close()
            client.disconnect()
            client.loop_stop()
    return FeedOutcome(link.acknowledged, link.unacknowledged)


@contextmanager
def _stopped_by_signals(link: BrokerLink) -> Iterator[None]:
    """SIGINT and SIGTERM stop `link` instead of the process, until the block ends. Python runs
    signal handlers in the main thread only, so this is for the command, not a library caller."""
    previous = {number: signal.getsignal(number) for number in STOP_SIGNALS}
    for number in STOP_SIGNALS:
        signal.signal(number, lambda *args: link.stop())
    try:
        yield
    finally:
        for number, handler in previous.items():
            signal.signal(number, handler)


def _publish_paced(
    client: mqtt.Client,
    link: BrokerLink,
    messages: Iterable[Publishable],
    *,
    rate: float,
    total: int,
    show: bool,
) -> None:
    pacer = Pacer(rate)
    columns = (TextColumn("feed"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, disable=not show) as progress:
        bar = progress.add_task("publish", total=total or None)
        for sent, message in enumerate(messages, start=1):
            if not link.wait_ready(MAX_UNACKED) or not link.pause(pacer.delay()):
                return
            link.publish(client, message.topic, message.payload)
            progress.update(bar, completed=sent)
        link.wait_settled()
