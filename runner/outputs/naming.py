"""BIDS-derivative output names, built only from sanitised labels so no user string can leave the run directory."""

from __future__ import annotations

import re
from collections.abc import Iterable

from runner.errors import RunnerError

_NOT_ALNUM = re.compile(r"[^0-9A-Za-z]+")


def safe_label(text: str, fallback: str = "unnamed") -> str:
    """Turn any user string into a BIDS label: letters and digits only, words camel-cased.

    ``"C(sex)[T.M] - age"`` -> ``"CSexTMAge"``; ``"../../etc/x"`` -> ``"EtcX"``.
    """
    words = [w for w in _NOT_ALNUM.split(str(text)) if w]
    if not words:
        return fallback
    label = words[0] + "".join(w[:1].upper() + w[1:] for w in words[1:])
    return label[:64]


def check_distinct_labels(names: Iterable[str], what: str = "contrasts") -> None:
    """Refuse names that would write files with the same name (compared without case, as macOS and Windows do)."""
    seen: dict[str, str] = {}
    for name in names:
        label = safe_label(name)
        if label.lower() in seen:
            raise RunnerError(f"{what} {seen[label.lower()]!r} and {name!r} would write files with the same name "
                              f"({label}); rename one so they differ in their letters or digits")
        seen[label.lower()] = name


def description_label(correction: str | None = None, desc: str | None = None) -> str | None:
    """The ``desc`` label of an output: the correction method, then its variant camel-cased (``rft`` and
    ``clusterlevel`` -> ``rftClusterlevel``); None for neither.

    BIDS has no entity for a correction method: ``desc`` is the entity it keeps for what distinguishes derivatives
    that share every other entity, so the method goes there and the name passes the schema's derivative rules.
    """
    words = [safe_label(w) for w in (correction, desc) if w]
    if not words:
        return None
    return (words[0] + "".join(w[:1].upper() + w[1:] for w in words[1:]))[:64]


def map_name(contrast: str, stat: str, correction: str | None = None, suffix: str = "statmap",
             desc: str | None = None) -> str:
    """``contrast-<name>_stat-<stat>[_desc-<method>[<Variant>]]_statmap.nii.gz``."""
    parts = [f"contrast-{safe_label(contrast)}", f"stat-{safe_label(stat)}"]
    label = description_label(correction, desc)
    if label:
        parts.append(f"desc-{label}")
    return "_".join(parts) + f"_{suffix}.nii.gz"


def sidecar_name(file_name: str) -> str:
    """The JSON sidecar of an output file: the same name with ``.json`` for its extension (BIDS)."""
    for extension in (".func.gii", ".shape.gii", ".dscalar.nii", ".nii.gz", ".nii", ".tsv", ".gii"):
        if file_name.endswith(extension):
            return file_name[: -len(extension)] + ".json"
    raise ValueError(f"no sidecar rule for {file_name!r}")


def surface_map_name(contrast: str, stat: str, hemi: str, correction: str | None = None,
                     desc: str | None = None) -> str:
    """``contrast-<name>_stat-<stat>_hemi-<L|R>[_desc-<method>[<Variant>]]_statmap.func.gii`` (BIDS puts
    ``hemi`` before ``desc``)."""
    parts = [f"contrast-{safe_label(contrast)}", f"stat-{safe_label(stat)}", f"hemi-{safe_label(hemi)}"]
    label = description_label(correction, desc)
    if label:
        parts.append(f"desc-{label}")
    return "_".join(parts) + "_statmap.func.gii"


def cifti_map_name(contrast: str, stat: str, correction: str | None = None, desc: str | None = None) -> str:
    """``contrast-<name>_stat-<stat>[_desc-<method>[<Variant>]]_statmap.dscalar.nii`` (both hemispheres)."""
    volume = map_name(contrast, stat, correction, desc=desc)
    return volume[: -len(".nii.gz")] + ".dscalar.nii"


def table_name(suffix: str, contrast: str | None = None, correction: str | None = None,
               stat: str | None = None, extension: str = ".tsv") -> str:
    """``[contrast-<name>_][stat-<stat>_][desc-<method>_]<suffix>.tsv``."""
    parts = []
    if contrast is not None:
        parts.append(f"contrast-{safe_label(contrast)}")
    if stat is not None:
        parts.append(f"stat-{safe_label(stat)}")
    if correction:
        parts.append(f"desc-{description_label(correction)}")
    parts.append(safe_label(suffix))
    return "_".join(parts) + extension
