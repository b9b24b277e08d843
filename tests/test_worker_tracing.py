"""Workers continue a check-in's trace: a task span whose parent is the span that sent the task,
and under it a span for each HTTP call, rate-limit wait and cache lookup (docs/tracing.md).
In this process with an in-memory exporter, and in real workers exporting over OTLP/HTTP.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from rig.otlp import OtlpReceiver, SpanView
from rig.processes import start_worker, wait_for
from taskhub.demo.standin import StandinServer
from tests.conftest import checkin_tweet, outbox_replies
from tests.support.tracing import (
    PRODUCER_SPAN,
    RATE_LIMIT,
    CheckinTrace,
    assert_task_subtree,
    complete,
    find_checkin_trace,
    from_sdk,
    in_memory_tracing,
    limit_every_host,
)

TIMEOUT = 30
TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT_ID = "00f067aa0ba902b7"
"""The trace context a test sends a task with, as the bridge would (W3C traceparent)."""


def test_tracing_off_imports_and_instruments_nothing() -> None:
    """Off (the default), a worker process loads no tracer, exporter or instrumentation (redis-py
    loads opentelemetry's metrics SDK on its own)."""
    probe = (
        "import sys, urllib3\n"
        "import taskhub.celery, tasks.checkins\n"
        "from taskhub import tracing, worker_tracing\n"
        "from taskhub.settings import get_settings\n"
        "assert not worker_tracing.begin(get_settings())\n"
        "assert not tracing.enabled()\n"
        "assert not hasattr(urllib3.connectionpool.HTTPConnectionPool.urlopen, '__wrapped__')\n"
        "print(sorted(m for m in sys.modules if m.startswith(("
        "'opentelemetry.sdk.trace', 'opentelemetry.instrumentation', 'opentelemetry.exporter'))))\n"
    )
    env = {**os.environ}
    env.pop("OTEL_EXPORTER_OTLP_ENDPOINT", None)
    env.pop("TASKHUB_TRACING__ENABLED", None)
    done = subprocess.run(
        [sys.executable, "-c", probe], env=env, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


@pytest.fixture
def rate_limited(monkeypatch: pytest.MonkeyPatch) -> None:
    limit_every_host(monkeypatch)


@pytest.mark.usefixtures("embedded_worker", "rate_limited")
def test_an_in_process_worker_continues_the_producers_trace(standin: StandinServer) -> None:
    from tasks.checkins import resolve_checkin

    with in_memory_tracing() as exporter:
        sent = resolve_checkin.apply_async((checkin_tweet("5001", "Trace01"),))

        def trace() -> CheckinTrace | None:
            return complete(find_checkin_trace(from_sdk(exporter.get_finished_spans()), sent.id))

        wait_for(lambda: trace() is not None, TIMEOUT, "the task's spans")
        found = trace()
    assert found is not None
    producers = [s for s in found.trace if s.name == PRODUCER_SPAN]
    assert len(producers) == 1
    assert producers[0].parent_id is None
    assert found.task.parent_id == producers[0].span_id
    assert_task_subtree(found, "5001", standin.ports)


@pytest.mark.usefixtures("embedded_worker")
def test_a_reply_carries_the_task_spans_context_back(broker_redis: redis.Redis) -> None:
    """A requester can continue the trace from its reply: the reply names the task's span."""
    from taskhub.replies import REPLY_HEADER, ReplyAddress
    from tasks.checkins import resolve_checkin
    from tests.support.tracing import Traceparent

    address = ReplyAddress("replies/traced", b"c1")
    with in_memory_tracing() as exporter:
        sent = resolve_checkin.apply_async(
            (checkin_tweet("5003", "Reply01"),), headers={REPLY_HEADER: address.header()}
        )

        def task_span() -> SpanView | None:
            found = find_checkin_trace(from_sdk(exporter.get_finished_spans()), sent.id)
            return None if found is None else found.task

        wait_for(lambda: task_span() is not None, TIMEOUT, "the task's span")
        span = task_span()
    assert span is not None
    (reply,) = outbox_replies(broker_redis)
    sent_back = Traceparent.parse(dict(reply.user_properties)["traceparent"])
    assert f"{sent_back.trace_id:032x}" == span.trace_id
    assert f"{sent_back.parent_id:016x}" == span.span_id


@pytest.fixture
def receiver() -> Iterator[OtlpReceiver]:
    server = OtlpReceiver().start()
    yield server
    server.stop()


POOLS = {"gevent": (), "prefork": ("-P", "prefork", "-c", "1")}
EXPORT_DELAY_MS = {"batched": "100", "at-exit": "600000"}
"""OTEL_BSP_SCHEDULE_DELAY: a batch every 100 ms, or none before the worker stops (10 min)."""


@pytest.mark.e2e
@pytest.mark.parametrize("export", sorted(EXPORT_DELAY_MS))
@pytest.mark.parametrize("pool", sorted(POOLS))
def test_a_worker_exports_the_tasks_spans_over_otlp(
    pool: str,
    export: str,
    receiver: OtlpReceiver,
    standin: StandinServer,
    broker_redis: redis.Redis,
    log_dir: Path,
) -> None:
    """A real worker sends the task span, a child of the message's traceparent, and its HTTP
    spans to OTEL_EXPORTER_OTLP_ENDPOINT (a prefork worker from its pool child), and what is
    still buffered when it stops (SIGTERM, a cold shutdown with REMAP_SIGTERM=SIGQUIT)."""
    from tasks.checkins import resolve_checkin

    short, venue = standin.ports
    hosts = {f"127.0.0.1:{port}": {"rate_limit": RATE_LIMIT} for port in (short, venue)}
    env = {
        "OTEL_EXPORTER_OTLP_ENDPOINT": receiver.endpoint,
        "OTEL_BSP_SCHEDULE_DELAY": EXPORT_DELAY_MS[export],
        "TASKHUB_HTTP__HOSTS": json.dumps(hosts),
    }
    worker = start_worker(f"traced-{pool}-{export}", log_dir, env, *POOLS[pool])
    try:
        sent = resolve_checkin.apply_async(
            (checkin_tweet("5002", f"Otlp{pool[:4]}{export[:2]}"),),
            headers={"traceparent": f"00-{TRACE_ID}-{PARENT_ID}-01"},
        )
        sent.get(timeout=TIMEOUT)
        if export == "at-exit":
            assert worker.terminate() == 0

        def trace() -> CheckinTrace | None:
            return complete(find_checkin_trace(receiver.spans(), sent.id))

        what = f"the task's spans (have {_names(receiver)})"
        wait_for(lambda: trace() is not None, TIMEOUT, what)
    finally:
        worker.kill()
    found = trace()
    assert found is not None
    assert (found.task.trace_id, found.task.parent_id) == (TRACE_ID, PARENT_ID)
    assert_task_subtree(found, "5002", (short, venue))


def _names(receiver: OtlpReceiver) -> list[str]:
    return [s.name for s in receiver.spans()]
