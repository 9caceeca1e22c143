"""Result figures and summaries as the pipeline writes them: slices through the reported peak, ARI colour scales
that end at 1, ARI cluster counts per threshold. Figures are captured as the writer receives them (no pixels)."""

from __future__ import annotations

import json

import matplotlib

matplotlib.use("Agg")

import nibabel as nib  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402
from scipy import ndimage  # noqa: E402

from conftest import run_analysis  # noqa: E402
from planted import planted_study  # noqa: E402
from runner.outputs.writer import OutputWriter  # noqa: E402

ARI_THRESHOLDS = (2.5, 3.5)


def crosshair(ax) -> tuple[float, float]:
    """(x of the vertical line, y of the horizontal line) drawn in a slice panel."""
    lines = [line for line in ax.get_lines() if line.get_gid() == "crosshair"]
    vertical = [line.get_xdata()[0] for line in lines if line.get_xdata()[0] == line.get_xdata()[1]]
    horizontal = [line.get_ydata()[0] for line in lines if line.get_ydata()[0] == line.get_ydata()[1]]
    return float(vertical[0]), float(horizontal[0])


def axes(fig, label):
    return next(ax for ax in fig.axes if ax.get_label() == label)


@pytest.fixture(scope="module")
def planted_run(tmp_path_factory):
    """One run of the planted study with parametric, permutation and ARI inference; figures captured."""
    root = tmp_path_factory.mktemp("planted")
    captured: dict[str, dict] = {}  # figure name -> crosshairs of slice figures
    original = OutputWriter.figure

    def capture(self, fig, *, name, **meta):
        record = {"meta": meta, "crosshairs": {}}
        if meta.get("view") == "slices":
            record["crosshairs"] = {view: crosshair(axes(fig, view)) for view in ("sagittal", "coronal", "axial")}
        captured[name] = record
        return original(self, fig, name=name, **meta)

    patch = pytest.MonkeyPatch()
    patch.setattr(OutputWriter, "figure", capture)
    try:
        run_dir = root / "run"
        run_analysis(run_dir, planted_study(root / "study") + [
            "correction=[fdr,maxt,ari]", "correction.maxt.n_permutations=100", "correction.ari.two_sided=true",
            f"correction.ari.thresholds=[{','.join(map(str, ARI_THRESHOLDS))}]"])
    finally:
        patch.undo()
    manifest = json.loads((run_dir / "manifest.json").read_text())
    return run_dir, manifest, captured


def test_slices_go_through_the_cluster_tables_first_peak(planted_run):
    run_dir, manifest, captured = planted_run
    tables = {(e["contrast"], e["correction"]): e["path"] for e in manifest["outputs"] if e["kind"] == "clusters"}
    slices = [e for e in manifest["outputs"] if e.get("view") == "slices"]
    assert {e["correction"] for e in slices} == {"fdr", "maxt", "ari"}
    for entry in slices:
        first = pd.read_csv(run_dir / tables[(entry["contrast"], entry["correction"])], sep="\t").iloc[0]
        x, y, z = (float(first[c]) for c in ("x", "y", "z"))
        assert entry["cut_coords_mm"] == pytest.approx([x, y, z]), entry["path"]
        drawn = captured[entry["path"]]["crosshairs"]
        assert drawn["sagittal"] == pytest.approx((y, z)) and drawn["coronal"] == pytest.approx((x, z))
        assert drawn["axial"] == pytest.approx((x, y))


class RecordingWriter:
    """Stands in for OutputWriter: keeps what would be written (maps, tables, figures) in memory."""

    def __init__(self):
        self.maps, self.figures = {}, {}

    def map(self, values, affine, **meta):
        self.maps[meta.get("stat")] = values

    def table(self, frame, **meta):
        pass

    def figure(self, fig, *, name, **meta):
        self.figures[name] = fig


def test_ari_colour_scale_ends_at_one_when_no_cluster_reaches_one():
    """Clusters mixing strong voxels with weak ones (z just over the threshold) have TDP < 1; the scale still
    ends at +-1, because a TDP is a proportion (a scale ending at the map's max would paint 0.4 as 'full')."""
    from runner import glm
    from runner.config import build_settings
    from runner.contrasts import Contrast
    from runner.data.loader import GroupData
    from runner.inference.methods.ari import AriCorrection, run_ari
    from runner.inference.registry import ContrastInputs
    from runner.outputs.method_outputs import write_batch

    shape, affine = (14, 12, 10), np.diag([3.0, 3.0, 3.0, 1.0])
    mask = np.zeros(shape, dtype=bool)
    mask[1:-1, 1:-1, 1:-1] = True
    z3d = np.zeros(shape)
    for sign, x in ((1.0, 3), (-1.0, 9)):
        z3d[x:x + 3, 4:7, 4:7] = sign * 2.6  # p = 0.005: over 2.5, not a discovery among ~1000 tests
        z3d[x + 1, 5, 4:7] = sign * 6.0     # three certain discoveries in each 27-voxel cluster
    z = z3d[mask]
    data = GroupData(Y=np.zeros((2, z.size)), mask=mask, affine=affine, table=pd.DataFrame(index=range(2)),
                     inputs=())
    result = glm.ContrastResult(stat_type="t", effect=z, variance=np.ones_like(z), stat=z, p=np.full_like(z, 0.5),
                                z=z, dof=10)
    writer = RecordingWriter()
    settings = build_settings({"data": {"demo": "localizer"}, "contrasts": [{"name": "mean", "expr": "Intercept"}]})
    inputs = ContrastInputs(data=data, design=None, contrast=Contrast("mean", np.ones((1, 1)), "t"), fit=result,
                            settings=settings)
    batch = run_ari(inputs, {"ari": AriCorrection(alpha=0.05, thresholds=[2.5], two_sided=True)})
    write_batch(writer, data, "mean", batch, report=True)
    row = batch.results["ari"].summary
    tdp = writer.maps["tdp"]
    assert 0 < tdp.max() < 0.5 and -0.5 < tdp.min() < 0 and row["max_tdp"] == pytest.approx(tdp.max())
    assert len(writer.figures) == 3
    for name, fig in writer.figures.items():
        assert axes(fig, "colorbar").get_ylim() == pytest.approx((-1.0, 1.0)), name
    assert row["n_clusters"] == 2 and row["n_clusters_per_threshold"] == {"2.5": 2}


def test_ari_summary_counts_clusters_at_each_threshold(planted_run):
    run_dir, manifest, _ = planted_run
    row = manifest["summary"]["contrasts"]["mean"]["ari"]
    z = nib.load(run_dir / "contrast-mean_stat-z_statmap.nii.gz").get_fdata()
    six_neighbours = ndimage.generate_binary_structure(3, 1)  # ARI's clusters are 6-connected, as nilearn's
    expected = {}
    for threshold in ARI_THRESHOLDS:
        expected[f"{threshold:g}"] = sum(ndimage.label(signed * z > threshold, six_neighbours)[1]
                                         for signed in (1, -1))
    assert row["n_clusters_per_threshold"] == expected
    assert row["n_clusters"] == expected[f"{min(ARI_THRESHOLDS):g}"]
    assert expected[f"{min(ARI_THRESHOLDS):g}"] >= 2  # the planted activation and deactivation at least
