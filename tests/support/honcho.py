"""The Procfile under honcho in a terminal of its own, as `scripts/demo` runs it, stopped with
Ctrl-C as a person stops it: the pseudo-terminal sends SIGINT to its foreground process group.
"""

from __future__ import annotations

import contextlib
import os
import pty
import re
import signal
import sys
import threading
from collections.abc import Sequence
from pathlib import Path

from rig.isolation import free_port
from rig.processes import wait_for

ROOT = Path(__file__).resolve().parents[2]
CTRL_C = b"\x03"
ANSI_ESCAPE = re.compile(r"\x1b\[[0-9;]*m")
PORT_STEP = 100
"""honcho gives each process type the next hundred ports: $PORT of worker.N is base + 100 + N-1."""
WORKER_TYPE_INDEX = 1
"""The worker is the Procfile's second process type, so its copies get base + 100, + 101, ..."""


def free_base_port(workers: int) -> int:
    """A honcho base port (-p) whose worker ports, base + 100 ..., are all free."""
    for _ in range(50):
        first = free_port()
        base = first - PORT_STEP * WORKER_TYPE_INDEX
        ports = range(first, first + workers)
        if base > 1024 and all(_bindable(port) for port in ports):
            return base
    raise RuntimeError("no free run of worker ports for honcho")


def _bindable(port: int) -> bool:
    import socket

    with socket.socket() as probe:
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


class Honcho:
    """`honcho start -f Procfile -p BASE -c worker=N [process ...]` on a pseudo-terminal."""

    def __init__(
        self, log: Path, env: dict[str, str], workers: int, processes: Sequence[str] = ()
    ) -> None:
        self.log = log
        self.argv = [
            *("honcho", "start", "-f", "Procfile", "-p", str(free_base_port(workers))),
            *("-c", f"worker={workers}", *processes),
        ]
        bin_dir = str(Path(sys.executable).parent)
        self.env = {**os.environ, **env, "PATH": f"{bin_dir}:{os.environ['PATH']}"}
        self.pid = 0
        self.master = -1
        self.returncode: int | None = None
        self._output = bytearray()
        self._reader: threading.Thread | None = None

    def start(self) -> Honcho:
        pid, master = pty.fork()
        if pid == 0:  # the child: a session of its own, the pseudo-terminal its terminal
            try:
                os.chdir(ROOT)
                os.execvpe(self.argv[0], self.argv, self.env)  # noqa: S606  (honcho, as the demo runs it)
            finally:
                os._exit(127)
        self.pid, self.master = pid, master
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        return self

    def _read(self) -> None:
        with self.log.open("wb") as out:
            while True:
                try:
                    data = os.read(self.master, 65536)
                except OSError:  # EIO: every process holding the terminal has exited
                    return
                if not data:
                    return
                self._output.extend(data)
                out.write(data)
                out.flush()

    def output(self) -> str:
        """What honcho printed so far, colours and carriage returns taken out."""
        text = bytes(self._output).decode(errors="replace").replace("\r", "")
        return ANSI_ESCAPE.sub("", text)

    def ctrl_c(self) -> None:
        """Type Ctrl-C in honcho's terminal."""
        os.write(self.master, CTRL_C)

    def wait(self, timeout: float) -> int:
        """Wait for honcho to exit; its exit status (a negative signal number when killed)."""

        def exited() -> bool:
            if self.returncode is None:
                pid, status = os.waitpid(self.pid, os.WNOHANG)
                if pid:
                    self.returncode = os.waitstatus_to_exitcode(status)
            return self.returncode is not None

        wait_for(exited, timeout, "honcho to exit")
        if self._reader is not None:
            self._reader.join(timeout=5)
        return int(self.returncode or 0)

    def kill(self) -> None:
        """SIGKILL honcho and everything it started (each process in a session of its own)."""
        if self.returncode is None and self.pid:
            for child in _descendants(self.pid):
                _kill_group(child)
            _kill_group(self.pid)
            with contextlib.suppress(TimeoutError):
                self.wait(timeout=10)
        if self.master >= 0:
            os.close(self.master)
            self.master = -1


def _descendants(pid: int) -> list[int]:
    found: list[int] = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rpartition(")")[2].split()
            except OSError:
                continue
            if int(fields[1]) == pid:
                found.append(int(entry.name))
    return found + [grandchild for child in found for grandchild in _descendants(child)]


def _kill_group(pid: int) -> None:
    with contextlib.suppress(OSError):  # gone already, or not a group leader
        os.killpg(pid, signal.SIGKILL)


def stop_lines(output: str) -> dict[str, str]:
    """honcho's "<name> stopped (rc=N)" lines: the exit status of each process, by name."""
    return dict(re.findall(r"system\s+\| (\S+) stopped \(rc=(-?\d+)\)", output))
