"""Pages as a browser shows them: headless Chromium loads a URL, runs its scripts and dumps the
resulting DOM; small readers pick tables and detail lists out of it. No Python dependency.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from html.parser import HTMLParser

CHROMIUM = "chromium-headless-shell"
SCRIPT_BUDGET_MS = 3000
"""Virtual time a page's scripts get to fill it in before the DOM is dumped."""
RENDER_TIMEOUT_SECONDS = 30.0
_QUIET = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
)


def rendered_dom(url: str) -> str:
    """The DOM of `url` after its scripts ran. Basic-auth credentials may ride in the URL."""
    chromium = shutil.which(CHROMIUM)
    if chromium is None:
        raise RuntimeError(f"{CHROMIUM} is not installed: run scripts/system-packages (as root)")
    with tempfile.TemporaryDirectory(prefix="taskhub-chromium-") as profile:
        done = subprocess.run(
            [
                chromium,
                *_QUIET,
                f"--user-data-dir={profile}",
                f"--virtual-time-budget={SCRIPT_BUDGET_MS}",
                "--dump-dom",
                url,
            ],
            capture_output=True,
            timeout=RENDER_TIMEOUT_SECONDS,
            check=False,
        )
    if done.returncode != 0:
        raise RuntimeError(f"{CHROMIUM} exited with {done.returncode}: {done.stderr[-2000:]!r}")
    return done.stdout.decode(errors="replace")


class _PageReader(HTMLParser):
    """Collects the text of every table row (by table id) and of every <dt>/<dd> pair."""

    def __init__(self) -> None:
        super().__init__()
        self.rows: dict[str, list[list[str]]] = {}
        self.details: dict[str, str] = {}
        self._table: str | None = None
        self._row: list[str] | None = None
        self._cell: list[str] | None = None
        self._term: list[str] | None = None
        self._term_done = ""
        self._description: list[str] | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "table":
            self._table = dict(attrs).get("id") or ""
            self.rows.setdefault(self._table, [])
        elif tag == "tr" and self._table is not None:
            self._row = []
        elif tag in ("td", "th") and self._row is not None:
            self._cell = []
        elif tag == "dt":
            self._term = []
        elif tag == "dd":
            self._description = []

    def handle_endtag(self, tag: str) -> None:
        if tag == "table":
            self._table = None
        elif tag == "tr" and self._row is not None and self._table is not None:
            self.rows[self._table].append(self._row)
            self._row = None
        elif tag in ("td", "th") and self._cell is not None and self._row is not None:
            self._row.append(" ".join("".join(self._cell).split()))
            self._cell = None
        elif tag == "dt" and self._term is not None:
            self._term_done = " ".join("".join(self._term).split())
            self._term = None
        elif tag == "dd" and self._description is not None:
            self.details[self._term_done] = " ".join("".join(self._description).split())
            self._description = None

    def handle_data(self, data: str) -> None:
        for part in (self._cell, self._term, self._description):
            if part is not None:
                part.append(data)


def table_rows(dom: str, table_id: str) -> list[list[str]]:
    """The text of each cell, row by row (header row included), of the table with `table_id`."""
    reader = _PageReader()
    reader.feed(dom)
    return reader.rows.get(table_id, [])


def details(dom: str) -> dict[str, str]:
    """Each <dt> term's <dd> text, as on Flower's task page."""
    reader = _PageReader()
    reader.feed(dom)
    return reader.details
