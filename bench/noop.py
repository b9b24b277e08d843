"""The no-op task the latency benchmark routes to: it notes how long after publishing it started."""

from __future__ import annotations

import time
from typing import Any

from celery import Task

from bench.noop_route import latencies_key
from taskhub.celery import app
from taskhub.ledger import settle
from tasks.ledger import ledger_keys
from tasks.store import store_redis


# No result and no STARTED state: the worker should cost as little as it can, so that the
# latency measured is the bridges', not the worker's backlog.
@app.task(bind=True, name="bench.noop.ping", ignore_result=True, track_started=False)
def ping(self: Task, document: dict[str, Any], source: str = "") -> None:
    started = time.time()
    with store_redis().pipeline(transaction=False) as pipe:  # one round trip for both
        pipe.rpush(latencies_key(source), started - float(document["sent_at"]))
        settle(pipe, ledger_keys(), str(self.request.id))
        pipe.execute()
