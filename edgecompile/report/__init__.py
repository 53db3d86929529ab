"""Reports: one section model (`sections`) rendered as JSON (report.json), Markdown and HTML.

    build.py     report.json from what a build measured; write_reports; load_report
    sections.py  the section model every rendering shares
    markdown.py  report.md and the CLI table      html.py  report.html (inline SVG plots)
"""
from __future__ import annotations

from edgecompile.report.build import REPORT_SCHEMA_VERSION, build_report, load_report, write_reports
from edgecompile.report.markdown import render_md, render_table
from edgecompile.report.summary import summary_rows

__all__ = ["REPORT_SCHEMA_VERSION", "build_report", "load_report", "write_reports", "render_md", "render_table",
           "summary_rows"]
