"""`pip install .` carries the Hydra configs and the bundled resources, and never needs nilearn at runtime."""

from __future__ import annotations

import ast
import subprocess
import sys
import zipfile

import pytest

from conftest import REPO


@pytest.mark.slow
def test_wheel_contains_configs_and_resources(tmp_path):
    result = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q",
                             "-w", str(tmp_path), str(REPO)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    wheel = next(tmp_path.glob("*.whl"))
    names = set(zipfile.ZipFile(wheel).namelist())
    for required in ("runner/conf/config.yaml", "runner/conf/experiment/one_sample.yaml",
                     "runner/conf/correction/fdr.yaml", "runner/conf/hydra/launcher/slurm_example.yaml",
                     "runner/resources/mni152_brain_mask_3mm.nii.gz", "runner/resources/README.md",
                     "runner/__main__.py", "runner/execution/local.py",
                     "runner/inference/permutation/driver.py", "runner/inference/methods/height.py",
                     "runner/space/grid.py", "runner/stages/pipeline.py",
                     "runner/outputs/templates/report.html.j2", "runner/outputs/templates/sweep.html.j2",
                     "runner/outputs/templates/_macros.html.j2", "runner/outputs/templates/report.css"):
        assert required in names, required


def test_runtime_package_never_imports_nilearn():
    for path in (REPO / "runner").rglob("*.py"):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                assert not any(a.name.split(".")[0] == "nilearn" for a in node.names), path
            elif isinstance(node, ast.ImportFrom):
                assert (node.module or "").split(".")[0] != "nilearn", path


def test_output_modules_stay_small():
    """Writers, figures and pages stay readable: no module of runner/outputs over ~500 lines."""
    sizes = {str(p.relative_to(REPO)): len(p.read_text(encoding="utf-8").splitlines())
             for p in (REPO / "runner" / "outputs").rglob("*.py")}
    assert not {path: n for path, n in sizes.items() if n > 500}
