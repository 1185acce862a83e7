"""The study report (docs/design.md §5): build.py aggregates trial records into a JSON-able dict (pure), sections.py
adds the "Critical batch" and "Why" sections, render.py prints the table and writes report.json/md and the plots.
html.py writes the HTML page, plots.py the plots (their shared look is largebatch/plot_style.py).

The names in __all__ below are importable from `largebatch.report`, as when this was one module; the page and the
plots are imported from largebatch.report.html and largebatch.report.plots.
"""
from largebatch.report.build import INSTRUMENT_FIELDS, SCORED, STATUSES, UNITS, build_report
from largebatch.report.render import format_markdown, format_table, metric_label, write_report
from largebatch.report.sections import critical_batch_section, format_sections, why_section

__all__ = [
    "INSTRUMENT_FIELDS", "SCORED", "STATUSES", "UNITS", "build_report", "format_markdown", "format_table",
    "metric_label", "write_report", "critical_batch_section", "format_sections", "why_section",
]
