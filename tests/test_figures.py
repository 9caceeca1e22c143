"""Figures render to plausible PNGs, draw the peak where the affine puts it, and survive empty or NaN maps."""

from __future__ import annotations

import re
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import matplotlib.image as mpimg  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from nibabel.affines import apply_affine  # noqa: E402

from runner.outputs import figures  # noqa: E402

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
MNI_3MM_AFFINE = np.array([[3.0, 0, 0, -90], [0, 3.0, 0, -126], [0, 0, 3.0, -72], [0, 0, 0, 1]])
MNI_3MM_SHAPE = (61, 73, 61)
# Anisotropic voxels (2 x 3 x 4 mm) with x stored right-to-left (negative voxel size), as in radiological files.
ANISOTROPIC_AFFINE = np.array([[-2.0, 0, 0, 90], [0, 3.0, 0, -126], [0, 0, 4.0, -72], [0, 0, 0, 1]])
ANISOTROPIC_SHAPE = (91, 73, 46)
THRESHOLD = 3.1


def synthetic_brain(shape: tuple[int, int, int], affine: np.ndarray):
    """Gaussian blobs (one positive peak, one negative, one weak) inside an ellipsoid 'brain'."""
    xyz = apply_affine(affine, np.indices(shape).reshape(3, -1).T).reshape(*shape, 3)
    radius = (xyz[..., 0] / 70) ** 2 + ((xyz[..., 1] + 18) / 95) ** 2 + ((xyz[..., 2] - 8) / 75) ** 2
    mask = radius <= 1

    def blob(centre, sigma, amplitude):
        return amplitude * np.exp(-((xyz - np.array(centre)) ** 2).sum(-1) / (2 * sigma**2))

    stat = (blob((36, -24, 45), 8, 6.5) + blob((-42, 30, 6), 6, -5.2) + blob((0, -60, 0), 10, 3.5)) * mask
    background = np.where(mask, 0.6 + 0.4 * np.cos(np.sqrt(radius) * 9) ** 2, 0.0)
    return stat, background, mask


@pytest.fixture(scope="module")
def brain():
    return synthetic_brain(MNI_3MM_SHAPE, MNI_3MM_AFFINE)


@pytest.fixture(scope="module")
def anisotropic_brain():
    return synthetic_brain(ANISOTROPIC_SHAPE, ANISOTROPIC_AFFINE)


@pytest.fixture(scope="module")
def design():
    rng = np.random.default_rng(0)
    n = 24
    return pd.DataFrame({"Intercept": np.ones(n), "C(sex)[T.M]": rng.integers(0, 2, n).astype(float),
                         "age": rng.normal(40, 10, n)})


def save_png(fig: Figure, path: Path) -> np.ndarray:
    """Save as the OutputWriter does and check the file is a plausible PNG; return its pixels."""
    assert isinstance(fig, Figure)
    fig.savefig(path, format="png", dpi=100, bbox_inches="tight")
    assert path.read_bytes()[:8] == PNG_SIGNATURE
    size = path.stat().st_size
    assert 5_000 < size < 2_000_000, f"{path.name}: {size} bytes"
    pixels = mpimg.imread(path)
    assert pixels.ndim == 3 and pixels.shape[0] > 150 and pixels.shape[1] > 300
    assert pixels[..., :3].std() > 0.02, "figure is blank"
    return pixels


def axes_by_label(fig: Figure, label: str):
    (found,) = [ax for ax in fig.axes if ax.get_label() == label]
    return found


def all_text(fig: Figure) -> str:
    return "\n".join(t.get_text() for t in fig.findobj(matplotlib.text.Text))


def peak_mm(volume: np.ndarray, affine: np.ndarray) -> np.ndarray:
    """The max |value| voxel's centre in mm, computed independently of the figure code."""
    index = np.unravel_index(np.nanargmax(np.abs(volume)), volume.shape)
    return apply_affine(affine, index)


def crosshair(ax) -> tuple[float, float]:
    """(x of the vertical line, y of the horizontal line) drawn in a slice panel."""
    lines = [line for line in ax.get_lines() if line.get_gid() == "crosshair"]
    vertical = [line.get_xdata()[0] for line in lines if line.get_xdata()[0] == line.get_xdata()[1]]
    horizontal = [line.get_ydata()[0] for line in lines if line.get_ydata()[0] == line.get_ydata()[1]]
    return float(vertical[0]), float(horizontal[0])


