"""``python -m runner.demo NAME FOLDER``: copy a demo dataset (its maps and table.tsv) into a folder of your own, to
practise the commands for your own data (``data.table=FOLDER/table.tsv``) on it."""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m runner.demo", description=__doc__)
    parser.add_argument("name", choices=sorted(DEMO_DATASETS), help="demo dataset")
    parser.add_argument("folder", type=Path, help="new (or empty) folder to copy it into")
    args = parser.parse_args(argv)
    try:
        table = export_demo(args.name, args.folder)
    except RunnerError as error:
        print(f"error: {error}", file=sys.stderr)
        return EXIT_USER_ERROR
    naming = ("the columns 'path_left' and 'path_right' name its hemisphere files" if args.name == "surface"
              else "the column 'path' names the images")
    print(f"demo dataset {args.name}: {table} (one row per map; {naming})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
