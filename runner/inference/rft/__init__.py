"""Random field theory as SPM computes it: smoothness, resel counts, EC densities, peak- and cluster-level FWE."""
