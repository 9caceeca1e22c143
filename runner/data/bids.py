"""BIDS derivatives as a data source: first-level ``stat-effect`` maps (and their ``stat-variance`` maps) selected by
entities, joined to ``participants.tsv`` on ``participant_id``.

The folder is indexed with pybids (``BIDSLayout``, not validated, its ``bids`` and ``derivatives`` entity rules plus
``contrast`` and ``stat``, the entities of BIDS statistical derivatives that pybids does not know). The result is the
same :class:`~runner.data.sources.InputSet` a table gives: one row per subject, ``path`` naming the effect map and,
when every subject has one, ``variance_path`` naming its variance map (what a mixed-effects model reads).
"""

from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Any

import pandas as pd

from runner.data.sources import ImageRef, InputSet, read_table
from runner.errors import RunnerError, did_you_mean

log = logging.getLogger(__name__)

# data.entities keys a user may set, with pybids' name of each (BIDS keys: ses, acq, rec, res, den are accepted too)
ENTITIES = {"task": "task", "contrast": "contrast", "space": "space", "session": "session", "ses": "session",
            "desc": "desc", "run": "run", "acquisition": "acquisition", "acq": "acquisition",
            "reconstruction": "reconstruction", "rec": "reconstruction", "res": "res", "den": "den"}
PRESET_ENTITIES = ("task", "contrast", "space", "session", "desc")  # listed (null) in conf/data/bids.yaml
_LABEL = re.compile(r"^[A-Za-z0-9]+$")  # a BIDS label or index: letters and digits only
# Entities of statistical derivatives (BEP041 / fitlins / nilearn save_glm_to_bids) that pybids' configs lack.
_STATMAP_CONFIG = {"name": "second_level_runner", "entities": [
    {"name": "contrast", "pattern": r"[_/\\]+contrast-([a-zA-Z0-9]+)"},
    {"name": "stat", "pattern": r"[_/\\]+stat-([a-zA-Z0-9]+)"},
]}
EFFECT, VARIANCE = "effect", "variance"
_EXTENSIONS = [".nii.gz", ".nii"]


def check_entities(entities: dict[str, Any]) -> dict[str, str]:
    """``data.entities`` as pybids filters: known keys only, BIDS labels only (no path characters)."""
    filters = {}
    for key, value in entities.items():
        if value is None:  # conf/data/bids.yaml lists the usual entities unset, so data.entities.<key>=... works
            continue
        if key not in ENTITIES:
            raise RunnerError(f"data.entities.{key} is not an entity the BIDS source selects on; "
                              f"{did_you_mean(key, ENTITIES)} (subjects are chosen with data.query)")
        text = str(value)
        if not _LABEL.match(text):
            raise RunnerError(f"data.entities.{key} must be a BIDS label (letters and digits only), got {value!r}")
        filters[ENTITIES[key]] = text
    return filters


def _layout(root: Path) -> Any:
    """Index ``root`` with pybids; one clear error when pybids is missing or the folder is not a BIDS dataset."""
    logging.getLogger("bidsschematools").setLevel(logging.WARNING)  # its "bundled schema" line is not for run.log
    try:
        from bids import BIDSLayout
    except ImportError:
        raise RunnerError("data.root (BIDS input) needs pybids: pip install 'second-level-runner[bids]'") from None
    if not root.is_dir():
        raise RunnerError(f"data.root {root} is not a folder (a BIDS derivatives dataset is expected)")
    if not (root / "dataset_description.json").is_file():
        raise RunnerError(f"data.root {root} has no dataset_description.json; is it a BIDS dataset?")
    try:
        return BIDSLayout(str(root), validate=False, is_derivative=False,
                          config=["bids", "derivatives", _STATMAP_CONFIG])
    except Exception as error:  # pybids raises ValueError, BIDSValidationError, JSON errors...
        raise RunnerError(f"data.root {root} cannot be indexed as BIDS: {str(error).splitlines()[0]}") from None


