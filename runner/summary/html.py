"""report.html: report.md as one self-contained page to send, with its figures inside it.

The markdown is rendered by markdown-it-py (rich's own renderer, so always installed), the figures are embedded
as data URIs, and the style and the table sorting are inline: the file needs nothing else, and no network.
"""
from __future__ import annotations

import base64
import html
import re
from pathlib import Path

from markdown_it import MarkdownIt

STYLE = """
body { font: 15px/1.5 system-ui, -apple-system, "Segoe UI", sans-serif; max-width: 1100px; margin: 2em auto;
       padding: 0 1em; color: #1b1b1b; }
h1 { font-size: 1.6em; } h2 { font-size: 1.25em; margin-top: 2em; border-bottom: 1px solid #ddd; }
table { border-collapse: collapse; margin: 1em 0; font-size: 13px; display: block; overflow-x: auto; }
th, td { padding: 4px 8px; border-bottom: 1px solid #e4e4e4; text-align: right; white-space: nowrap; }
th:first-child, td:first-child { text-align: left; }
th { border-bottom: 2px solid #999; cursor: pointer; user-select: none; }
th:hover { background: #f2f2f2; }
code { background: #f4f4f4; padding: 1px 4px; border-radius: 3px; font-size: 0.92em; }
img { max-width: 100%; display: block; margin: 1em 0; }
"""

# Click a column's header to sort by it (numbers as numbers), again to reverse.
SORT = """
document.querySelectorAll("th").forEach(function (th) {
  th.addEventListener("click", function () {
    var table = th.closest("table"), body = table.tBodies[0], i = th.cellIndex;
    var up = th.dataset.order !== "up"; th.dataset.order = up ? "up" : "down";
    var key = function (row) { var t = row.cells[i].textContent.trim(), n = parseFloat(t);
                               return isNaN(n) ? t : n; };
    Array.from(body.rows).sort(function (a, b) {
      var x = key(a), y = key(b), c = (typeof x === typeof y) ? (x < y ? -1 : x > y ? 1 : 0)
                                                              : (typeof x === "number" ? -1 : 1);
      return up ? c : -c;
    }).forEach(function (row) { body.appendChild(row); });
  });
});
"""


def _embedded(match: re.Match[str], folder: Path) -> str:
    path = folder / html.unescape(match.group(1))
    if not path.is_file():
        return match.group(0)
    data = base64.b64encode(path.read_bytes()).decode()
    return f'src="data:image/png;base64,{data}"'


def render(markdown: str, folder: Path) -> str:
    """report.html's text from report.md's; figures are read from ``folder`` (where report.md points)."""
    body = MarkdownIt("commonmark").enable("table").render(markdown)
    body = re.sub(r'src="([^"]+\.png)"', lambda m: _embedded(m, folder), body)
    title = html.escape(markdown.splitlines()[0].lstrip("# ").strip() if markdown else "report")
    return (f"<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\"><title>{title}</title>"
            f"<style>{STYLE}</style></head>\n<body>\n{body}\n<script>{SORT}</script>\n</body></html>\n")
