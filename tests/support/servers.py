"""Private Redis and Mosquitto servers on spare loopback ports, for tests that kill and restart
them without touching the shared ones.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
from collections.abc import Mapping
from pathlib import Path

from tests.support.isolation import free_port
from tests.support.processes import wait_for

START_TIMEOUT = 15


def _answers(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
        return True
    except OSError:
        return False


class _Server:
    name = "server"

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.popen: subprocess.Popen[bytes] | None = None

    def argv(self) -> list[str]:
        raise NotImplementedError

    def start(self) -> None:
        log = (self.workdir / f"{self.name}.log").open("ab")
        self.popen = subprocess.Popen(
            self.argv(), stdout=log, stderr=subprocess.STDOUT, cwd=self.workdir
        )
        wait_for(lambda: _answers(self.port), START_TIMEOUT, f"{self.name} on port {self.port}")

    def kill(self) -> None:
        """SIGKILL, as a crash would; whatever it had not written to disk is gone."""
        if self.popen is not None and self.popen.poll() is None:
            self.popen.send_signal(signal.SIGKILL)
            self.popen.wait(timeout=10)

    def stop(self) -> None:
        if self.popen is not None and self.popen.poll() is None:
            self.popen.terminate()
            self.popen.wait(timeout=10)


class RedisServer(_Server):
    """redis-server with an AOF fsynced on every write, so a killed one restarts with its data.

    With a `password`, clients must authenticate (`requirepass`). With `maxmemory` (bytes), it
    refuses writes past it (`noeviction`), as a production Redis holding queues should."""

    name = "redis"

    def __init__(
        self, workdir: Path, password: str | None = None, maxmemory: int | None = None
    ) -> None:
        super().__init__(workdir)
        self.password = password
        self.maxmemory = maxmemory

    def argv(self) -> list[str]:
        binary = shutil.which("redis-server") or "/usr/bin/redis-server"
        return [
            binary,
            "--port",
            str(self.port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "yes",
            "--appendfsync",
            "always",
            "--dir",
            str(self.workdir),
            *(["--requirepass", self.password] if self.password else []),
            *(
                ["--maxmemory", str(self.maxmemory), "--maxmemory-policy", "noeviction"]
                if self.maxmemory
                else []
            ),
        ]

    @property
    def url(self) -> str:
        credentials = f":{self.password}@" if self.password else ""
        return f"redis://{credentials}127.0.0.1:{self.port}/0"


REPO_MOSQUITTO_CONF = Path(__file__).resolve().parents[2] / "scripts" / "mosquitto.conf"


class MosquittoServer(_Server):
    """Mosquitto with the repo's own config (persistence on, no queue limit) on a spare port."""

    name = "mosquitto"

    def __init__(
        self,
        workdir: Path,
        listener_config: str = "",
        persistent: bool = True,
        settings: Mapping[str, str] | None = None,
    ) -> None:
        """`listener_config` replaces `allow_anonymous true` (e.g. TLS and a password file);
        without `persistent`, nothing is written to disk (benchmarks queue 100,000s);
        `settings` replaces the repo's value of each named option (or adds the option)."""
        super().__init__(workdir)
        config = REPO_MOSQUITTO_CONF.read_text()
        if not persistent:
            config = config.replace("persistence true", "persistence false")
        if listener_config:
            config = config.replace("allow_anonymous true", listener_config)
        config = config.replace("listener 1883", f"listener {self.port} 127.0.0.1")
        config = config.replace("/mosquitto/data/", f"{self.workdir}/")
        for option, value in (settings or {}).items():
            config = _with_option(config, option, value)
        if os.geteuid() == 0:
            # As root, Mosquitto drops to user "mosquitto", which cannot write its database into
            # a private 0700 temp dir: every restart would then lose all sessions, silently.
            config += "\nuser root\n"
        (self.workdir / "mosquitto.conf").write_text(config)

    @property
    def database(self) -> Path:
        """Where persistence writes its snapshot of sessions and queued messages."""
        return self.workdir / "mosquitto.db"

    def save_database(self) -> None:
        """Make Mosquitto write its snapshot now (SIGUSR1) and wait until it has: its sessions
        and subscriptions then survive a SIGKILL."""
        before = self.database.stat().st_mtime_ns if self.database.exists() else 0
        assert self.popen is not None
        self.popen.send_signal(signal.SIGUSR1)
        wait_for(
            lambda: self.database.exists() and self.database.stat().st_mtime_ns != before,
            START_TIMEOUT,
            "Mosquitto to save its database",
        )

    def argv(self) -> list[str]:
        binary = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
        return [binary, "-c", str(self.workdir / "mosquitto.conf")]


def repo_autosave_changes() -> int:
    """The repo's `autosave_interval`: with `autosave_on_changes true`, how many changes Mosquitto
    lets pass between snapshots, so the most a SIGKILL loses."""
    found = re.search(r"^autosave_interval (\d+)$", REPO_MOSQUITTO_CONF.read_text(), re.MULTILINE)
    assert found is not None, "scripts/mosquitto.conf sets no autosave_interval"
    return int(found.group(1))


def _with_option(config: str, option: str, value: str) -> str:
    """`config` with `option` set to `value`: its line replaced, or one added at the end."""
    line = f"{option} {value}"
    pattern = re.compile(rf"^{re.escape(option)} .*$", re.MULTILINE)
    if pattern.search(config):
        return pattern.sub(line, config)
    return f"{config.rstrip()}\n{line}\n"
