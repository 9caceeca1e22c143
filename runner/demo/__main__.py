"""``python -m runner.demo NAME FOLDER``: copy a demo dataset (its maps and table.tsv) into a folder of your own, to
practise the commands for your own data (``data.table=FOLDER/table.tsv``) on it. ``--cifti`` (surface demo) also
writes each map as a CIFTI-2 dense scalar file over fsaverage5's cortex, listed in ``table_cifti.tsv``."""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

import numpy as np

from runner.demo.datasets import DEMO_DATASETS, TABLE_NAME, ensure_demo
from runner.errors import EXIT_USER_ERROR, RunnerError


def export_demo(name: str, folder: Path) -> Path:
    """Copy demo dataset ``name`` into ``folder`` (new or empty); returns the copied table's path."""
    folder = Path(folder)
    if folder.exists() and (not folder.is_dir() or any(folder.iterdir())):
        raise RunnerError(f"{folder} already exists and is not an empty folder; give a new folder")
    source = ensure_demo(name).parent
    shutil.copytree(source, folder, dirs_exist_ok=True)
    return folder / TABLE_NAME


CIFTI_TABLE_NAME = "table_cifti.tsv"


def export_cifti(table: Path) -> Path:
    """Each row's hemisphere GIFTI pair of the surface demo as one ``.dscalar.nii`` (cortex brain models of
    fsaverage5, medial wall left out), and ``table_cifti.tsv`` with a ``path`` column naming them."""
    import pandas as pd

    from runner.data.cifti import dscalar_bytes, layout_from_mask
    from runner.data.surface import bundled_mesh, read_gifti_map

    mesh = bundled_mesh("fsaverage5")
    sizes = {h: len(mesh[h].vertices) for h in ("L", "R")}
    layout = layout_from_mask(np.concatenate([mesh["L"].cortex, mesh["R"].cortex]), sizes)
    frame = pd.read_csv(table, sep="\t")
    paths = []
    for left, right in zip(frame.pop("path_left"), frame.pop("path_right")):
        values = np.concatenate([read_gifti_map(table.parent / left, sizes["L"], "demo map")[0],
                                 read_gifti_map(table.parent / right, sizes["R"], "demo map")[0]])
        name = Path(left).name.replace("_hemi-L.func.gii", ".dscalar.nii")
        (table.parent / name).write_bytes(dscalar_bytes(values, layout, "effect"))
        paths.append(name)
    frame["path"] = paths
    frame.to_csv(table.parent / CIFTI_TABLE_NAME, sep="\t", index=False)
    return table.parent / CIFTI_TABLE_NAME


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m runner.demo", description=__doc__)
    parser.add_argument("name", choices=sorted(DEMO_DATASETS), help="demo dataset")
    parser.add_argument("folder", type=Path, help="new (or empty) folder to copy it into")
    parser.add_argument("--cifti", action="store_true",
                        help=f"surface demo: also each map as a .dscalar.nii, listed in {CIFTI_TABLE_NAME}")
    args = parser.parse_args(argv)
    if args.cifti and args.name != "surface":
        print("error: --cifti is for the surface demo", file=sys.stderr)
        return EXIT_USER_ERROR
    try:
        table = export_demo(args.name, args.folder)
        cifti_table = export_cifti(table) if args.cifti else None
    except RunnerError as error:
        print(f"error: {error}", file=sys.stderr)
        return EXIT_USER_ERROR
    naming = ("the columns 'path_left' and 'path_right' name its hemisphere files" if args.name == "surface"
              else "the column 'path' names the images")
    print(f"demo dataset {args.name}: {table} (one row per map; {naming})")
    if cifti_table is not None:
        print(f"CIFTI-2 copies: {cifti_table} (the column 'path' names one .dscalar.nii per map)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
