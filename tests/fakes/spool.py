"""The spool in memory, bounded and ordered as `bridge.spool.Spool` is, with a disk that can be
made to refuse reads or writes (`broken`) or only the next ones (`fail_next_append`,
`fail_next_read`, `fail_next_remove`)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from bridge.outbound import Outbound
from bridge.spool import SpoolFailed, SpoolFull

DISK_FULL = "database or disk is full"


class MemorySpool:
    def __init__(self, max_messages: int = 1000, path: Path = Path("memory.spool")) -> None:
        self.path = path
        self.max_messages = max_messages
        self.rows: list[tuple[int, Outbound]] = []
        self.broken = False
        self.fail_next_append = 0
        self.fail_next_read = 0
        self.fail_next_remove = 0
        self.closed = False
        self._seq = 0

    def __len__(self) -> int:
        return len(self.rows)

    def append(self, items: Sequence[Outbound]) -> None:
        if len(self.rows) + len(items) > self.max_messages:
            raise SpoolFull(f"spool {self.path} holds {len(self.rows)} of {self.max_messages}")
        if self.broken or self.fail_next_append:
            self.fail_next_append = max(0, self.fail_next_append - 1)
            raise SpoolFailed(f"writing the spool {self.path} failed: {DISK_FULL}")
        for item in items:
            self._seq += 1
            self.rows.append((self._seq, item))

    def oldest(self, limit: int) -> tuple[int, list[Outbound]]:
        if self.broken or self.fail_next_read:
            self.fail_next_read = max(0, self.fail_next_read - 1)
            raise SpoolFailed(f"reading the spool {self.path} failed: disk I/O error")
        rows = self.rows[:limit]
        if not rows:
            return 0, []
        return rows[-1][0], [item for _, item in rows]

    def remove_through(self, seq: int) -> None:
        if self.fail_next_remove:
            self.fail_next_remove -= 1
            raise SpoolFailed(f"reading the spool {self.path} failed: disk I/O error")
        self.rows = [(n, item) for n, item in self.rows if n > seq]

    def close(self) -> None:
        self.closed = True
