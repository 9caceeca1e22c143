"""Reading manifest.json (it is written by OutputWriter.finalize, last and atomically)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from runner.outputs.writer import MANIFEST_NAME


def read_manifest(run_dir: Path) -> dict[str, Any] | None:
    """The manifest of a run directory, or None when there is none (or it cannot be parsed)."""
    path = Path(run_dir) / MANIFEST_NAME
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, OSError, UnicodeDecodeError):
        return None


def is_complete(run_dir: Path) -> bool:
    """True when the run directory holds a manifest with status complete."""
    manifest = read_manifest(run_dir)
    return bool(manifest) and manifest.get("status") == "complete"