# -- every figure renders ----------------------------------------------------------------------------------------
def test_brain_figures_render(brain, tmp_path):
    stat, background, mask = brain
    save_png(figures.stat_map_slices_figure(stat, MNI_3MM_AFFINE, background, THRESHOLD, "age z"),
             tmp_path / "slices.png")
    montage = figures.stat_map_montage_figure(stat, MNI_3MM_AFFINE, background, THRESHOLD, "age z", n_slices=12)
    save_png(montage, tmp_path / "montage.png")
    assert len([ax for ax in montage.axes if ax.get_label().startswith("axial")]) == 12
    glass = figures.glass_brain_figure(stat, MNI_3MM_AFFINE, THRESHOLD, "age z", mask=mask)
    save_png(glass, tmp_path / "glass.png")
    assert "survive" in all_text(glass) and "3.1" in all_text(glass)


def test_matrix_and_summary_figures_render(design, tmp_path):
    rng = np.random.default_rng(1)
    save_png(figures.design_matrix_figure(design), tmp_path / "design.png")
    save_png(figures.contrast_matrix_figure(np.array([[0.0, 0.0, 1.0]]), list(design.columns), "age"),
             tmp_path / "contrast.png")
    null = rng.gumbel(3.5, 0.4, 500)
    save_png(figures.null_distribution_figure(null, 6.2, float(np.quantile(null, 0.95)), "max-T null"),
             tmp_path / "null.png")
    age = design["age"].to_numpy()
    values = 0.6 - 0.004 * age + rng.normal(0, 0.02, age.size)
    save_png(figures.covariate_scatter_figure(values, age, "age", "peak", fitted=(0.6, -0.004),
                                              groups=np.where(design["C(sex)[T.M]"] > 0, "M", "F")),
             tmp_path / "scatter.png")
    sweep = pd.DataFrame({"fwhm": [0, 4, 8] * 2, "n_surviving": [5, 60, 200, 2, 40, 150],
                          "correction": ["fdr"] * 3 + ["fwe"] * 3})
    save_png(figures.surviving_voxels_figure(sweep, "fwhm", "n_surviving", "correction"), tmp_path / "sweep.png")


def test_figures_stay_out_of_pyplot_state(brain, design):
    import matplotlib.pyplot as plt

    before = plt.get_fignums()
    figures.design_matrix_figure(design)
    figures.stat_map_slices_figure(brain[0], MNI_3MM_AFFINE, brain[1], THRESHOLD, "t")
    assert plt.get_fignums() == before


def test_runner_figures_do_not_import_nilearn():
    package = Path(figures.__file__).parent
    for source in package.glob("figures*.py"):
        assert not re.search(r"^\s*(import|from)\s+nilearn", source.read_text(), re.MULTILINE), source.name


# -- the peak drawn is where the affine says ---------------------------------------------------------------------
@pytest.mark.parametrize("which", ["isotropic", "anisotropic"])
def test_slices_cut_through_the_peak(which, brain, anisotropic_brain, tmp_path):
    affine = MNI_3MM_AFFINE if which == "isotropic" else ANISOTROPIC_AFFINE
    stat, background, _ = brain if which == "isotropic" else anisotropic_brain
    expected = peak_mm(stat, affine)

    assert np.allclose(figures.peak_coordinates_mm(stat, affine), expected)
    assert np.allclose(figures.slice_cut_coords(stat, affine), expected)

    fig = figures.stat_map_slices_figure(stat, affine, background, THRESHOLD, which)
    x, y, z = expected
    assert np.allclose(crosshair(axes_by_label(fig, "sagittal")), (y, z))
    assert np.allclose(crosshair(axes_by_label(fig, "coronal")), (x, z))
    assert np.allclose(crosshair(axes_by_label(fig, "axial")), (x, y))
    assert f"x = {x:.0f} mm" in all_text(fig)
    save_png(fig, tmp_path / f"{which}.png")


def test_slices_show_the_data_of_the_cut_with_extents_from_the_affine(anisotropic_brain):
    stat, background, _ = anisotropic_brain
    fig = figures.stat_map_slices_figure(stat, ANISOTROPIC_AFFINE, background, THRESHOLD, "t")
    i, j, k = np.unravel_index(np.argmax(np.abs(stat)), stat.shape)
    axial = axes_by_label(fig, "axial")
    overlay = axial.get_images()[-1]
    # x is stored right-to-left; the panel must show it left-to-right (neurological), i.e. the array flipped.
    expected = stat[::-1, :, k].T
    drawn = overlay.get_array()
    survivors = np.abs(expected) >= THRESHOLD
    assert np.array_equal(~np.ma.getmaskarray(drawn), survivors)
    assert np.allclose(drawn.filled(0)[survivors], expected[survivors])
    # Voxel edges: x from -90 - 1 to 90 + 1 (2 mm voxels), y from -126 - 1.5 (3 mm voxels).
    left, right, bottom, top = overlay.get_extent()
    assert np.allclose((left, right), (-91.0, 91.0))
    assert np.allclose((bottom, top), (-127.5, -126 + 3 * 72 + 1.5))


