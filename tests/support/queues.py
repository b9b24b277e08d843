"""Reading what waits in a route queue, as kombu stores it, for tests that stand in for workers."""

from __future__ import annotations

import base64
import json

import redis


def queued_tweet_ids(client: redis.Redis, queue: str = "checkins") -> list[str]:
    """The tweet id of every check-in task waiting in `queue`, oldest last (LPUSH order)."""
    messages = [json.loads(raw) for raw in client.lrange(queue, 0, -1)]
    calls = [json.loads(base64.b64decode(message["body"])) for message in messages]
    return [args[0]["id"] for args, _kwargs, _embed in calls]
