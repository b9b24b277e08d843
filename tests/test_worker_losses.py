"""A task that kills the worker running it runs at most TASKHUB_TASKS__MAX_WORKER_LOSSES times; its
next delivery is dead-lettered as `worker_lost` and acked. Retries and runs that end are no losses.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import redis
from celery.exceptions import Reject

from bridge.outbound import Outbound
from bridge.publisher import RedisPublisher
from rig.processes import WORKER_READY, Process, celery, wait_for
from rig.servers import RedisServer
from taskhub import redis_keys
from taskhub.deadletters import DeadLetter, DeadLetterStream, Reason
from taskhub.ledger import LedgerKeys
from taskhub.redis_keys import KOMBU_UNACKED
from taskhub.settings import get_settings
from taskhub.task_messages import MessageBuilder, TaskCall, deterministic_task_id
from tests.support.poison_routes import POISON_QUEUE

pytestmark = pytest.mark.e2e

MAX_LOSSES = 2
"""The cap in these tests (the default is 3): each loss of a whole gevent worker costs a restart
and a visibility timeout."""
TIME_LIMIT = 10
"""Longer than a prefork pool takes to notice its child died (at 2 s the hard limit came first)."""
VISIBILITY = TIME_LIMIT + 2
"""Seconds before a dead gevent worker's task comes back: as short as the settings allow."""
WORKER_ARGS = {"prefork": ("-P", "prefork", "-c", "1"), "gevent": ("-P", "gevent", "-c", "4")}
SPREAD = 4.0
"""TASKHUB_TASKS__WORKER_LOSS_SPREAD here: short, to keep the tests short."""
KILL = "tests.support.poison_tasks.kill_own_worker"
SLEEP = "tests.support.poison_tasks.sleep_then_succeed"
INNOCENT_SECONDS = 0.5
RETRY = "tests.support.poison_tasks.retry_then_succeed"
KOMBU_UNACKED_INDEX = KOMBU_UNACKED + "_index"
ROUND_TIMEOUT = VISIBILITY + 60
"""A lost task comes back within the visibility timeout plus a sweep, or 30 s more when the dead
worker held kombu's sweep lock; the rest is margin for a worker's start on a busy machine."""


@pytest.fixture(autouse=True)
def _poison_tasks() -> None:
    """Register the poison tasks in this process. Not imported at the top: they read the settings,
    which wait for this run's Redis database (tests/conftest.py)."""
    import tests.support.poison_tasks  # noqa: F401


