"""Jinja2 rendering of the HTML pages (report.html, multirun_summary.html).

Python builds plain data (the view model: dicts, lists, strings, numbers, base64 figures); the templates in
``runner/outputs/templates/`` lay it out. Autoescaping is on, so every string from a user or a file is shown as text;
the one exception is the package's own style sheet, inlined so that each page stays one self-contained file.
"""

from __future__ import annotations

from functools import lru_cache
from importlib import resources
from typing import Any

from jinja2 import Environment, PackageLoader, StrictUndefined
from markupsafe import Markup

TEMPLATE_PACKAGE = "runner.outputs"
TEMPLATE_FOLDER = "templates"
STYLESHEET = "report.css"


@lru_cache(maxsize=1)
def environment() -> Environment:
    """The templates' environment: autoescaped, strict about undefined names, blocks without stray blank lines."""
    return Environment(loader=PackageLoader(TEMPLATE_PACKAGE, TEMPLATE_FOLDER), autoescape=True,
                       undefined=StrictUndefined, trim_blocks=True, lstrip_blocks=True, keep_trailing_newline=True)


@lru_cache(maxsize=1)
def stylesheet() -> Markup:
    """The pages' style sheet (ours, not user input: inlined as it is)."""
    text = resources.files(TEMPLATE_PACKAGE).joinpath(TEMPLATE_FOLDER, STYLESHEET).read_text(encoding="utf-8")
    if "</" in text:  # would close the <style> element early
        raise ValueError(f"{STYLESHEET} must not contain '</'")
    return Markup(text)


def render(template: str, **context: Any) -> str:
    """Render ``template`` (a file in the templates folder) with the view model ``context`` and the style sheet."""
    return environment().get_template(template).render(stylesheet=stylesheet(), **context)
