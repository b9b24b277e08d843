"""Property-based fuzzing of the bridge's decode, route and validate path.

Whatever the topic and payload, `Intake.judge` returns one verdict and raises nothing: a task call
that builds into a valid Celery message on a route's queue, or a dead letter with a reason whose
stored form gives back the exact payload bytes. `pytest -s` prints the tally.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from taskhub.deadletters import DeadLetter, Reason
from taskhub.intake import Intake, RawMessage
from taskhub.routes import SAFE_PARAMETER, route_table
from taskhub.task_messages import MessageBuilder, TaskCall

# No server, but a minute of CPU on purpose (docs/decisions.md, "Fuzzing budget"): it runs with
# the slow tier, so that `-m "not e2e"` stays under a minute. Not traced for coverage: tracing
# 10,000 cases more than doubles that minute of CI, and the intake's branches are covered anyway.
pytestmark = [pytest.mark.e2e, pytest.mark.no_cover]

CASES_PER_TEST = 3_400
MIN_CASES = 10_000
MAX_PAYLOAD_BYTES = 2_048

ROUTES = route_table("fuzz/")
INTAKE = Intake(ROUTES, MAX_PAYLOAD_BYTES)
BUILDER = MessageBuilder(time_limits=(90.0, 60.0))
TALLY: Counter[str] = Counter()

FUZZ = settings(
    max_examples=CASES_PER_TEST,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

levels = st.one_of(
    st.sampled_from(["checkins", "sensors", "reading", "tweets", "nyc", "dev-1", "", "$SYS"]),
    st.text(max_size=12),
    st.text(alphabet="ab:/+#$ *.\x00é🙂", max_size=6),
)
topics = st.one_of(
    st.sampled_from(["fuzz/checkins/nyc/tweets", "fuzz/sensors/dev-1/reading"]),
    st.lists(levels, min_size=1, max_size=5).map(lambda parts: "fuzz/" + "/".join(parts)),
    st.lists(levels, min_size=1, max_size=5).map("/".join),
    st.text(max_size=40),
)
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=30),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=5)
    ),
    max_leaves=8,
)


@st.composite
def near_valid_documents(draw: st.DrawFn) -> dict[str, Any]:
    """Valid check-ins and readings with a field dropped, retyped or stretched now and then."""
    if draw(st.booleans()):
        document: dict[str, Any] = {
            "id": draw(st.from_regex(r"[0-9]{1,20}", fullmatch=True) | st.text(max_size=22)),
            "text": draw(st.sampled_from(["at http://4sq.com/abcd123", "no link", "4sq.com/x"])),
            "user": draw(st.fixed_dictionaries({"screen_name": st.text(max_size=60)})),
            "created_at": draw(st.sampled_from(["2026-11-22T10:00:00Z", "yesterday", 17])),
        }
    else:
        document = {
            "seq": draw(st.integers(min_value=-5, max_value=2**70)),
            "value": draw(st.floats() | st.text(max_size=8)),
            "ts": draw(st.sampled_from(["2026-11-22T10:00:00+00:00", "", 1_700_000_000])),
        }
    for name in draw(st.lists(st.sampled_from(sorted(document)), max_size=2, unique=True)):
        if draw(st.booleans()):
            del document[name]
        else:
            document[name] = draw(json_values)
    return document


def _encoded(document: object, padding: int) -> bytes:
    return (json.dumps(document, ensure_ascii=False) + " " * padding).encode()


payloads = st.one_of(
    st.binary(max_size=300),
    st.builds(_encoded, json_values, st.just(0)),
    st.builds(_encoded, near_valid_documents(), st.sampled_from([0, 0, 0, MAX_PAYLOAD_BYTES])),
    st.text(max_size=200).map(str.encode),
)


def _check_verdict(topic: str, payload: bytes) -> None:
    verdict = INTAKE.judge(RawMessage(topic, payload, {"UserProperty": [["k", "v"]]}))
    TALLY["cases"] += 1
    if isinstance(verdict, DeadLetter):
        TALLY[verdict.reason.value] += 1
        assert verdict.reason in Reason
        assert verdict.detail
        stored = DeadLetter.from_fields("1-0", json.loads(json.dumps(verdict.to_fields())))
        assert stored.payload == payload
        assert stored.topic == topic
        assert stored.reason is verdict.reason
        return
    assert isinstance(verdict, TaskCall)
    TALLY["enqueued"] += 1
    matched = ROUTES.match(topic)
    assert matched is not None
    assert verdict.queue == matched.route.queue
    assert all(SAFE_PARAMETER.fullmatch(value) for value in verdict.kwargs.values())
    message = json.loads(BUILDER.build(verdict))
    assert message["headers"]["id"] == verdict.task_id
    assert message["properties"]["delivery_info"]["routing_key"] == verdict.queue


@FUZZ
@given(topic=topics, payload=payloads)
def test_any_topic_and_payload_gets_exactly_one_verdict(topic: str, payload: bytes) -> None:
    _check_verdict(topic, payload)


@FUZZ
@given(
    topic=st.sampled_from(["fuzz/checkins/nyc/tweets", "fuzz/sensors/dev-1/reading"]),
    document=near_valid_documents(),
)
def test_routed_near_valid_documents_get_exactly_one_verdict(
    topic: str, document: dict[str, Any]
) -> None:
    _check_verdict(topic, _encoded(document, 0))


@FUZZ
@given(
    city=levels,
    payload=payloads,
)
def test_any_topic_parameter_is_checked_before_it_reaches_a_task(city: str, payload: bytes) -> None:
    _check_verdict(f"fuzz/checkins/{city}/tweets", payload)


@pytest.fixture(scope="module", autouse=True)
def _report(request: pytest.FixtureRequest) -> Iterator[None]:
    yield
    counts = " ".join(f"{name}={count}" for name, count in sorted(TALLY.items()))
    print(f"\nfuzz: {counts} escapes=0")
    ran_all = request.session.testscollected >= 3 and not request.config.option.keyword
    if ran_all:
        assert TALLY["cases"] >= MIN_CASES
