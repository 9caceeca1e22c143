"""OmegaConf resolvers used by the Hydra config (registered before Hydra composes anything)."""

from __future__ import annotations

import hashlib
import re

from omegaconf import OmegaConf

_UNSAFE = re.compile(r"[^A-Za-z0-9._+=,@-]+")
MAX_DIRNAME = 120


def safe_dirname(overrides: str) -> str:
    """A run-directory name from Hydra's override string: readable, one path component, nothing a shell or a
    path could misread (no '/', '..', NUL, quotes, spaces or leading dots); long names end with a short hash."""
    text = str(overrides or "")
    cleaned = _UNSAFE.sub("-", text).replace("..", "-")
    cleaned = re.sub(r"-{2,}", "-", cleaned).strip("-.") or "default"
    if len(cleaned) > MAX_DIRNAME or cleaned != text:
        digest = hashlib.sha256(text.encode()).hexdigest()[:8]
        cleaned = f"{cleaned[:MAX_DIRNAME]}-{digest}" if cleaned != "default" else cleaned
    return cleaned


def register_resolvers() -> None:
    """Register ``${safe_dirname:...}`` once."""
    if not OmegaConf.has_resolver("safe_dirname"):
        OmegaConf.register_new_resolver("safe_dirname", safe_dirname)
