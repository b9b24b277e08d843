"""Replaying dead letters (`taskhub deadletter replay`): each is judged again by today's routes and
models, as the bridge judges a message, and what passes is enqueued, with its ledger entry, in the
same transaction that removes the letter.

Replay is idempotent with the rest of the system: a message letter yields the task id the bridge
would have given it, and a task letter keeps its task id, so a copy that ran already (or a second
replay racing this one) is absorbed by the tasks' done-markers.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from pydantic import ValidationError

from taskhub import redis_keys
from taskhub.celery import app
from taskhub.deadletters import DeadLetter, DeadLetterStream, Reason
from taskhub.intake import Intake, RawMessage, first_error
from taskhub.ledger import LedgerEntry, LedgerKeys, enqueue
from taskhub.routes import RouteTable
from taskhub.settings import Settings
from taskhub.task_messages import MessageBuilder, TaskCall

CHUNK = 200


@dataclass(slots=True)
class ReplayReport:
    replayed: list[tuple[DeadLetter, TaskCall]] = field(default_factory=list)
    refused: list[tuple[DeadLetter, Reason, str]] = field(default_factory=list)
    """Still refused: the letter stays, with the reason it would get today."""
    skipped: list[tuple[DeadLetter, str]] = field(default_factory=list)
    """Never replayable (e.g. a pickled body); the letter stays."""


class Replayer:
    def __init__(
        self,
        stream: DeadLetterStream,
        routes: RouteTable,
        builder: MessageBuilder,
        ledger: LedgerKeys,
        max_payload_bytes: int,
    ) -> None:
        self.stream = stream
        self.routes = routes
        self.intake = Intake(routes, max_payload_bytes)
        self.builder = builder
        self.ledger = ledger

    @classmethod
    def for_routes(
        cls, stream: DeadLetterStream, routes: RouteTable, settings: Settings
    ) -> Replayer:
        """A replayer that builds task messages as the bridge does, for `routes`' tasks."""
        return cls(
            stream,
            routes,
            MessageBuilder.for_tasks(app, routes.task_queues),
            LedgerKeys.for_prefix(settings.key_prefix),
            settings.bridge.max_payload_bytes,
        )

    def judge(self, letter: DeadLetter) -> TaskCall | tuple[Reason, str] | str:
        """The task call `letter` yields today, the reason it is still refused, or why it can
        never be replayed."""
        if not letter.replayable:
            return f"{letter.reason.value} letters are kept for inspection, never replayed"
        if letter.task is None:
            verdict = self.intake.judge(RawMessage(letter.topic, letter.payload, letter.properties))
            return (verdict.reason, verdict.detail) if isinstance(verdict, DeadLetter) else verdict
        return self._judge_task(letter)

    def _judge_task(self, letter: DeadLetter) -> TaskCall | tuple[Reason, str]:
        assert letter.task is not None
        failed = letter.task
        route = next((r for r in self.routes if r.task == failed.name), None)
        if route is None:
            return Reason.UNKNOWN_TASK, f"no route sends to task {failed.name!r} today"
        if len(failed.args) != 1:
            return Reason.SCHEMA, f"expected one payload argument, got {len(failed.args)}"
        try:
            payload = route.payload.model_validate(failed.args[0])
        except ValidationError as error:
            return Reason.SCHEMA, first_error(error)
        for name, value in failed.kwargs.items():
            if not isinstance(value, str) or not route.parameter_rule.fullmatch(value):
                return Reason.BAD_TOPIC_PARAMETER, f"parameter {name}={value!r} is not allowed"
        return TaskCall(
            task=route.task,
            task_id=failed.task_id,
            queue=route.queue,
            args=(payload.model_dump(mode="json"),),
            kwargs=dict(failed.kwargs),
        )

    def replay(self, letters: Iterable[DeadLetter], *, dry_run: bool = False) -> ReplayReport:
        report = ReplayReport()
        ready: list[tuple[DeadLetter, TaskCall]] = []
        for letter in letters:
            verdict = self.judge(letter)
            if isinstance(verdict, TaskCall):
                ready.append((letter, verdict))
            elif isinstance(verdict, tuple):
                report.refused.append((letter, *verdict))
            else:
                report.skipped.append((letter, verdict))
            if len(ready) >= CHUNK:
                self._land(ready, dry_run)
                report.replayed.extend(ready)
                ready = []
        self._land(ready, dry_run)
        report.replayed.extend(ready)
        return report

    def _land(self, ready: Sequence[tuple[DeadLetter, TaskCall]], dry_run: bool) -> None:
        """Enqueue, record and remove in one transaction: a letter is never both gone and not
        enqueued."""
        if dry_run or not ready:
            return
        entries = [
            LedgerEntry(call.task_id, call.queue, self.builder.build(call)) for _, call in ready
        ]
        with self.stream.redis.pipeline(transaction=True) as pipe:
            enqueue(pipe, self.ledger, entries, time.time())
            for letter, call in ready:  # a replayed task starts with no worker losses
                if letter.reason is Reason.WORKER_LOST and letter.task is not None:
                    for retries in range(letter.task.retries + 1):
                        pipe.delete(
                            redis_keys.worker_losses(self.stream.key_prefix, call.task_id, retries)
                        )
            pipe.xdel(self.stream.key, *(letter.id for letter, _ in ready))
            pipe.execute()
