"""A flood of malformed messages among valid ones, through a real MQTT client, bridge and worker:
every valid message is processed, every bad one is a dead letter, and the bridge never restarts.
`pytest -s` prints the figures."""

from __future__ import annotations

import itertools
import json
import time
from collections import Counter
from collections.abc import Callable, Iterator

import redis

from rig.processes import Process, wait_for
from taskhub.deadletters import DeadLetterStream, Reason
from taskhub.demo.feed import publish
from taskhub.intake import RawMessage
from taskhub.settings import get_settings
from tests.conftest import checkin_tweet, stored_checkins

VALID = 300
MALFORMED = 1_000
ID_BASE = 880_000_000_000

Maker = Callable[[int, str], RawMessage]


def _topic(prefix: str, city: str = "nyc") -> str:
    return f"{prefix}checkins/{city}/tweets"


def _nested(depth: int) -> bytes:
    return ("[" * depth + "]" * depth).encode()


MALFORMED_KINDS: dict[Reason, list[Maker]] = {
    Reason.INVALID_UTF8: [
        lambda n, p: RawMessage(_topic(p), b"\xc3\x28" + str(n).encode(), {}),
        lambda n, p: RawMessage(_topic(p), bytes([0x80 + n % 64]) * 40, {}),
    ],
    Reason.INVALID_JSON: [
        lambda n, p: RawMessage(_topic(p), b'{"id": "' + str(n).encode(), {}),
        lambda n, p: RawMessage(_topic(p), b"", {}),
        lambda n, p: RawMessage(_topic(p), _nested(100_000), {}),  # deeper than any parser allows
        lambda n, p: RawMessage(_topic(p), b"NaN garbage \x00", {}),
    ],
    Reason.SCHEMA: [
        lambda n, p: RawMessage(_topic(p), json.dumps({"id": n}).encode(), {}),
        lambda n, p: RawMessage(_topic(p), b"[1, 2, 3]", {}),
        lambda n, p: RawMessage(_topic(p), b"null", {}),
        lambda n, p: RawMessage(
            _topic(p),
            json.dumps({**checkin_tweet(str(n), "abcd123"), "text": "no link"}).encode(),
            {},
        ),
        lambda n, p: RawMessage(
            _topic(p), json.dumps({**checkin_tweet("1" * 400, "abcd123")}).encode(), {}
        ),
    ],
    Reason.NO_ROUTE: [
        lambda n, p: RawMessage(f"{p}checkins", b"{}", {}),
        lambda n, p: RawMessage(f"{p}sensors/dev-{n}/unknown/deeper", b"{}", {}),
    ],
    Reason.BAD_TOPIC_PARAMETER: [
        lambda n, p: RawMessage(_topic(p, f"ny:{n}"), b"{}", {}),
        lambda n, p: RawMessage(_topic(p, "x" * 200), b"{}", {}),
        lambda n, p: RawMessage(_topic(p, "új város"), b"{}", {}),
    ],
    Reason.PAYLOAD_TOO_LARGE: [
        lambda n, p: RawMessage(
            _topic(p), b" " * (get_settings().bridge.max_payload_bytes + 1), {}
        ),
    ],
}


def _malformed(prefix: str) -> Iterator[tuple[Reason, RawMessage]]:
    makers = [(reason, make) for reason, found in MALFORMED_KINDS.items() for make in found]
    for n, (reason, make) in enumerate(itertools.islice(itertools.cycle(makers), MALFORMED)):
        if reason is Reason.PAYLOAD_TOO_LARGE and n % 50:
            reason, make = Reason.SCHEMA, MALFORMED_KINDS[Reason.SCHEMA][0]  # keep the flood small
        yield reason, make(n, prefix)


def test_a_flood_of_malformed_messages_among_valid_ones(
    broker_redis: redis.Redis, bridge: Process, worker: Process, standin: object, topic_prefix: str
) -> None:
    bad = list(_malformed(topic_prefix))
    valid_ids = [str(ID_BASE + n) for n in range(VALID)]
    valid = [
        RawMessage(
            _topic(topic_prefix), json.dumps(checkin_tweet(tweet_id, "abcd123")).encode(), {}
        )
        for tweet_id in valid_ids
    ]
    stream: list[RawMessage] = []
    bad_messages = iter(message for _, message in bad)
    for message in valid:  # three bad, one valid, three bad, ...
        stream.append(message)
        stream.extend(itertools.islice(bad_messages, 3))
    stream.extend(bad_messages)
    assert len(stream) == VALID + MALFORMED

    started = time.monotonic()
    sent = publish(get_settings().mqtt, stream, rate=500, total=len(stream), show_progress=False)
    assert sent == len(stream)
    letters = DeadLetterStream(broker_redis, get_settings().key_prefix)
    wait_for(lambda: len(letters) >= MALFORMED, 60, f"{MALFORMED} dead letters")
    wait_for(lambda: stored_checkins(broker_redis, valid_ids) == VALID, 120, "every valid check-in")
    seconds = time.monotonic() - started

    assert len(letters) == MALFORMED
    found = Counter(letter.reason for letter in letters.scan())
    assert found == Counter(reason for reason, _ in bad)
    assert bridge.popen is not None
    assert bridge.popen.poll() is None, "the bridge died"
    assert bridge.starts == 1
    assert "Traceback" not in bridge.output()
    tally = " ".join(f"{reason.value}={count}" for reason, count in sorted(found.items()))
    print(
        f"\nflood: valid={VALID} processed={stored_checkins(broker_redis, valid_ids)} "
        f"malformed={MALFORMED} dead_lettered={len(letters)} ({tally}) bridge_restarts=0 "
        f"seconds={seconds:.1f}"
    )
