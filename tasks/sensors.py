"""Record sensor readings: each one once, and a device's latest reading only ever moving forward.

A reading is named by its device, boot and seq; the latest is compared and replaced in the same
transaction as the reading's done-marker, so a late reading is recorded but never becomes latest.
"""

from __future__ import annotations

import hashlib
import json
from datetime import UTC, datetime
from typing import Any

from celery import Task
from pydantic import ValidationError
from redis.client import Pipeline

from taskhub import redis_keys
from taskhub.celery import app
from taskhub.payloads import SensorReading
from taskhub.settings import get_settings
from tasks.idempotency import Writes, run_once_planned
from tasks.store import effect_key, save_effect

EFFECT_KIND = "reading"


def latest_key(device_id: str) -> str:
    """Where a device's latest reading is kept, as a JSON document with its device id."""
    return effect_key(EFFECT_KIND, device_id)


def late_readings_key() -> str:
    """Counts readings recorded after a newer one of their device: late, never made latest."""
    return redis_keys.late_readings(get_settings().key_prefix)


def reading_identity(device_id: str, reading: SensorReading) -> str:
    """What names a reading for its done-marker.

    With a boot, (device, boot, seq): seq is unique within a boot. Without one, seq restarts
    unseen when the device does, so the whole reading is its name; only an identical copy is
    then a duplicate, and a counter reset never is.
    """
    if reading.boot is not None:
        return f"{EFFECT_KIND}:{device_id}:{reading.boot}:{reading.seq}"
    content = json.dumps(reading.model_dump(mode="json"), sort_keys=True, separators=(",", ":"))
    return f"{EFFECT_KIND}:{device_id}:sha256:{hashlib.sha256(content.encode()).hexdigest()}"


def is_newer(new: SensorReading, current: SensorReading) -> bool:
    """Whether `new` replaces `current` as its device's latest reading.

    When both carry a boot, (boot, seq) decides, whatever the device's clock says. Otherwise
    (ts, seq) does: the clock is all that tells a restarted counter from a late reading.
    """
    if new.boot is not None and current.boot is not None:
        return (new.boot, new.seq) > (current.boot, current.seq)
    return (_instant(new.ts), new.seq) > (_instant(current.ts), current.seq)


def _instant(ts: datetime) -> datetime:
    # A time without a zone is taken as UTC, so that any two readings compare.
    return ts if ts.tzinfo is not None else ts.replace(tzinfo=UTC)


def _stored_reading(raw: bytes | str | None) -> SensorReading | None:
    if raw is None:
        return None
    try:
        return SensorReading.model_validate_json(raw)
    except ValidationError:
        # Not a reading (written by hand, or by something else): replace it rather than fail
        # every reading of the device from now on.
        return None


@app.task(bind=True, name="tasks.sensors.record_reading", payload_model=SensorReading)
def record_reading(
    self: Task, reading: dict[str, Any], device_id: str = "unknown"
) -> dict[str, Any]:
    """Record `reading` once; it becomes the device's latest only if it is newer than that."""
    checked = SensorReading.model_validate(reading)
    document = {"device_id": device_id, **checked.model_dump(mode="json")}
    latest = latest_key(device_id)

    def plan(pipe: Pipeline) -> tuple[dict[str, Any], Writes]:
        current = _stored_reading(pipe.get(latest))
        if current is None or is_newer(checked, current):
            return document, lambda tx: save_effect(tx, EFFECT_KIND, device_id, document)
        return document, lambda tx: tx.incr(late_readings_key())

    identity = reading_identity(device_id, checked)
    return run_once_planned(self.name, str(self.request.id), identity, plan, (latest,))
