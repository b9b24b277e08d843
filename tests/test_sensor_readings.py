"""A reading is one device's (boot, seq): a counter reset is new data, a late reading is history.

Issue 11, item 12: readings after a reset were absorbed as duplicates, and a late seq=4 replaced
seq=5 as the latest. Each test runs the task against this run's real Redis.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
import redis

TIMEOUT = 30
T0 = "2026-11-22T10:00:00Z"
T1 = "2026-11-22T10:01:00Z"
T2 = "2026-11-22T10:02:00Z"
T3 = "2026-11-22T10:03:00Z"


def reading(seq: int, value: float, ts: str, boot: int | None = None) -> dict[str, Any]:
    sent: dict[str, Any] = {"seq": seq, "value": value, "ts": ts}
    return sent if boot is None else sent | {"boot": boot}


def record(device: str, *readings: dict[str, Any]) -> list[dict[str, Any]]:
    from tasks.sensors import record_reading

    return [record_reading.run(sent, device_id=device) for sent in readings]


def latest(client: redis.Redis, device: str) -> dict[str, Any]:
    from tasks.sensors import latest_key

    raw = client.get(latest_key(device))
    assert raw is not None, f"no latest reading stored for {device}"
    return dict(json.loads(raw))


def duplicates(client: redis.Redis) -> int:
    from tasks.idempotency import duplicates_key

    return int(client.hget(duplicates_key(), "tasks.sensors.record_reading") or 0)


def late(client: redis.Redis) -> int:
    from tasks.sensors import late_readings_key

    return int(client.get(late_readings_key()) or 0)


def test_readings_after_a_counter_reset_without_boot_are_new_not_duplicates(
    broker_redis: redis.Redis,
) -> None:
    """The incident: seq=1 (99) and seq=2 (98) after a reset were taken for the old seq 1 and 2."""
    record("d-reset", reading(1, 10.0, T0), reading(2, 11.0, T1))
    record("d-reset", reading(1, 99.0, T2), reading(2, 98.0, T3))  # the device restarted
    assert duplicates(broker_redis) == 0
    assert latest(broker_redis, "d-reset")["value"] == 98.0


def test_a_new_boot_moves_latest_forward_even_when_the_clock_went_back(
    broker_redis: redis.Redis,
) -> None:
    """With `boot`, order is (boot, seq): a device whose clock restarts at 1970 still moves on."""
    record("d-boot", reading(1, 10.0, T2, boot=3), reading(2, 11.0, T3, boot=3))
    record("d-boot", reading(1, 99.0, "1970-01-01T00:00:05Z", boot=4))
    assert duplicates(broker_redis) == 0
    assert latest(broker_redis, "d-boot") | {"ts": None} == {
        "device_id": "d-boot", "boot": 4, "seq": 1, "value": 99.0, "ts": None,
    }  # fmt: skip


@pytest.mark.parametrize("boot", [None, 2], ids=["without-boot", "with-boot"])
def test_a_late_older_reading_is_done_but_never_overwrites_latest(
    broker_redis: redis.Redis, boot: int | None
) -> None:
    from taskhub.payloads import SensorReading
    from tasks.idempotency import duplicate, is_done
    from tasks.sensors import reading_identity

    newer, older = reading(5, 50.0, T1, boot), reading(4, 40.0, T0, boot)
    (_, result) = record("d-late", newer, older)
    assert latest(broker_redis, "d-late")["seq"] == 5
    assert result["seq"] == 4, "the late reading returns as done, not as an error"
    identity = reading_identity("d-late", SensorReading.model_validate(older))
    assert is_done(identity), "its done-marker absorbs its redeliveries"
    assert late(broker_redis) == 1
    assert record("d-late", older) == [duplicate(identity)]
    assert duplicates(broker_redis) == 1


@pytest.mark.parametrize("boot", [None, 2], ids=["without-boot", "with-boot"])
def test_a_redelivered_reading_is_recorded_once(
    broker_redis: redis.Redis, boot: int | None
) -> None:
    first = record("d-dup", reading(5, 1.5, T0, boot))
    again = record("d-dup", reading(5, 1.5, T0, boot))
    assert first[0]["value"] == 1.5
    assert again[0]["duplicate"] is True
    assert duplicates(broker_redis) == 1
    assert late(broker_redis) == 0


def test_with_boot_a_resent_seq_is_the_same_reading(broker_redis: redis.Redis) -> None:
    """(boot, seq) names a reading: a second value under it is a duplicate, the first one stays."""
    record("d-resend", reading(5, 1.5, T0, boot=1))
    again = record("d-resend", reading(5, 99.0, T1, boot=1))
    assert again[0]["duplicate"] is True
    assert latest(broker_redis, "d-resend")["value"] == 1.5
    assert duplicates(broker_redis) == 1


def test_a_newer_reading_committed_while_an_older_one_decides_wins(
    broker_redis: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Compare and write are one transaction: a newer reading that commits between an older
    one's read of latest and its commit is not overwritten."""
    import tasks.sensors

    compare = tasks.sensors.is_newer
    raced: list[bool] = []

    def newer_one_commits_first(new: Any, current: Any) -> bool:
        if not raced:
            raced.append(True)
            record("d-race", reading(9, 90.0, T2, boot=1))
        return compare(new, current)

    record("d-race", reading(1, 10.0, T0, boot=1))
    monkeypatch.setattr(tasks.sensors, "is_newer", newer_one_commits_first)
    record("d-race", reading(5, 50.0, T1, boot=1))
    assert raced == [True]
    assert latest(broker_redis, "d-race")["seq"] == 9
    assert late(broker_redis) == 1


@pytest.mark.usefixtures("embedded_worker")
def test_a_late_reading_through_a_worker_succeeds(broker_redis: redis.Redis) -> None:
    """Late is not an error: the task succeeds, so Celery neither retries nor dead-letters it."""
    from tasks.sensors import record_reading

    record_reading.delay(reading(5, 50.0, T1), device_id="d-worker").get(timeout=TIMEOUT)
    older = record_reading.delay(reading(4, 40.0, T0), device_id="d-worker")
    assert older.get(timeout=TIMEOUT)["seq"] == 4
    assert older.state == "SUCCESS"
    assert late(broker_redis) == 1
    assert latest(broker_redis, "d-worker")["seq"] == 5
