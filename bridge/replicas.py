"""Which bridge replicas are alive, kept in the broker's Redis: a lease on each MQTT client id, so
two replicas never share one session, and the live members of each share group, so a replica can
leave its group for good without stranding its share.

Two bridges on one client id take the session from each other on every connect (20 reconnects and
5 duplicates in 18 s), and nothing in MQTT 3.1.1 says why. The lease makes the second one refuse
to start, in one line. A replica killed without a goodbye holds its lease until it lapses
(LEASE_SECONDS), so its restart waits at most that long.
"""

from __future__ import annotations

import logging
import os
import socket
import time
import uuid
from dataclasses import dataclass

import redis

from taskhub import redis_keys

log = logging.getLogger("taskhub.bridge")

HEARTBEAT_SECONDS = 1.0
"""How often a replica renews its lease and its place in its share group."""
LEASE_SECONDS = 5.0
"""A replica not heard from for this long is gone: its client id is free, its group place void."""
CLAIM_POLL_SECONDS = 0.2

_RENEW = """
local holder = redis.call('GET', KEYS[1])
if holder and holder ~= ARGV[1] then return holder end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
return false
"""
"""Renew the lease if it is ours or free; otherwise return who holds it."""
_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then redis.call('DEL', KEYS[1]) end
"""


class ClientIdTaken(Exception):
    """Another live bridge holds this client id."""


@dataclass(frozen=True, slots=True)
class ReplicaKeys:
    lease: str
    """String: the token of the replica running as this client id, with a TTL."""
    group: str | None
    """Sorted set: client id -> when that member of the share group was last heard from."""

    @classmethod
    def for_replica(cls, key_prefix: str, client_id: str, share_group: str | None) -> ReplicaKeys:
        group = redis_keys.bridge_group(key_prefix, share_group) if share_group else None
        return cls(lease=redis_keys.bridge_lease(key_prefix, client_id), group=group)


class Replica:
    """This bridge's presence: its client-id lease and its share-group membership."""

    def __init__(self, client: redis.Redis, keys: ReplicaKeys, client_id: str) -> None:
        self.redis = client
        self.keys = keys
        self.client_id = client_id
        self.token = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        """Names this process in the lease, so a refusal says which bridge holds the id."""
        self._next_beat = 0.0
        self._renew = client.register_script(_RENEW)
        self._release = client.register_script(_RELEASE)

    def claim(self) -> None:
        """Take the client id's lease, waiting out one that a dead bridge left behind; raise
        ClientIdTaken when its holder keeps renewing it. Without Redis, start unchecked."""
        deadline = time.monotonic() + LEASE_SECONDS + HEARTBEAT_SECONDS
        try:
            while (holder := self._renew_lease()) is not None:
                if time.monotonic() > deadline:
                    raise ClientIdTaken(holder)
                time.sleep(CLAIM_POLL_SECONDS)
            self._join_group()
        except redis.RedisError as error:
            log.warning("could not check that client id %s is free: %s", self.client_id, error)
        self._next_beat = time.monotonic() + HEARTBEAT_SECONDS

    def beat(self) -> None:
        """Renew the lease and the group place when due; raise ClientIdTaken if another bridge
        took the id meanwhile (this one was silent past the lease)."""
        now = time.monotonic()
        if now < self._next_beat:
            return
        self._next_beat = now + HEARTBEAT_SECONDS
        try:
            holder = self._renew_lease()
            if holder is None:
                self._join_group()
        except redis.RedisError as error:
            log.debug("replica heartbeat skipped: %s", error)
            return
        if holder is not None:
            raise ClientIdTaken(holder)

    def leave_group_if_others_remain(self) -> bool:
        """Leave the share group if at least one other live member stays in it, atomically, so
        two replicas stopping together never both leave (the last keeps its session, and the
        broker queues the group's messages there). False without a group or without Redis."""
        if self.keys.group is None:
            return False
        try:
            with self.redis.pipeline() as pipe:
                while True:
                    try:
                        pipe.watch(self.keys.group)
                        alive_since = time.time() - LEASE_SECONDS
                        members = pipe.zrangebyscore(self.keys.group, alive_since, "+inf")
                        others = [m for m in members if _text(m) != self.client_id]  # type: ignore[arg-type]
                        if not others:
                            return False
                        pipe.multi()
                        pipe.zrem(self.keys.group, self.client_id)
                        pipe.execute()
                        return True
                    except redis.WatchError:
                        continue  # another member joined or left meanwhile: look again
        except redis.RedisError as error:
            log.warning("could not tell whether other replicas remain: %s", error)
            return False

    def release(self) -> None:
        """Give the client id back at a clean stop, so a restart need not wait."""
        try:
            self._release(keys=[self.keys.lease], args=[self.token])
        except redis.RedisError as error:
            log.debug("lease not released (it lapses by itself): %s", error)

    def _renew_lease(self) -> str | None:
        holder = self._renew(keys=[self.keys.lease], args=[self.token, int(LEASE_SECONDS * 1000)])
        return None if holder is None else _text(holder)

    def _join_group(self) -> None:
        if self.keys.group is not None:
            self.redis.zadd(self.keys.group, {self.client_id: time.time()})


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
