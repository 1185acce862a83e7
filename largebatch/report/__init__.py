"""The study report (docs/design.md §5): build.py aggregates trial records into a JSON-able dict (pure), sections.py
adds the "Critical batch" and "Why" sections, render.py prints the table and writes report.json/md and the plots.
The HTML page and the plots are largebatch/report_html.py and largebatch/report_plots.py.

Everything is importable from `largebatch.report`, as when this was one module.
"""
from largebatch.report.build import INSTRUMENT_FIELDS, SCORED, STATUSES, UNITS, build_report
from largebatch.report.render import format_markdown, format_table, metric_label, write_report
from largebatch.report.sections import critical_batch_section, format_sections, why_section

__all__ = [
    "INSTRUMENT_FIELDS", "SCORED", "STATUSES", "UNITS", "build_report", "format_markdown", "format_table",
    "metric_label", "write_report", "critical_batch_section", "format_sections", "why_section",
]
