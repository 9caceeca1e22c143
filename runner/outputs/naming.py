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


def map_name(contrast: str, stat: str, correction: str | None = None, suffix: str = "statmap",
             desc: str | None = None) -> str:
    """``contrast-<name>_stat-<stat>[_corr-<method>][_desc-<label>]_statmap.nii.gz``."""
    parts = [f"contrast-{safe_label(contrast)}", f"stat-{safe_label(stat)}"]
    if correction:
        parts.append(f"corr-{safe_label(correction)}")
    if desc:
        parts.append(f"desc-{safe_label(desc)}")
    return "_".join(parts) + f"_{suffix}.nii.gz"


def sidecar_name(file_name: str) -> str:
    """The JSON sidecar of an output file: the same name with ``.json`` for its extension (BIDS)."""
    for extension in (".nii.gz", ".nii", ".tsv", ".gii"):
        if file_name.endswith(extension):
            return file_name[: -len(extension)] + ".json"
    raise ValueError(f"no sidecar rule for {file_name!r}")


def surface_map_name(contrast: str, stat: str, hemi: str, correction: str | None = None,
                     desc: str | None = None) -> str:
    """``contrast-<name>_stat-<stat>[_corr-<method>][_desc-<label>]_hemi-<L|R>_statmap.func.gii``."""
    volume = map_name(contrast, stat, correction, desc=desc)
    return volume[: -len("_statmap.nii.gz")] + f"_hemi-{safe_label(hemi)}_statmap.func.gii"


def cifti_map_name(contrast: str, stat: str, correction: str | None = None, desc: str | None = None) -> str:
    """``contrast-<name>_stat-<stat>[_corr-<method>][_desc-<label>]_statmap.dscalar.nii`` (both hemispheres)."""
    volume = map_name(contrast, stat, correction, desc=desc)
    return volume[: -len(".nii.gz")] + ".dscalar.nii"


def table_name(suffix: str, contrast: str | None = None, correction: str | None = None,
               stat: str | None = None, extension: str = ".tsv") -> str:
    """``[contrast-<name>_][stat-<stat>_][corr-<method>_]<suffix>.tsv``."""
    parts = []
    if contrast is not None:
        parts.append(f"contrast-{safe_label(contrast)}")
    if stat is not None:
        parts.append(f"stat-{safe_label(stat)}")
    if correction:
        parts.append(f"corr-{safe_label(correction)}")
    parts.append(safe_label(suffix))
    return "_".join(parts) + extension
