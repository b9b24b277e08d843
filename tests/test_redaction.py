"""No secret is ever echoed: the one masking rule (taskhub/redaction.py), and the log lines of real
bridge and worker processes that would otherwise quote a password."""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from bridge.outbound import Outbound
from bridge.publisher import RedisPublisher
from rig.isolation import free_port
from rig.processes import WORKER_READY, Process, celery, python_module, wait_for
from taskhub import redaction
from taskhub.deadletters import DeadLetter, DeadLetterStream, Reason
from taskhub.ledger import LedgerKeys
from taskhub.redaction import RedactingFilter, redact, redact_document, redact_logs
from taskhub.settings import get_settings, load_settings
from taskhub.task_messages import MessageBuilder, TaskCall, deterministic_task_id
from tests.support.url_error_routes import URL_ERRORS_QUEUE

SECRET = "s3cretPW"  # noqa: S105  (made up, for the tests to look for)


@pytest.mark.parametrize(
    ("text", "masked"),
    [
        ("http://:s3cretPW@redis.internal:6379/0", "http://:***@redis.internal:6379/0"),
        ("redis+sentinel://:s3cretPW@h:26379/0", "redis+sentinel://:***@h:26379/0"),
        ("amqp://bob:s3cretPW@rabbit/vhost", "amqp://bob:***@rabbit/vhost"),
        ("(got 'rediss://u:s3c@retPW@h:6380/1')", "(got 'rediss://u:***@h:6380/1')"),
        ("redis://h:6379/0?password=s3cretPW&db=1", "redis://h:6379/0?password=***&db=1"),
        ("https://api/v?api_key=s3cretPW#x", "https://api/v?api_key=***#x"),
        ("https://api/v?X-Amz-Signature=s3cretPW", "https://api/v?X-Amz-Signature=***"),
        ("https://s3cretPW@github.com/o/r", "https://***@github.com/o/r"),
        ("dsn: host=db pwd=s3cretPW user=bob", "dsn: host=db pwd=*** user=bob"),
        ("{'token': 's3cret', 'Authorization' : 'x'}", "{'token': '***', 'Authorization' : '***'}"),
        ('{"secret": "s3\\"cret", "user": "bob"}', '{"secret": "***", "user": "bob"}'),
        ("to Transport://:**@h:6379/0", "to Transport://:***@h:6379/0"),  # kombu's own mask
    ],
)  # fmt: skip
def test_a_secret_is_masked_for_what_it_is_wherever_it_stands(text: str, masked: str) -> None:
    assert redact(text) == masked
    assert redact(masked) == masked


@pytest.mark.parametrize(
    "text",
    [
        "Task tasks.sensors.record_reading[0f3c] received",
        "redis://127.0.0.1:6379/0 (ask ops@example.com)",
        "author=bob key_prefix=taskhub design=flat received=10",
        "TASKHUB_MQTT__PASSWORD: is not a taskhub setting",
        "password is set but username is not",
    ],
)
def test_text_without_a_secret_is_left_as_it_is(text: str) -> None:
    assert redact(text) == text


