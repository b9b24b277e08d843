"""Record sensor readings: the latest reading per device, a second route on its own queue."""

from __future__ import annotations

from typing import Any

from celery import Task

from taskhub.celery import app
from taskhub.payloads import SensorReading
from tasks.idempotency import Writes, run_once
from tasks.store import save_effect

EFFECT_KIND = "reading"


@app.task(bind=True, name="tasks.sensors.record_reading")
def record_reading(
    self: Task, reading: dict[str, Any], device_id: str = "unknown"
) -> dict[str, Any]:
    """Keep `reading` as the device's latest, once per device and sequence number."""
    checked = SensorReading.model_validate(reading)
    document = {"device_id": device_id, **checked.model_dump(mode="json")}

    def compute() -> tuple[dict[str, Any], Writes]:
        return document, lambda pipe: save_effect(pipe, EFFECT_KIND, device_id, document)

    identity = f"{EFFECT_KIND}:{device_id}:{checked.seq}"
    return run_once(self.name, str(self.request.id), identity, compute)
