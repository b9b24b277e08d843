"""Flower's `/api/workers` lists the running workers on its first call, and a worker that joins
later, without `?refresh=1` (it answered `{}` until then: mher/flower#1139)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from rig.processes import WORKER_READY, Process, celery, wait_for
from tests.support.flower import Flower

pytestmark = pytest.mark.e2e

TIMEOUT = 20
SLOW_INSPECTION_MS = 5000


def _start_worker(log_dir: Path, name: str) -> Process:
    """A small worker sending events, started after Flower, so Flower's inspection at its own
    start did not see it."""
    argv = celery("worker", "-P", "solo", "-E", "--loglevel=INFO", "--without-mingle")
    argv += ["--without-gossip", "-n", f"{name}@%h"]
    process = Process(name, argv, log_dir, {}).start()
    try:
        process.wait_output(WORKER_READY, timeout=60)
    except BaseException:
        process.kill()
        raise
    return process


@pytest.fixture
def workers(log_dir: Path) -> Iterator[list[Process]]:
    """Start workers with `_start_worker` and add them here; all are killed after the test."""
    started: list[Process] = []
    yield started
    for process in started:
        process.kill()


def _listed(flower: Flower, path: str = "/api/workers") -> dict[str, Any]:
    """Each worker `path` lists, by name prefix (the part before `@`), with what it says of it."""
    return {name.split("@")[0]: info for name, info in flower.get_json(path).items()}


@pytest.fixture
def slowly_inspecting_flower(log_dir: Path) -> Iterator[Flower]:
    """Flower whose inspections wait `SLOW_INSPECTION_MS` for replies, so the one it sends at its
    start is still under way when a worker started after it is ready."""
    from tests.support.flower import start_flower

    server = start_flower(log_dir, {"FLOWER_INSPECT_TIMEOUT": str(SLOW_INSPECTION_MS)})
    try:
        yield server
    finally:
        server.process.kill()


def test_the_first_call_lists_a_worker_started_after_flower(
    slowly_inspecting_flower: Flower, workers: list[Process], log_dir: Path
) -> None:
    flower = slowly_inspecting_flower
    name = f"first-{os.getpid()}"
    workers.append(_start_worker(log_dir, name))

    listed = _listed(flower)

    assert name in listed, listed
    assert "stats" in listed[name]


def test_a_worker_that_joins_later_is_listed_without_refresh(
    flower: Flower, workers: list[Process], log_dir: Path
) -> None:
    early, late = f"early-{os.getpid()}", f"late-{os.getpid()}"
    workers.append(_start_worker(log_dir, early))
    assert set(_listed(flower)) == {early}
    workers.append(_start_worker(log_dir, late))
    wait_for(
        lambda: _listed(flower, "/api/workers?status=true").get(late) is True,
        TIMEOUT,
        "Flower to receive the late worker's events",
    )

    listed = _listed(flower)

    assert set(listed) == {early, late}
    assert "stats" in listed[late]
