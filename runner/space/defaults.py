"""Spatial defaults, each stated once; the modules that cluster, find peaks or enhance import them from here.

Two connectivity defaults exist on purpose:

- ``PARAMETRIC_CONNECTIVITY = 6``: height-thresholded maps (fpr / fdr / bonferroni), their extent threshold and
  cluster tables, and ARI reproduce nilearn's ``threshold_stats_img``, ``get_clusters_table`` and
  ``cluster_level_inference``, which join voxels sharing a face. Parity tests against nilearn need it.
- ``PERMUTATION_CONNECTIVITY = 26``: permutation cluster size / mass and TFCE follow FSL randomise and PALM, which
  join voxels sharing a face, an edge or a corner on volumes. nilearn's ``permuted_ols`` uses 6; set
  ``correction.<method>.connectivity=6`` to reproduce it.

Meshes have one neighbourhood, the edges of their triangles, so connectivity does not apply to them.
"""

from __future__ import annotations

PARAMETRIC_CONNECTIVITY = 6
PERMUTATION_CONNECTIVITY = 26
CONNECTIVITY_RANK = {6: 1, 18: 2, 26: 3}  # neighbours sharing a face / and an edge / and a corner

MIN_DISTANCE_MM = 8.0  # between reported peaks of a cluster (nilearn get_clusters_table)
MAX_SUBPEAKS = 3  # sub-peaks reported after a cluster's peak (nilearn get_clusters_table)

# TFCE exponents: E = 0.5, H = 2 for 3D images (Smith & Nichols 2009); E = 1, H = 2 on surfaces (as FSL's 2D
# "--T2" setting and PALM's surface default), with extents measured in mm2 of vertex area.
TFCE_E = 0.5
TFCE_H = 2.0
TFCE_E_SURFACE = 1.0
TFCE_H_SURFACE = 2.0
TFCE_STEPS = 100  # thresholds per map and tail with the automatic step (max / 100, as fslmaths, PALM, nilearn)

MAX_KERNEL_NEIGHBOURS = 62  # neighbours per element the TFCE kernel can hold (one bit each in an int64)
