"""A small chaos run in every test run: the full suite is `scripts/chaos` (20,000 messages)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.chaos import LOST_PER_BROKER_KILL, run_chaos

pytestmark = pytest.mark.e2e

QUICK_MESSAGES = 1500
QUICK_RATE = 300.0


def test_every_process_killed_mid_stream_loses_nothing_and_doubles_nothing(
    tmp_path: Path,
) -> None:
    report = run_chaos(tmp_path, QUICK_MESSAGES, QUICK_RATE)
    print(report.last_line())
    assert (report.lost, report.double_effects) == (0, 0), report.last_line()
    assert report.lost_by_broker <= report.broker_kills * LOST_PER_BROKER_KILL, report.last_line()
    assert len([event for event in report.events if event.what.startswith("SIGKILL")]) >= 7
    assert any(event.what.startswith("SIGKILL mosquitto") for event in report.events)
    assert report.worker_lost_letters == 1, "the poison task is dead-lettered once"
    assert any("left the group: True" in event.what for event in report.events)
    assert any(event.what == "redis at maxmemory" for event in report.events)
