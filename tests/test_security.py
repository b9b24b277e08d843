"""Credentials and encryption on every hop: MQTT over TLS with a password, Redis with requirepass,
Flower behind basic auth; secrets never in a log. Each test runs its own servers."""

from __future__ import annotations

import json
import os
import re
import secrets
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import redis

from rig.isolation import free_port
from rig.processes import (
    BRIDGE_READY,
    WORKER_READY,
    Process,
    celery,
    python_module,
    wait_for,
)
from rig.servers import MosquittoServer, RedisServer
from taskhub.demo.feed import publish
from taskhub.intake import RawMessage
from taskhub.settings import MqttSettings, get_settings
from tests.support.credentials import mosquitto_password_file, server_certificate

# every test starts its own Mosquitto or Redis and taskhub processes against it
pytestmark = pytest.mark.e2e

MQTT_USER = "bridge"
MQTT_PASSWORD = secrets.token_urlsafe(12)
REDIS_PASSWORD = secrets.token_hex(12)
FLOWER_PASSWORD = secrets.token_urlsafe(12)
WRONG_PASSWORD = secrets.token_urlsafe(12)


@pytest.fixture
def secure_mosquitto(tmp_path: Path) -> Iterator[tuple[MosquittoServer, dict[str, str]]]:
    """Mosquitto accepting only TLS connections from a user with the right password; and the
    TASKHUB_MQTT__ variables that reach it."""
    certificate = server_certificate(tmp_path / "certs")
    passwords = mosquitto_password_file(tmp_path / "passwords", MQTT_USER, MQTT_PASSWORD)
    listener = "\n".join(
        [
            "allow_anonymous false",
            f"password_file {passwords}",
            f"cafile {certificate.ca_file}",
            f"certfile {certificate.cert_file}",
            f"keyfile {certificate.key_file}",
            f"log_dest file {tmp_path / 'broker.log'}",  # flushed per line, unlike stdout
        ]
    )
    server = MosquittoServer(tmp_path / "mosquitto", listener_config=listener)
    server.start()
    env = {
        "TASKHUB_MQTT__PORT": str(server.port),
        "TASKHUB_MQTT__USERNAME": MQTT_USER,
        "TASKHUB_MQTT__PASSWORD": MQTT_PASSWORD,
        "TASKHUB_MQTT__TLS_CA_FILE": str(certificate.ca_file),
        "TASKHUB_MQTT__CLIENT_ID": f"secure-{os.getpid()}",
    }
    yield server, env
    server.stop()


def _mqtt(env: dict[str, str]) -> MqttSettings:
    """MQTT settings for a publisher, read the way the bridge reads them."""
    values = {
        key.removeprefix("TASKHUB_MQTT__").lower(): value
        for key, value in env.items()
        if key.startswith("TASKHUB_MQTT__")
    }
    values["client_id"] = f"publisher-{os.getpid()}"
    return MqttSettings.model_validate(values)


def _readings(topic_prefix: str, device: str, count: int) -> list[RawMessage]:
    return [
        RawMessage(
            f"{topic_prefix}sensors/{device}/reading",
            json.dumps({"seq": n, "value": 1.0, "ts": "2026-11-22T10:00:00Z"}).encode(),
            {},
        )
        for n in range(count)
    ]


def _done(client: redis.Redis, device: str, count: int) -> int:
    from taskhub.payloads import SensorReading
    from tasks.idempotency import done_key
    from tasks.sensors import reading_identity

    readings = (SensorReading.model_validate_json(m.payload) for m in _readings("", device, count))
    return int(client.exists(*(done_key(reading_identity(device, r)) for r in readings)))


def test_the_bridge_works_over_tls_with_a_password_and_never_logs_it(
    secure_mosquitto: tuple[MosquittoServer, dict[str, str]],
    broker_redis: redis.Redis,
    worker: Process,
    log_dir: Path,
    topic_prefix: str,
) -> None:
    _, env = secure_mosquitto
    bridge = Process("secure-bridge", python_module("bridge"), log_dir, env).start()
    try:
        bridge.wait_output(BRIDGE_READY, timeout=30, count=2)
        sent = publish(_mqtt(env), _readings(topic_prefix, "tls-1", 50), rate=0, total=50,
                       show_progress=False)  # fmt: skip
        assert sent == 50
        wait_for(lambda: _done(broker_redis, "tls-1", 50) == 50, 30, "50 readings over TLS")
    finally:
        bridge.terminate()
    assert MQTT_PASSWORD not in bridge.output()
    assert MQTT_PASSWORD not in worker.output()


