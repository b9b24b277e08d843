"""The two test tiers hold: `-m "not e2e"` needs no server, and a test that uses one is `e2e`
whether or not it says so (tests/conftest.py, rig/isolation.py)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from rig import isolation

ROOT = Path(__file__).resolve().parent.parent
MQTT_DEFAULT_PORT = 1883

NO_SHARED_SERVERS = f"""
import socket, sys, pytest
connect = socket.socket.connect
def refuse_the_shared_servers(self, address):
    if isinstance(address, tuple) and address[1] in ({isolation.REDIS_PORT}, {MQTT_DEFAULT_PORT}):
        raise AssertionError(f"the unit tier reached for a shared server at {{address}}")
    return connect(self, address)
socket.socket.connect = refuse_the_shared_servers
sys.exit(pytest.main(sys.argv[1:]))
"""
"""pytest, in a process where reaching the shared Redis or Mosquitto is an error."""


def _pytest(*args: str) -> subprocess.CompletedProcess[str]:
    # The parent's run settings would be taken as the developer's: start from a clean slate.
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TASKHUB_", "PYTEST_"))}
    return subprocess.run(
        [sys.executable, "-c", NO_SHARED_SERVERS, "-p", "no:cacheprovider", "-q", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.mark.e2e  # starts pytest processes
def test_the_unit_tier_runs_without_reaching_for_redis_or_mosquitto() -> None:
    done = _pytest("-m", "not e2e", "tests/test_topics.py")
    assert done.returncode == 0, done.stdout + done.stderr


@pytest.mark.e2e  # starts pytest processes
def test_a_test_using_a_server_fixture_is_e2e_without_saying_so() -> None:
    server_test = "tests/test_messages.py::test_bridge_message_equals_apply_async_message"
    unit = _pytest("-m", "not e2e", "--collect-only", "tests/test_messages.py")
    e2e = _pytest("-m", "e2e", "--collect-only", "tests/test_messages.py")
    assert server_test not in unit.stdout, unit.stdout
    assert server_test in e2e.stdout, e2e.stdout


@pytest.mark.parametrize(("chosen", "expected"), [("1884", "1884"), ("", None)])
def test_claiming_the_servers_gives_back_the_mqtt_port_the_developer_chose(
    monkeypatch: pytest.MonkeyPatch, chosen: str, expected: str | None
) -> None:
    monkeypatch.setattr(isolation, "claim_redis_db", lambda run_id: 7)
    monkeypatch.setenv(isolation.MQTT_PORT_CHOSEN, chosen)
    monkeypatch.setenv("TASKHUB_MQTT__PORT", isolation.UNREACHABLE_MQTT_PORT)
    monkeypatch.setenv("TASKHUB_BROKER_URL", isolation.UNREACHABLE_REDIS_URL)
    monkeypatch.setenv("TASKHUB_RESULT_BACKEND", isolation.UNREACHABLE_REDIS_URL)

    assert isolation.use_servers("run") == 7

    url = f"redis://{isolation.REDIS_HOST}:{isolation.REDIS_PORT}/7"
    assert os.environ["TASKHUB_BROKER_URL"] == os.environ["TASKHUB_RESULT_BACKEND"] == url
    assert os.environ.get("TASKHUB_MQTT__PORT") == expected
