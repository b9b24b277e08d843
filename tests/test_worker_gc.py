"""A worker freezes what it loaded at start, so that full garbage collections skip Celery's heap
instead of pausing every task behind them (see taskhub.celery.freeze_startup_objects)."""

from __future__ import annotations

import gc

import pytest


@pytest.mark.usefixtures("broker_redis")
def test_a_starting_worker_freezes_its_startup_objects() -> None:
    from celery.contrib.testing.worker import start_worker

    from taskhub.celery import app

    gc.unfreeze()
    assert gc.get_freeze_count() == 0
    try:
        with start_worker(app, pool="solo", perform_ping_check=False):
            frozen = gc.get_freeze_count()
    finally:
        gc.unfreeze()
    assert frozen > 10_000, frozen  # Celery, kombu, redis-py, pydantic and the tasks


def test_freezing_leaves_a_full_collection_nothing_of_the_startup_heap_to_walk() -> None:
    from taskhub.celery import freeze_startup_objects

    gc.unfreeze()
    assert len(gc.get_objects()) > 10_000
    try:
        freeze_startup_objects()
        assert len(gc.get_objects()) < 1_000
    finally:
        gc.unfreeze()
