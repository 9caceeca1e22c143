"""Random field theory as SPM computes it: pure statistics, arrays in and arrays out.

smoothness.py    FWHM per axis and resels per voxel from standardised residuals (Kiebel et al. 1999)
resels.py        resel counts R0..R3 of a mask from its lattice cells (Worsley et al. 1996)
ec_densities.py  EC densities of Z, t and F fields, in log space (Worsley 1994; Worsley et al. 1996)
fwe.py           peak-level FWE p and height thresholds; cluster-level p (Friston et al. 1994)
table.py         SPM-style cluster table and footer values
validity.py      family-wise error measured on simulated null data, with binomial intervals and a verdict
"""
