"""Every Redis key name is pinned to its literal string: data already in Redis must still be found
after a release, so a rename has to be a deliberate change here too. And keys are named in
taskhub/redis_keys.py only."""

from __future__ import annotations

import re
from pathlib import Path

from taskhub import redis_keys

ROOT = Path(__file__).resolve().parents[1]


def test_every_key_name_is_the_string_data_in_redis_is_stored_under() -> None:
    p = "pre.fix"
    assert redis_keys.KOMBU_UNACKED == "unacked"
    assert redis_keys.kombu_priority_lists("q") == ["q", "q\x06\x163", "q\x06\x166", "q\x06\x169"]
    assert redis_keys.ledger(p) == "pre.fix:ledger"
    assert redis_keys.reply_outbox(p) == "pre.fix:replies:outbox"
    assert redis_keys.ledger_entries(p) == "pre.fix:ledger:entries"
    assert redis_keys.ledger_sweep_lock(p) == "pre.fix:ledger:sweeping"
    assert redis_keys.deadletters(p) == "pre.fix:deadletters"
    assert redis_keys.deadletter_counts("s") == "s:counts"
    assert redis_keys.deadletter_minute_counts("s", 29_000_000) == "s:counts:29000000"
    assert redis_keys.worker_losses(p, "t-1", 2) == "pre.fix:worker_losses:t-1:2"
    assert redis_keys.done(p, "checkin:42") == "pre.fix:done:checkin:42"
    assert redis_keys.effect(p, "reading", "dev-1") == "pre.fix:reading:dev-1"
    assert redis_keys.checkins_resolved(p) == "pre.fix:checkins:resolved"
    assert redis_keys.cache(p, "venue", "v1") == "pre.fix:cache:venue:v1"
    assert redis_keys.upstream(p, "h:80") == (
        "pre.fix:upstream:h:80:open_until",
        "pre.fix:upstream:h:80:failures",
        "pre.fix:upstream:h:80:probe",
        "pre.fix:upstream:h:80:paused_until",
    )
    assert redis_keys.rate_limits(p) == "pre.fix:ratelimit"
    assert redis_keys.duplicates_absorbed(p) == "pre.fix:stats:duplicates_absorbed"
    assert redis_keys.cache_stats(p) == "pre.fix:stats:cache"
    assert redis_keys.late_readings(p) == "pre.fix:stats:late_readings"
    assert redis_keys.beat(p, "worker", "w@h") == "pre.fix:telemetry:worker:w@h"
    assert redis_keys.bridge_lease(p, "c-1") == "pre.fix:bridge:client:c-1"
    assert redis_keys.bridge_group(p, "g") == "pre.fix:bridge:group:g"


PREFIXED_KEY = re.compile(r"""f["'][^"']*\{[^}]*prefix[^}]*\}:""")
"""An f-string that starts a key with the key prefix: `f"{settings.key_prefix}:..."`."""


def test_no_module_but_redis_keys_names_a_key() -> None:
    builders = [
        f"{path.relative_to(ROOT)}:{number}"
        for package in ("taskhub", "tasks", "bridge", "bench")
        for path in sorted((ROOT / package).rglob("*.py"))
        if path.name != "redis_keys.py"
        for number, line in enumerate(path.read_text().splitlines(), 1)
        if PREFIXED_KEY.search(line)
    ]
    assert builders == [], "name Redis keys in taskhub/redis_keys.py"
