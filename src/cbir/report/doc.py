"""Documents: headings, text, lists, tables and images described once, written as Markdown or as HTML."""

from __future__ import annotations

import base64
import html
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

MAX_COLUMNS = 8  # columns of a readable table besides its index: it fits a normal screen
_INLINE = [(re.compile(r"`([^`]+)`"), r"<code>\1</code>"), (re.compile(r"\*\*(.+?)\*\*"), r"<strong>\1</strong>")]
PAGE_STYLE = """
body { font: 15px/1.45 system-ui, -apple-system, "Segoe UI", sans-serif; color: #1f2933; margin: 1.5em auto;
       max-width: 72em; padding: 0 1em; }
h1 { font-size: 1.6em; } h2 { font-size: 1.3em; margin-top: 1.6em; border-bottom: 1px solid #d9e2ec; }
h3 { font-size: 1.1em; margin-top: 1.3em; } h4 { font-size: 1em; margin: 1em 0 0.3em; color: #334e68; }
table { border-collapse: collapse; margin: 0.4em 0 1em; font-variant-numeric: tabular-nums; }
th, td { border: 1px solid #d9e2ec; padding: 0.25em 0.6em; }
th { background: #f0f4f8; text-align: left; } td { text-align: right; } td:first-child { text-align: left; }
td.text { text-align: left; } code { background: #f0f4f8; padding: 0 0.2em; }
img { max-width: 100%; border: 1px solid #d9e2ec; }
"""


def _inline_html(text: str) -> str:
    out = html.escape(text, quote=False)
    for pattern, replacement in _INLINE:
        out = pattern.sub(replacement, out)
    return out


def _chunks(table: pd.DataFrame, size: int = MAX_COLUMNS) -> list[pd.DataFrame]:
    """A wide table cut into tables of at most ``size`` columns, each with the index."""
    if len(table.columns) <= size:
        return [table]
    return [table.iloc[:, i : i + size] for i in range(0, len(table.columns), size)]


@dataclass
class Doc:
    """A page of headings, paragraphs, lists, tables and images, written as Markdown or HTML."""

    blocks: list[tuple[str, Any]] = field(default_factory=list)

    def heading(self, text: str, level: int = 3) -> Doc:
        self.blocks.append(("heading", (level, text)))
        return self

    def text(self, text: str) -> Doc:
        self.blocks.append(("text", text))
        return self

    def items(self, items: Iterable[str]) -> Doc:
        self.blocks.append(("items", list(items)))
        return self

    def table(self, table: pd.DataFrame, floatfmt: str = ".3f") -> Doc:
        """A table (index included); over :data:`MAX_COLUMNS` columns it is cut into several."""
        for part in _chunks(table):
            self.blocks.append(("table", (part, floatfmt)))
        return self

    def records(self, table: pd.DataFrame) -> Doc:
        """Rows of text (index: what each row is about): a table in HTML, a list in Markdown, where long
        text would make a table too wide to read."""
        self.blocks.append(("records", table))
        return self

    def image(self, path: str | Path, alt: str) -> Doc:
        self.blocks.append(("image", (Path(path), alt)))
        return self

    def extend(self, other: Doc) -> Doc:
        self.blocks.extend(other.blocks)
        return self

    def markdown(self) -> str:
        parts = []
        for kind, value in self.blocks:
            if kind == "heading":
                parts.append(f"{'#' * value[0]} {value[1]}")
            elif kind == "text":
                parts.append(value)
            elif kind == "items":
                parts.append("\n".join(f"- {item}" for item in value))
            elif kind == "table":
                table, floatfmt = value
                cells = table.astype(object).where(table.notna(), None)
                parts.append(cells.to_markdown(floatfmt=floatfmt, missingval="—"))
            elif kind == "records":
                columns = list(value.columns)
                parts.append("\n".join(
                    f"- **{index}**: " + "; ".join(f"{c}: {v}" for c, v in zip(columns, row, strict=True))
                    for index, *row in value.itertuples(name=None)
                ))  # fmt: skip
            elif kind == "image":
                parts.append(f"![{value[1]}]({value[0].name})")
        return "\n\n".join(parts) + "\n"

    def html(self) -> str:
        parts = []
        for kind, value in self.blocks:
            if kind == "heading":
                parts.append(f"<h{value[0]}>{_inline_html(value[1])}</h{value[0]}>")
            elif kind == "text":
                parts.append(f"<p>{_inline_html(value)}</p>")
            elif kind == "items":
                parts.append("<ul>" + "".join(f"<li>{_inline_html(item)}</li>" for item in value) + "</ul>")
            elif kind == "table":
                table, floatfmt = value
                parts.append(_html_table(table, floatfmt))
            elif kind == "records":
                parts.append(_html_table(value, ""))
            elif kind == "image":
                data = base64.b64encode(value[0].read_bytes()).decode()
                parts.append(f'<p><img src="data:image/png;base64,{data}" alt="{html.escape(value[1])}"></p>')
        return "\n".join(parts)


def _html_table(table: pd.DataFrame, floatfmt: str) -> str:
    head = "".join(f"<th>{html.escape(str(c))}</th>" for c in [table.index.name or "", *table.columns])
    rows = []
    for index, *row in table.itertuples(name=None):
        cells = [f"<td>{_inline_html(str(index))}</td>"]
        for value in row:
            if value is None or (isinstance(value, float | np.floating) and np.isnan(value)):
                cells.append("<td>—</td>")
            elif isinstance(value, float | np.floating):
                cells.append(f"<td>{format(value, floatfmt)}</td>")
            elif isinstance(value, int | np.integer) and not isinstance(value, bool):
                cells.append(f"<td>{value}</td>")
            else:
                cells.append(f'<td class="text">{_inline_html(str(value))}</td>')
        rows.append("<tr>" + "".join(cells) + "</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(rows)}</tbody></table>"


def html_page(title: str, body: str) -> str:
    return (
        f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>'
        f"<style>{PAGE_STYLE}</style></head>\n<body>\n<h1>{html.escape(title)}</h1>\n{body}\n</body></html>\n"
    )
