"""Atlas annotations on the mesh (FreeSurfer ``.annot`` or GIFTI ``.label.gii``): the anatomical label of a peak.

The user gives one annotation per hemisphere (``data.annotation_left`` / ``data.annotation_right``) on the same
mesh as the data; nothing is bundled (FreeSurfer's fsaverage parcellations come with FreeSurfer's licence). A peak
takes the label of its vertex, or when that vertex has none (outside the atlas, ``unknown``, the medial wall)
the label of the nearest labelled vertex of its hemisphere (Euclidean distance on the analysis mesh).
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pandas as pd

from runner.errors import RunnerError

UNLABELLED = ("", "unknown", "???", "medial_wall", "medialwall", "medial wall")  # compared without case


def read_annotation(path: Path, n_vertices: int, what: str) -> np.ndarray:
    """One label name per vertex (``""`` where the atlas gives none) from a ``.annot`` or a ``.label.gii`` file.

    Parameters
    ----------
    path : the annotation file.
    n_vertices : vertices of the mesh hemisphere it must cover.
    what : the config key naming it (for messages).
    """
    if not path.is_file():
        raise RunnerError(f"{what} {path} does not exist")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # nibabel's overflow warnings on a file that is not one
            keys, table = _read_keys(path)
    except Exception as error:  # nibabel raises many types on a bad file
        raise RunnerError(f"{what} {path} cannot be read as an annotation (.annot or .label.gii): "
                          f"{str(error).splitlines()[0]}") from None
    if keys.size != n_vertices:
        raise RunnerError(f"{what} {path} labels {keys.size} vertices but its mesh hemisphere has {n_vertices} "
                          "(an annotation of another mesh?)")
    names = np.array([str(table.get(int(key), "")) for key in range(int(keys.max(initial=-1)) + 1)] + [""],
                     dtype=object)
    labels = names[np.where((keys >= 0) & (keys < names.size - 1), keys, -1)]
    unlabelled = pd.Series(labels).str.strip().str.lower().isin(UNLABELLED).to_numpy()
    labels[unlabelled] = ""
    return labels


def _read_keys(path: Path) -> tuple[np.ndarray, dict[int, str]]:
    """The label key of every vertex and the names of the keys (nibabel)."""
    import nibabel as nib

    if path.name.lower().endswith(".gii"):
        image = nib.load(path)
        if len(image.darrays) != 1:
            raise ValueError(f"{len(image.darrays)} data arrays, one expected")
        return (np.asarray(image.darrays[0].data).astype(np.int64).ravel(),
                {int(k): str(v) for k, v in image.labeltable.get_labels_as_dict().items()})
    keys, _, names = nib.freesurfer.read_annot(str(path))
    return (np.asarray(keys, dtype=np.int64),
            {index: name.decode() if isinstance(name, bytes) else str(name) for index, name in enumerate(names)})


def nearest_labels(labels: np.ndarray, coordinates: np.ndarray, vertices: np.ndarray) -> list[str]:
    """The label of each of ``vertices`` in one hemisphere, or of its nearest labelled vertex (``""`` if none).

    Parameters
    ----------
    labels : (N,) label names of the hemisphere's vertices, ``""`` where unlabelled.
    coordinates : (N, 3) the hemisphere's vertex positions, mm.
    vertices : (k,) vertex indices in the hemisphere.
    """
    labelled = np.flatnonzero(labels != "")
    out = []
    for vertex in np.asarray(vertices, dtype=np.int64):
        if labels[vertex] != "" or labelled.size == 0:
            out.append(str(labels[vertex]))
            continue
        distance = np.sum((coordinates[labelled] - coordinates[vertex]) ** 2, axis=1)
        out.append(str(labels[labelled[int(np.argmin(distance))]]))
    return out


def add_label_column(table: pd.DataFrame, labels: dict[str, np.ndarray],
                     coordinates: dict[str, np.ndarray]) -> pd.DataFrame:
    """A cluster table with ``label`` after its ``vertex`` column (each row's peak; missing where no vertex)."""
    if "hemi" not in table.columns or "vertex" not in table.columns:
        return table
    column = pd.Series(pd.NA, index=table.index, dtype=object)
    for hemi, rows in table.groupby(table["hemi"].astype(str)).groups.items():
        if hemi not in labels:
            continue
        vertex = pd.to_numeric(table.loc[rows, "vertex"], errors="coerce")
        known = vertex.notna()
        names = nearest_labels(labels[hemi], coordinates[hemi], vertex[known].to_numpy(dtype=np.int64))
        column.loc[vertex.index[known]] = [name or pd.NA for name in names]
    out = table.copy()
    out.insert(list(out.columns).index("vertex") + 1, "label", column)
    return out
