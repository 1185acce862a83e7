"""report.html: one self-contained page with the report's tables, every recipe and the plots inline."""
from __future__ import annotations

import base64
import re
from html.parser import HTMLParser

from largebatch.report import build_report, write_report
from largebatch.report.html import markdown_to_html, write_html


def _rec(tid, batch, rule, acc, wall, status="completed", baseline=False):
    history = [] if acc is None else [{"epoch": 0, "val_acc": acc * 0.9, "wall_s": wall / 2},
                                      {"epoch": 1, "val_acc": acc, "wall_s": wall}]
    return {"trial_id": tid, "name": f"B={batch} {rule}", "is_baseline": baseline, "global_batch_size": batch,
            "rule": rule, "warmup_epochs": 0.0, "optimizer": "sgd", "base_lr": 0.05, "peak_lr": 0.05, "seed": 0,
            "status": status, "best_val_acc": acc, "final_val_acc": acc, "wall_s": wall, "steps": 100,
            "history": history}


class _Tags(HTMLParser):
    def __init__(self):
        super().__init__()
        self.tags: list[tuple[str, dict]] = []

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))


def test_page_has_the_tables_and_plots_inline(tmp_path):
    records = [_rec("a", 32, "none", 0.95, 8.0, baseline=True), _rec("b", 128, "linear", 0.948, 3.0),
               _rec("c", 512, "linear<script>", None, None, status="diverged")]
    report = build_report(records, tolerance=1.0)
    report["study"] = {"name": "demo <b>", "parent_run_id": "abc123", "study_s": 42.0, "n_trials": 3}
    write_report(report, records, tmp_path)
    page = write_html(report, tmp_path).read_text()

    parser = _Tags()
    parser.feed(page)
    tags = [t for t, _ in parser.tags]
    assert tags.count("table") >= 2  # the report table and every recipe
    imgs = [a for t, a in parser.tags if t == "img"]
    pngs = sorted(p.name for p in tmp_path.glob("*.png"))
    assert pngs and len(imgs) == len(pngs)
    for a in imgs:  # each plot is a real PNG inline
        assert a["src"].startswith("data:image/png;base64,")
        assert base64.b64decode(a["src"].split(",", 1)[1])[:8] == b"\x89PNG\r\n\x1a\n"
    # self-contained: nothing to fetch
    assert not re.search(r"""(src|href)=["'](https?:|//)""", page)
    assert not any(t in ("script", "link") for t in tags)
    # the study's own strings are escaped
    assert "<script>" not in page and "linear&lt;script&gt;" in page and "demo &lt;b&gt;" in page
    assert "B=128 linear" in page and "max_safe_batch" in page and "abc123" in page


def test_markdown_subset():
    html = markdown_to_html("# T\n\n| a | b |\n|---|---|\n| 1 | x |\n\n- one\n- two\n\n1. first\n\ntext")
    assert "<table><thead><tr><th>a</th><th>b</th></tr></thead>" in html
    assert '<td class="num">1</td><td>x</td>' in html
    assert "<ul><li>one</li><li>two</li></ul>" in html and "<ol><li>first</li></ol>" in html
    assert "<h2>T</h2>" in html and "<p>text</p>" in html


def test_inline_bold_and_code_are_rendered_and_still_escaped():
    html = markdown_to_html("- fit: **B_crit = E_min/S_min = 64** from `steps_to_target`\n\n**<b>x</b>** and a * star")
    assert "<li>fit: <strong>B_crit = E_min/S_min = 64</strong> from <code>steps_to_target</code></li>" in html
    assert "**" not in html and "`" not in html
    assert "<strong>&lt;b&gt;x&lt;/b&gt;</strong> and a * star" in html  # a study's string never becomes markup


def test_every_markdown_construct_of_a_real_report_is_rendered(tmp_path):
    # the page says what report.md says, with no Markdown syntax left over (the critical-batch bold included)
    from tests.unit.test_time_to_target import PROFILE, study

    from largebatch.report import format_markdown

    report = build_report(study(), tolerance=0.5, profile=PROFILE)
    md = format_markdown(report)
    page = write_html(report, tmp_path).read_text()
    body = page.split("<body>", 1)[1]
    assert "**" in md and "**" not in body
    assert re.search(r"<p>Answer: train at B=256", body)
