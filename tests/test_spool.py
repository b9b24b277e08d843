"""The durable spool keeps arrival order, survives a restart, and refuses to grow past its bound."""

from __future__ import annotations

from pathlib import Path

import pytest

from bridge.outbound import Outbound, OutboundKind
from bridge.spool import Spool, SpoolFailed, SpoolFull


def _items(start: int, count: int) -> list[Outbound]:
    return [
        Outbound(OutboundKind.TASK, "checkins", f'{{"n": {n}}}')
        for n in range(start, start + count)
    ]


def test_spooled_items_come_back_oldest_first_across_a_restart(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "s.sqlite3", max_messages=100)
    spool.append(_items(0, 3))
    spool.append(_items(3, 2))
    spool.close()

    reopened = Spool(tmp_path / "s.sqlite3", max_messages=100)
    assert len(reopened) == 5
    last, items = reopened.oldest(4)
    assert [item.body for item in items] == [f'{{"n": {n}}}' for n in range(4)]
    reopened.remove_through(last)
    assert len(reopened) == 1
    assert reopened.oldest(10)[1] == _items(4, 1)


def test_a_spool_keeps_reading_the_kinds_it_stored_before(tmp_path: Path) -> None:
    """Spool rows outlive the code that wrote them: the kind column holds these strings."""
    spool = Spool(tmp_path / "s.sqlite3", max_messages=100)
    spool._db.executemany(
        "INSERT INTO spool (kind, key, body, task_id) VALUES (?, ?, ?, ?)",
        [("task", "checkins", "{}", "id-1"), ("dead_letter", "taskhub:deadletters", "{}", "")],
    )
    kinds = [item.kind for item in spool.oldest(10)[1]]
    assert kinds == [OutboundKind.TASK, OutboundKind.DEAD_LETTER]


def test_a_full_spool_refuses_the_whole_batch(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "s.sqlite3", max_messages=5)
    spool.append(_items(0, 4))
    with pytest.raises(SpoolFull):
        spool.append(_items(4, 2))
    assert len(spool) == 4
    spool.append(_items(4, 1))
    assert len(spool) == 5


def test_the_spool_is_in_wal_mode_with_full_sync(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "s.sqlite3", max_messages=5)
    db = spool._db
    assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert db.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL


def test_a_disk_that_refuses_a_write_leaves_the_spool_as_it_was(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "s.sqlite3", max_messages=10_000)
    spool.append(_items(0, 2))
    pages = spool._db.execute("PRAGMA page_count").fetchone()[0]
    spool._db.execute(f"PRAGMA max_page_count={pages}")  # SQLite's own "disk is full"
    with pytest.raises(SpoolFailed, match="full"):
        spool.append([Outbound(OutboundKind.TASK, "checkins", "x" * 100_000)])
    assert len(spool) == 2
    assert spool.oldest(10)[1] == _items(0, 2)
    spool._db.execute("PRAGMA max_page_count=1073741823")
    spool.append(_items(2, 1))  # the disk takes writes again: so does the spool
    assert spool.oldest(10)[1] == _items(0, 3)