def test_secrets_the_process_was_configured_with_are_masked_anywhere(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(redaction, "_remembered", ())
    monkeypatch.setenv("TASKHUB_MQTT__USERNAME", "bridge")
    monkeypatch.setenv("TASKHUB_MQTT__PASSWORD", "hunter2-mqtt")
    monkeypatch.setenv("TASKHUB_HTTP__VENUE_API_KEY", "venue-key-42")
    monkeypatch.setenv("TASKHUB_STORE_URL", "redis://:p%40ss-word@127.0.0.1:6379/3")
    redaction.remember(load_settings().secret_values())
    line = "AUTH hunter2-mqtt refused; key venue-key-42; password p@ss-word; host 127.0.0.1:6379"
    assert redact(line) == "AUTH *** refused; key ***; password ***; host 127.0.0.1:6379"


def test_a_document_masks_values_under_secret_names_and_in_strings() -> None:
    properties = {
        "UserProperty": [["Authorization", "Bearer s3cretPW"], ["sent_at", "1700000000"]],
        "ResponseTopic": "replies/redis://:s3cretPW@h",
        "password": None,
    }
    assert redact_document(properties) == {
        "UserProperty": [["Authorization", "***"], ["sent_at", "1700000000"]],
        "ResponseTopic": "replies/redis://:***@h",
        "password": None,  # unset stays visibly unset
    }


def test_a_dead_letter_keeps_no_secret_in_detail_traceback_or_properties() -> None:
    from taskhub.deadletters import FailedTask

    url = f"redis://:{SECRET}@db:6379/0?token={SECRET}"
    letter = DeadLetter(
        Reason.TASK_FAILED,
        f"cannot reach {url}",
        properties={"UserProperty": [["api_key", SECRET]]},
        task=FailedTask("t", "id", "q", [], {}, traceback=f"RuntimeError: {url}"),
    )
    fields = letter.to_fields()
    assert SECRET not in str(fields)
    assert fields["detail"] == "cannot reach redis://:***@db:6379/0?token=***"


def _record(message: str, *args: object, exc_info: bool = False) -> logging.LogRecord:
    error = None
    if exc_info:
        try:
            raise ConnectionError(f"Error connecting to redis://:{SECRET}@10.0.0.1:6379/0")
        except ConnectionError:
            error = sys.exc_info()
    return logging.LogRecord("kombu", logging.ERROR, __file__, 1, message, args, error)


def test_the_log_filter_masks_the_final_message_and_the_traceback() -> None:
    record = _record("consumer: Cannot connect to %s: %s", f"redis://:{SECRET}@h/0", "refused")
    failed = _record("task failed", exc_info=True)
    formatter = logging.Formatter("%(message)s")
    assert RedactingFilter().filter(record)
    assert RedactingFilter().filter(failed)
    assert formatter.format(record) == "consumer: Cannot connect to redis://:***@h/0: refused"
    text = formatter.format(failed)
    assert SECRET not in text
    assert "ConnectionError: Error connecting to redis://:***@10.0.0.1:6379/0" in text


def test_the_log_filter_leaves_a_clean_record_untouched() -> None:
    record = _record("Task %s[%s] received", "tasks.x", "id-1")
    assert RedactingFilter().filter(record)
    assert (record.msg, record.args) == ("Task %s[%s] received", ("tasks.x", "id-1"))


def test_redact_logs_covers_records_of_every_logger_once() -> None:
    root = logging.getLogger()
    handler = logging.StreamHandler()
    root.addHandler(handler)
    try:
        redact_logs()
        redact_logs()
        assert sum(isinstance(f, RedactingFilter) for f in handler.filters) == 1
    finally:
        root.removeHandler(handler)


# Real processes: what they print is what an operator's log collector keeps.


@pytest.mark.parametrize(
    "password_in",
    [
        pytest.param("redis://:{secret}@ss@127.0.0.1:{port}/0", id="password-with-raw-at"),
        pytest.param("redis://127.0.0.1:{port}/0?password={secret}", id="password-in-query"),
    ],
)
@pytest.mark.e2e  # starts a bridge
def test_the_bridge_never_logs_its_broker_password(
    password_in: str, log_dir: Path, tmp_path: Path
) -> None:
    closed = free_port()  # nothing listens: the bridge logs its start, then connection errors
    url = password_in.format(secret=SECRET, port=closed)
    env = {
        "TASKHUB_BROKER_URL": url,
        "TASKHUB_MQTT__PORT": str(free_port()),
        "TASKHUB_MQTT__CLIENT_ID": f"redaction-{os.getpid()}",
        "TASKHUB_TELEMETRY__BRIDGE_PORT": "0",
        "TASKHUB_BRIDGE__SPOOL_DIR": str(tmp_path / "spool"),
    }
    bridge = Process("bridge", python_module("bridge"), log_dir, env).start()
    try:
        bridge.wait_output("mqtt connection to", timeout=30)  # past the start and Redis errors
    finally:
        bridge.terminate()
    output = bridge.output()
    assert "bridge starting:" in output
    assert SECRET not in output
    assert f"127.0.0.1:{closed}/0" in output  # the URL is still there to read, masked


@pytest.fixture
def url_error_worker(log_dir: Path, broker_redis: redis.Redis) -> Iterator[Process]:
    """A prefork worker (its task runs in a forked child) taking the url_errors queue."""
    argv = celery(
        "worker",
        *("-P", "prefork", "-c", "1", "-Q", URL_ERRORS_QUEUE, "--loglevel=INFO"),
        *("--without-mingle", "--without-gossip", "-n", f"redaction-{os.getpid()}@%h"),
    )
    env = {"TASKHUB_ROUTES": "tests.support.url_error_routes:ROUTES"}
    process = Process("url-error-worker", argv, log_dir, env).start()
    try:
        process.wait_output(WORKER_READY, timeout=60)
        yield process
    finally:
        process.kill()


def test_a_worker_never_logs_a_password_its_task_failure_quotes(
    url_error_worker: Process, broker_redis: redis.Redis
) -> None:
    from tests.support.url_error_tasks import FAILING_URL, QUERY_TOKEN, URL_PASSWORD

    settings = get_settings()
    ledger = LedgerKeys.for_prefix(settings.key_prefix)
    task = "tests.support.url_error_tasks.fail_quoting_a_url"
    call = TaskCall(task, deterministic_task_id(task, "once"), URL_ERRORS_QUEUE, ({},), {})
    publisher = RedisPublisher(settings.broker_url.get_secret_value(), [URL_ERRORS_QUEUE], ledger)
    publisher.land([Outbound.task(call, MessageBuilder())])

    stream = DeadLetterStream(broker_redis, settings.key_prefix)
    wait_for(lambda: len(stream) == 1, 30, "the failed task's dead letter")
    url_error_worker.wait_output("dead-lettered as task_failed", timeout=10)
    # Celery's failure line, with traceback: written after the task_failure signal's letter line.
    url_error_worker.wait_output("raised unexpected: RuntimeError", timeout=10)
    output = url_error_worker.output()
    assert URL_PASSWORD not in output
    assert QUERY_TOKEN not in output
    masked = "cannot reach redis://:***@10.0.0.1:6379/0?token=***"
    assert redact(f"cannot reach {FAILING_URL}") == masked
    assert masked in output
    (letter,) = stream.scan()
    assert letter.detail == f"RuntimeError: {masked}"
    assert URL_PASSWORD not in str(letter.to_fields())
