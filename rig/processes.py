"""Real taskhub processes for end-to-end tests and benchmarks: started with this run's settings,
their output in a log file, readiness awaited on what they print, and killed or stopped on demand.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

POLL_SECONDS = 0.05
BRIDGE_READY = "mqtt subscribed to"
WORKER_READY = " ready."


def wait_for(
    condition: Callable[[], bool], timeout: float, what: str, poll: float = POLL_SECONDS
) -> float:
    """Return once `condition()` holds, with the monotonic time it first did (benchmarks time
    by it, polling finer); fail with `what` after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout:g}s waiting for {what}")
        time.sleep(poll)
    return time.monotonic()


class Process:
    """One child process whose combined output goes to `log`."""

    def __init__(self, name: str, argv: Sequence[str], log_dir: Path, env: dict[str, str]) -> None:
        self.name = name
        self.argv = list(argv)
        self.log = log_dir / f"{name}.log"
        self.env = {**os.environ, **env}
        self.popen: subprocess.Popen[bytes] | None = None
        self.starts = 0

    def start(self) -> Process:
        self.starts += 1
        with self.log.open("ab") as out:
            out.write(f"--- start {self.starts}: {' '.join(self.argv)}\n".encode())
            out.flush()
            self.popen = subprocess.Popen(
                self.argv,
                stdout=out,
                stderr=subprocess.STDOUT,
                env=self.env,
                start_new_session=True,
            )
        return self

    @property
    def pid(self) -> int:
        assert self.popen is not None
        return self.popen.pid

    def output(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def output_of_last_start(self) -> str:
        return self.output().rpartition(f"--- start {self.starts}:")[2]

    def wait_output(self, text: str, timeout: float, count: int = 1) -> None:
        def seen() -> bool:
            self.raise_if_exited()
            return self.output_of_last_start().count(text) >= count

        wait_for(seen, timeout, f"{self.name} to print {text!r}")

    def raise_if_exited(self) -> None:
        if self.popen is not None and self.popen.poll() is not None:
            tail = self.output()[-3000:]
            raise RuntimeError(f"{self.name} exited with {self.popen.returncode}:\n{tail}")

    def kill(self) -> None:
        """SIGKILL the whole process group: no cleanup, as a crash would leave it."""
        if self.popen is not None and self.popen.poll() is None:
            os.killpg(self.popen.pid, signal.SIGKILL)
            self.popen.wait(timeout=10)

    def terminate(self, timeout: float = 30) -> int:
        """SIGTERM and wait for a clean exit; returns the exit code."""
        assert self.popen is not None
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)
        return self.popen.wait(timeout=timeout)


def python_module(module: str, *args: str) -> list[str]:
    return [sys.executable, "-m", module, *args]


def celery(*args: str) -> list[str]:
    return [sys.executable, "-m", "celery", "-A", "taskhub", *args]


GREEN_WORKER = ("-P", "gevent")
"""The recommended worker's pool (docs/workers.md)."""


def start_worker(
    name: str, log_dir: Path, env: dict[str, str], *pool: str, autoscale: str = "20,2"
) -> Process:
    """A worker consuming every route queue, ready; the recommended gevent one unless `pool`
    names another (e.g. "-c", "2" for prefork)."""
    argv = celery(
        "worker",
        *(pool or GREEN_WORKER),
        *(() if pool else (f"--autoscale={autoscale}",)),
        "--loglevel=INFO",
        "--without-mingle",
        "--without-gossip",
        "-n",
        f"{name}-{os.getpid()}@%h",
    )
    process = Process(name, argv, log_dir, {"REMAP_SIGTERM": "SIGQUIT", **env}).start()
    process.wait_output(WORKER_READY, timeout=60)
    return process
