"""Seeded demo datasets with planted effects, generated on first use and cached (see datasets.py)."""

from runner.demo.datasets import DEMO_DATASETS, DemoDataset, demo_dataset, demo_root, ensure_demo

__all__ = ["DEMO_DATASETS", "DemoDataset", "demo_dataset", "demo_root", "ensure_demo"]
