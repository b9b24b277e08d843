"""A table for the CLI that stays readable at any terminal width: a table while every column gets
room for its header's words and its ids and numbers whole, else one labelled block per row.

Rich squeezes a table that does not fit until its columns are one letter wide and its headers
break mid-word; at 80 columns `taskhub status` and `deadletter list` did. This decides before
rendering, from the width it is given, so it works alike in `console.print` and `Live`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from rich.console import Console, ConsoleOptions, RenderResult
from rich.padding import Padding
from rich.table import Table
from rich.text import Text

from taskhub.terminal import safe_text, visible

FOLD_MIN_WIDTH = 20
"""The narrowest a column of free text (a detail, a payload) is folded to in table form."""
BLOCK_INDENT = 2
"""How far a block's labelled fields stand in from its first line."""
PAIR_GAP = 2
"""Spaces between a label and its value, and between two label-value pairs on a line."""


@dataclass(frozen=True, slots=True)
class Field:
    """One column: its header and how its cells may be laid out."""

    header: str
    key: bool = False
    """Names the row: the first line of the row's block in the narrow form."""
    fold: bool = False
    """Long free text, folded to fit; cells of any other field are never broken."""
    number: bool = False
    """Right-justified in the table."""


class FittedTable:
    """Rows of cells under `fields`. A `str` cell is outside text: its control characters are
    shown escaped and rich markup in it is never parsed; a `Text` cell is the caller's own."""

    def __init__(self, title: str, fields: Sequence[Field]) -> None:
        self.title = visible(title)
        self.fields = tuple(fields)
        self.rows: list[tuple[Text, ...]] = []

    def add_row(self, *cells: str | Text) -> None:
        if len(cells) != len(self.fields):
            raise ValueError(f"{len(cells)} cells for {len(self.fields)} fields")
        self.rows.append(tuple(safe_text(c) if isinstance(c, str) else c for c in cells))

    def table_width(self) -> int:
        """Columns the table form needs: each column's demand plus padding and rules."""
        return sum(self._demands()) + 3 * len(self.fields) + 1  # 1 space each side, 1 rule

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        if self.table_width() <= options.max_width:
            yield self._table()
        else:
            yield from self._blocks(options.max_width)

    def _demands(self) -> list[int]:
        demands = []
        for index, field in enumerate(self.fields):
            natural = max([len(field.header), *(row[index].cell_len for row in self.rows)])
            if field.fold:
                longest_word = max((len(word) for word in field.header.split()), default=0)
                demands.append(max(longest_word, min(natural, FOLD_MIN_WIDTH)))
            else:
                demands.append(natural)
        return demands

    def _table(self) -> Table:
        table = Table(title=Text(self.title))
        for field, demand in zip(self.fields, self._demands(), strict=True):
            table.add_column(
                field.header,
                justify="right" if field.number else "left",
                no_wrap=not field.fold,
                overflow="fold",
                min_width=demand if field.fold else None,
            )
        for row in self.rows:
            table.add_row(*row)
        return table

    def _blocks(self, width: int) -> RenderResult:
        yield Text(self.title, style="table.title")
        keys = [i for i, field in enumerate(self.fields) if field.key]
        short = [i for i, f in enumerate(self.fields) if not (f.key or f.fold)]
        long = [i for i, field in enumerate(self.fields) if field.fold and not field.key]
        label_width = max((len(self.fields[i].header) for i in short + long), default=0)
        value_width = max((row[i].cell_len for row in self.rows for i in short), default=0)
        room = width - BLOCK_INDENT
        per_line = max(1, (room + PAIR_GAP) // (label_width + value_width + 2 * PAIR_GAP))
        per_line = min(per_line, len(short))
        if keys:  # what each block's first line holds
            yield Text("  ".join(self.fields[i].header for i in keys), style="dim")
        for row in self.rows:
            name = Text("  ").join(row[i] for i in keys)
            name.stylize("bold")
            yield name
            if short:
                pairs = self._grid(
                    per_line, label_width, min(value_width, max(1, room - label_width - PAIR_GAP))
                )
                for start in range(0, len(short), per_line):
                    pairs.add_row(*self._labelled(row, short[start : start + per_line]))
                yield Padding(pairs, (0, 0, 0, BLOCK_INDENT), expand=False)
            if long:
                notes = self._grid(1, label_width, None)
                for i in long:
                    notes.add_row(*self._labelled(row, [i]))
                yield Padding(notes, (0, 0, 0, BLOCK_INDENT), expand=False)

    def _labelled(self, row: tuple[Text, ...], indexes: Sequence[int]) -> list[Text]:
        return [cell for i in indexes for cell in (Text(self.fields[i].header), row[i])]

    @staticmethod
    def _grid(pairs: int, label_width: int, value_width: int | None) -> Table:
        """Label-value pairs side by side; a value wider than `value_width` is folded."""
        grid = Table.grid(padding=(0, PAIR_GAP, 0, 0))
        for _ in range(pairs):
            grid.add_column(width=label_width, no_wrap=True, style="dim")
            grid.add_column(width=value_width, overflow="fold")
        return grid