def test_requested_cut_is_snapped_to_a_voxel_centre(brain):
    stat, background, _ = brain
    cut = figures.slice_cut_coords(stat, MNI_3MM_AFFINE, cut_coords_mm=(10.4, -20.0, 31.4))
    assert cut == (9.0, -21.0, 30.0)  # voxel centres lie at -90 + 3i, -126 + 3j, -72 + 3k
    fig = figures.stat_map_slices_figure(stat, MNI_3MM_AFFINE, background, THRESHOLD, "t", cut_coords_mm=cut)
    assert np.allclose(crosshair(axes_by_label(fig, "axial")), (9.0, -21.0))


def test_glass_brain_shows_signed_maximum_projection(brain):
    stat, _, mask = brain
    fig = figures.glass_brain_figure(stat, MNI_3MM_AFFINE, THRESHOLD, "t", mask=mask)
    drawn = axes_by_label(fig, "axial").get_images()[-1].get_array()
    thresholded = np.where(np.abs(stat) >= THRESHOLD, stat, 0.0)
    strongest = np.take_along_axis(thresholded, np.abs(thresholded).argmax(axis=2)[..., None], axis=2)[..., 0]
    assert np.allclose(drawn.filled(0), strongest.T)
    assert drawn.min() < -THRESHOLD and drawn.max() > THRESHOLD  # both signs of a two-sided map


# -- empty, NaN and odd inputs never raise -----------------------------------------------------------------------
@pytest.mark.parametrize("content", ["zeros", "nan", "below_threshold"])
def test_empty_maps_render_and_say_nothing_survives(content, brain, tmp_path):
    stat, background, mask = brain
    volume = {"zeros": np.zeros(MNI_3MM_SHAPE), "nan": np.full(MNI_3MM_SHAPE, np.nan),
              "below_threshold": np.clip(stat, -1, 1)}[content]
    built = [figures.stat_map_slices_figure(volume, MNI_3MM_AFFINE, background, THRESHOLD, "empty"),
             figures.stat_map_montage_figure(volume, MNI_3MM_AFFINE, background, THRESHOLD, "empty"),
             figures.glass_brain_figure(volume, MNI_3MM_AFFINE, THRESHOLD, "empty", mask=mask)]
    for number, fig in enumerate(built):
        assert "no voxels survive" in all_text(fig)
        save_png(fig, tmp_path / f"{content}{number}.png")
    assert figures.peak_coordinates_mm(np.full(MNI_3MM_SHAPE, np.nan), MNI_3MM_AFFINE) is None


def test_nan_voxels_are_transparent_and_peak_ignores_them(brain):
    stat, background, _ = brain
    with_nan = stat.copy()
    with_nan[:5] = np.nan
    assert np.allclose(figures.peak_coordinates_mm(with_nan, MNI_3MM_AFFINE), peak_mm(stat, MNI_3MM_AFFINE))
    fig = figures.stat_map_slices_figure(with_nan, MNI_3MM_AFFINE, None, None, "no background, unthresholded")
    assert "unthresholded" in all_text(fig)


def test_degenerate_summary_inputs_do_not_raise(tmp_path):
    figures.null_distribution_figure(np.array([np.nan, np.nan]), float("nan"), 3.0, "no null")
    figures.covariate_scatter_figure(np.full(5, np.nan), np.arange(5.0), "age", "nothing finite")
    figures.surviving_voxels_figure(pd.DataFrame(columns=["alpha", "n"]), "alpha", "n", None)
    figures.surviving_voxels_figure(pd.DataFrame({"alpha": [0.05]}), "alpha", "n", None)
    figures.design_matrix_figure(pd.DataFrame({"Intercept": np.ones(4), "empty": np.zeros(4)}))
    figures.contrast_matrix_figure(np.zeros(2), ["a", "b"], "all zero")


