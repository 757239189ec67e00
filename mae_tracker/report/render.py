"""A report is a list of blocks; this renders them as Markdown and as one self-contained HTML
page (figures embedded as base64 data URIs, the only CSS inline, no scripts)."""

from __future__ import annotations

import base64
import html
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Union


@dataclass(frozen=True)
class RunRef:
    """A run id cell: shown short, the full id kept (HTML title attribute)."""

    run_id: str

    def __str__(self) -> str:
        return self.run_id[:8]


Cell = Union[str, RunRef]


@dataclass
class Heading:
    text: str
    level: int = 2


@dataclass
class Paragraph:
    text: str


@dataclass
class Table:
    columns: list[str]
    rows: list[list[Cell]]


@dataclass
class Image:
    path: str  # relative to the report's folder
    caption: str


Block = Union[Heading, Paragraph, Table, Image]

_STYLE = """body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}
table{border-collapse:collapse;margin:0.5em 0 1.5em}th,td{border:1px solid #ccc;padding:3px 8px;text-align:right}
th{background:#f2f2f2}td:first-child,th:first-child{text-align:left}code{font-size:90%}
figure{margin:1em 0}img{max-width:100%}figcaption{font-size:90%;color:#555}"""


def markdown(blocks: list[Block]) -> str:
    lines: list[str] = []
    for block in blocks:
        if isinstance(block, Heading):
            lines += ["#" * block.level + " " + block.text, ""]
        elif isinstance(block, Paragraph):
            lines += [block.text, ""]
        elif isinstance(block, Table):
            lines.append("| " + " | ".join(_md_cell(c) for c in block.columns) + " |")
            lines.append("|" + "---|" * len(block.columns))
            lines += ["| " + " | ".join(_md_cell(c) for c in row) + " |" for row in block.rows]
            lines.append("")
        elif isinstance(block, Image):
            lines += [f"![{block.caption}]({block.path})", "", f"*{block.caption}*", ""]
    return "\n".join(lines)


def _md_cell(cell: Cell) -> str:
    text = f"`{cell}`" if isinstance(cell, RunRef) else str(cell)
    return text.replace("|", "\\|")


def html_page(blocks: list[Block], title: str, base: Path) -> str:
    """Images are read from ``base / block.path`` and embedded."""
    body: list[str] = []
    for block in blocks:
        if isinstance(block, Heading):
            body.append(f"<h{block.level}>{html.escape(block.text)}</h{block.level}>")
        elif isinstance(block, Paragraph):
            body.append(f"<p>{_inline(block.text)}</p>")
        elif isinstance(block, Table):
            head = "".join(f"<th>{html.escape(c)}</th>" for c in block.columns)
            rows = "".join("<tr>" + "".join(_html_cell(c) for c in row) + "</tr>" for row in block.rows)
            body.append(f"<table><thead><tr>{head}</tr></thead><tbody>{rows}</tbody></table>")
        elif isinstance(block, Image):
            data = base64.b64encode((base / block.path).read_bytes()).decode("ascii")
            body.append(f'<figure><img alt="{html.escape(block.caption)}" src="data:image/png;base64,{data}">'
                        f"<figcaption>{html.escape(block.caption)}</figcaption></figure>")
    return (f"<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>{html.escape(title)}</title>"
            f"<style>{_STYLE}</style></head><body>\n" + "\n".join(body) + "\n</body></html>\n")


def _html_cell(cell: Cell) -> str:
    if isinstance(cell, RunRef):
        return f'<td><code title="{html.escape(cell.run_id)}">{html.escape(str(cell))}</code></td>'
    return f"<td>{html.escape(str(cell))}</td>"


def _inline(text: str) -> str:
    """Markdown's `code` spans as <code>; everything else escaped."""
    parts = html.escape(text).split("`")
    return "".join(f"<code>{p}</code>" if i % 2 else _links(p) for i, p in enumerate(parts))


def _links(text: str) -> str:
    """Bare http(s) URLs (already escaped) as links."""
    return re.sub(r"https?://[^\s<>\"]+", lambda m: f'<a href="{m.group(0)}">{m.group(0)}</a>', text)
