"""`pip install .` carries the Hydra configs and the bundled resources, and never needs nilearn at runtime."""

from __future__ import annotations

import ast
import re
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


def test_runtime_package_uses_only_public_hydra_modules():
    private = [(str(path.relative_to(REPO)), module) for path, module in _imported_modules()
               if module.startswith(("hydra._internal", "omegaconf._"))]
    assert private == []


def _imported_modules():
    for path in (REPO / "runner").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                yield from ((path, a.name) for a in node.names)
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                yield path, node.module


# Import names that differ from their distribution's name on PyPI; anything else is imported under its own name.
IMPORT_TO_DISTRIBUTION = {"yaml": "PyYAML", "hydra": "hydra-core", "sklearn": "scikit-learn", "PIL": "Pillow",
                          "bids": "pybids"}
# Modules of optional extras: imported only inside functions that turn their absence into one RunnerError
# (runner.execution.dask); module -> (extra, distribution declared in it).
OPTIONAL_IMPORTS = {"distributed": ("dask", "dask"), "dask_jobqueue": ("dask", "dask-jobqueue")}


def _runtime_imports() -> dict[str, set[str]]:
    """Top-level module name -> files of the runtime package that import it (absolute imports only)."""
    found: dict[str, set[str]] = {}
    for path, module in _imported_modules():
        found.setdefault(module.split(".")[0], set()).add(str(path.relative_to(REPO)))
    return found


def _requirement_name(requirement: str) -> str:
    """The distribution name of a PEP 508 requirement, normalised (PEP 503)."""
    name = re.match(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)", requirement).group(1)
    return re.sub(r"[-_.]+", "-", name).lower()


def _pyproject() -> dict:
    tomllib = pytest.importorskip("tomllib")  # Python >= 3.11
    return tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))


def test_every_third_party_module_the_runtime_imports_is_a_declared_dependency():
    project = _pyproject()["project"]
    declared = {_requirement_name(r) for r in project["dependencies"]}
    # an optional extra (bids, dask) is imported only where its feature is used, with one clear error without it
    declared |= {_requirement_name(r) for extra, requirements in project.get("optional-dependencies", {}).items()
                 if extra != "test" for r in requirements}
    imports = _runtime_imports()
    third_party = sorted(m for m in imports if m not in sys.stdlib_module_names and m not in ("runner", "__future__"))
    assert {"numpy", "numba", "llvmlite", "yaml", "threadpoolctl"} <= set(third_party)  # the walk finds imports
    for module in third_party:
        if module in OPTIONAL_IMPORTS:
            extra, distribution = OPTIONAL_IMPORTS[module]
            in_extra = {_requirement_name(r) for r in _pyproject()["project"]["optional-dependencies"][extra]}
            assert distribution in in_extra, f"{module} is not declared in the {extra} extra"
            continue
        distribution = _requirement_name(IMPORT_TO_DISTRIBUTION.get(module, module))
        assert distribution in declared, f"{module} (imported by {sorted(imports[module])}) is not declared"


def test_declared_runtime_dependencies_are_all_imported():
    """A runtime dependency nothing imports belongs in an extra (statsmodels is a test oracle, not a runtime need)."""
    imported = {_requirement_name(IMPORT_TO_DISTRIBUTION.get(m, m)) for m in _runtime_imports()
                if m not in sys.stdlib_module_names}
    for requirement in _pyproject()["project"]["dependencies"]:
        assert _requirement_name(requirement) in imported, f"{requirement} is declared but never imported"


def test_manifest_records_every_runtime_dependency():
    from runner.app import PACKAGES

    recorded = {_requirement_name(p) for p in PACKAGES}
    for requirement in _pyproject()["project"]["dependencies"]:
        name = _requirement_name(requirement)
        assert name in recorded or name in ("tqdm",), f"{requirement} computes but the manifest omits its version"
    assert "statsmodels" not in recorded


def test_import_name_table_matches_the_installed_distributions():
    """The hand-written table agrees with what the installed distributions say they provide."""
    from importlib.metadata import packages_distributions

    provided = packages_distributions()
    for module, distribution in IMPORT_TO_DISTRIBUTION.items():
        if module in provided:
            assert _requirement_name(distribution) in {_requirement_name(d) for d in provided[module]}, module
