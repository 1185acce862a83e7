"""The study report as one self-contained HTML page: the report's tables, every recipe, the plots inline.

Nothing is fetched when the page opens (styles inline, plots as base64 PNG data URIs), so it shows the same from a
local folder, S3 or MLflow's artifact view. The text comes from the Markdown report (`report.format_markdown`),
translated line by line, so the page always says what report.md says; the page adds a table of every recipe.
Every string from a study (names, reasons, labels) is HTML-escaped.
"""
from __future__ import annotations

import base64
import html
import math
import re
from pathlib import Path
from typing import Any, Iterable

from largebatch.report.render import format_markdown

HTML_NAME = "report.html"
_MAX_PLOT_BYTES = 5 * 2**20  # a plot larger than this is linked, not embedded
_STYLE = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:2rem auto;max-width:1200px;color:#222;
padding:0 1rem}
h1{font-size:1.6rem}h2{font-size:1.2rem;margin-top:2rem;border-bottom:1px solid #ddd;padding-bottom:.2rem}
table{border-collapse:collapse;margin:.8rem 0;font-size:.9rem}
th,td{border:1px solid #ccc;padding:.3rem .6rem;text-align:left;white-space:nowrap}
th{background:#f3f5f7}tr:nth-child(even) td{background:#fafbfc}
td.num{text-align:right;font-variant-numeric:tabular-nums}
figure{display:inline-block;margin:.5rem 1rem .5rem 0;vertical-align:top}
figure img{max-width:560px;border:1px solid #eee}figcaption{font-size:.85rem;color:#555}
.meta{color:#555;font-size:.9rem}code{background:#f3f5f7;padding:0 .2rem}
"""
_LIST_ITEM = re.compile(r"^(- |\d+\. )")
_NUMERIC = re.compile(r"^[+-]?[\d.,]+(%|x| s)?( ± [\d.]+)?( \(n=\d+\))?$")


def _esc(x: Any) -> str:
    return html.escape(str(x), quote=True)


_BOLD = re.compile(r"\*\*(.+?)\*\*")
_CODE = re.compile(r"`([^`]+)`")


def _inline(text: str) -> str:
    """Escaped text with the inline Markdown the report writes rendered: **bold** and `code`."""
    out = _esc(text)
    out = _CODE.sub(lambda m: f"<code>{m[1]}</code>", out)  # escaped already; * inside code stays literal
    return _BOLD.sub(lambda m: f"<strong>{m[1]}</strong>", out)


def _cells(line: str) -> list[str]:
    return [c.strip() for c in line.strip().strip("|").split("|")]


def _table(header: list[str], rows: Iterable[list[str]]) -> str:
    head = "".join(f"<th>{_esc(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f'<td class="num">{_esc(c)}</td>' if _NUMERIC.match(c) else
                                    f"<td>{_inline(c)}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def markdown_to_html(md: str) -> str:
    """The subset the Markdown report uses: # headings, | tables |, - and 1. lists, ``` fences, paragraphs, and
    inline **bold** and `code`."""
    out: list[str] = []
    lines = md.splitlines()
    i = 0
    while i < len(lines):
        line = lines[i].rstrip()
        if line.startswith("```"):
            i += 1
            continue  # the report fences its table for terminals; here it is a real table
        if line.startswith("|"):
            block = []
            while i < len(lines) and lines[i].lstrip().startswith("|"):
                block.append(_cells(lines[i]))
                i += 1
            rows = [r for r in block[1:] if not all(re.fullmatch(r":?-+:?", c) for c in r)]
            out.append(_table(block[0], rows))
            continue
        m = re.match(r"^(#{1,3}) (.*)", line)
        if m:
            level = max(2, min(len(m[1]), 3))  # the page has its own h1
            out.append(f"<h{level}>{_inline(m[2])}</h{level}>")
        elif _LIST_ITEM.match(line):
            ordered = not line.startswith("- ")
            items = []
            while i < len(lines) and _LIST_ITEM.match(lines[i]):
                items.append(f"<li>{_inline(_LIST_ITEM.sub('', lines[i]))}</li>")
                i += 1
            tag = "ol" if ordered else "ul"
            out.append(f"<{tag}>{''.join(items)}</{tag}>")
            continue
        elif line.strip():
            out.append(f"<p>{_inline(line)}</p>")
        i += 1
    return "\n".join(out)


def _pct(x: Any) -> str:
    return f"{100 * x:.2f}%" if isinstance(x, (int, float)) and math.isfinite(x) else "-"


def _num(x: Any, fmt: str) -> str:
    return format(x, fmt) if isinstance(x, (int, float)) and math.isfinite(x) else "-"


def recipes_table(report: dict) -> str:
    """Every recipe the study ran (the Markdown report shows the best per batch size)."""
    proj = report.get("speed_basis") == "projected"  # a throughput profile: projected time beside the wall-clock
    header = ["recipe", "status", "accuracy", "gap vs baseline (pts)", *(["projected s"] if proj else []),
              "training s", "steps", "peak LR", "trials"]
    rows = []
    for c in report.get("configs") or []:
        rows.append([("baseline " if c.get("is_baseline") else "") + str(c.get("label", "?")), str(c.get("status", "")),
                     _pct(c.get("acc_mean")), _num(c.get("gap_points"), "+.2f"),
                     *([_num(c.get("projected_s"), ".1f")] if proj else []), _num(c.get("wall_s_mean"), ".1f"),
                     _num(c.get("steps"), "d"), _num(c.get("peak_lr"), ".4g"), str(c.get("n_trials", ""))])
    return _table(header, rows) if rows else "<p>(no recipes)</p>"


def _plots(out_dir: Path) -> str:
    figs = []
    for png in sorted(out_dir.glob("*.png")):
        caption = _esc(png.stem.replace("_", " "))
        if png.stat().st_size > _MAX_PLOT_BYTES:
            figs.append(f'<figure><a href="{_esc(png.name)}">{caption}</a></figure>')
            continue
        data = base64.b64encode(png.read_bytes()).decode("ascii")
        figs.append(f'<figure><img alt="{caption}" src="data:image/png;base64,{data}">'
                    f"<figcaption>{caption}</figcaption></figure>")
    return "\n".join(figs) or "<p>(no plots: no finished trial had data to draw)</p>"


def render_html(report: dict, markdown: str, out_dir: Path) -> str:
    study = report.get("study") or {}
    title = f"largebatch report: {study.get('name', 'study')}"
    meta = []
    if study.get("parent_run_id"):
        meta.append(f"MLflow parent run <code>{_esc(study['parent_run_id'])}</code>")
    if isinstance(study.get("study_s"), (int, float)):
        meta.append(f"{study['study_s']:.0f} s")
    if study.get("n_trials"):
        meta.append(f"{_esc(study['n_trials'])} trials")
    body = markdown_to_html(markdown.replace("# largebatch report", "", 1))
    return (f"<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>{_esc(title)}</title>"
            f"<style>{_STYLE}</style></head><body>\n<h1>{_esc(title)}</h1>\n"
            f"<p class=\"meta\">{' · '.join(meta)}</p>\n{body}\n<h2>Every recipe</h2>\n{recipes_table(report)}\n"
            f"<h2>Plots</h2>\n{_plots(out_dir)}\n</body></html>\n")


def write_html(report: dict, out_dir: str | Path) -> Path:
    """report.html next to report.md and the plots (write_report first: the plots are read from out_dir)."""
    out = Path(out_dir)
    path = out / HTML_NAME
    path.write_text(render_html(report, format_markdown(report), out), encoding="utf-8")
    return path
