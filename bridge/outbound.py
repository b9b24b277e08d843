"""What the bridge writes to Redis, already serialized: a task message for a queue, a dead letter
for a stream, or the reply a refused request gets, for the reply outbox. The same bytes go to
Redis, to the spool, and from the spool to Redis as it drains.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from enum import StrEnum

from taskhub.deadletters import DeadLetter
from taskhub.replies import Reply
from taskhub.task_messages import MessageBuilder, TaskCall


class OutboundKind(StrEnum):
    """What an outbound item is: a task for a queue or a dead letter for the stream. The values
    are stored in spool rows, so a spool written before an upgrade still reads: never change one."""

    TASK = "task"
    DEAD_LETTER = "dead_letter"
    REPLY = "reply"
    """A bridge older than this value cannot drain a spool that holds one: downgrade with an
    empty spool."""


@dataclass(frozen=True, slots=True)
class Outbound:
    kind: OutboundKind
    key: str
    """The queue (tasks) or stream (dead letters, replies) it goes to."""
    body: str
    """The task message as kombu stores it, or the stream entry's fields as a JSON object."""
    task_id: str = ""
    """The task's id (tasks only), under which the ledger tracks it."""

    @classmethod
    def task(cls, call: TaskCall, builder: MessageBuilder) -> Outbound:
        return cls(OutboundKind.TASK, call.queue, builder.build(call), call.task_id)

    @classmethod
    def dead_letter(cls, letter: DeadLetter, stream: str) -> Outbound:
        return cls(OutboundKind.DEAD_LETTER, stream, json.dumps(letter.to_fields()))

    @classmethod
    def reply(cls, reply: Reply, outbox: str) -> Outbound:
        return cls(OutboundKind.REPLY, outbox, json.dumps(reply.entry()))

    def stream_fields(self) -> dict[str, str]:
        return dict(json.loads(self.body))
