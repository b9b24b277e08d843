"""The rig: real Redis, Mosquitto and taskhub processes on loopback, each run in its own space,
started the same way by the tests and by the benchmarks (neither imports the other)."""