# -- matrices ----------------------------------------------------------------------------------------------------
def test_design_matrix_has_one_tick_label_per_column(design):
    fig = figures.design_matrix_figure(design)
    fig.canvas.draw()
    for label in ("design_matrix", "orthogonality"):
        ticks = [t.get_text() for t in axes_by_label(fig, label).get_xticklabels()]
        assert ticks == list(design.columns)
    assert [t.get_text() for t in axes_by_label(fig, "orthogonality").get_yticklabels()] == list(design.columns)


def test_orthogonality_panel_shows_cosines_of_columns(design):
    fig = figures.design_matrix_figure(design)
    drawn = axes_by_label(fig, "orthogonality").get_images()[0].get_array()
    X = design.to_numpy()
    unit = X / np.linalg.norm(X, axis=0)
    assert np.allclose(drawn, unit.T @ unit)
    assert "1.00" in all_text(fig)


def test_design_heat_map_scales_each_column_by_its_maximum(design):
    fig = figures.design_matrix_figure(design)
    drawn = axes_by_label(fig, "design_matrix").get_images()[0].get_array()
    X = design.to_numpy()
    assert drawn.shape == X.shape  # rows are maps
    assert np.allclose(drawn, X / np.abs(X).max(axis=0))


def test_contrast_matrix_labels_and_weights(design):
    weights = np.array([[0.0, 1.0, -1.0], [0.0, 0.0, 1.0]])
    fig = figures.contrast_matrix_figure(weights, list(design.columns), "sex and age")
    ax = axes_by_label(fig, "contrast_matrix")
    assert [t.get_text() for t in ax.get_xticklabels()] == list(design.columns)
    assert np.allclose(ax.get_images()[0].get_array(), weights)
    assert "sex and age" in all_text(fig) and "-1" in all_text(fig)


# -- summaries ---------------------------------------------------------------------------------------------------
def test_null_distribution_marks_observed_maximum_and_threshold():
    null = np.random.default_rng(2).normal(3.0, 0.5, 200)
    fig = figures.null_distribution_figure(null, 5.0, 3.8, "null")
    positions = sorted(line.get_xdata()[0] for line in axes_by_label(fig, "null_distribution").get_lines())
    assert positions == [3.8, 5.0]
    assert f"{int(np.sum(null >= 5.0))} of 200" in all_text(fig)


def test_covariate_scatter_draws_points_and_fitted_line():
    covariate = np.array([20.0, 30.0, np.nan, 50.0, 60.0])
    values = np.array([1.0, 2.0, 3.0, np.nan, 5.0])
    fig = figures.covariate_scatter_figure(values, covariate, "age", "peak", fitted=(0.5, 0.1))
    ax = axes_by_label(fig, "covariate_scatter")
    (points,) = ax.collections
    assert len(points.get_offsets()) == 3  # pairs with NaN left out
    (line,) = ax.get_lines()
    assert np.allclose(line.get_ydata(), 0.5 + 0.1 * np.asarray(line.get_xdata()))
    assert ax.get_xlabel() == "age"


def test_surviving_voxels_has_one_line_per_hue_level():
    sweep = pd.DataFrame({"alpha": [0.05, 0.01, 0.001] * 2, "n": [300, 120, 20, 250, 80, 5],
                          "method": ["fdr"] * 3 + ["bonferroni"] * 3})
    ax = axes_by_label(figures.surviving_voxels_figure(sweep, "alpha", "n", "method"), "surviving_voxels")
    assert len(ax.get_lines()) == 2
    for line in ax.get_lines():
        assert list(line.get_xdata()) == [0.001, 0.01, 0.05]  # sorted along the swept parameter


def test_interval_figure_draws_each_estimate_with_its_interval_and_the_reference_line():
    from runner.outputs.figures import interval_figure

    fig = interval_figure(["first", "second"], np.array([0.02, 0.04]), np.array([0.01, 0.02]),
                          np.array([0.05, 0.09]), 0.05, "alpha", "family-wise error", "title")
    (ax,) = fig.axes
    assert ax.get_label() == "intervals"
    labels = {float(tick): label.get_text() for tick, label in zip(ax.get_yticks(), ax.get_yticklabels())}
    assert labels == {1.0: "first", 0.0: "second"}
    lines = [line for line in ax.get_lines() if list(line.get_xdata()) == [0.05, 0.05]]
    assert len(lines) == 1  # the reference line at alpha
    points = ax.containers[0].lines[0]
    np.testing.assert_allclose(points.get_xdata(), [0.02, 0.04])
    np.testing.assert_allclose(points.get_ydata(), [1, 0])  # first label on top
    assert ax.get_xlim()[1] >= 0.09
