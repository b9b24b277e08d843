"""Each benchmark, run small, still works end to end and prints its summary line (the full runs
are in bench/README.md; they take far too long for CI)."""

from __future__ import annotations

import os
import re
import subprocess

import pytest

from rig.processes import python_module
from rig.servers import repo_autosave_changes

# every test runs a benchmark as a process, most against the shared Redis
pytestmark = pytest.mark.e2e

NUMBER = r"[0-9][0-9,]*(?:\.[0-9]+)?"


def _run(module: str, *args: str) -> str:
    database = os.environ["TASKHUB_BROKER_URL"].rsplit("/", 1)[-1]
    done = subprocess.run(
        python_module(module, *args, "--redis-db", database),
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    return done.stdout.strip().splitlines()[-1]


@pytest.mark.usefixtures("broker_redis")
def test_the_throughput_benchmark_runs_and_reports() -> None:
    last = _run("bench.bridge_throughput", "--messages", "2000", "--rounds", "1")
    found = re.fullmatch(
        rf"bridge: taskhub=({NUMBER})/s naive=({NUMBER})/s raw=({NUMBER})/s "
        rf"vs_naive=({NUMBER}) vs_raw=({NUMBER})",
        last,
    )
    assert found, last
    assert all(float(value.replace(",", "")) > 0 for value in found.groups())


@pytest.mark.usefixtures("broker_redis")
def test_the_throughput_benchmark_measures_the_bridge_traced() -> None:
    last = _run(
        "bench.bridge_throughput",
        "--messages",
        "1000",
        "--rounds",
        "1",
        "--contestants",
        "taskhub,traced",
    )
    found = re.fullmatch(
        rf"bridge: taskhub=({NUMBER})/s traced=({NUMBER})/s traced_vs_taskhub=({NUMBER})", last
    )
    assert found, last
    assert all(float(value.replace(",", "")) > 0 for value in found.groups())


@pytest.mark.usefixtures("broker_redis")
def test_the_latency_benchmark_runs_and_reports() -> None:
    last = _run("bench.latency", "--rate", "100", "--seconds", "3", "--rounds", "1")
    found = re.fullmatch(
        rf"latency: p50=({NUMBER})ms p95=({NUMBER})ms p99=({NUMBER})ms "
        rf"naive_p50=({NUMBER})ms naive_p99=({NUMBER})ms",
        last,
    )
    assert found, last
    assert all(float(value) > 0 for value in found.groups())


@pytest.mark.usefixtures("broker_redis")
def test_the_request_latency_benchmark_runs_and_reports() -> None:
    last = _run("bench.request_latency", "--requests", "3")
    found = re.fullmatch(
        rf"request_latency: p50=({NUMBER})ms p95=({NUMBER})ms max=({NUMBER})ms "
        rf"first=({NUMBER})ms n=3",
        last,
    )
    assert found, last
    assert all(float(value) > 0 for value in found.groups())


@pytest.mark.usefixtures("broker_redis")
def test_the_checkins_benchmark_runs_and_reports() -> None:
    last = _run(
        "bench.checkins",
        "--checkins",
        "300",
        "--stock-checkins",
        "40",
        "--rate-limit",
        "40",
        "--limited-seconds",
        "2",
        "--venues",
        "30",
        "--rounds",
        "1",
    )
    found = re.fullmatch(
        rf"checkins: taskhub=({NUMBER})/s stock=({NUMBER})/s vs_stock=({NUMBER}) "
        rf"ceiling=({NUMBER})/s vs_ceiling=({NUMBER}) limited=({NUMBER})/s "
        rf"limit_use=({NUMBER}) 429s=({NUMBER}) requests=({NUMBER})",
        last,
    )
    assert found, last
    rates = [float(value.replace(",", "")) for value in found.groups()]
    assert all(rate > 0 for rate in rates[:7]), last


def test_the_broker_autosave_benchmark_runs_and_reports() -> None:
    done = subprocess.run(
        python_module("bench.broker_autosave", "--messages", "300", "--rounds", "1"),
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    last = done.stdout.strip().splitlines()[-1]
    found = re.fullmatch(
        rf"broker_autosave: backlog_old=({NUMBER})/s backlog_new=({NUMBER})/s "
        rf"backlog_ratio=({NUMBER}) live_old=({NUMBER})/s live_new=({NUMBER})/s "
        rf"live_ratio=({NUMBER}) lost_old=(\d+)/300 lost_new=(\d+)/300",
        last,
    )
    assert found, last
    assert int(found.group(8)) <= repo_autosave_changes(), last


@pytest.mark.usefixtures("broker_redis")
def test_the_redis_fsync_benchmark_runs_and_reports() -> None:
    last = _run("bench.redis_fsync", "--messages", "500", "--rounds", "1")
    found = re.fullmatch(
        rf"redis_fsync: always=({NUMBER})/s everysec=({NUMBER})/s ratio=({NUMBER}) "
        rf"always_exec_ms=({NUMBER}) everysec_exec_ms=({NUMBER})",
        last,
    )
    assert found, last
    assert all(float(value.replace(",", "")) > 0 for value in found.groups())


@pytest.mark.usefixtures("broker_redis")
def test_the_tracing_cost_benchmark_runs_and_reports() -> None:
    last = _run("bench.tracing_cost", "--checkins", "100", "--rounds", "1", "--processes", "1")
    found = re.fullmatch(
        rf"tracing: off=({NUMBER})/s on=({NUMBER})/s on_vs_off=({NUMBER}) spans_posts=({NUMBER})",
        last,
    )
    assert found, last
    assert all(float(value.replace(",", "")) > 0 for value in found.groups()), last