@pytest.fixture(params=sorted(WORKER_ARGS))
def pool(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def worker_env() -> dict[str, str]:
    return {
        "TASKHUB_ROUTES": "tests.support.poison_routes:ROUTES",
        "TASKHUB_TASKS__MAX_WORKER_LOSSES": str(MAX_LOSSES),
        "TASKHUB_TASKS__WORKER_LOSS_SPREAD": str(SPREAD),
        "TASKHUB_TASKS__SOFT_TIME_LIMIT": str(TIME_LIMIT - 1),
        "TASKHUB_TASKS__TIME_LIMIT": str(TIME_LIMIT),
        "TASKHUB_TASKS__RETRY_BACKOFF_MAX": "1",
        "TASKHUB_TASKS__VISIBILITY_TIMEOUT": str(VISIBILITY),
        "TASKHUB_TASKS__UNACKED_RESTORE_INTERVAL": "1",
        "REMAP_SIGTERM": "SIGQUIT",
    }


@pytest.fixture
def poison_worker(
    log_dir: Path, worker_env: dict[str, str], pool: str, broker_redis: redis.Redis
) -> Iterator[Process]:
    argv = celery(
        "worker",
        *WORKER_ARGS[pool],
        "-Q",
        POISON_QUEUE,
        "--loglevel=DEBUG",  # each delivery's "received" line is DEBUG (taskhub/debug_lines.py)
        "--without-mingle",
        "--without-gossip",
        "-n",
        f"poison-{pool}-{os.getpid()}@%h",
    )
    process = Process(f"poison-{pool}", argv, log_dir, worker_env).start()
    try:
        process.wait_output(WORKER_READY, timeout=60)
        yield process
    finally:
        process.kill()


def _enqueue(task: str, identity: str, dose: dict[str, float]) -> str:
    """Land the task as the bridge does: on its queue and in the ledger, in one transaction."""
    settings = get_settings()
    keys = LedgerKeys.for_prefix(settings.key_prefix)
    publisher = RedisPublisher(settings.broker_url.get_secret_value(), [POISON_QUEUE], keys)
    task_id = deterministic_task_id(task, identity)
    call = TaskCall(task, task_id, POISON_QUEUE, (dose,), {})
    publisher.land([Outbound.task(call, MessageBuilder())])
    return task_id


def _letters(client: redis.Redis) -> list[DeadLetter]:
    return list(DeadLetterStream(client, get_settings().key_prefix).scan())


def _runs(client: redis.Redis, task_id: str) -> list[str]:
    """The pid of each process that ran the task, in order."""
    from tests.support.poison_tasks import runs_key

    return [_text(pid) for pid in client.lrange(runs_key(task_id), 0, -1)]


def _status(client: redis.Redis, task_id: str) -> str:
    meta = client.get(f"celery-task-meta-{task_id}")
    return str(json.loads(meta)["status"]) if meta else "PENDING"


def _loss_counts(client: redis.Redis) -> list[str]:
    return [_text(key) for key in client.keys(f"{get_settings().key_prefix}:worker_losses:*")]


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _supervise(worker: Process, done: Callable[[], bool], restart_limit: int) -> int:
    """Restart `worker` whenever it dies, as systemd or Kubernetes would, until `done()`;
    returns how many restarts that took."""
    restarts = 0
    while True:
        wait_for(
            lambda: done() or worker.popen is None or worker.popen.poll() is not None,
            ROUND_TIMEOUT,
            "the worker to die or the task to be settled",
        )
        if done():
            return restarts
        assert restarts < restart_limit, f"the task killed its worker {restarts + 1} times"
        worker.start()
        worker.wait_output(WORKER_READY, timeout=60)
        restarts += 1


def test_a_task_that_kills_its_worker_is_dead_lettered_as_worker_lost_after_the_cap(
    broker_redis: redis.Redis, poison_worker: Process, pool: str
) -> None:
    task_id = _enqueue(KILL, f"kill-{pool}", {})

    def settled() -> bool:
        return bool(_letters(broker_redis)) or len(_runs(broker_redis, task_id)) > MAX_LOSSES

    restarts = _supervise(poison_worker, settled, restart_limit=MAX_LOSSES + 1)

    runs = _runs(broker_redis, task_id)
    assert len(runs) == MAX_LOSSES, f"the task ran {len(runs)} times"
    assert len(set(runs)) == MAX_LOSSES, "each run is in a process of its own, killed by it"
    assert restarts == (MAX_LOSSES if pool == "gevent" else 0)
    deliveries = poison_worker.output().count(f"[{task_id}] received")
    assert deliveries == 2 * MAX_LOSSES, "each run, each spread after a loss, and the refusal"
    (letter,) = _letters(broker_redis)
    assert letter.reason is Reason.WORKER_LOST
    assert letter.task is not None
    assert (letter.task.name, letter.task.task_id, letter.task.queue) == (KILL, task_id, "poison")
    assert letter.task.args == [{}]
    assert f"lost {MAX_LOSSES} times" in letter.detail

    def acked() -> bool:
        return (
            broker_redis.llen(POISON_QUEUE) == 0
            and broker_redis.hlen(KOMBU_UNACKED) == 0
            and broker_redis.zcard(KOMBU_UNACKED_INDEX) == 0
        )

    wait_for(acked, 30, "the dead-lettered task acked, its queue empty")
    assert _status(broker_redis, task_id) == "FAILURE"
    keys = LedgerKeys.for_prefix(get_settings().key_prefix)
    assert broker_redis.zscore(keys.index, task_id) is None, "its ledger entry is settled"
    lettered = [f"{get_settings().key_prefix}:worker_losses:{task_id}:0"]
    assert _loss_counts(broker_redis) == lettered, "its count became the LETTERED mark"
    assert broker_redis.get(lettered[0]) == b"lettered"
    assert poison_worker.popen is not None
    assert poison_worker.popen.poll() is None, "the worker outlived the task"


@pytest.mark.parametrize("pool", ["prefork"])
def _innocent_identity(poison_id: str) -> str:
    """An identity whose task, after the loss both share, comes back well apart from the poison
    (the spread is fixed per task id and loss, so the test can choose one)."""
    from taskhub.worker_losses import spread_delay

    poison_back = spread_delay(poison_id, 1, SPREAD)
    for n in range(1000):
        innocent_id = deterministic_task_id(SLEEP, f"innocent-{n}")
        if abs(spread_delay(innocent_id, 1, SPREAD) - poison_back) > 3 * INNOCENT_SECONDS:
            return f"innocent-{n}"
    raise AssertionError("no identity spreads apart from the poison")


def test_a_task_lost_beside_a_poison_runs_again_and_is_not_dead_lettered(
    broker_redis: redis.Redis, log_dir: Path, worker_env: dict[str, str]
) -> None:
    """A gevent worker that a poison task kills takes its other tasks with it; they come back
    with the poison, each waits its own spread, and the innocent one then succeeds."""
    argv = celery("worker", *WORKER_ARGS["gevent"], "-l", "INFO", "-n", "bystander@%h")
    worker = Process("bystander", argv, log_dir, worker_env).start()
    try:
        worker.wait_output(WORKER_READY, timeout=60)
        poison_id = deterministic_task_id(KILL, "beside")
        dose = {"first_run_seconds": 30, "seconds": INNOCENT_SECONDS}
        innocent_id = _enqueue(SLEEP, _innocent_identity(poison_id), dose)
        wait_for(lambda: bool(_runs(broker_redis, innocent_id)), 30, "the innocent task running")
        assert _enqueue(KILL, "beside", {}) == poison_id

        def settled() -> bool:
            finished = _status(broker_redis, innocent_id) in ("SUCCESS", "FAILURE")
            return finished and bool(_letters(broker_redis))

        _supervise(worker, settled, restart_limit=MAX_LOSSES + 1)
    finally:
        worker.kill()
    letters = _letters(broker_redis)
    assert [letter.task.task_id for letter in letters if letter.task] == [poison_id]
    assert _status(broker_redis, innocent_id) == "SUCCESS"


def test_a_task_retried_more_often_than_the_cap_is_no_worker_loss(
    broker_redis: redis.Redis, poison_worker: Process
) -> None:
    retries = MAX_LOSSES + 2
    task_id = _enqueue(RETRY, "retry", {"retries": retries})

    wait_for(lambda: _status(broker_redis, task_id) == "SUCCESS", 60, "the retried task to succeed")
    assert len(_runs(broker_redis, task_id)) == retries + 1
    assert _letters(broker_redis) == []
    assert _loss_counts(broker_redis) == [], "a run that ended leaves no count behind"


def test_a_start_is_counted_under_the_key_prefix_with_an_expiry_and_cleared_when_it_ends(
    broker_redis: redis.Redis,
) -> None:
    from taskhub.celery import app
    from taskhub.worker_losses import LOSS_MEMORY_SECONDS, counted_run

    task = app.tasks[RETRY]
    prefix = get_settings().key_prefix
    task.push_request(id="counted-1", retries=1, delivery_info={"routing_key": POISON_QUEUE})
    try:
        with counted_run(task, ({},), {}):
            assert _loss_counts(broker_redis) == [f"{prefix}:worker_losses:counted-1:1"]
            key = f"{prefix}:worker_losses:counted-1:1"
            assert broker_redis.get(key) == b"1"
            assert 0 < broker_redis.ttl(key) <= LOSS_MEMORY_SECONDS
        assert _loss_counts(broker_redis) == []
        with pytest.raises(RuntimeError), counted_run(task, ({},), {}):
            raise RuntimeError("a failed run ends too")
        assert _loss_counts(broker_redis) == []
    finally:
        task.pop_request()


def _refused_start(task_name: str, task_id: str) -> Reject:
    """Start `task_name` as `task_id` through the worker-loss count, in this process; the
    `Reject` that refused it (the body must not run)."""
    from taskhub.celery import app
    from taskhub.worker_losses import counted_run

    task = app.tasks[task_name]
    task.push_request(id=task_id, retries=0, delivery_info={"routing_key": POISON_QUEUE})
    ran = []
    try:
        with pytest.raises(Reject) as refused, counted_run(task, ({},), {}):
            ran.append(True)
    finally:
        task.pop_request()
    assert ran == [], "the body ran"
    return refused.value


def test_a_start_that_a_full_redis_cannot_count_goes_back_to_its_queue(
    private_redis: RedisServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """At maxmemory the count's INCR is refused: the task is given back unrun, not failed."""
    import taskhub.worker_losses

    full = redis.Redis.from_url(private_redis.url)
    full.config_set("maxmemory-policy", "noeviction")
    full.config_set("maxmemory", int(full.info("memory")["used_memory"]) - 1)
    monkeypatch.setattr(taskhub.worker_losses, "broker_redis", lambda: full)
    try:
        refused = _refused_start(RETRY, "full-1")
    finally:
        full.config_set("maxmemory", 0)
        full.close()
    assert refused.requeue is True


def test_a_start_refused_at_maxmemory_is_given_back_even_if_memory_returns_at_once(
    broker_redis: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The count's INCR refused for memory, and Redis taking writes again a moment later, must
    not be read as a copy of a dead-lettered task: that copy is acked unrun, and this task was
    never lettered (the task would be lost)."""
    import taskhub.worker_losses

    class FullForOneTransaction:
        refused = False

        def __getattr__(self, name: str) -> object:
            return getattr(broker_redis, name)

        def pipeline(self, transaction: bool = True) -> object:
            pipe = broker_redis.pipeline(transaction=transaction)
            if not FullForOneTransaction.refused:
                FullForOneTransaction.refused = True

                def refuse(raise_on_error: bool = True) -> list[object]:
                    pipe.reset()
                    raise redis.exceptions.OutOfMemoryError(
                        "command not allowed when used memory > 'maxmemory'."
                    )

                pipe.execute = refuse  # type: ignore[method-assign]
            return pipe

    monkeypatch.setattr(taskhub.worker_losses, "broker_redis", FullForOneTransaction)
    assert _refused_start(RETRY, "oom-then-room-1").requeue is True
    assert _letters(broker_redis) == []


def test_a_run_that_ends_while_redis_is_briefly_away_still_clears_its_count(
    broker_redis: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A count left standing reads as a lost worker at the next start: the end of a run waits
    out a short outage to clear it (the chaos suite's Redis restart dead-lettered a task so)."""
    import taskhub.worker_losses
    from taskhub.celery import app
    from taskhub.worker_losses import counted_run

    refusals = iter([True, True, False])
    delete = broker_redis.delete

    class Flaky:
        def __getattr__(self, name: str) -> object:
            return getattr(broker_redis, name)

        def delete(self, *keys: str) -> int:
            if next(refusals):
                raise redis.ConnectionError("Redis is restarting")
            return int(delete(*keys))

    monkeypatch.setattr(taskhub.worker_losses, "broker_redis", Flaky)
    task = app.tasks[RETRY]
    task.push_request(id="flaky-1", retries=0, delivery_info={"routing_key": POISON_QUEUE})
    try:
        with counted_run(task, ({},), {}):
            assert len(_loss_counts(broker_redis)) == 1
    finally:
        task.pop_request()
    assert _loss_counts(broker_redis) == []


def test_a_copy_of_a_task_already_dead_lettered_is_dropped_unrun_without_a_second_letter(
    broker_redis: redis.Redis,
) -> None:
    """A sweep and a visibility restore can both bring a lost task back: the copy that comes
    after the letter must neither run (it would kill N more workers) nor write another letter."""
    from taskhub.worker_losses import LETTERED

    broker_redis.set(redis_keys.worker_losses(get_settings().key_prefix, "copied-1", 0), LETTERED)
    assert _refused_start(KILL, "copied-1").requeue is False
    assert _letters(broker_redis) == []


def test_replaying_a_worker_lost_letter_gives_the_task_its_runs_back(
    broker_redis: redis.Redis,
) -> None:
    from taskhub.deadletter_replay import Replayer
    from taskhub.deadletters import FailedTask
    from taskhub.routes import RouteTable
    from taskhub.worker_losses import LETTERED
    from tests.support import poison_routes

    settings = get_settings()
    task_id = deterministic_task_id(KILL, "replayed")
    key = redis_keys.worker_losses(settings.key_prefix, task_id, 0)
    broker_redis.set(key, LETTERED)
    stream = DeadLetterStream(broker_redis, settings.key_prefix)
    failed = FailedTask(KILL, task_id, POISON_QUEUE, [{}], {"kind": "x"}, "WorkerLostTooOften")
    stream.add(DeadLetter(Reason.WORKER_LOST, "lost 3 times", route=POISON_QUEUE, task=failed))
    routes = RouteTable([route for route in poison_routes.ROUTES if route.queue == POISON_QUEUE])
    replayer = Replayer.for_routes(stream, routes, settings)
    report = replayer.replay(stream.scan())
    assert len(report.replayed) == 1, report
    assert broker_redis.exists(key) == 0
    assert broker_redis.llen(POISON_QUEUE) == 1
