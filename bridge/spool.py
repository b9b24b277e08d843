"""The durable local spool: where a batch goes when Redis cannot take it, so the bridge can ack.

SQLite in WAL mode with synchronous=FULL: a batch is on disk (fsynced) before its MQTT acks are
sent. Rows keep arrival order; the spool drains into Redis oldest first, deleting only what Redis
holds. Its size is bounded; when full, the bridge stops acking and the MQTT broker keeps the rest.
"""

from __future__ import annotations

import contextlib
import logging
import sqlite3
from collections.abc import Iterator, Sequence
from pathlib import Path

from bridge.outbound import Outbound, OutboundKind

log = logging.getLogger("taskhub.bridge")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS spool (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    kind TEXT NOT NULL,
    key TEXT NOT NULL,
    body TEXT NOT NULL,
    task_id TEXT NOT NULL DEFAULT ''
)
"""


class SpoolFull(Exception):
    """The spool holds its maximum; the batch stays unacked."""


class SpoolFailed(Exception):
    """The disk refused a spool read or write (full, I/O error); nothing changed in the spool."""


class SpoolUnusable(Exception):
    """The spool cannot be opened (not a directory, no permission, a damaged file)."""


class Spool:
    def __init__(self, path: Path, max_messages: int) -> None:
        self.path = path
        self.max_messages = max_messages
        self._forgotten_through = 0
        """Rows up to this seq are in Redis; only a full disk kept them from being deleted."""
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=FULL")
            self._db.execute(_SCHEMA)
            self._count = int(self._db.execute("SELECT COUNT(*) FROM spool").fetchone()[0])
        except (OSError, sqlite3.Error) as error:
            raise SpoolUnusable(f"the spool {path} cannot be used ({error})") from None

    def __len__(self) -> int:
        return self._count

    def append(self, items: Sequence[Outbound]) -> None:
        """Durably add `items` after everything already spooled, or raise SpoolFull."""
        if self._count + len(items) > self.max_messages:
            raise SpoolFull(f"spool {self.path} holds {self._count} of {self.max_messages}")
        rows = [(item.kind.value, item.key, item.body, item.task_id) for item in items]
        with self._transaction():
            self._db.executemany(
                "INSERT INTO spool (kind, key, body, task_id) VALUES (?, ?, ?, ?)", rows
            )
        self._count += len(items)

    def oldest(self, limit: int) -> tuple[int, list[Outbound]]:
        """Up to `limit` items, oldest first, and the sequence number of the last one."""
        try:
            rows = self._db.execute(
                "SELECT seq, kind, key, body, task_id FROM spool "
                "WHERE seq > ? ORDER BY seq LIMIT ?",
                (self._forgotten_through, limit),
            ).fetchall()
        except sqlite3.Error as error:
            raise SpoolFailed(f"reading the spool {self.path} failed: {error}") from None
        if not rows:
            return 0, []
        items = [
            Outbound(OutboundKind(kind), key, body, task_id) for _, kind, key, body, task_id in rows
        ]
        return rows[-1][0], items

    def remove_through(self, seq: int) -> None:
        """Forget every item up to and including `seq`: Redis holds them now.

        If the disk refuses even the delete (a full disk), they are forgotten in memory, so the
        spool drains and the bridge lands straight to Redis again; a restart before the delete
        succeeds drains them again, and those duplicates are absorbed downstream.
        """
        removed = self._count_between(self._forgotten_through, seq)
        self._forgotten_through = max(self._forgotten_through, seq)
        self._count -= removed
        try:
            with self._transaction():
                self._db.execute("DELETE FROM spool WHERE seq <= ?", (seq,))
        except SpoolFailed as error:
            log.warning(
                "%s; %d messages drained into redis stay in it until a later delete", error, removed
            )

    def _count_between(self, after: int, through: int) -> int:
        try:
            found = self._db.execute(
                "SELECT COUNT(*) FROM spool WHERE seq > ? AND seq <= ?", (after, through)
            ).fetchone()
        except sqlite3.Error as error:
            raise SpoolFailed(f"reading the spool {self.path} failed: {error}") from None
        return int(found[0])

    def close(self) -> None:
        self._db.close()

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[None]:
        """One write transaction. Any SQLite failure in it (a full disk often shows only at
        COMMIT) rolls it back and raises SpoolFailed."""
        try:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield
            except BaseException:
                self._roll_back()
                raise
            self._db.execute("COMMIT")
        except sqlite3.Error as error:
            self._roll_back()
            raise SpoolFailed(f"writing the spool {self.path} failed: {error}") from None

    def _roll_back(self) -> None:
        if self._db.in_transaction:
            with contextlib.suppress(sqlite3.Error):  # SQLite rolls back itself when it must
                self._db.execute("ROLLBACK")
