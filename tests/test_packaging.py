"""The wheel ships the PEP 561 markers: users type-check their route tables against taskhub.routes
and taskhub.payloads, and their callers against the tasks."""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SOURCES = ("pyproject.toml", "README.md", "celeryconfig.py", "taskhub", "tasks", "bridge")


def test_the_wheel_marks_taskhub_and_tasks_as_typed(tmp_path: Path) -> None:
    tree = tmp_path / "src"  # built from a copy: the build writes its own files beside the sources
    for name in SOURCES:
        source = ROOT / name
        if source.is_dir():
            shutil.copytree(source, tree / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            tree.mkdir(exist_ok=True)
            shutil.copy2(source, tree / name)
    build = ["wheel", "--no-deps", "--no-build-isolation", "-q", "--disable-pip-version-check"]
    done = subprocess.run(
        [sys.executable, "-m", "pip", *build, "-w", str(tmp_path / "dist"), str(tree)],
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    (wheel,) = (tmp_path / "dist").glob("taskhub-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())

    assert {"taskhub/py.typed", "tasks/py.typed"} <= names
    assert {"taskhub/routes.py", "taskhub/payloads.py"} <= names