def find_maps(root: Path, entities: dict[str, Any]) -> pd.DataFrame:
    """One row per subject: ``participant_id``, ``path`` (the effect map) and ``variance_path`` (or missing).

    A subject with several effect maps matching ``entities`` is refused, naming the entity that tells them apart.
    """
    filters = check_entities(entities)
    layout = _layout(root)
    effects = layout.get(suffix="statmap", stat=EFFECT, extension=_EXTENSIONS, **filters)
    if not effects:
        chosen = ", ".join(f"{k}-{v}" for k, v in filters.items()) or "no entities"
        raise RunnerError(f"data.root {root} has no *_stat-effect_statmap.nii[.gz] maps matching {chosen}; "
                          "check data.entities")
    by_subject: dict[str, list[Any]] = {}
    for image in effects:
        subject = image.get_entities().get("subject")
        if subject is None:
            raise RunnerError(f"effect map {image.path} has no sub-<label> entity")
        by_subject.setdefault(str(subject), []).append(image)
    rows = []
    for subject in sorted(by_subject):
        images = by_subject[subject]
        if len(images) > 1:
            raise RunnerError(f"sub-{subject} has {len(images)} effect maps matching data.entities; "
                              f"set data.entities.{_differing_entity(images)} to choose one")
        (image,) = images
        entities_of_map = {k: v for k, v in image.get_entities().items() if k not in ("stat", "extension")}
        variance = layout.get(stat=VARIANCE, extension=_EXTENSIONS, **entities_of_map)
        rows.append({"participant_id": f"sub-{subject}", "path": str(Path(image.path)),
                     "variance_path": str(Path(variance[0].path)) if len(variance) == 1 else None})
    return pd.DataFrame(rows)


def _differing_entity(images: list[Any]) -> str:
    """The first entity whose value differs between ``images`` (what the user must pin)."""
    values = [image.get_entities() for image in images]
    for key in sorted(set().union(*values)):
        if len({str(v.get(key)) for v in values}) > 1:
            return next((k for k, v in ENTITIES.items() if v == key), key)
    return "desc"


def read_participants(path: Path, subject_column: str | None = None) -> pd.DataFrame:
    """``participants.tsv`` keyed by ``participant_id`` (``sub-`` added where missing)."""
    table = read_table(path)
    column = subject_column or next((c for c in ("participant_id", "subject", "subject_id") if c in table.columns),
                                    None)
    if column is None or column not in table.columns:
        raise RunnerError(f"participants file {path} has no participant_id column; set data.subject_column")
    key = table[column].astype(str).str.replace(r"^sub-", "", regex=True).radd("sub-")
    if key.duplicated().any():
        raise RunnerError(f"participants file {path}: participant {key[key.duplicated()].iloc[0]!r} appears twice")
    reserved = [c for c in ("path", "variance_path") if c in table.columns]
    return table.drop(columns=[column, *reserved]).assign(participant_id=key.to_numpy())


def from_bids(root: Path, entities: dict[str, Any], participants: Path | None = None,
              subject_column: str | None = None, drop_missing: bool = False) -> InputSet:
    """The effect maps of a BIDS derivatives folder joined to its participants table.

    Parameters
    ----------
    root : the derivatives folder (holding ``dataset_description.json``).
    entities : ``data.entities`` (task, contrast, space, session, desc, run...): which maps to take.
    participants : the participants table; default ``<root>/participants.tsv`` when it exists.
    subject_column : the participants table's subject column (default ``participant_id``).
    drop_missing : drop subjects with a map but no participants row, or a row but no map (else refuse them).
    """
    root = Path(root).expanduser()
    maps = find_maps(root, entities)
    notes: list[str] = []
    if participants is None and (root / "participants.tsv").is_file():
        participants = root / "participants.tsv"
    if participants is not None:
        table = read_participants(Path(participants), subject_column)
        no_row = sorted(set(maps["participant_id"]) - set(table["participant_id"]))
        no_map = sorted(set(table["participant_id"]) - set(maps["participant_id"]))
        for missing, what in ((no_row, f"an effect map but no row in {participants}"),
                              (no_map, f"a row in {participants} but no effect map matching data.entities")):
            if not missing:
                continue
            listed = ", ".join(missing[:10]) + (f" and {len(missing) - 10} more" if len(missing) > 10 else "")
            if not drop_missing:
                raise RunnerError(f"{len(missing)} subject(s) have {what}: {listed}; add them or set "
                                  "design.drop_missing=true")
            message = f"dropped {len(missing)} subject(s) with {what}: {listed}"
            log.warning(message)
            notes.append(message)
        frame = maps.merge(table, on="participant_id", how="inner", validate="one_to_one")
    else:
        frame = maps
    no_variance = frame["variance_path"].isna()
    if no_variance.all():
        frame = frame.drop(columns="variance_path")
    elif no_variance.any():
        message = ("no stat-variance map beside the effect map of " + ", ".join(frame["participant_id"][no_variance])
                   + " (only a model using first-level variances needs them)")
        log.warning(message)
        notes.append(message)
    frame = frame.reset_index(drop=True)
    log.info("BIDS %s: %d effect map(s) matching %s", root, len(frame), check_entities(entities) or "all")
    return InputSet(frame, tuple(ImageRef(Path(p)) for p in frame["path"]), tuple(notes))


def participants_file(root: str | None, participants: str | None) -> Path | None:
    """The participants table a BIDS source reads (for the manifest's input files)."""
    if participants:
        return Path(participants)
    if root and (Path(root).expanduser() / "participants.tsv").is_file():
        return Path(root).expanduser() / "participants.tsv"
    return None
