"""Publishing a batch of verdicts to Redis in one transaction: tasks to their queues, dead letters
to their stream. The whole batch lands or none of it does, so the caller acks all or nothing.
"""

from __future__ import annotations

from collections.abc import Sequence

import redis

from bridge.deadletter import DEFAULT_STREAM_MAXLEN, DeadLetter, stream_key
from bridge.messages import MessageBuilder, TaskCall

SOCKET_TIMEOUT = 5.0
CONNECT_TIMEOUT = 3.0


class PublishFailed(Exception):
    """Redis did not take the batch; nothing of it is known to have landed."""


class RedisPublisher:
    """Writes batches of task calls and dead letters into the broker's Redis."""

    def __init__(
        self,
        broker_url: str,
        key_prefix: str,
        *,
        builder: MessageBuilder | None = None,
        deadletter_maxlen: int = DEFAULT_STREAM_MAXLEN,
    ) -> None:
        self.redis = redis.Redis.from_url(
            broker_url,
            socket_timeout=SOCKET_TIMEOUT,
            socket_connect_timeout=CONNECT_TIMEOUT,
            health_check_interval=30,
        )
        self.builder = builder or MessageBuilder()
        self.deadletter_stream = stream_key(key_prefix)
        self.deadletter_maxlen = deadletter_maxlen

    def publish(self, batch: Sequence[TaskCall | DeadLetter]) -> None:
        """Land every item of `batch` in Redis, or raise PublishFailed having landed none."""
        pipe = self.redis.pipeline(transaction=True)
        for item in batch:
            if isinstance(item, TaskCall):
                pipe.lpush(item.queue, self.builder.build(item))
            else:
                pipe.xadd(
                    self.deadletter_stream,
                    item.as_stream_fields(),  # type: ignore[arg-type]
                    maxlen=self.deadletter_maxlen,
                    approximate=True,
                )
        try:
            pipe.execute()
        except redis.RedisError as error:
            raise PublishFailed(f"{type(error).__name__}: {error}") from error

    def close(self) -> None:
        self.redis.close()
