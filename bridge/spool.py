"""The durable local spool: where a batch goes when Redis cannot take it, so the bridge can ack.

SQLite in WAL mode with synchronous=FULL: a batch is on disk (fsynced) before its MQTT acks are
sent. Rows keep arrival order; replay drains them oldest first and deletes only what Redis holds.
The spool's size is bounded; when full, the bridge stops acking and the MQTT broker keeps the rest.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from pathlib import Path

from bridge.outbound import Kind, Outbound

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


class Spool:
    def __init__(self, path: Path, max_messages: int) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self.max_messages = max_messages
        self._db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.execute(_SCHEMA)
        self._count = int(self._db.execute("SELECT COUNT(*) FROM spool").fetchone()[0])

    def __len__(self) -> int:
        return self._count

    def append(self, items: Sequence[Outbound]) -> None:
        """Durably add `items` after everything already spooled, or raise SpoolFull."""
        if self._count + len(items) > self.max_messages:
            raise SpoolFull(f"spool {self.path} holds {self._count} of {self.max_messages}")
        with self._transaction():
            self._db.executemany(
                "INSERT INTO spool (kind, key, body, task_id) VALUES (?, ?, ?, ?)",
                [(item.kind.value, item.key, item.body, item.task_id) for item in items],
            )
        self._count += len(items)

    def oldest(self, limit: int) -> tuple[int, list[Outbound]]:
        """Up to `limit` items, oldest first, and the sequence number of the last one."""
        rows = self._db.execute(
            "SELECT seq, kind, key, body, task_id FROM spool ORDER BY seq LIMIT ?", (limit,)
        ).fetchall()
        if not rows:
            return 0, []
        items = [Outbound(Kind(kind), key, body, task_id) for _, kind, key, body, task_id in rows]
        return rows[-1][0], items

    def remove_through(self, seq: int) -> None:
        """Forget every item up to and including `seq`: Redis holds them now."""
        with self._transaction():
            removed = self._db.execute("DELETE FROM spool WHERE seq <= ?", (seq,)).rowcount
        self._count -= removed

    def close(self) -> None:
        self._db.close()

    def _transaction(self) -> _Transaction:
        return _Transaction(self._db)


class _Transaction:
    def __init__(self, db: sqlite3.Connection) -> None:
        self.db = db

    def __enter__(self) -> None:
        self.db.execute("BEGIN IMMEDIATE")

    def __exit__(self, kind: object, error: object, trace: object) -> None:
        self.db.execute("COMMIT" if kind is None else "ROLLBACK")
