"""The registry of inference methods drives config, dispatch, the report and the summary: a method added from this
file alone runs end to end."""

from __future__ import annotations

import ast
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from conftest import REPO, run_analysis
from runner.checks import check, positive
from runner.inference import registry
from runner.results import BatchResult, MapOutput, MethodResult, TableOutput


@dataclass
class ToyCorrection:
    level: float = field(default=2.5, metadata=check(positive))


def run_toy(inputs: registry.ContrastInputs, params_by_method: dict[str, Any]) -> BatchResult:
    """|z| above a fixed level: a map of the survivors and a one-row table."""
    (name, params), = params_by_method.items()
    z = np.nan_to_num(inputs.fit.z)
    surviving = np.where(np.abs(z) > params.level, z, 0.0)
    table = pd.DataFrame({"n_voxels": [int(np.count_nonzero(surviving))]})
    summary = {"threshold": params.level, "n_voxels": int(np.count_nonzero(surviving)), "n_clusters": 0,
               "peak": float(z[np.argmax(np.abs(z))]), "alpha": None, "threshold_text": f"toy |z| > {params.level}"}
    outputs = [MapOutput(surviving, stat="z", correction=name),
               TableOutput(table, suffix="count", kind="table", stat="z", correction=name)]
    return BatchResult({name: MethodResult(name, outputs, summary)})


@pytest.fixture
def toy():
    method = registry.register(registry.InferenceMethod(name="toy", family="toy", schema=ToyCorrection,
                                                        run=run_toy, description="a test method"))
    yield method
    registry.unregister("toy")


def test_a_method_registered_here_runs_end_to_end(toy, tmp_path):
    run_dir = tmp_path / "run"
    summary = run_analysis(run_dir, ["correction=[fdr,toy]", "correction.toy.level=3", "progress=false"])
    assert summary["status"] == "complete"
    manifest = json.loads((run_dir / "manifest.json").read_text())
    row = manifest["summary"]["contrasts"]["mean"]["toy"]
    assert row["threshold"] == 3.0 and row["family"] == "toy"
    # the method's map holds exactly the voxels whose z (from the run's own z map) exceeds the level
    import nibabel as nib

    z = nib.load(run_dir / "contrast-mean_stat-z_statmap.nii.gz").get_fdata()
    toy_map = nib.load(run_dir / "contrast-mean_stat-z_desc-toy_statmap.nii.gz").get_fdata()
    assert np.array_equal(toy_map != 0, np.abs(z) > 3)
    assert row["n_voxels"] == int(np.count_nonzero(np.abs(z) > 3))
    table = pd.read_csv(run_dir / "contrast-mean_desc-toy_count.tsv", sep="\t")
    assert table["n_voxels"].iloc[0] == row["n_voxels"]
    report = (run_dir / "report.html").read_text()
    assert "toy |z| &gt; 3.0" in report or "toy |z| > 3.0" in report


def test_a_registered_method_is_validated_like_the_others(toy):
    from runner.config import build_settings
    from runner.errors import RunnerError

    base = {"data": {"demo": "localizer"}, "contrasts": [{"name": "mean", "expr": "Intercept"}]}
    settings = build_settings(dict(base, correction={"toy": {"level": 4}}))
    assert settings.correction["toy"].level == 4.0
    with pytest.raises(RunnerError, match="correction.toy.level must be > 0"):
        build_settings(dict(base, correction={"toy": {"level": -1}}))
    with pytest.raises(RunnerError, match="unknown key correction.toy.levle"):
        build_settings(dict(base, correction={"toy": {"levle": 1}}))


def test_batches_run_families_in_order_and_share_the_permutation_pass():
    assert registry.batches(["tfce", "ari", "fdr", "maxt", "fpr"]) == [["fdr"], ["fpr"], ["tfce", "maxt"], ["ari"]]


def test_every_method_has_a_schema_and_its_yaml_option_only_sets_schema_keys():
    import dataclasses

    import yaml

    for name, method in registry.methods().items():
        assert dataclasses.is_dataclass(method.schema), name
        method.schema()  # every field has a default
        option = REPO / "conf" / "correction" / f"{name}.yaml"
        if option.is_file():
            values = (yaml.safe_load(option.read_text()) or {}).get(name) or {}
            assert set(values) <= {f.name for f in dataclasses.fields(method.schema)}, name


def _imports(path: Path) -> set[str]:
    modules = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module:
            modules.add(node.module)
        elif isinstance(node, ast.Import):
            modules.update(alias.name for alias in node.names)
    return modules


def test_outputs_import_nothing_from_inference():
    offenders = {str(p.relative_to(REPO)): sorted(m for m in _imports(p) if m.startswith("runner.inference"))
                 for p in (REPO / "runner" / "outputs").glob("*.py")}
    assert not {k: v for k, v in offenders.items() if v}


def test_checking_a_config_does_not_load_the_statistics_modules():
    """A typo'd key is refused in about half the time when the method schemas load without scipy's statistics and
    graph modules (every refused command line pays for what the registry imports)."""
    import subprocess
    import sys

    from conftest import REPO

    code = ("import sys; from runner.inference.registry import schemas; schemas(); "
            "print(sorted(m for m in ('scipy.stats', 'scipy.sparse.csgraph', 'scipy.ndimage') if m in sys.modules))")
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True,
                            env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"})
    assert result.stdout.strip() == "[]"
