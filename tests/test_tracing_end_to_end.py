"""Issue 15's acceptance test: one check-in published over MQTT 5 is one trace, from the
publisher's span through the bridge's span and the worker's task span to its two HTTP calls
(docs/tracing.md, "The whole trace").

Twice: in this process (the real bridge in a thread and a Celery worker in threads, both tracing
into one in-memory exporter), and as real processes (`python -m bridge` and `celery -A taskhub
worker`) exporting over OTLP/HTTP to a receiver of the test's own. Each with the publisher's
`traceparent`, which the trace continues, and without one, when the bridge's span is the root.
"""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest
import redis

from rig.otlp import OtlpReceiver, SpanView
from rig.processes import BRIDGE_READY, Process, python_module, start_worker, wait_for
from taskhub.demo.standin import StandinServer
from taskhub.tracing import TRACEPARENT
from tests.support.bridge_thread import publish_checkins, running_bridge
from tests.support.tracing import (
    CACHE_SPAN,
    HTTP_SPAN,
    PUBLISHER_SPAN_ID,
    PUBLISHER_TRACE_ID,
    PUBLISHER_TRACEPARENT,
    RATE_LIMIT,
    RATE_LIMIT_SPAN,
    TASK_SPAN,
    CheckinTrace,
    assert_task_subtree,
    complete,
    find_checkin_trace,
    from_sdk,
    in_memory_tracing,
    limit_every_host,
)

pytestmark = pytest.mark.e2e

TIMEOUT = 20
PUBLISHERS = {"continued": [(TRACEPARENT, PUBLISHER_TRACEPARENT)], "started": []}
"""The user properties of the one check-in published: the publisher's trace context, or none."""
TWEET_IDS = {"continued": "7001", "started": "7002"}


@dataclass(frozen=True)
class WholeTrace:
    bridge: SpanView
    checkin: CheckinTrace


def whole_trace(spans: Sequence[SpanView]) -> WholeTrace | None:
    """The bridge's span and its task's trace, once both have ended and been exported."""
    bridges = [s for s in spans if s.attributes.get("messaging.system") == "mqtt"]
    if not bridges:
        return None
    assert len(bridges) == 1, f"one check-in, several bridge spans: {bridges}"
    task_id = str(bridges[0].attributes["messaging.message.id"])
    checkin = complete(find_checkin_trace(spans, task_id))
    return None if checkin is None else WholeTrace(bridges[0], checkin)


def assert_one_trace(
    spans: Sequence[SpanView],
    case: str,
    ports: tuple[int, int],
    bridge_service: str,
) -> None:
    """Every span the check-in made is in one trace, and each has the parent it should."""
    found = whole_trace(spans)
    assert found is not None
    bridge, checkin = found.bridge, found.checkin
    assert bridge.service == bridge_service
    if case == "continued":
        assert (bridge.trace_id, bridge.parent_id) == (
            f"{PUBLISHER_TRACE_ID:032x}",
            f"{PUBLISHER_SPAN_ID:016x}",
        )
    else:
        assert bridge.parent_id is None
    assert {s.trace_id for s in spans} == {bridge.trace_id}, "one check-in, one trace"
    assert (checkin.task.trace_id, checkin.task.parent_id) == (bridge.trace_id, bridge.span_id)
    assert_task_subtree(checkin, TWEET_IDS[case], ports)  # 2 GETs, 2 turns, 2 lookups under it
    expected = [bridge.name, TASK_SPAN, *[HTTP_SPAN, RATE_LIMIT_SPAN, CACHE_SPAN] * 2]
    assert sorted(s.name for s in spans) == sorted(expected), "a span too many or too few"


# In this process, into memory.


@pytest.fixture
def rate_limited(monkeypatch: pytest.MonkeyPatch) -> None:
    limit_every_host(monkeypatch)


@pytest.mark.parametrize("case", sorted(PUBLISHERS))
@pytest.mark.usefixtures("embedded_worker", "rate_limited")
def test_a_published_checkin_is_one_trace_in_memory(case: str, standin: StandinServer) -> None:
    from taskhub import tracing
    from taskhub.settings import get_settings

    with in_memory_tracing() as exporter:
        # As `python -m bridge` does; tracing is already started, so this is its provider.
        provider = tracing.start("taskhub-bridge", get_settings())
        assert provider is not None
        with running_bridge(provider):
            publish_checkins({TWEET_IDS[case]: PUBLISHERS[case]}, code="Mem")

            def spans() -> list[SpanView]:
                return from_sdk(exporter.get_finished_spans())

            wait_for(lambda: whole_trace(spans()) is not None, TIMEOUT, "the check-in's spans")
        finished = spans()
    assert_one_trace(finished, case, standin.ports, bridge_service="taskhub-worker")


# Real processes, over OTLP/HTTP.


@pytest.fixture
def receiver() -> Iterator[OtlpReceiver]:
    server = OtlpReceiver().start()
    yield server
    server.stop()


@pytest.mark.parametrize("case", sorted(PUBLISHERS))
def test_a_published_checkin_is_one_trace_across_processes(
    case: str,
    receiver: OtlpReceiver,
    standin: StandinServer,
    broker_redis: redis.Redis,
    log_dir: Path,
) -> None:
    traced = {"OTEL_EXPORTER_OTLP_ENDPOINT": receiver.endpoint, "OTEL_BSP_SCHEDULE_DELAY": "100"}
    hosts = {f"127.0.0.1:{port}": {"rate_limit": RATE_LIMIT} for port in standin.ports}
    client_id = f"{os.environ['TASKHUB_MQTT__CLIENT_ID']}-{uuid.uuid4().hex[:8]}"
    own_session = {"TASKHUB_MQTT__CLIENT_ID": client_id, "TASKHUB_MQTT__SESSION_EXPIRY": "60"}
    bridge = Process("bridge", python_module("bridge"), log_dir, {**traced, **own_session})
    bridge.start()
    worker = None
    try:
        worker = start_worker(
            "traced", log_dir, {**traced, "TASKHUB_HTTP__HOSTS": json.dumps(hosts)}
        )
        bridge.wait_output(BRIDGE_READY, timeout=TIMEOUT, count=2)
        publish_checkins({TWEET_IDS[case]: PUBLISHERS[case]}, code="Otlp")
        wait_for(lambda: whole_trace(receiver.spans()) is not None, TIMEOUT, "the spans")
    finally:
        bridge.kill()
        if worker is not None:
            worker.kill()
    assert_one_trace(receiver.spans(), case, standin.ports, bridge_service="taskhub-bridge")
