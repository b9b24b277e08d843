"""In-memory stand-ins for what the bridge's loop touches outside itself (bridge/ports.py,
bridge/clock.py): an MQTT session, the Redis writer, the spool, the replica's records and the
clock. Each keeps what it was given for assertions and fails on demand, so a unit test can drive
every branch of the loop without a server, a process or a sleep.

They live with the tests, not in `taskhub/`: they stand in for the bridge's own internals, which
a user writing a route table never drives (`taskhub.intake.Intake.judge` is what tests a route),
and `taskhub/` must not depend on `bridge/`.
"""
