"""report.html for a run (placeholder until the report issue lands: a minimal page listing the outputs)."""

from __future__ import annotations

import html
from typing import Any

from runner.outputs.writer import OutputWriter


def write_report(writer: OutputWriter, settings: Any, data: Any, design: Any, contrasts: Any,
                 fields: dict[str, Any], summary: dict[str, Any]) -> None:
    """Write a minimal self-contained report listing every output."""
    rows = "".join(f"<li>{html.escape(e.path)} ({html.escape(e.kind)})</li>" for e in writer.entries)
    page = f"<!doctype html><html><head><meta charset='utf-8'><title>report</title></head><body><ul>{rows}</ul></body></html>"
    writer.text(page, name="report.html", kind="report")
