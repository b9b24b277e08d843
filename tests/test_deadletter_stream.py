"""One dead-letter stream handle per process, with one timeout: a writer facing a Redis that never
answers gives up after REDIS_TIMEOUT_SECONDS and logs, instead of holding up the worker."""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator

import pytest
from kombu.message import Message

from taskhub import deadletters
from taskhub.deadletters import Reason, deadletter_stream
from taskhub.refusals import RecordingConsumer
from taskhub.settings import load_settings

SHORT_TIMEOUT = 0.3


@pytest.fixture
def silent_redis(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """This process's handle on the stream pointed at a port that takes connections and never
    answers (the kernel's backlog accepts them: nothing reads), with a short timeout."""
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        url = f"redis://127.0.0.1:{silent.getsockname()[1]}/0"
        monkeypatch.setattr(deadletters, "get_settings", lambda: load_settings(broker_url=url))
        monkeypatch.setattr(deadletters, "REDIS_TIMEOUT_SECONDS", SHORT_TIMEOUT)
        deadletters._stream_for.cache_clear()
        try:
            yield
        finally:
            deadletters._stream_for.cache_clear()


def test_the_process_has_one_store_whatever_asks_for_it() -> None:
    assert deadletter_stream() is deadletter_stream()


def test_a_refused_message_is_not_held_up_by_a_redis_that_never_answers(
    silent_redis: None, caplog: pytest.LogCaptureFixture
) -> None:
    message = Message(body=b"[[], {}, {}]", content_type="application/json", headers={})
    # The recording needs none of the consumer's state: no Celery consumer is started for it.
    consumer = object.__new__(RecordingConsumer)
    recording = threading.Thread(
        target=consumer._record, args=(message, Reason.UNKNOWN_TASK, None), daemon=True
    )
    recording.start()
    recording.join(timeout=10 * SHORT_TIMEOUT)

    assert not recording.is_alive(), "the consumer waited on Redis past the stream's timeout"
    assert "could not dead-letter it" in caplog.text
