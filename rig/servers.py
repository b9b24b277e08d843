"""Private Redis and Mosquitto servers on spare loopback ports, for tests and benchmarks that kill
and restart them (or configure them their own way) without touching the shared ones.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
from collections.abc import Mapping, Sequence
from pathlib import Path

from rig.isolation import free_port
from rig.processes import wait_for

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
        with (self.workdir / f"{self.name}.log").open("ab") as log:  # the child keeps its copy
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


class ConfiguredRedisServer(_Server):
    """redis-server run with someone else's arguments (docker-compose.yml's), moved to a spare
    loopback port and a private directory; `password` is the one those arguments require."""

    name = "redis"

    def __init__(self, workdir: Path, arguments: Sequence[str], password: str) -> None:
        super().__init__(workdir)
        self.arguments = list(arguments)
        self.password = password

    def argv(self) -> list[str]:
        binary = shutil.which("redis-server") or "/usr/bin/redis-server"
        # Later arguments win, so the private port and directory override anything given.
        where = ["--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.workdir)]
        return [binary, *self.arguments, *where]

    @property
    def url(self) -> str:
        return f"redis://:{self.password}@127.0.0.1:{self.port}/0"


REPO_MOSQUITTO_CONF = Path(__file__).resolve().parents[1] / "scripts" / "mosquitto.conf"
REPO_USERS_FILE = "/mosquitto/auth/passwords"
"""Where the repo's config reads its users from (docker-compose.yml fills it)."""
REPO_LOGIN = f"allow_anonymous false\npassword_file {REPO_USERS_FILE}"
"""The repo's config's login lines: users from the password file, nobody anonymous."""


class MosquittoServer(_Server):
    """Mosquitto with the repo's own config (persistence on, no queue limit) on a spare port,
    open to anonymous clients on loopback unless told how to log in."""

    name = "mosquitto"

    def __init__(
        self,
        workdir: Path,
        listener_config: str = "",
        persistent: bool = True,
        settings: Mapping[str, str] | None = None,
        password_file: Path | None = None,
    ) -> None:
        """`listener_config` replaces the repo's login lines (e.g. TLS and a password file), by
        default with `allow_anonymous true`; `password_file` keeps the repo's login lines as they
        are, reading users from that file; without `persistent`, nothing is written to disk
        (benchmarks queue 100,000s); `settings` replaces the repo's value of each named option
        (or adds the option)."""
        super().__init__(workdir)
        config = REPO_MOSQUITTO_CONF.read_text()
        if REPO_LOGIN not in config:
            raise ValueError(f"{REPO_MOSQUITTO_CONF} no longer has the lines {REPO_LOGIN!r}")
        if not persistent:
            config = config.replace("persistence true", "persistence false")
        if password_file is not None:
            config = config.replace(REPO_USERS_FILE, str(password_file))
        else:
            config = config.replace(REPO_LOGIN, listener_config or "allow_anonymous true")
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
