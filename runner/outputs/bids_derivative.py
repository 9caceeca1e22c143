"""What makes a run folder a BIDS derivative dataset: ``dataset_description.json`` and one JSON sidecar per map.

BIDS 1.11 (https://bids-specification.readthedocs.io/en/stable/derivatives/introduction.html): a derivative dataset
has a ``dataset_description.json`` with ``Name``, ``BIDSVersion``, ``DatasetType: derivative`` and ``GeneratedBy``
(required for derivatives); a map's metadata live in a JSON file of the same name. The ``contrast`` and ``stat``
entities and the ``statmap`` suffix are those of the statistical-derivatives proposal (BEP041), written by fitlins and
nilearn's ``save_glm_to_bids`` too.
"""

from __future__ import annotations

from importlib import metadata
from typing import Any

BIDS_VERSION = "1.11.0"
PACKAGE = "second-level-runner"
DESCRIPTION_NAME = "dataset_description.json"

# what each ``stat`` entity of our maps holds, for the sidecar's Description
STATISTICS = {
    "effect": "contrast estimate c'beta", "variance": "variance of the contrast estimate", "t": "t statistic",
    "F": "F statistic", "z": "z score (standard normal equivalent of p)", "p": "uncorrected p value",
    "logp": "-log10 p value", "tdp": "true discovery proportion", "tfce": "threshold-free cluster enhancement",
}


def package_version() -> str:
    """The installed version of this package ("unknown" when run from a source tree that is not installed)."""
    try:
        return metadata.version(PACKAGE)
    except metadata.PackageNotFoundError:
        return "unknown"


def dataset_description(name: str) -> dict[str, Any]:
    """The run folder's ``dataset_description.json`` (no time or path in it, so re-runs write the same bytes)."""
    return {
        "Name": f"{PACKAGE}: {name}",
        "BIDSVersion": BIDS_VERSION,
        "DatasetType": "derivative",
        "GeneratedBy": [{"Name": PACKAGE, "Version": package_version(),
                         "Description": "group-level (second-level) GLM; config.yaml and manifest.json record how"}],
    }


def _camel(key: str) -> str:
    return "".join(word[:1].upper() + word[1:] for word in str(key).split("_"))


def map_sidecar(contrast: str, stat: str, correction: str | None, alpha: float | None, threshold: float | None,
                dof: Any, extra: dict[str, Any]) -> dict[str, Any]:
    """A map's sidecar: its contrast, statistic, correction, threshold and degrees of freedom (null when none).

    ``DegreesOfFreedom`` is the residual degrees of freedom of the contrast's model, n - rank(X) (the denominator's
    for an F contrast, whose numerator's is the number of rows of the contrast matrix).

    ``extra`` (the writer's method parameters, e.g. ``two_sided``, ``n_permutations``) follow in CamelCase.
    """
    sidecar: dict[str, Any] = {"Contrast": contrast, "Statistic": stat}
    if stat in STATISTICS:
        sidecar["Description"] = STATISTICS[stat]
    sidecar.update({"Correction": correction, "Alpha": alpha, "Threshold": threshold, "DegreesOfFreedom": dof})
    for key, value in extra.items():
        sidecar.setdefault(_camel(key), value)
    return sidecar
