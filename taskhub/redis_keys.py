"""Every Redis key taskhub names, in one module: what each holds, its type and how long it lives.

The names are part of the data's format: a key spelled differently is data already in Redis that
is no longer found, so tests/test_redis_keys.py pins each one to its literal string. Taskhub's own
keys begin with the deployment's TASKHUB_KEY_PREFIX (`prefix` below); kombu's are named by kombu.
"""

from __future__ import annotations

# kombu's keys, read (never written) by taskhub.

KOMBU_UNACKED = "unacked"
"""Hash, kombu's: delivery tag -> message, of every task delivered to a worker and not yet acked
(its Redis transport's default `unacked_key`)."""
KOMBU_PRIORITY_SEPARATOR = "\x06\x16"
KOMBU_PRIORITY_STEPS = (3, 6, 9)
"""kombu keeps a queue's tasks of priority other than 0 in lists named queue + separator + step."""


def kombu_priority_lists(queue: str) -> list[str]:
    """Lists, kombu's: `queue` itself and its priority sub-queues, where its tasks wait."""
    return [queue] + [f"{queue}{KOMBU_PRIORITY_SEPARATOR}{step}" for step in KOMBU_PRIORITY_STEPS]


# The ledger (taskhub/ledger.py): the bridge writes it, workers settle it, the sweeper reads it.


def ledger(prefix: str) -> str:
    """Sorted set: task id -> when it was enqueued, for every task not yet settled. No TTL."""
    return f"{prefix}:ledger"


def ledger_entries(prefix: str) -> str:
    """Hash: task id -> its ledger entry (sweeps, queue, message; LedgerEntry.encode). No TTL."""
    return f"{prefix}:ledger:entries"


def ledger_sweep_lock(prefix: str) -> str:
    """String: held by the bridge replica sweeping the ledger now; TTL
    bridge.sweeper.LOCK_SECONDS."""
    return f"{prefix}:ledger:sweeping"


# Dead letters (taskhub/deadletters.py).


def deadletters(prefix: str) -> str:
    """Stream: every dead letter, capped at TASKHUB_BRIDGE__DEADLETTER_MAXLEN (approximately)."""
    return f"{prefix}:deadletters"


def deadletter_counts(stream: str) -> str:
    """Hash: reason -> letters ever added to `stream`; not capped, no TTL."""
    return f"{stream}:counts"


def deadletter_minute_counts(stream: str, minute: int) -> str:
    """Hash: reason -> letters added to `stream` in one minute (epoch seconds // 60); TTL
    taskhub.deadletters.MINUTE_COUNTS_TTL."""
    return f"{stream}:counts:{minute}"


# Workers.


def worker_losses(prefix: str, task_id: str, retries: int) -> str:
    """String: starts of one run of a task that have not ended (an integer), or `lettered`; TTL
    taskhub.worker_losses.LOSS_MEMORY_SECONDS at least."""
    return f"{prefix}:worker_losses:{task_id}:{retries}"


def done(prefix: str, identity: str) -> str:
    """String `1`: a task with this identity committed its effect; TTL
    TASKHUB_TASKS__IDEMPOTENCY_WINDOW."""
    return f"{prefix}:done:{identity}"


def effect(prefix: str, kind: str, identity: str) -> str:
    """String, JSON: a task's stored effect (`checkin`, `reading`); TTL
    TASKHUB_TASKS__RESULT_TTL."""
    return f"{prefix}:{kind}:{identity}"


def checkins_resolved(prefix: str) -> str:
    """Stream: each resolved check-in once (tweet id, task id), capped at
    tasks.checkins.RESOLVED_STREAM_MAXLEN."""
    return f"{prefix}:checkins:resolved"


def cache(prefix: str, kind: str, identity: str) -> str:
    """String: a cached upstream answer (`shortlink` -> venue id, `venue` -> JSON with its ETag);
    TTL set per entry by tasks/cache.py."""
    return f"{prefix}:cache:{kind}:{identity}"


def upstream(prefix: str, host: str) -> tuple[str, str, str, str]:
    """Strings, one host's breaker and pause (tasks/breaker.py): open_until (epoch seconds, TTL
    cool-down + 1 h), failures (a counter, TTL the breaker window), probe (a lock, TTL
    PROBE_SECONDS) and paused_until (epoch seconds, TTL the pause)."""
    base = f"{prefix}:upstream:{host}"
    return f"{base}:open_until", f"{base}:failures", f"{base}:probe", f"{base}:paused_until"


def rate_limits(prefix: str) -> str:
    """Key prefix handed to the `limits` library, whose moving windows live under it, one per
    host; TTL the window."""
    return f"{prefix}:ratelimit"


# Counters for operators and the benchmarks. No TTL.


def duplicates_absorbed(prefix: str) -> str:
    """Hash: task name -> duplicates of it that a done-marker absorbed."""
    return f"{prefix}:stats:duplicates_absorbed"


def cache_stats(prefix: str) -> str:
    """Hash: `<kind>:<hit|miss|revalidated>` -> lookups of the shared cache."""
    return f"{prefix}:stats:cache"


def late_readings(prefix: str) -> str:
    """String, a counter: readings recorded after a newer one of their device (never latest)."""
    return f"{prefix}:stats:late_readings"


# Liveness of the processes (taskhub/telemetry/beats.py, bridge/replicas.py).


def beat(prefix: str, role: str, name: str) -> str:
    """String, JSON: the last beat of one bridge or worker (`role`); TTL a few beat intervals."""
    return f"{prefix}:telemetry:{role}:{name}"


def bridge_lease(prefix: str, client_id: str) -> str:
    """String: the token of the bridge replica running as `client_id`; TTL LEASE_SECONDS."""
    return f"{prefix}:bridge:client:{client_id}"


def bridge_group(prefix: str, share_group: str) -> str:
    """Sorted set: client id -> when that member of the share group was last heard from. No TTL."""
    return f"{prefix}:bridge:group:{share_group}"


# Replies to MQTT 5 requests (taskhub/replies.py): workers and bridges add, bridges publish.


def reply_outbox(prefix: str) -> str:
    """Stream: replies waiting to be published to MQTT (Reply.entry fields); capped by length,
    read by the bridges' consumer group, each entry deleted once its PUBACK came."""
    return f"{prefix}:replies:outbox"
