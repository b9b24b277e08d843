"""Test-only pieces: route tables, tasks and readers the tests load (servers and processes are in
rig/, shared with the benchmarks)."""
