"""The report's document model and its two renderings: Markdown (figures as files) and HTML (self-contained)."""

from __future__ import annotations

import base64
import html
import math
from dataclasses import dataclass, field
from pathlib import Path

from raysem.report.stats import Estimate


def fmt_ci(est: Estimate, scale: float = 1.0, digits: int = 2, signed: bool = False) -> str:
    """``12.34 [10.10, 14.56]``; "(no CI)" when the interval is undefined (a single trial)."""
    if est is None or math.isnan(est.estimate):
        return "—"
    spec = f"{'+' if signed else ''}.{digits}f"
    text = format(est.estimate * scale, spec)
    if math.isnan(est.low) or math.isnan(est.high):
        return f"{text} (no CI)"
    return f"{text} [{format(est.low * scale, spec)}, {format(est.high * scale, spec)}]"


@dataclass
class Table:
    caption: str
    headers: list[str]
    rows: list[list[str]]


@dataclass
class Figure:
    caption: str
    path: Path


@dataclass
class Section:
    key: str
    title: str
    blocks: list[str | Table | Figure] = field(default_factory=list)

    def text(self, paragraph: str) -> Section:
        self.blocks.append(paragraph)
        return self


def _md_cell(value: str) -> str:
    return str(value).replace("|", "\\|").replace("\n", " ")


def render_markdown(title: str, preamble: list[str], sections: list[Section], root: Path) -> str:
    """GitHub-flavoured Markdown; figures are linked relative to ``root`` (the report folder)."""
    out = [f"# {title}", ""]
    out += [p + "\n" for p in preamble]
    for section in sections:
        out += [f"## {section.title}", ""]
        for block in section.blocks:
            if isinstance(block, Table):
                out += [f"**{block.caption}**", ""]
                out.append("| " + " | ".join(_md_cell(h) for h in block.headers) + " |")
                out.append("|" + "|".join("---" for _ in block.headers) + "|")
                out += ["| " + " | ".join(_md_cell(c) for c in row) + " |" for row in block.rows]
                out.append("")
            elif isinstance(block, Figure):
                out += [f"![{block.caption}]({block.path.relative_to(root).as_posix()})", "", f"*{block.caption}*", ""]
            else:
                out += [block, ""]
    return "\n".join(out)


_CSS = """
body { font-family: system-ui, sans-serif; max-width: 1100px; margin: 2em auto; padding: 0 1em; color: #222; }
table { border-collapse: collapse; margin: 0.5em 0 1.5em; font-size: 0.9em; }
th, td { border: 1px solid #ccc; padding: 0.25em 0.6em; text-align: left; vertical-align: top; }
th { background: #f3f3f3; }
caption { caption-side: top; text-align: left; font-weight: 600; padding-bottom: 0.3em; }
figure { margin: 1em 0 2em; } img { max-width: 100%; }
figcaption { font-style: italic; font-size: 0.9em; }
"""


def render_html(title: str, preamble: list[str], sections: list[Section]) -> str:
    """One self-contained HTML page: styles inline, figures embedded as base64 data URIs."""
    esc = html.escape
    out = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>{esc(title)}</title>",
        f"<style>{_CSS}</style></head><body>",
        f"<h1>{esc(title)}</h1>",
    ]
    out += [f"<p>{esc(p)}</p>" for p in preamble]
    for section in sections:
        out.append(f'<h2 id="{esc(section.key)}">{esc(section.title)}</h2>')
        for block in section.blocks:
            if isinstance(block, Table):
                out.append(f"<table><caption>{esc(block.caption)}</caption><thead><tr>")
                out.append("".join(f"<th>{esc(h)}</th>" for h in block.headers) + "</tr></thead><tbody>")
                out += ["<tr>" + "".join(f"<td>{esc(str(c))}</td>" for c in row) + "</tr>" for row in block.rows]
                out.append("</tbody></table>")
            elif isinstance(block, Figure):
                data = base64.b64encode(block.path.read_bytes()).decode("ascii")
                out.append(
                    f'<figure><img alt="{esc(block.caption)}" src="data:image/png;base64,{data}">'
                    f"<figcaption>{esc(block.caption)}</figcaption></figure>"
                )
            else:
                out.append(f"<p>{esc(block)}</p>")
    out.append("</body></html>")
    return "\n".join(out)
