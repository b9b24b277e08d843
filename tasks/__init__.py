"""The task code workers run: the tasks of each route family (checkins.py, sensors.py), and what
they share: the effect store (store.py), exactly-once commits (idempotency.py), replies to MQTT 5
requests (replies.py), settling the ledger (ledger.py), dead letters for failed tasks
(failures.py), and calls to upstream hosts (upstream.py, through http.py, ratelimit.py and
breaker.py; cache.py for their answers).
"""