def test_wrong_mqtt_credentials_give_one_clear_error_and_a_backoff_not_a_crash_loop(
    secure_mosquitto: tuple[MosquittoServer, dict[str, str]], log_dir: Path
) -> None:
    server, env = secure_mosquitto
    wrong = {
        **env,
        "TASKHUB_MQTT__PASSWORD": WRONG_PASSWORD,
        "TASKHUB_MQTT__RECONNECT_MIN_DELAY": "0.5",
        "TASKHUB_MQTT__RECONNECT_MAX_DELAY": "2",
    }
    bridge = Process("refused-bridge", python_module("bridge"), log_dir, wrong).start()
    broker_log = server.workdir.parent / "broker.log"

    def refusals() -> int:
        text = broker_log.read_text(errors="replace") if broker_log.exists() else ""
        return len(re.findall(r"disconnected, not authori[sz]ed", text))

    try:
        wait_for(lambda: refusals() >= 1, 30, "the first refused connection")
        first = time.monotonic()
        wait_for(lambda: refusals() >= 5, 30, "four more attempts")
        spread = time.monotonic() - first
        assert bridge.popen is not None
        assert bridge.popen.poll() is None, "the bridge gave up instead of retrying"
    finally:
        bridge.terminate()
    # Waits of 0.5, 1, 2, 2 s between attempts: a crash loop would make five in a blink.
    assert spread >= 3.0
    errors = [line for line in bridge.output().splitlines() if "mqtt connection to" in line]
    assert len(errors) == 1, errors  # the same failure is reported once, not per attempt
    assert "Not authorized" in errors[0] or "Bad user name or password" in errors[0]
    assert WRONG_PASSWORD not in bridge.output()


def test_bridge_and_worker_use_redis_with_a_password_and_never_log_it(
    tmp_path: Path, log_dir: Path, topic_prefix: str
) -> None:
    server = RedisServer(tmp_path / "redis", password=REDIS_PASSWORD)
    server.start()
    env = {
        "TASKHUB_BROKER_URL": server.url,
        "TASKHUB_RESULT_BACKEND": server.url,
        "TASKHUB_MQTT__CLIENT_ID": f"redis-auth-{os.getpid()}",
    }
    worker = Process("auth-worker", celery("worker", "-P", "solo", "--loglevel=INFO",
                     "--without-mingle", "--without-gossip", "-n", f"auth-{os.getpid()}@%h"),
                     log_dir, env)  # fmt: skip
    bridge = Process("auth-bridge", python_module("bridge"), log_dir, env)
    client = redis.Redis.from_url(server.url)
    try:
        with pytest.raises(redis.AuthenticationError):
            redis.Redis(port=server.port).ping()  # no password, no entry
        worker.start().wait_output(WORKER_READY, timeout=60)
        bridge.start().wait_output(BRIDGE_READY, timeout=30, count=2)
        publish(get_settings().mqtt, _readings(topic_prefix, "auth-1", 20), rate=0, total=20,
                show_progress=False)  # fmt: skip
        wait_for(lambda: _done(client, "auth-1", 20) == 20, 30, "20 readings via Redis with auth")
    finally:
        bridge.terminate()
        worker.kill()
        client.close()
        server.stop()
    for process in (bridge, worker):
        assert REDIS_PASSWORD not in process.output()
    assert "redis://:***@" in bridge.output()


def _get(url: str, user: str | None = None, password: str = "") -> int:
    """The HTTP status of GET `url`, 0 if nothing answers."""
    auth = (user, password) if user is not None else None
    try:
        return httpx.get(url, auth=auth, timeout=5).status_code
    except httpx.TransportError:
        return 0


def test_flower_answers_only_with_the_credentials_from_settings(log_dir: Path) -> None:
    port = free_port()
    env = {"TASKHUB_FLOWER__PORT": str(port), "TASKHUB_FLOWER__PASSWORD": FLOWER_PASSWORD}
    flower = Process("flower", celery("flower", "--conf=flowerconfig.py"), log_dir, env).start()
    url = f"http://127.0.0.1:{port}/"
    try:
        wait_for(lambda: _get(url) != 0, 60, "Flower to answer")
        assert _get(url) == 401
        assert _get(url, "taskhub", "wrong") == 401
        assert _get(url, "taskhub", FLOWER_PASSWORD) == 200
    finally:
        flower.terminate()
    assert FLOWER_PASSWORD not in flower.output()


def test_flower_refuses_to_start_without_a_password(log_dir: Path) -> None:
    flower = Process("open-flower", celery("flower", "--conf=flowerconfig.py"), log_dir, {})
    flower.env.pop("TASKHUB_FLOWER__PASSWORD", None)
    flower.start()
    assert flower.popen is not None
    assert flower.popen.wait(timeout=60) == 1
    assert "TASKHUB_FLOWER__PASSWORD: must be set" in flower.output()
